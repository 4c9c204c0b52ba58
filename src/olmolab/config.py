"""Run configs: one YAML file with model, data, optim, scheduler, trainer and eval sections.

    olmolab train run.yaml --optim.lr=3e-4 --trainer.max_steps=100

Every section is a typed dataclass. Loading checks each key against its field: an unknown key
lists the keys that exist, a value of the wrong type says the type expected, and each
section's `validate()` refuses impossible combinations. The resolved config (file +
overrides) is what gets saved with the run, so the run is reproducible from it alone.

The `model` section is either a full `ModelConfig` or `preset: NAME` plus overrides:

    model: {preset: olmo2-20m, max_seq_len: 512}
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from olmolab.data.config import DataConfig
from olmolab.errors import UserError
from olmolab.model import ModelConfig
from olmolab.train.energy import EPYC_9654_WATTS_PER_CORE, MODEL_CARD_CARBON_INTENSITY
from olmolab.train.optim import OptimConfig, SchedulerConfig
from olmolab.train.prepare import PrepareConfig

# ---------------------------------------------------------------------- the trainer section


@dataclass
class TrainerConfig:
    run_dir: str = "runs/run"
    """Where checkpoints, metrics.jsonl and the resolved config go."""
    global_batch_size: int = 512
    """Instances (sequences) per optimizer step, over all processes."""
    micro_batch_size: int = 8
    """Instances per forward pass on one process; the rest is gradient accumulation."""
    max_steps: int | None = None
    max_tokens: float | None = None
    """The run's length in tokens (e.g. 4e12); give this or max_steps."""
    seed: int = 6198
    """Seeds the model's initialisation (the data order has its own data.seed)."""
    z_loss_multiplier: float = 1e-5
    max_grad_norm: float | None = 1.0
    device: str = "auto"
    """auto (CUDA if present), cpu, cuda."""
    precision: str = "auto"
    """auto (bf16 autocast on CUDA, fp32 on CPU), fp32, bf16."""
    distributed: str = "auto"
    """Under torchrun: ddp or fsdp (FSDP2); auto = ddp. Ignored in one process."""
    compile: bool = False
    """torch.compile each block (on CPU this needs a C++ compiler; see bench/train_step.py for what it pays)."""
    activation_checkpointing: bool = False
    keep_freed_memory: bool = True
    """On CPU, have malloc reuse freed memory instead of returning it to the OS: ~6% faster steps,
    at the cost of holding the peak memory (olmolab/allocator.py)."""
    save_interval: int | None = 1000
    """Steps between checkpoints; the last `keep_last` are kept."""
    keep_last: int = 3
    permanent_interval: int | None = None
    """Checkpoints at multiples of this are never deleted."""
    log_interval: int = 1
    eval_interval: int | None = None
    """Steps between validation / in-loop evaluation; None = only at the end."""
    eval_batches: int | None = None
    """Validation batches per evaluation; None = the whole validation set."""
    load_path: str | None = None
    """A checkpoint to start from (fine-tuning, annealing)."""
    reset_trainer_state: bool = False
    """With load_path: take the weights only; step, tokens, optimizer and data start afresh."""
    spike_window: int = 128
    spike_sigmas: float = 6.0
    """A loss this many standard deviations above the recent mean is logged as a spike."""
    peak_flops: float | None = None
    """Per-device peak FLOP/s for MFU; None = measured (CPU) or the GPU's bf16 datasheet value."""
    tokenizer: str | None = None
    """tokenizer.json saved with checkpoints and used for bits-per-byte."""
    progress: bool = True
    watts_per_core: float = EPYC_9654_WATTS_PER_CORE
    """Power per busy CPU core for the energy estimate where no counter can be read (train/energy.py)."""
    carbon_intensity: float = MODEL_CARD_CARBON_INTENSITY
    """kg CO2e per kWh of the grid the run used; the default is the OLMo 7B model card's."""
    wandb_project: str | None = None
    tensorboard: bool = False

    def validate(self) -> None:
        if (self.max_steps is None) == (self.max_tokens is None):
            raise UserError("trainer: give exactly one of max_steps and max_tokens")
        for key in ("global_batch_size", "micro_batch_size", "keep_last", "log_interval"):
            if getattr(self, key) < 1:
                raise UserError(f"trainer.{key}={getattr(self, key)}: must be at least 1")
        if self.device not in ("auto", "cpu", "cuda"):
            raise UserError(f"trainer.device={self.device!r}: expected auto, cpu or cuda")
        if self.precision not in ("auto", "fp32", "bf16"):
            raise UserError(f"trainer.precision={self.precision!r}: expected auto, fp32 or bf16")
        if self.distributed not in ("auto", "ddp", "fsdp"):
            raise UserError(f"trainer.distributed={self.distributed!r}: expected auto, ddp or fsdp")
        if self.reset_trainer_state and not self.load_path:
            raise UserError("trainer.reset_trainer_state needs trainer.load_path (the checkpoint to start from)")
        for key in ("watts_per_core", "carbon_intensity"):
            if getattr(self, key) < 0:
                raise UserError(f"trainer.{key}={getattr(self, key)}: must be 0 or more")
        if self.z_loss_multiplier < 0:
            raise UserError(f"trainer.z_loss_multiplier={self.z_loss_multiplier}: must be 0 (off) or more (OLMo 2: 1e-5)")

    def check_batch(self, world_size: int) -> int:
        """Gradient-accumulation steps; refuses a batch that does not split evenly."""
        per_pass = self.micro_batch_size * world_size
        if self.global_batch_size % per_pass:
            raise UserError(
                f"trainer.global_batch_size={self.global_batch_size} is not divisible by micro_batch_size "
                f"({self.micro_batch_size}) x world size ({world_size}) = {per_pass}; make it a multiple of "
                f"{per_pass}, or change micro_batch_size"
            )
        return self.global_batch_size // per_pass


# ---------------------------------------------------------------------- the run config


@dataclass
class RunConfig:
    model: ModelConfig
    data: DataConfig
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    eval: Any = None
    """The `eval:` section (olmolab.eval.EvalConfig), or None for no in-loop evaluation."""
    prepare: PrepareConfig | None = None
    """Tokenizer training and tokenization to run first if their outputs are missing."""

    def validate(self) -> None:
        self.trainer.validate()
        self.optim.validate()
        self.scheduler.validate()
        self.data.validate()
        if self.data.seq_len > self.model.max_seq_len:
            raise UserError(
                f"data.seq_len={self.data.seq_len} is longer than model.max_seq_len={self.model.max_seq_len}; "
                f"lower data.seq_len or raise model.max_seq_len"
            )

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.to_dict(),
            "data": self.data.to_dict(),
            "trainer": dataclasses.asdict(self.trainer),
            "optim": dataclasses.asdict(self.optim),
            "scheduler": dataclasses.asdict(self.scheduler),
            "eval": self.eval.to_dict() if self.eval is not None else None,
            "prepare": dataclasses.asdict(self.prepare) if self.prepare is not None else None,
        }

    @classmethod
    def from_dict(cls, raw: dict[str, Any], source: str = "config") -> RunConfig:
        known = {"model", "data", "trainer", "optim", "scheduler", "eval", "prepare"}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise UserError(f"{source}: unknown section(s) {unknown}; the sections are {sorted(known)}")
        for required in ("model", "data"):
            if not isinstance(raw.get(required), dict):
                raise UserError(f"{source}: the `{required}:` section is missing")
        config = cls(
            model=_model_from_dict(raw["model"], source),
            data=DataConfig.from_dict(raw["data"]),
            trainer=from_dict(TrainerConfig, raw.get("trainer") or {}, "trainer"),
            optim=from_dict(OptimConfig, raw.get("optim") or {}, "optim"),
            scheduler=from_dict(SchedulerConfig, raw.get("scheduler") or {}, "scheduler"),
            eval=_eval_from_dict(raw.get("eval")),
            prepare=PrepareConfig.from_dict(raw["prepare"]) if raw.get("prepare") else None,
        )
        config.validate()
        return config


def _model_from_dict(raw: dict[str, Any], source: str) -> ModelConfig:
    raw = dict(raw)
    try:
        if "preset" in raw:
            return ModelConfig.preset(raw.pop("preset"), **_typed_fields(ModelConfig, raw, "model"))
        return ModelConfig.from_dict(_typed_fields(ModelConfig, raw, "model"))
    except (TypeError, ValueError) as e:
        raise UserError(f"{source}: model: {e}") from e


def _eval_from_dict(raw: dict[str, Any] | None):
    if not raw:
        return None
    from olmolab.eval import EvalConfig

    return EvalConfig.from_dict(raw)


# ---------------------------------------------------------------------- loading and overrides


def load_run_config(path: str | Path, overrides: list[str] = ()) -> RunConfig:
    """Read a YAML (or JSON) run config and apply `section.key=value` overrides."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except OSError as e:
        raise UserError(f"{path}: cannot read the config ({e.strerror})") from e
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise UserError(f"{where}: not valid YAML ({getattr(e, 'problem', e)})") from e
    if not isinstance(raw, dict):
        raise UserError(f"{path}: expected a mapping of sections (model:, data:, trainer:, ...)")
    for override in overrides:
        apply_override(raw, override)
    return RunConfig.from_dict(raw, source=str(path))


def apply_override(raw: dict[str, Any], override: str) -> None:
    """`--optim.lr=3e-4` or `optim.lr=3e-4`: set a nested key; the value is parsed as YAML."""
    key, sep, value = override.removeprefix("--").partition("=")
    if not sep or not key:
        raise UserError(f"override {override!r}: expected --section.key=value")
    *parents, leaf = key.split(".")
    node = raw
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise UserError(f"override {override!r}: {part} is not a section")
    node[leaf.replace("-", "_")] = yaml.safe_load(value)


def from_dict(cls, raw: dict[str, Any], where: str):
    """A dataclass from a plain dict, type-checked field by field."""
    if not isinstance(raw, dict):
        raise UserError(f"{where}: expected a mapping of keys, got {type(raw).__name__}")
    return cls(**_typed_fields(cls, raw, where))


def _typed_fields(cls, raw: dict[str, Any], where: str) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(raw) - set(names))
    if unknown:
        raise UserError(f"{where}: unknown key(s) {unknown}; the keys of {where} are: {', '.join(names)}")
    return {key: _coerce(value, hints[key], f"{where}.{key}") for key, value in raw.items()}


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """`value` as type `hint`, accepting YAML's spellings (e.g. '3e-4' is a float); else an error."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg, where)
            except UserError as e:
                errors.append(str(e))
        raise UserError(errors[0] if len(errors) == 1 else f"{where}: {value!r} is none of {_describe(hint)}")
    if origin is typing.Literal:
        if value not in args:
            raise UserError(f"{where}: {value!r} is not one of {', '.join(map(repr, args))}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, list | tuple):
            raise UserError(f"{where}: expected a list, got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise UserError(f"{where}: expected {len(args)} values, got {len(value)}")
            return tuple(_coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args, strict=True)))
        item = args[0] if args else Any
        return origin(_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise UserError(f"{where}: expected a mapping, got {value!r}")
        return {k: _coerce(v, args[1], f"{where}.{k}") for k, v in value.items()} if args else value
    if hint is Any:
        return value
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise UserError(f"{where}: expected true or false, got {value!r}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise UserError(f"{where}: expected an integer, got {value!r}")
    if hint is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise UserError(f"{where}: expected a number, got {value!r}")
    if hint is str:
        if isinstance(value, str):
            return value
        raise UserError(f"{where}: expected a string, got {value!r}")
    return value


def _describe(hint: Any) -> str:
    return str(hint).replace("typing.", "")
