"""Post-training run configs: `olmolab sft`, `olmolab dpo` and `olmolab rlvr CONFIG.yaml`.

The same sections as a pretraining run (`trainer`, `optim`, `scheduler`, optional `model`) plus
the method's own section (`sft:`, `dpo:` or `rlvr:`) in place of `data:`:

    sft:
      paths: [data/chat.jsonl.gz]
      max_seq_len: 4096
      epochs: 2
      reduction: sum
    trainer: {load_path: runs/base, run_dir: runs/sft, global_batch_size: 128, micro_batch_size: 1}
    optim: {lr: 2.0e-5, weight_decay: 0.0}
    scheduler: {name: linear, alpha_f: 0.0}

`trainer.load_path` is the model to start from (SFT: the base model; DPO: the SFT model, which
is also DPO's reference). Its weights only are taken, and without a `model:` section its model
config and tokenizer are the run's. The run's length is `epochs` over the data unless
`trainer.max_steps` says otherwise.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from olmolab import model_files
from olmolab.config import TrainerConfig
from olmolab.configlib import apply_override, from_dict, load_yaml, typed_fields
from olmolab.errors import UserError
from olmolab.model import ModelConfig
from olmolab.train.optim import OptimConfig, SchedulerConfig


@dataclass
class ChatDataConfig:
    """What SFT and DPO share: the data files, how long a row may be, and how often each is seen."""

    paths: list[str] = field(default_factory=list)
    """JSONL files (optionally .gz)."""
    max_seq_len: int = 4096
    """Longest row in tokens (OLMo 2 SFT: 4096; DPO: 2048)."""
    overlong: Literal["truncate", "drop"] = "truncate"
    """What happens to a row longer than max_seq_len (either way it is counted)."""
    epochs: float = 1.0
    """Passes over the data (the run's length unless trainer.max_steps is set)."""
    warmup_ratio: float | None = None
    """Warmup as a fraction of the run's steps (open-instruct's warmup_ratio); None = scheduler.t_warmup."""
    seed: int = 0
    """Seeds the order of the examples (reshuffled each epoch)."""
    skip_bad: bool = False
    """Skip (and count) malformed rows instead of stopping at the first with its file and line."""

    @property
    def seq_len(self) -> int:
        """The longest sequence (what the trainer's FLOP count assumes)."""
        return self.max_seq_len

    def validate(self, section: str) -> None:
        if not self.paths:
            raise UserError(f"{section}.paths: give the JSONL file(s) to train on")
        if self.max_seq_len < 2:
            raise UserError(f"{section}.max_seq_len={self.max_seq_len}: must be at least 2")
        if self.epochs <= 0:
            raise UserError(f"{section}.epochs={self.epochs}: must be positive")
        if self.warmup_ratio is not None and not 0 <= self.warmup_ratio < 1:
            raise UserError(f"{section}.warmup_ratio={self.warmup_ratio}: must be in [0, 1)")


@dataclass
class SFTConfig(ChatDataConfig):
    reduction: Literal["mean", "sum"] = "mean"
    """mean: per token over the global batch. sum: the summed token losses (OLMo 2's SFT)."""
    packing: bool = False
    """Pack several conversations into each sequence of max_seq_len (attention and RoPE
    positions restart at each conversation)."""
    padding_free: bool = True
    """Run each micro-batch's conversations as one row without padding where that pays (see
    olmolab.posttrain.sft): the same losses, less work. false: the padded rows as they are."""


@dataclass
class DPOConfig(ChatDataConfig):
    loss: Literal["dpo", "dpo_norm"] = "dpo_norm"
    """dpo: summed log-probs of the final turn; dpo_norm (Tülu 3): averaged over its tokens."""
    beta: float = 5.0
    label_smoothing: float = 0.0
    """The probability that a preference label is flipped (conservative DPO); 0 = plain DPO."""
    share_prefix: bool = True
    """Compute the tokens both conversations of a pair begin with (the prompt) once, not twice
    (olmolab.model.shared_prefix): the same scores, less work. false: each conversation whole."""
    padding_free: bool = True
    """Run each micro-batch's pairs as one row without padding where that pays (see
    olmolab.posttrain.dpo): the same scores, less work. false: the padded rows as they are."""

    def validate(self, section: str) -> None:
        super().validate(section)
        if self.beta <= 0:
            raise UserError(f"{section}.beta={self.beta}: must be positive")
        if not 0 <= self.label_smoothing < 0.5:
            raise UserError(f"{section}.label_smoothing={self.label_smoothing}: must be in [0, 0.5)")


@dataclass
class RLVRConfig(ChatDataConfig):
    """GRPO on prompts with verifiable answers (see olmolab.posttrain.rlvr). trainer.global_batch_size
    is the number of prompts per rollout; max_seq_len bounds prompt + response, and a prompt that
    leaves no room for response_length tokens is dropped (counted), never truncated. `seed` seeds the
    sampling too, with the step and the rank."""

    samples_per_prompt: int = 16
    """G: responses sampled per prompt (a group)."""
    share_prefix: bool = True
    """Score a group's responses as one stream row, the prompt computed once for all of them
    (olmolab.model.shared_prefix): the same log-probs, less work. false: each conversation whole."""
    padding_free: bool = True
    """Score each micro-batch's group rows as one row without padding where that pays (see
    olmolab.posttrain.batches.unpadded_streams): the same log-probs, less work. false: the padded
    rows as they are."""
    response_length: int = 256
    """At most this many response tokens; a response still going then is cut off."""
    temperature: float = 1.0
    top_p: float | None = None
    verification_reward: float = 10.0
    """Reward = verifier score (0-1) × this."""
    cutoff_reward: float | None = None
    """The reward of a response cut off before EOS, replacing its score's (OLMo 2's PPO: -10); None = scored as any."""
    advantage_normalization: Literal["centered", "standard"] = "centered"
    """centered: reward - group mean; standard: also ÷ the group's std."""
    beta: float = 0.01
    """Weight of KL(policy ‖ reference) in the loss (OLMo 2 1B: 0.01)."""
    clip_low: float = 0.2
    clip_high: float = 0.272
    updates_per_rollout: int = 1
    """Optimizer steps on each rollout batch (after the first, the policy ratio differs from 1)."""
    sample_interval: int = 10
    """Every this many steps, a few responses go to RUN_DIR/samples.jsonl (0 = never)."""
    samples_logged: int = 4

    def validate(self, section: str) -> None:
        super().validate(section)
        if self.samples_per_prompt < 2:
            raise UserError(f"{section}.samples_per_prompt={self.samples_per_prompt}: a group needs at least 2 "
                            "responses to have an advantage")
        if not 0 < self.response_length < self.max_seq_len:
            raise UserError(f"{section}.response_length={self.response_length}: must be in [1, max_seq_len)")
        if self.temperature <= 0:
            raise UserError(f"{section}.temperature={self.temperature}: GRPO samples; must be positive")
        if self.beta < 0 or self.clip_low < 0 or self.clip_high < 0:
            raise UserError(f"{section}: beta, clip_low and clip_high must not be negative")
        if self.updates_per_rollout < 1:
            raise UserError(f"{section}.updates_per_rollout={self.updates_per_rollout}: must be at least 1")


METHODS = {"sft": SFTConfig, "dpo": DPOConfig, "rlvr": RLVRConfig}

# Post-training's defaults where they differ from pretraining's (open-instruct's): no z-loss,
# no gradient clipping, no weight decay.
TRAINER_DEFAULTS = {"z_loss_multiplier": 0.0, "max_grad_norm": None, "reset_trainer_state": True}
OPTIM_DEFAULTS = {"weight_decay": 0.0}


@dataclass
class PostTrainConfig:
    method: str
    """sft, dpo or rlvr: names the section that `data` was read from."""
    model: ModelConfig
    data: SFTConfig | DPOConfig | RLVRConfig
    trainer: TrainerConfig
    optim: OptimConfig
    scheduler: SchedulerConfig
    eval: Any = None
    """No in-loop evaluation yet (the trainer reads this)."""

    def validate(self) -> None:
        if not self.trainer.load_path:
            raise UserError("trainer.load_path: give the checkpoint to start from (SFT: the base model; DPO: the SFT model)")
        if self.trainer.max_tokens is not None:
            raise UserError(f"trainer.max_tokens: post-training runs for {self.method}.epochs (or trainer.max_steps)")
        dataclasses.replace(self.trainer, max_steps=self.trainer.max_steps or 1).validate()
        self.optim.validate()
        self.scheduler.validate()
        self.data.validate(self.method)
        if self.data.max_seq_len > self.model.max_seq_len:
            raise UserError(f"{self.method}.max_seq_len={self.data.max_seq_len} is longer than the model's "
                            f"max_seq_len={self.model.max_seq_len}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.to_dict(),
            self.method: dataclasses.asdict(self.data),
            "trainer": dataclasses.asdict(self.trainer),
            "optim": dataclasses.asdict(self.optim),
            "scheduler": dataclasses.asdict(self.scheduler),
        }


def load_post_train_config(method: str, path: str | Path, overrides: list[str] = ()) -> PostTrainConfig:
    raw = load_yaml(path)
    for override in overrides:
        apply_override(raw, override)
    return post_train_config_from_dict(method, raw, str(path))


def post_train_config_from_dict(method: str, raw: dict[str, Any], source: str = "config") -> PostTrainConfig:
    known = {"model", method, "trainer", "optim", "scheduler"}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise UserError(f"{source}: unknown section(s) {unknown}; an `olmolab {method}` config has {sorted(known)}")
    if not isinstance(raw.get(method), dict):
        raise UserError(f"{source}: the `{method}:` section (the data and the loss) is missing")
    # Validated with the whole config below: the run's length comes from the epochs, not the section.
    trainer = TrainerConfig(**typed_fields(TrainerConfig, TRAINER_DEFAULTS | (raw.get("trainer") or {}), "trainer"))
    if trainer.load_path and not trainer.tokenizer:
        trainer.tokenizer = _tokenizer_beside(trainer.load_path)
    config = PostTrainConfig(
        method=method,
        model=ModelConfig.from_dict(raw["model"]) if raw.get("model") else _model_of(trainer.load_path, source),
        data=METHODS[method](**typed_fields(METHODS[method], raw[method], method)),
        trainer=trainer,
        optim=from_dict(OptimConfig, OPTIM_DEFAULTS | (raw.get("optim") or {}), "optim"),
        scheduler=from_dict(SchedulerConfig, raw.get("scheduler") or {}, "scheduler"),
    )
    config.validate()
    return config


def _model_of(load_path: str | None, source: str) -> ModelConfig:
    """The model config of the checkpoint to start from (olmolab or Hugging Face)."""
    if not load_path:
        raise UserError(f"{source}: trainer.load_path: give the checkpoint to start from")
    model_dir = model_files.resolve_model_dir(load_path)
    raw = json.loads((model_dir / "config.json").read_text())
    if model_files.is_hf_dir(model_dir):
        from olmolab.convert.hf import from_hf_config

        return from_hf_config(raw, str(model_dir / "config.json"))
    return ModelConfig.from_dict(raw["model"])


def _tokenizer_beside(load_path: str) -> str | None:
    """The tokenizer.json of the checkpoint to start from; None where there is none (yet: a
    recipe names a checkpoint to be made, and the trainer says so when it starts)."""
    try:
        model_dir = model_files.resolve_model_dir(load_path)
    except UserError:
        return None
    for candidate in (model_dir / "tokenizer.json", Path(load_path) / "tokenizer.json"):
        if candidate.is_file():
            return str(candidate)
    return None


def steps_for(epochs: float, n_items: int, global_batch_size: int) -> int:
    """Optimizer steps for `epochs` passes over `n_items` (at least one step)."""
    return max(1, math.floor(epochs * n_items / global_batch_size))
