"""The global order: OLMo's permutation, rank slices, exact resume, mixtures and stages."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from olmolab.data.order import (
    DataState,
    Stage,
    TrainOrder,
    epoch_order,
    mixture_counts,
    olmo_order,
    rank_slice,
)
from olmolab.errors import UserError


def olmos_own_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """`olmo/data/iterable_dataset.py` _build_global_indices, as written there."""
    indices = np.arange(n, dtype=np.uint32)
    rng = np.random.Generator(np.random.PCG64(seed + epoch))
    rng.shuffle(indices)
    return indices


@pytest.mark.parametrize("n,seed,epoch", [(10, 0, 0), (1000, 6198, 0), (12345, 6198, 3)])
def test_single_source_order_is_olmos_permutation(n, seed, epoch):
    assert np.array_equal(olmo_order(n, seed, epoch), olmos_own_order(n, seed, epoch))
    assert np.array_equal(TrainOrder([n], 5, seed).epoch_order(0, epoch), olmos_own_order(n, seed, epoch))


def test_order_is_a_pure_function_of_seed_and_epoch():
    assert np.array_equal(olmo_order(500, 1, 0), olmo_order(500, 1, 0))
    assert not np.array_equal(olmo_order(500, 1, 0), olmo_order(500, 2, 0))
    assert not np.array_equal(olmo_order(500, 1, 0), olmo_order(500, 1, 1))
    assert sorted(olmo_order(500, 1, 4).tolist()) == list(range(500))


def test_global_batches_are_consecutive_slices_and_ranks_partition_them():
    order = TrainOrder([103], global_batch_size=8, seed=3)
    epoch = order.epoch_order(0, 0)
    assert np.array_equal(order.global_batch(2), epoch[16:24])
    parts = [order.rank_batch(2, r, 4) for r in range(4)]
    assert np.array_equal(np.sort(np.concatenate(parts)), np.sort(epoch[16:24]))
    assert np.array_equal(parts[1], epoch[16:24][1::4])  # OLMo: rank r takes batch[r::W]
    assert [len(m) for m in order.rank_micro_batches(2, 0, 2, 2)] == [2, 2]
    with pytest.raises(UserError, match="does not divide"):
        rank_slice(epoch[:8], 0, 3)


def test_an_epoch_drops_its_last_partial_batch_and_the_next_reshuffles():
    order = TrainOrder([103], global_batch_size=10, seed=3)
    assert order.batches_per_epoch(0) == 10
    assert np.array_equal(order.global_batch(10), order.epoch_order(0, 1)[:10])
    assert order.state_at(10) == DataState(10, 0, 1, 0)


def test_stepping_from_any_state_matches_the_pure_function_of_the_batch_index():
    """Exact resume: the state after b batches is `state_at(b)`, and the batches that follow agree."""
    order = TrainOrder([7, 30], global_batch_size=4, seed=11, stages=[Stage(0, (1.0, 1.0)), Stage(13, (0.0, 1.0))])
    state = DataState()
    for b in range(40):
        assert state == order.state_at(b)
        batch, state = order.next_batch(state)
        assert np.array_equal(batch, order.global_batch(b))
    resumed = DataState.from_dict(order.state_at(25).to_dict())
    assert np.array_equal(order.next_batch(resumed)[0], order.global_batch(25))


def test_a_larger_batch_after_resume_continues_where_the_epoch_left_off():
    small, large = TrainOrder([100], 4, seed=0), TrainOrder([100], 8, seed=0)
    state = small.state_at(5)  # 20 instances of epoch 0 consumed
    batch, after = large.next_batch(state)
    assert np.array_equal(batch, small.epoch_order(0, 0)[20:28])
    assert after == DataState(6, 0, 0, 28)


def test_mixture_counts_follow_the_weights_over_the_weighted_sources_total():
    assert mixture_counts([100, 10], None) == [100, 10]
    assert mixture_counts([100, 10], [1, 1]) == [55, 55]  # the small source repeats
    assert mixture_counts([100, 10, 50], [3, 1, 0]) == [83, 27, 0]
    assert sum(mixture_counts([7, 7, 7], [1, 1, 1])) == 21


def test_an_epoch_of_a_mixture_draws_every_source_in_proportion():
    sizes, weights = [1000, 20], [0.5, 0.5]
    order = epoch_order(sizes, weights, seed=5, epoch=0)
    from_small = order[order >= 1000] - 1000
    assert len(order) == 1020 and len(from_small) == 510
    assert set(Counter(from_small.tolist()).values()) <= {25, 26}  # whole repeats, then a sample
    from_large = order[order < 1000]
    assert len(set(from_large.tolist())) == 510  # a sample without repeats
    other_epoch = epoch_order(sizes, weights, seed=5, epoch=1)
    assert set(other_epoch[other_epoch < 1000].tolist()) != set(from_large.tolist())  # fresh sample


def test_stages_switch_the_mixture_at_their_start_step():
    order = TrainOrder([50, 50], 10, seed=1, stages=[Stage(0, (1.0, 0.0)), Stage(3, (0.0, 1.0))])
    assert all(order.global_batch(b).max() < 50 for b in range(3))
    assert all(order.global_batch(b).min() >= 50 for b in range(3, 12))
    assert order.state_at(3) == DataState(3, 1, 0, 0)
    assert order.state_at(8) == DataState(8, 1, 1, 0)  # stage 1 has its own epochs


def test_batches_containing_finds_every_step_an_instance_is_in():
    order = TrainOrder([40, 40], 8, seed=2, stages=[Stage(0), Stage(7, (1.0, 3.0))])
    steps = order.batches_containing([5, 60], end_batch=30)
    expected = [b for b in range(30) for i in order.global_batch(b).tolist() if i in (5, 60)]
    assert steps == expected and len(steps) > 2


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"global_batch_size": 200}, "fewer than the global batch size"),
        ({"stages": [Stage(5)]}, "must start at step 0"),
        ({"stages": [Stage(0), Stage(0)]}, "increasing steps"),
        ({"global_batch_size": 0}, "positive"),
    ],
)
def test_impossible_orders_are_refused(kwargs, message):
    with pytest.raises(UserError, match=message):
        TrainOrder([100], **{"global_batch_size": 4, "seed": 0, **kwargs})
