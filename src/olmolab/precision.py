"""Which number format a run computes in: fp32, or bf16 where the machine multiplies it fast.

    setting   training                                          evaluation, generation
    fp32      fp32 throughout                                   fp32 weights
    bf16      bf16 matmuls and activations, fp32 master         bf16 weights (no optimizer,
              weights, optimizer state and gradient reduction   so nothing to keep in fp32)
    auto      bf16 where the device has fast bf16 products, else fp32

Fast bf16 products: a CUDA GPU that supports bf16, or a CPU with a bf16 unit, AMX or
AVX512-BF16 (see `kernels.cpu_matmul.cpu_bf16_matmul_unit`). AVX512-BF16 only doubles fp32's
dot-product rate, but that was enough for a training step 1.58x as fast at a validation loss
within 1% of fp32's (bench/README.md). A CPU with neither emulates bf16, slower than fp32:
there `auto` stays in fp32 and says why. The choice follows from the machine's features,
never from a timing, so that a resumed run computes what the interrupted one did.

Softmax, norms and the loss accumulate in fp32 whatever the setting (`olmolab.kernels`,
`model/loss.py`); how training keeps fp32 master weights is `train/distributed.py`'s concern.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from olmolab.errors import UserError
from olmolab.kernels.cpu_matmul import cpu_bf16_matmul_unit

PRECISIONS = ("auto", "fp32", "bf16")


@dataclass(frozen=True)
class Precision:
    name: Literal["fp32", "bf16"]
    reason: str
    """Why this one, in a few words a progress line or report can show."""

    @property
    def dtype(self) -> torch.dtype:
        return torch.bfloat16 if self.name == "bf16" else torch.float32

    def __str__(self) -> str:
        return f"{self.name} ({self.reason})"


def resolve_precision(setting: str, device: torch.device | str, *, key: str = "precision") -> Precision:
    """`setting` (auto, fp32 or bf16) made concrete for `device`; `key` names the setting in errors."""
    if setting not in PRECISIONS:
        raise UserError(f"{key}={setting!r}: expected one of {', '.join(PRECISIONS)}")
    if setting == "fp32":
        return Precision("fp32", "asked for")
    fast, why = bf16_is_fast(torch.device(device))
    if setting == "bf16":
        return Precision("bf16", "asked for" if fast else f"asked for, though {why}")
    return Precision("bf16", f"auto: {why}") if fast else Precision("fp32", f"auto: {why}")


def bf16_is_fast(device: torch.device) -> tuple[bool, str]:
    """Whether `device` multiplies bf16 faster than fp32, and what says so."""
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return True, f"{torch.cuda.get_device_name(device)} supports bf16"
        return False, f"{torch.cuda.get_device_name(device)} has no bf16 support"
    unit = cpu_bf16_matmul_unit()
    if unit is not None:
        return True, f"this CPU has {unit}"
    return False, "this CPU has no bf16 unit (neither AMX nor AVX512-BF16): bf16 would be emulated, slower than fp32"
