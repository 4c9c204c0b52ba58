"""`DataConfig`: the `data:` section of a run config, and what it builds.

Two forms. Plain, like OLMo's `data.paths`:

    data:
      paths: [data/tokens/*.npy]
      seq_len: 2048
      seed: 6198

Sources with weights, optionally changing at steps (a curriculum):

    data:
      sources:
        - {name: web, paths: [tokens/web], weight: 0.5}
        - {name: hq, paths: [tokens/hq], weight: 0.5}
      stages:
        - {start_step: 1000, weights: {hq: 1.0}}   # after 1000 steps, only hq

Without weights, sources are taken whole (OLMo's concatenation of `data.datasets`). Paths may
be files, directories (their `*.npy`) or globs, relative to the working directory.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from olmolab.configlib import from_dict, to_dict
from olmolab.data.instances import DEFAULT_SOURCE, TokenDataset
from olmolab.data.order import DataState, Stage, TrainOrder
from olmolab.data.shards import TOKEN_DTYPES, open_token_files
from olmolab.errors import UserError


@dataclass
class SourceConfig:
    name: str
    """A label for the source: stage weights and provenance refer to it."""
    paths: list[str]
    """Token files, directories or globs."""
    weight: float | None = None
    """Share of each epoch (any scale); None on every source takes each whole."""
    label_mask_paths: list[str] | None = None
    """One np.bool_ mask file per token file, in the same order (OLMo's label_mask_paths)."""


@dataclass
class StageConfig:
    start_step: int
    """Steps completed before the stage starts."""
    weights: dict[str, float]
    """Source name -> weight; sources not named get none."""


@dataclass
class DataConfig:
    paths: list[str] = field(default_factory=list)
    """Token files, directories or globs: one source. Use this or `sources`."""
    label_mask_paths: list[str] | None = None
    """With `paths`: one np.bool_ mask file per token file, in the same order."""
    sources: list[SourceConfig] = field(default_factory=list)
    """Named sources, optionally weighted: a mixture."""
    stages: list[StageConfig] = field(default_factory=list)
    """Mixture changes at given steps; before the first, the sources' own weights apply."""
    validation_paths: list[str] = field(default_factory=list)
    """Held-out token files, iterated in order for evaluation."""
    seq_len: int = 2048
    """Tokens per training instance."""
    seed: int = 0
    """Seeds the order: epoch e is shuffled with seed + e, as OLMo does."""
    dtype: str | None = None
    """Token dtype of raw files with no sidecar (OLMo 1: uint16, OLMo 2: uint32)."""
    num_workers: int = 0
    """DataLoader worker processes that read batches ahead; batches do not depend on it."""
    prefetch_factor: int = 2
    """Batches each worker reads ahead."""

    # -- checking ---------------------------------------------------------------------------

    def validate(self) -> None:
        """Raise `UserError` naming the first bad value and what to use instead."""
        if bool(self.paths) == bool(self.sources):
            raise UserError("data: give either `paths` (one source) or `sources` (named, weighted), not both or neither")
        for key in ("paths", "validation_paths"):
            _require(getattr(self, key), key, _strings, "a list of paths, directories or globs")
        _require(self.label_mask_paths, "label_mask_paths", _optional_strings, "a list of mask files, one per token file")
        _require(self.seq_len, "seq_len", lambda v: _integer(v) and v > 0, "a positive number of tokens")
        _require(self.seed, "seed", lambda v: _integer(v) and v >= 0, "a non-negative integer")
        _require(self.num_workers, "num_workers", lambda v: _integer(v) and v >= 0, "0 or more worker processes")
        _require(self.prefetch_factor, "prefetch_factor", lambda v: _integer(v) and v >= 1, "1 or more")
        _require(self.dtype, "dtype", lambda v: v is None or v in TOKEN_DTYPES, f"one of {', '.join(TOKEN_DTYPES)}")
        if self.label_mask_paths and not self.paths:
            raise UserError("data.label_mask_paths: goes with `paths`; with `sources`, give label_mask_paths per source")
        self._validate_sources()
        self._validate_stages()

    def _validate_sources(self) -> None:
        names = [s.name for s in self.sources]
        for i, source in enumerate(self.sources):
            where = f"data.sources[{i}]"
            _require(source.name, f"{where}.name", lambda v: isinstance(v, str) and v != "", "a non-empty name")
            _require(source.paths, f"{where}.paths", lambda v: bool(v) and _strings(v), "a list of token files, directories or globs")
            _require(source.weight, f"{where}.weight", lambda v: v is None or _number(v) and v >= 0, "a number >= 0")
            _require(source.label_mask_paths, f"{where}.label_mask_paths", _optional_strings, "a list of mask files")
        if len(set(names)) != len(names):
            raise UserError(f"data.sources: names must be unique, got {names}")
        weighted = [s.weight is not None for s in self.sources]
        if any(weighted) and not all(weighted):
            raise UserError("data.sources: give a weight to every source or to none (none takes each source whole)")
        if all(weighted) and self.sources and not any(s.weight > 0 for s in self.sources):
            raise UserError("data.sources: at least one weight must be above zero")

    def _validate_stages(self) -> None:
        if self.stages and not self.sources:
            raise UserError("data.stages: stages weigh named sources; define them under data.sources")
        names = {s.name for s in self.sources}
        previous = -1
        for i, stage in enumerate(self.stages):
            where = f"data.stages[{i}]"
            if not _integer(stage.start_step) or stage.start_step <= previous:
                raise UserError(f"{where}.start_step: got {stage.start_step!r}; expected a step after the previous stage's")
            previous = stage.start_step
            _require(stage.weights, f"{where}.weights", lambda v: isinstance(v, dict), "a mapping of source name to weight")
            unknown = set(stage.weights) - names
            if unknown:
                raise UserError(f"{where}.weights: unknown sources {sorted(unknown)}; the sources are {sorted(names)}")
            if not all(_number(w) and w >= 0 for w in stage.weights.values()) or not any(w > 0 for w in stage.weights.values()):
                raise UserError(f"{where}.weights: weights must be numbers >= 0, at least one above zero")

    # -- dicts ------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "data") -> DataConfig:
        """From a plain dict (a YAML `data:` section), by the one config loader; one path may be
        given as a string."""
        if isinstance(d, dict):
            d = d | {key: [d[key]] for key in ("paths", "validation_paths") if isinstance(d.get(key), str)}
        return from_dict(cls, d, where)

    # -- building ---------------------------------------------------------------------------

    def build_dataset(self) -> TokenDataset:
        self.validate()
        if self.paths:
            files = open_token_files(self.paths, dtype=self.dtype, label_mask_paths=self.label_mask_paths)
            return TokenDataset({DEFAULT_SOURCE: files}, self.seq_len)
        return TokenDataset(
            {s.name: open_token_files(s.paths, dtype=self.dtype, label_mask_paths=s.label_mask_paths) for s in self.sources},
            self.seq_len,
        )

    def build_validation_dataset(self) -> TokenDataset | None:
        if not self.validation_paths:
            return None
        return TokenDataset(open_token_files(self.validation_paths, dtype=self.dtype), self.seq_len)

    def build_stages(self) -> list[Stage]:
        """The curriculum as `Stage`s with one weight per source, in source order."""
        default = None
        if self.sources and self.sources[0].weight is not None:
            default = tuple(float(s.weight) for s in self.sources)
        stages = [Stage(stage.start_step, tuple(float(stage.weights.get(s.name, 0.0)) for s in self.sources)) for stage in self.stages]
        if not stages or stages[0].start_step > 0:
            stages.insert(0, Stage(0, default))
        return stages

    def build(self, global_batch_size: int) -> TrainData:
        """The training data: dataset and order, for a global batch size in instances."""
        dataset = self.build_dataset()
        order = TrainOrder(dataset.source_sizes, global_batch_size, self.seed, self.build_stages())
        return TrainData(self, dataset, order)


@dataclass
class TrainData:
    """What a trainer holds: the dataset, the order, and loaders over them."""

    config: DataConfig
    dataset: TokenDataset
    order: TrainOrder

    def loader(self, *, rank: int = 0, world_size: int = 1, state: DataState | None = None, pin_memory: bool = False):
        """A `TrainLoader` (torch) from `state` on (default: the start)."""
        from olmolab.data.loader import TrainLoader  # torch is imported only by those who load batches

        return TrainLoader(
            self.dataset,
            self.order,
            rank=rank,
            world_size=world_size,
            state=state,
            num_workers=self.config.num_workers,
            prefetch_factor=self.config.prefetch_factor,
            pin_memory=pin_memory,
        )


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _optional_strings(value: Any) -> bool:
    return value is None or _strings(value)


def _strings(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def _require(value: Any, key: str, ok: Callable[[Any], bool], expected: str) -> None:
    if not ok(value):
        key = key if key.startswith("data") else f"data.{key}"
        raise UserError(f"{key}: got {value!r}; expected {expected}")
