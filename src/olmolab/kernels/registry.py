"""The one place that says how each of the model's ops is computed.

The model asks for an op by name (`kernel("rms_norm")(x, weight, eps)`), as transformers asks
`ALL_ATTENTION_FUNCTIONS` for its attention; it never sees how. Each op is a `Kernel`: its plain
formula (`plain`), and faster paths, each with the test of when it applies, tried in order. The
tests apply to facts about the call and the machine (device, dtype, whether a backward will
run, torch.compile, the CPU's matmul library), never to timings, so a run computes the same on
every start.

A caller that knows more than one call can show (a decode loop: the same weights, a few rows,
many steps) swaps in its own implementation for a scope with `using`, e.g. `decode_linear`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from olmolab.kernels import autograd, plain
from olmolab.kernels.causal_attention import (
    halved_causal_attention,
    halves_pay,
    kept_scores_causal_attention,
    kept_scores_pay,
    tiled_causal_attention,
    tiled_pays,
)
from olmolab.kernels.cpu_matmul import linear_by_onednn, onednn_pays
from olmolab.kernels.decode import DecodeLinear, decode_layout, one_row_linear, one_row_pays

KernelName = Literal["linear", "rms_norm", "rotary", "swiglu", "causal_attention"]


@dataclass(frozen=True)
class Kernel:
    """One op: its plain formula, and faster `paths` of (applies, implementation), tried in order;
    an implementation computes the formula's values (to rounding) wherever its test says it applies."""

    name: KernelName
    plain: Callable[..., Tensor]
    paths: tuple[tuple[Callable[..., bool], Callable[..., Tensor]], ...] = ()

    def __call__(self, *args) -> Tensor:
        for applies, implementation in self.paths:
            if applies(*args):
                return implementation(*args)
        return self.plain(*args)


KERNELS: dict[str, Kernel] = {
    k.name: k
    for k in (
        # Under torch.compile one row is multiply-and-sum (inductor fuses it into one pass over
        # the weight); eager fp32 CPU products go to oneDNN where this CPU's library is oneDNN.
        Kernel("linear", plain.linear, ((one_row_pays, one_row_linear), (onednn_pays, linear_by_onednn))),
        Kernel("rms_norm", plain.rms_norm, ((autograd.backward_will_run, autograd.rms_norm),)),
        Kernel("rotary", plain.rotary, ((autograd.backward_will_run, autograd.rotary),)),
        Kernel("swiglu", plain.swiglu, ((autograd.backward_will_run, autograd.swiglu),)),
        Kernel("causal_attention", plain.causal_attention,
               ((kept_scores_pay, kept_scores_causal_attention), (tiled_pays, tiled_causal_attention),
                (halves_pay, halved_causal_attention))),
    )
}

_scoped: dict[str, Callable[..., Tensor]] = {}


def kernel(name: KernelName) -> Callable[..., Tensor]:
    """How to compute `name` now: the implementation a `using` scope set, else the registry's.

    Under torch.compile always the registry's: a compiled graph must not depend on (and be
    guarded on) a scope's objects, which differ from one generate call to the next."""
    if not torch.compiler.is_compiling() and (chosen := _scoped.get(name)) is not None:
        return chosen
    return KERNELS[name]


@contextmanager
def using(name: KernelName, implementation: Callable[..., Tensor] | None) -> Iterator[None]:
    """Within the block, `kernel(name)` is `implementation` (None: the registry's, unchanged)."""
    if implementation is None:
        yield
        return
    previous = _scoped.get(name)
    _scoped[name] = implementation
    try:
        yield
    finally:
        if previous is None:
            del _scoped[name]
        else:
            _scoped[name] = previous


def decode_linear(weights: Iterable[Tensor], batch_size: int) -> DecodeLinear | None:
    """The linear kernel for decoding `batch_size` rows with these weights on this machine, or
    None where the registry's is already the best (no layout pays, or no weight is on the CPU)."""
    weights = list(weights)
    dtype = weights[0].dtype if weights else torch.float32
    layout = decode_layout(batch_size, dtype)
    if layout is None:
        return None
    # The layout is the best for `dtype` (and oneDNN may pack only fp32 on this CPU): weights of
    # another dtype go to the fallback.
    decode = DecodeLinear([w for w in weights if w.dtype == dtype], layout, fallback=KERNELS["linear"])
    return decode if decode.weights else None
