"""Batches as tensors: the training loader (resumable, rank-aware) and in-order validation batches.

The loader is an index into `TrainOrder`: the main process decides which instances make each
batch (a pure function of the position), and torch DataLoader workers, if any, only read them.
Batches come back in order, so they are the same whatever the number of workers.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from olmolab.data.instances import TokenDataset
from olmolab.data.order import DataState, TrainOrder, check_divides, rank_slice
from olmolab.errors import UserError


def collate(dataset: TokenDataset, instance_ids: np.ndarray) -> dict[str, torch.Tensor]:
    """`input_ids` int64 (B, T), `label_mask` bool (B, T) when the data has one, `instance_ids` int64 (B,)."""
    batch = {key: torch.from_numpy(value) for key, value in dataset.read(instance_ids).items()}
    batch["instance_ids"] = torch.from_numpy(np.asarray(instance_ids, dtype=np.int64))
    return batch


class _Plan:
    """The sampler: yields (rank's instance ids, position after the batch) from a position on, forever."""

    def __init__(self, order: TrainOrder, state: DataState, rank: int, world_size: int):
        self.order, self.state, self.rank, self.world_size = order, state, rank, world_size

    def __iter__(self) -> Iterator[tuple[np.ndarray, DataState]]:
        state = self.state
        while True:
            batch, state = self.order.next_batch(state)
            yield rank_slice(batch, self.rank, self.world_size), state


class _Reader(Dataset):
    """What a DataLoader worker runs: reads the instances the plan chose."""

    def __init__(self, dataset: TokenDataset):
        self.dataset = dataset

    def __getitem__(self, planned: tuple[np.ndarray, DataState]) -> tuple[dict[str, torch.Tensor], DataState]:
        instance_ids, after = planned
        return collate(self.dataset, instance_ids), after


def _as_is(item):
    return item


class TrainLoader:
    """Rank-local training batches from a position, forever; `state` is the position after the last batch yielded.

    Each batch: `input_ids` int64 (B, T), `label_mask` bool (B, T) if the data has label masks,
    `instance_ids` int64 (B,), where B = global batch size / world size. Stop iterating when
    training is done; save `state_dict()` in checkpoints and pass it back to resume.
    """

    def __init__(
        self,
        dataset: TokenDataset,
        order: TrainOrder,
        *,
        rank: int = 0,
        world_size: int = 1,
        state: DataState | None = None,
        num_workers: int = 0,
        prefetch_factor: int = 2,
        pin_memory: bool = False,
    ):
        check_divides(order.global_batch_size, world_size)  # now, not at the first batch
        self.dataset, self.order = dataset, order
        self.rank, self.world_size = rank, world_size
        self.state = state or DataState()
        self.num_workers, self.prefetch_factor, self.pin_memory = num_workers, prefetch_factor, pin_memory

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        loader = DataLoader(
            _Reader(self.dataset),
            batch_size=None,
            sampler=_Plan(self.order, self.state, self.rank, self.world_size),
            collate_fn=_as_is,
            num_workers=self.num_workers,
            prefetch_factor=self.prefetch_factor if self.num_workers else None,
            pin_memory=self.pin_memory,
        )
        for batch, after in loader:
            self.state = after  # only batches handed to the trainer count as consumed
            yield batch

    def state_dict(self) -> dict:
        return {"data_state": self.state.to_dict(), "dataset_fingerprint": self.dataset.fingerprint}

    def load_state_dict(self, state_dict: dict, *, check_fingerprint: bool = True) -> None:
        """Resume at a saved position; refuses data that changed since, unless told not to check."""
        if check_fingerprint and state_dict.get("dataset_fingerprint") != self.dataset.fingerprint:
            raise UserError(
                "the training data differs from the data of the checkpoint (files, sizes or seq_len changed); "
                "restore the data, or resume with the fingerprint check turned off to continue on the new data"
            )
        self.state = DataState.from_dict(state_dict["data_state"])


def validation_batches(
    dataset: TokenDataset, batch_size: int, *, rank: int = 0, world_size: int = 1
) -> Iterator[dict[str, torch.Tensor]]:
    """Every instance once, in order (rank r takes instances r, r + W, ...); the last batch may be short."""
    if batch_size <= 0:
        raise UserError(f"validation batch size must be positive, got {batch_size}")
    mine = np.arange(rank, len(dataset), world_size)
    for start in range(0, len(mine), batch_size):
        yield collate(dataset, mine[start : start + batch_size])
