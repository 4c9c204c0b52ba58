"""The torch loader: batches independent of workers, exact resume, ranks, validation order."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from olmolab.data.instances import TokenDataset
from olmolab.data.loader import TrainLoader, validation_batches
from olmolab.data.order import TrainOrder
from olmolab.data.shards import open_token_files
from olmolab.errors import UserError

from .data_helpers import write_tokens


@pytest.fixture
def dataset(tmp_path) -> TokenDataset:
    paths = [write_tokens(tmp_path / f"{i}.npy", np.arange(i * 1000, i * 1000 + 300 + 50 * i)) for i in range(3)]
    masks = []
    for path in paths:
        masks.append(path.with_suffix(".mask"))
        (np.arange(path.stat().st_size // 2) % 3 != 0).tofile(masks[-1])
    return TokenDataset(open_token_files(paths, dtype="uint16", label_mask_paths=masks), seq_len=16)


def take(loader, n: int) -> list[dict[str, torch.Tensor]]:
    return list(itertools.islice(loader, n))


def same(a: list[dict], b: list[dict]) -> bool:
    return len(a) == len(b) and all(x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x) for x, y in zip(a, b, strict=True))


def test_batches_are_tensors_of_the_instances_the_order_names(dataset):
    order = TrainOrder(dataset.source_sizes, 6, seed=1)
    (batch,) = take(TrainLoader(dataset, order), 1)
    assert batch["input_ids"].shape == (6, 16) and batch["input_ids"].dtype == torch.int64
    assert batch["label_mask"].dtype == torch.bool
    assert batch["instance_ids"].tolist() == order.global_batch(0).tolist()
    assert batch["input_ids"][0].tolist() == dataset.instance(int(order.global_batch(0)[0]))["input_ids"].tolist()


def test_batches_do_not_depend_on_the_number_of_workers(dataset):
    order = TrainOrder(dataset.source_sizes, 6, seed=1)
    without = take(TrainLoader(dataset, order), 15)  # crosses an epoch boundary (9 batches per epoch)
    with_workers = take(TrainLoader(dataset, order, num_workers=2, prefetch_factor=3), 15)
    assert same(without, with_workers)


def test_resuming_from_a_saved_state_continues_exactly(dataset):
    order = TrainOrder(dataset.source_sizes, 6, seed=1)
    straight = take(TrainLoader(dataset, order), 12)
    first = TrainLoader(dataset, order, num_workers=1)
    take(first, 7)  # workers read ahead; only the 7 batches handed out count
    saved = first.state_dict()
    resumed = TrainLoader(dataset, order)
    resumed.load_state_dict(saved)
    assert resumed.state.batch_index == 7
    assert same(take(resumed, 5), straight[7:])


def test_resume_on_changed_data_is_refused_unless_asked(dataset, tmp_path):
    order = TrainOrder(dataset.source_sizes, 6, seed=1)
    saved = TrainLoader(dataset, order).state_dict()
    other = TokenDataset(dataset.files[:2], seq_len=16)
    loader = TrainLoader(other, TrainOrder(other.source_sizes, 6, seed=1))
    with pytest.raises(UserError, match="differs from the data of the checkpoint"):
        loader.load_state_dict(saved)
    loader.load_state_dict(saved, check_fingerprint=False)


def test_the_ranks_batches_together_are_the_global_batch(dataset):
    order = TrainOrder(dataset.source_sizes, 6, seed=1)
    ranks = [take(TrainLoader(dataset, order, rank=r, world_size=3), 2) for r in range(3)]
    for step in range(2):
        ids = torch.stack([ranks[r][step]["instance_ids"] for r in range(3)], dim=1).flatten()
        assert ids.tolist() == order.global_batch(step).tolist()
    with pytest.raises(UserError, match="does not divide by world size 4"):
        TrainLoader(dataset, order, world_size=4)


def test_validation_visits_every_instance_once_in_order(dataset):
    batches = list(validation_batches(dataset, batch_size=5))
    assert torch.cat([b["instance_ids"] for b in batches]).tolist() == list(range(len(dataset)))
    assert len(dataset) == 64 and len(batches[-1]["instance_ids"]) == 4  # the short last batch is kept
    by_rank = [torch.cat([b["instance_ids"] for b in validation_batches(dataset, 4, rank=r, world_size=2)]) for r in (0, 1)]
    assert sorted(torch.cat(by_rank).tolist()) == list(range(len(dataset)))
