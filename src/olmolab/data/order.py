"""The order of training instances: a pure function of (seed, stage, epoch) and the batch size.

OLMo's rule (`olmo/data/iterable_dataset.py`): epoch e visits `arange(N, dtype=uint32)`
shuffled by `np.random.Generator(np.random.PCG64(seed + e))`; global batch b is
`order[b * GBS : (b + 1) * GBS]` and rank r of W trains on `batch[r::W]`. An epoch's last,
partial batch is dropped. With one source and no weights this module reproduces that exactly.

Mixtures: an epoch of a weighted mixture has as many instances as its sources with a
non-zero weight hold together, apportioned by weight. A source with more than its share is
subsampled (a fresh sample each epoch); one with less is repeated whole as often as fits,
plus a sample for the rest. The chosen ids are then shuffled together. The same RNG draws the
samples and the shuffle, so without weights (or with weights equal to the source sizes) no
sample is drawn and the shuffle is OLMo's.

Stages (a curriculum): `Stage(start_step, weights)`; a stage starts with epoch 0 of its own
mixture. Stage 0 uses OLMo's seed `seed + epoch`; stage k > 0 seeds from (seed, epoch, k) so
that two stages never replay the same order.

Steps: `batch_index` counts batches from 0. Batch b is trained by the (b + 1)-th optimizer
step, so a checkpoint taken after N steps resumes at batch_index N, and a stage with
`start_step` S begins after S steps. The loader's position is a `DataState`; it also survives
a change of global batch size, as OLMo's `global_train_examples_seen_this_epoch` does.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from olmolab.errors import UserError


@dataclass(frozen=True)
class Stage:
    start_step: int
    """Steps completed before this stage starts (the batch_index of its first batch)."""
    weights: tuple[float, ...] | None = None
    """One weight per source (any scale); None takes every source whole, as OLMo concatenates them."""


@dataclass(frozen=True)
class DataState:
    """Where the loader is: all a checkpoint needs to resume the data exactly."""

    batch_index: int = 0
    """Batches trained so far (= steps completed)."""
    stage: int = 0
    epoch: int = 0
    instances_consumed: int = 0
    """Instances of the current stage's epoch already trained on."""

    def to_dict(self) -> dict[str, int]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> DataState:
        return cls(**{k: int(v) for k, v in d.items()})


def olmo_order(num_instances: int, seed: int, epoch: int) -> np.ndarray:
    """OLMo's global order of one epoch (no mixture): what `epoch_order` gives for one source."""
    return epoch_order([num_instances], None, seed, epoch)


def mixture_counts(source_sizes: Sequence[int], weights: Sequence[float] | None) -> list[int]:
    """How many instances of each source one epoch of the mixture takes."""
    if weights is None:
        return list(source_sizes)
    if len(weights) != len(source_sizes) or any(w < 0 for w in weights) or not any(w > 0 for w in weights):
        raise UserError(f"mixture weights {list(weights)} must be one non-negative number per source, not all zero")
    total = sum(size for size, w in zip(source_sizes, weights, strict=True) if w > 0)
    shares = np.array(weights, dtype=np.float64) / sum(weights) * total
    counts = np.floor(shares).astype(np.int64)
    # Largest remainders get the instances rounding left over (ties: the earlier source).
    by_remainder = sorted(range(len(counts)), key=lambda s: (-(shares[s] - counts[s]), s))
    counts[by_remainder[: total - int(counts.sum())]] += 1
    return counts.tolist()


def epoch_order(
    source_sizes: Sequence[int], weights: Sequence[float] | None, seed: int, epoch: int, stage: int = 0
) -> np.ndarray:
    """The instance ids of one epoch, in training order (ids of source s start after sources < s)."""
    counts = mixture_counts(source_sizes, weights)
    total_ids = sum(source_sizes)
    dtype = np.uint32 if max(total_ids, sum(counts)) < 1 << 32 else np.uint64  # OLMo uses uint32
    rng = np.random.Generator(np.random.PCG64(seed + epoch if stage == 0 else [seed, epoch, stage]))
    parts, first_id = [], 0
    for size, count in zip(source_sizes, counts, strict=True):
        if count and not size:
            raise UserError("a source with a non-zero weight has no instances (its files are shorter than seq_len)")
        if count:
            parts.append(first_id + _draw(size, count, rng).astype(dtype))
        first_id += size
    order = np.concatenate(parts) if parts else np.empty(0, dtype)
    rng.shuffle(order)
    return order


def _draw(size: int, count: int, rng: np.random.Generator) -> np.ndarray:
    """`count` ids from `range(size)`: whole copies as often as they fit, then a sample without repeats."""
    whole, rest = divmod(count, size)
    ids = [np.tile(np.arange(size, dtype=np.int64), whole)]
    if rest:  # no draw when nothing is sampled, so an unweighted order is OLMo's
        ids.append(rng.choice(size, size=rest, replace=False, shuffle=False))
    return np.concatenate(ids)


def rank_slice(batch: np.ndarray, rank: int, world_size: int) -> np.ndarray:
    """Rank r's share of a global batch (OLMo: `batch[r::W]`)."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in [0, {world_size})")
    check_divides(len(batch), world_size)
    return batch[rank::world_size]


def check_divides(global_batch_size: int, world_size: int) -> None:
    if global_batch_size % world_size:
        raise UserError(f"global batch size {global_batch_size} does not divide by world size {world_size}; make it a multiple")


def micro_batches(indices: np.ndarray, micro_batch_size: int) -> list[np.ndarray]:
    if micro_batch_size <= 0 or len(indices) % micro_batch_size:
        raise UserError(f"rank batch size {len(indices)} does not divide into micro-batches of {micro_batch_size}")
    return [indices[i : i + micro_batch_size] for i in range(0, len(indices), micro_batch_size)]


class TrainOrder:
    """Which instances each step trains on, for every rank: pure functions of the batch index."""

    def __init__(self, source_sizes: Sequence[int], global_batch_size: int, seed: int, stages: Sequence[Stage] = (Stage(0),)):
        self.source_sizes = list(source_sizes)
        self.global_batch_size = global_batch_size
        self.seed = seed
        self.stages = list(stages)
        if global_batch_size <= 0:
            raise UserError(f"global batch size must be a positive number of instances, got {global_batch_size}")
        if not self.stages or self.stages[0].start_step != 0:
            raise UserError("the first data stage must start at step 0")
        if any(a.start_step >= b.start_step for a, b in itertools.pairwise(self.stages)):
            raise UserError(f"data stages must start at increasing steps, got {[s.start_step for s in self.stages]}")
        self._epoch_sizes = [sum(mixture_counts(self.source_sizes, s.weights)) for s in self.stages]
        for k, size in enumerate(self._epoch_sizes):
            if size < global_batch_size:
                raise UserError(
                    f"data stage {k} has {size} instances per epoch, fewer than the global batch size "
                    f"{global_batch_size}; use more data, a shorter seq_len or a smaller batch"
                )
        self._cache: dict[tuple[int, int], np.ndarray] = {}

    def epoch_size(self, stage: int) -> int:
        return self._epoch_sizes[stage]

    def batches_per_epoch(self, stage: int) -> int:
        return self._epoch_sizes[stage] // self.global_batch_size

    def epoch_order(self, stage: int, epoch: int) -> np.ndarray:
        key = (stage, epoch)
        if key not in self._cache:
            if len(self._cache) >= 2:  # the current epoch and the one a lookup is about to need
                self._cache.pop(next(iter(self._cache)))
            self._cache[key] = epoch_order(self.source_sizes, self.stages[stage].weights, self.seed, epoch, stage)
        return self._cache[key]

    def stage_at(self, batch_index: int) -> int:
        return max(k for k, stage in enumerate(self.stages) if stage.start_step <= batch_index)

    def state_at(self, batch_index: int) -> DataState:
        """The position before batch `batch_index`, had the batch size always been this one."""
        stage = self.stage_at(batch_index)
        local = batch_index - self.stages[stage].start_step
        epoch, batch_in_epoch = divmod(local, self.batches_per_epoch(stage))
        return DataState(batch_index, stage, epoch, batch_in_epoch * self.global_batch_size)

    def next_batch(self, state: DataState) -> tuple[np.ndarray, DataState]:
        """The global batch at `state` and the state after it."""
        state = self._normalized(state)
        start = state.instances_consumed
        batch = self.epoch_order(state.stage, state.epoch)[start : start + self.global_batch_size]
        after = DataState(state.batch_index + 1, state.stage, state.epoch, start + self.global_batch_size)
        return batch, self._normalized(after)

    def _normalized(self, state: DataState) -> DataState:
        # Enter the stage the batch index is in, and start the next epoch when the current one
        # cannot fill a batch (also right after a resume with a larger batch size).
        stage = self.stage_at(state.batch_index)
        if stage != state.stage:
            return DataState(state.batch_index, stage, 0, 0)
        if state.instances_consumed + self.global_batch_size > self.epoch_size(stage):
            return DataState(state.batch_index, stage, state.epoch + 1, 0)
        return state

    def global_batch(self, batch_index: int) -> np.ndarray:
        """Instance ids of batch `batch_index`, all ranks together."""
        return self.next_batch(self.state_at(batch_index))[0]

    def rank_batch(self, batch_index: int, rank: int, world_size: int) -> np.ndarray:
        return rank_slice(self.global_batch(batch_index), rank, world_size)

    def rank_micro_batches(self, batch_index: int, rank: int, world_size: int, micro_batch_size: int) -> list[np.ndarray]:
        return micro_batches(self.rank_batch(batch_index, rank, world_size), micro_batch_size)

    def batches_containing(self, instance_ids: Sequence[int] | np.ndarray, end_batch: int) -> list[int]:
        """Batch indices before `end_batch` that contain any of the instances (with repeats, ascending)."""
        wanted = np.asarray(instance_ids)
        found: list[np.ndarray] = []
        for k, stage in enumerate(self.stages):
            stop = min(end_batch, self.stages[k + 1].start_step if k + 1 < len(self.stages) else end_batch)
            per_epoch = self.batches_per_epoch(k)
            epoch = 0
            while stage.start_step + epoch * per_epoch < stop:
                first = stage.start_step + epoch * per_epoch
                order = self.epoch_order(k, epoch)[: per_epoch * self.global_batch_size]
                batches = first + np.flatnonzero(np.isin(order, wanted)) // self.global_batch_size
                found.append(batches[batches < stop])
                epoch += 1
        return np.concatenate(found).tolist() if found else []
