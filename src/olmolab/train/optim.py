"""AdamW with OLMo's parameter groups, and the learning-rate schedules as pure functions.

Schedules (OLMo `olmo/optim.py`, OLMo-core `optim/scheduler.py`), with t in steps or tokens:

    warmup      lr = wmin + (peak - wmin) * t / W                      for t < W
    constant    lr = peak
    linear      lr = peak - (peak - end) * (t - W) / (T - W)           end = alpha_f * peak
    cosine      lr = end + (peak - end) * (1 + cos(pi (t - W) / (T - W))) / 2
    wsd         constant, then linear to end over the last `decay_fraction` of T

After T the LR stays at `end`. Annealing (OLMo 2's stage 2) is `linear` with no warmup and
alpha_f = 0, started from a checkpoint with `--reset-trainer-state`: the LR falls from `lr`
to zero over T tokens. The LR is derived from the config on every step, never stored, so a
schedule changed in the config takes effect on resume (as in OLMo).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from olmolab.errors import UserError


@dataclass
class OptimConfig:
    lr: float = 4e-4
    """Peak learning rate."""
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    """OLMo 2 uses 1e-8; OLMo 1 used 1e-5."""
    weight_decay: float = 0.1
    decay_norm_and_bias: bool = True
    """Decay norm weights too (OLMo 2 does; OLMo 1 did not)."""
    decay_embeddings: bool = False
    """Decay the embedding matrix (neither OLMo 1 nor OLMo 2 does)."""
    fused: bool | None = None
    """torch's fused AdamW kernel; None = where the device supports it."""

    def validate(self) -> None:
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise UserError(f"optim.lr={self.lr}: the learning rate must be a positive, finite number")
        if not all(0 <= b < 1 for b in self.betas):
            raise UserError(f"optim.betas={list(self.betas)}: each beta must be in [0, 1)")
        if not (math.isfinite(self.eps) and math.isfinite(self.weight_decay)) or self.eps <= 0 or self.weight_decay < 0:
            raise UserError("optim.eps must be positive and optim.weight_decay non-negative")


def param_groups(model: nn.Module, config: OptimConfig) -> list[dict]:
    """Two groups: decayed matrices, and what OLMo leaves undecayed (embeddings; norms if set)."""
    decay, no_decay, seen = [], [], set()
    for name, param in model.named_parameters():
        if not param.requires_grad or id(param) in seen:
            continue
        seen.add(id(param))
        is_embedding = name.endswith("embeddings.weight")
        is_norm = param.ndim == 1
        skip = (is_embedding and not config.decay_embeddings) or (is_norm and not config.decay_norm_and_bias)
        (no_decay if skip else decay).append(param)
    groups = [{"params": decay, "weight_decay": config.weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def gradient_norm(parameters: list[nn.Parameter]) -> torch.Tensor:
    """The L2 norm of all the parameters' gradients together (over every rank's shards, under
    FSDP2), as `clip_grad_norm_` computes it."""
    norm = torch.nn.utils.get_total_norm([p.grad for p in parameters if p.grad is not None])
    return norm.full_tensor() if hasattr(norm, "full_tensor") else norm


def clipped_step(optimizer: torch.optim.Optimizer, parameters: list[nn.Parameter], max_norm: float,
                 norm: torch.Tensor) -> None:
    """optimizer.step() on the gradients scaled down to a norm of at most `max_norm`, as after
    `torch.nn.utils.clip_grad_norm_` (the same factor: max_norm / (norm + 1e-6) where below 1).

    A fused AdamW over plain tensors takes the factor into its kernel, which divides each
    gradient by the optimizer's `grad_scale` as it reads it (the hook PyTorch's GradScaler uses
    to unscale): that saves a pass that reads and writes every gradient. Elsewhere (FSDP2's
    sharded parameters, an unfused optimizer) the gradients are scaled first."""
    scale = (float(norm) + 1e-6) / max_norm
    if scale <= 1:  # nothing to clip
        optimizer.step()
    elif _fuses_grad_scale(optimizer, parameters):
        optimizer.grad_scale = torch.tensor(scale, dtype=torch.float32, device=norm.device)
        try:
            optimizer.step()
        finally:
            del optimizer.grad_scale
    else:
        torch._foreach_mul_([p.grad for p in parameters if p.grad is not None], 1 / scale)
        optimizer.step()


def _fuses_grad_scale(optimizer: torch.optim.Optimizer, parameters: list[nn.Parameter]) -> bool:
    """Whether `optimizer.step()` applies a `grad_scale`: a fused Adam(W) over plain tensors."""
    fused = all(group.get("fused") for group in optimizer.param_groups)
    plain = all(type(p.detach()) is torch.Tensor for p in parameters)  # not FSDP2's DTensors
    return fused and plain and isinstance(optimizer, torch.optim.Adam | torch.optim.AdamW)


def build_optimizer(model: nn.Module, config: OptimConfig) -> torch.optim.AdamW:
    device = next(model.parameters()).device
    fused = config.fused if config.fused is not None else device.type in ("cuda", "cpu")
    return torch.optim.AdamW(
        param_groups(model, config), lr=config.lr, betas=tuple(config.betas), eps=config.eps, fused=fused
    )


@dataclass
class SchedulerConfig:
    name: Literal["constant", "linear", "cosine", "wsd"] = "cosine"
    units: Literal["steps", "tokens"] = "steps"
    """What t_warmup and t_max count."""
    t_warmup: float = 0
    t_max: float | None = None
    """End of the decay; None = the run's length (trainer.max_steps or max_tokens)."""
    alpha_f: float = 0.1
    """Final LR as a fraction of the peak (0 anneals to zero)."""
    warmup_min_lr: float = 0.0
    """LR at t = 0 (OLMo-core: 0; OLMo 1 used 10% of the peak)."""
    decay_fraction: float = 0.1
    """wsd: the share of t_max spent decaying."""

    def validate(self) -> None:
        if self.t_warmup < 0 or (self.t_max is not None and self.t_max <= self.t_warmup):
            raise UserError(f"scheduler: need 0 <= t_warmup < t_max (got {self.t_warmup}, {self.t_max})")
        if not 0 <= self.alpha_f <= 1:
            raise UserError(f"scheduler.alpha_f={self.alpha_f}: must be in [0, 1]")
        if not 0 < self.decay_fraction <= 1:
            raise UserError(f"scheduler.decay_fraction={self.decay_fraction}: must be in (0, 1]")


def lr_at(t: float, peak: float, config: SchedulerConfig, t_max: float) -> float:
    """The learning rate at time t (steps or tokens, per `config.units`)."""
    warmup, end = config.t_warmup, config.alpha_f * peak
    if t < warmup:
        return config.warmup_min_lr + (peak - config.warmup_min_lr) * t / warmup
    if config.name == "constant":
        return peak
    if t >= t_max:
        return end
    if config.name == "wsd":
        decay_start = t_max - config.decay_fraction * t_max
        return peak if t < decay_start else end + (peak - end) * (t_max - t) / (t_max - decay_start)
    progress = (t - warmup) / (t_max - warmup)
    if config.name == "linear":
        return peak - (peak - end) * progress
    return end + (peak - end) * (1 + math.cos(math.pi * progress)) / 2
