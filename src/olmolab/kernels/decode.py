"""Matmul kernels for decoding, where each step multiplies one row per sequence by every weight
matrix: most of a decode step, and MKL's `F.linear` is slow at it on this project's CPUs.

- With 2+ threads, oneDNN with each weight packed into its blocked layout (oneDNN splits a
  matrix-vector product across threads, MKL does not).
- With 1 thread and one fp32 row, a plain matmul by the transposed (in, out) weight (in bf16 the
  packed oneDNN weight is faster at one thread too: the transposed bf16 matmul is not blocked
  for the CPU's bf16 unit).
- In a compiled decode step of one row, multiply-and-sum, which inductor turns into one pass over
  the weight at close to memory bandwidth (`one_row_linear`).

Values are `F.linear`'s; only the order of the sums differs, at the level of fp32 rounding.
`bench/decode.py` times whole decode steps; `bench/README.md` has the figures.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Literal

import torch
from torch import Tensor

from olmolab.kernels.cpu_matmul import onednn_linear, onednn_linear_works, pack_for_onednn

WeightLayout = Literal["transposed", "onednn"]
LinearKernel = Callable[[Tensor, Tensor], Tensor]
"""linear(x, weight) -> x @ weight.T"""


def one_row_pays(x: Tensor, weight: Tensor) -> bool:
    """A single fp32 CPU row inside torch.compile (a compiled decode step of one sequence)."""
    return (
        torch.compiler.is_compiling()
        and x.device.type == "cpu"
        and x.dtype == weight.dtype == torch.float32
        and x.shape[:-1].numel() == 1
    )


def one_row_linear(x: Tensor, weight: Tensor) -> Tensor:
    """F.linear for a single row, as multiply-and-sum: inside `torch.compile` this becomes one
    vectorised, multi-threaded pass over the weight, which is what bounds a batch-1 decode step.
    Never run it eagerly: it would materialise the (out, in) product."""
    return (x.unsqueeze(-2) * weight).sum(-1)


def decode_layout(batch_size: int, dtype: torch.dtype = torch.float32) -> WeightLayout | None:
    """The weight layout that multiplies `batch_size` rows of `dtype` fastest on this CPU, or None:
    `F.linear`."""
    if batch_size == 1 and torch.get_num_threads() == 1 and dtype == torch.float32:
        return "transposed"
    if onednn_linear_works(dtype):
        return "onednn"
    return "transposed" if batch_size == 1 else None


def _weight_in_layout(weight: Tensor, layout: WeightLayout) -> Tensor:
    with torch.inference_mode(False), torch.no_grad():  # a copy that outlives an inference-mode call
        w = weight.detach()
        return w.t().contiguous() if layout == "transposed" else pack_for_onednn(w)


def _fits(weight: Tensor) -> bool:
    """A plain fp32 or bf16 CPU tensor (not a DTensor or another subclass, whose layout is not ours
    to copy). oneDNN packs bf16 weights as it does fp32 ones, and reads half the bytes a step."""
    return (
        type(weight.data) is torch.Tensor
        and weight.device.type == "cpu"
        and weight.dtype in (torch.float32, torch.bfloat16)
    )


class DecodeLinear:
    """`F.linear(x, weight)` for a decode loop: each of the given weights is multiplied from its
    copy in `layout`; any other weight goes to `fallback`.

    Made for one generate call, copies included (it holds the weights, so the ids it looks them up
    by stay theirs). The copies are not kept across calls: nothing tells reliably that a weight
    changed in between (torch's fused AdamW step leaves the version counters alone), and one copy
    per call costs about one decode step."""

    def __init__(self, weights: Iterable[Tensor], layout: WeightLayout, fallback: LinearKernel):
        self.weights = [w for w in weights if _fits(w)]
        self._copies = {id(w): _weight_in_layout(w, layout) for w in self.weights}
        self._multiply = torch.matmul if layout == "transposed" else onednn_linear
        self._fallback = fallback

    def __call__(self, x: Tensor, weight: Tensor) -> Tensor:
        copy = self._copies.get(id(weight))
        if copy is None:
            return self._fallback(x, weight)
        return self._multiply(x, copy)
