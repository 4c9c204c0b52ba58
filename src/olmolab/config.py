"""Run configs: one YAML file with model, data, optim, scheduler, trainer and eval sections.

    olmolab train run.yaml --optim.lr=3e-4 --trainer.max_steps=100

Every section is a typed dataclass, loaded by `olmolab.configlib` (the one loader of every
config): an unknown key lists the keys that exist, a value of the wrong type says the type
expected, and each section's `validate()` refuses impossible combinations. The resolved config (file +
overrides) is what gets saved with the run, so the run is reproducible from it alone.

The `model` section is either a full `ModelConfig` or `preset: NAME` plus overrides:

    model: {preset: olmo2-20m, max_seq_len: 512}
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from olmolab.configlib import apply_override, from_dict, load_yaml, to_dict
from olmolab.data.config import DataConfig
from olmolab.errors import UserError
from olmolab.eval import EvalConfig
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
    """Clip the global gradient norm to this (positive); None = no clipping."""
    device: str = "auto"
    """auto (CUDA if present), cpu, cuda."""
    precision: str = "auto"
    """fp32, bf16 (bf16 compute, fp32 master weights and optimizer state), or auto: bf16 where the
    device multiplies bf16 fast (a CUDA GPU with bf16; a CPU with AMX or AVX512-BF16), else fp32.
    See olmolab/precision.py."""
    distributed: str = "auto"
    """Under torchrun: ddp or fsdp (FSDP2); auto = ddp. Ignored in one process."""
    compile: bool = False
    """torch.compile each block (on CPU this needs a C++ compiler; see bench/train_step.py for what it pays)."""
    activation_checkpointing: bool = False
    keep_freed_memory: bool = True
    """On CPU, have malloc reuse freed memory instead of returning it to the OS: faster steps
    (bench/README.md), at the cost of holding the peak memory (olmolab/allocator.py)."""
    flush_denormals: bool = True
    """On CPU, compute floats below 1.2e-38 as 0: AdamW steps over moments decayed that far (rows
    the data stopped reaching) and softmaxes over widely spread logits ran 5-16x slower without
    (olmolab/denormals.py, bench/denormals.py)."""
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
    max_consecutive_skipped_steps: int = 10
    """Stop the run (non-zero exit) after this many steps in a row were skipped for a non-finite
    loss or gradient: the run has diverged, and training on would only burn compute."""
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
        for key in ("global_batch_size", "micro_batch_size", "keep_last", "log_interval", "spike_window",
                    "max_consecutive_skipped_steps"):
            if getattr(self, key) < 1:
                raise UserError(f"trainer.{key}={getattr(self, key)}: must be at least 1")
        for key in ("max_steps", "save_interval", "permanent_interval", "eval_interval", "eval_batches"):
            if getattr(self, key) is not None and getattr(self, key) < 1:
                raise UserError(f"trainer.{key}={getattr(self, key)}: must be at least 1 (or null: {_UNSET[key]})")
        for key in ("max_tokens", "max_grad_norm", "peak_flops", "spike_sigmas"):
            if getattr(self, key) is not None and getattr(self, key) <= 0:
                raise UserError(f"trainer.{key}={getattr(self, key)}: must be positive"
                                + (" (null turns clipping off)" if key == "max_grad_norm" else ""))
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


# What each optional trainer count means when left null, for error messages.
_UNSET = {"max_steps": "use max_tokens", "save_interval": "save only at the end",
          "permanent_interval": "no permanent revisions", "eval_interval": "evaluate only at the end",
          "eval_batches": "the whole validation set"}


# ---------------------------------------------------------------------- the run config


@dataclass
class RunConfig:
    model: ModelConfig
    data: DataConfig
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    eval: EvalConfig | None = None
    """The `eval:` section, or None for no in-loop evaluation."""
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
            "trainer": to_dict(self.trainer),
            "optim": to_dict(self.optim),
            "scheduler": to_dict(self.scheduler),
            "eval": self.eval.to_dict() if self.eval is not None else None,
            "prepare": to_dict(self.prepare) if self.prepare is not None else None,
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
            model=ModelConfig.from_dict(raw["model"]),
            data=DataConfig.from_dict(raw["data"]),
            trainer=from_dict(TrainerConfig, raw.get("trainer") or {}, "trainer"),
            optim=from_dict(OptimConfig, raw.get("optim") or {}, "optim"),
            scheduler=from_dict(SchedulerConfig, raw.get("scheduler") or {}, "scheduler"),
            eval=EvalConfig.from_dict(raw["eval"]) if raw.get("eval") else None,
            prepare=from_dict(PrepareConfig, raw["prepare"], "prepare") if raw.get("prepare") else None,
        )
        config.validate()
        return config


# ---------------------------------------------------------------------- loading


def load_run_config(path: str | Path, overrides: list[str] = ()) -> RunConfig:
    """Read a YAML (or JSON) run config and apply `section.key=value` overrides."""
    raw = load_yaml(path)
    for override in overrides:
        apply_override(raw, override)
    return RunConfig.from_dict(raw, source=str(path))
