"""Linear layers on the faster CPU matmul library.

`F.linear` on CPU calls MKL, which on AMD CPUs is slower than oneDNN at the model's shapes; on
Intel CPUs (AVX-512) it is the other way round (`bench/linear.py` times both on the machine at
hand; `bench/README.md` has the figures). So fp32 CPU products and input gradients go to the
library that suits the CPU (`cpu_matmul_library`), and weight gradients stay on MKL, where
oneDNN would need transposed copies of the activations.
"""

from __future__ import annotations

import functools
import os

import torch
import torch.nn.functional as F
from torch import Tensor

CPU_MATMUL_ENV = "OLMOLAB_CPU_MATMUL"
CPU_BF16_ENV = "OLMOLAB_CPU_BF16"


@functools.cache
def onednn_linear_works(dtype: torch.dtype = torch.float32) -> bool:
    """Whether this torch build has oneDNN's linear for `dtype` (fp32 or bf16) on this CPU, and it
    computes what F.linear does (with the weight as it is, transposed, and packed in oneDNN's
    blocked layout, as decoding uses it).

    Asked per dtype: oneDNN packs bf16 weights only on a CPU with AVX-512 (BW, VL, DQ) or
    AVX-NE-CONVERT, so an AVX2 CPU (an AMD EPYC of the Zen 2 or 3 generation) has the fp32 path
    and not the bf16 one. One question for both turned oneDNN off there altogether."""
    try:
        g = torch.Generator().manual_seed(0)  # not the global RNG: sampling must not depend on this check
        weight, x = (torch.randn(*shape, generator=g, device="cpu").to(dtype) for shape in ((24, 16), (3, 16)))
        expected = F.linear(x, weight)
        tol = {"rtol": 1e-4, "atol": 1e-5} if dtype == torch.float32 else {"rtol": 2e-2, "atol": 2e-2}
        return all(
            torch.allclose(got.float(), want.float(), **tol)
            for got, want in (
                (onednn_linear(x, weight), expected),
                (onednn_linear(x, pack_for_onednn(weight)), expected),
                (onednn_linear(x, weight.t().contiguous().t()), expected),
                (onednn_linear(expected, weight.t()), expected @ weight),
            )
        )
    except (AttributeError, RuntimeError, NotImplementedError):
        return False


def onednn_linear(x: Tensor, weight: Tensor) -> Tensor:
    """F.linear(x, weight) by oneDNN; `weight` (out, in), any strides, or packed for oneDNN."""
    return torch.ops.mkldnn._linear_pointwise(x, weight, None, "none", [], "")


def pack_for_onednn(weight: Tensor) -> Tensor:
    """`weight` in oneDNN's blocked layout, for `onednn_linear` to skip its own reordering."""
    return torch.ops.mkldnn._reorder_linear_weight(weight, 8)


class _OneDNNLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor) -> Tensor:
        ctx.save_for_backward(x, weight)
        return onednn_linear(x, weight)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, Tensor | None]:
        x, weight = ctx.saved_tensors
        grad_x = onednn_linear(grad, weight.t()) if ctx.needs_input_grad[0] else None
        grad_weight = None
        if ctx.needs_input_grad[1]:  # (out, tokens) @ (tokens, in), by MKL
            grad_weight = grad.reshape(-1, grad.shape[-1]).t() @ x.reshape(-1, x.shape[-1])
        return grad_x, grad_weight


def cpuinfo(field: str) -> str | None:
    """The first CPU's `field` in Linux's /proc/cpuinfo ("vendor_id", "model name", "flags"), or
    None where there is no such file (macOS, Windows) or field."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                name, _, value = line.partition(":")
                if name.strip() == field:
                    return value.strip()
    except OSError:
        pass
    return None


def cpu_vendor() -> str | None:
    """The CPU's vendor id as Linux reports it ("GenuineIntel", "AuthenticAMD"), else None."""
    return cpuinfo("vendor_id")


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags as Linux reports them (`lscpu`'s Flags), empty where unknown."""
    return frozenset((cpuinfo("flags") or "").split())


def cpu_bf16_matmul_unit() -> str | None:
    """The CPU's bf16 dot-product unit, if it has one: "AMX" (Intel's tile unit: a bf16 matmul
    several times faster than fp32), "AVX512-BF16" (bf16 dot products in vector registers, at
    about twice fp32's rate), or None (bf16 products are emulated, slower than fp32).
    `OLMOLAB_CPU_BF16=none` makes it None whatever the CPU (the tests pin it so, so that their
    `precision: auto` runs compute alike on every machine)."""
    if os.environ.get(CPU_BF16_ENV, "").strip().lower() == "none":
        return None
    flags = cpu_flags()
    if "amx_bf16" in flags and "amx_tile" in flags:
        return "AMX"
    if "avx512_bf16" in flags:
        return "AVX512-BF16"
    return None


@functools.cache
def cpu_matmul_library() -> str:
    """Which library multiplies the model's fp32 CPU projections: "onednn" or "mkl" (`F.linear`).

    oneDNN on AMD CPUs, MKL everywhere else. Chosen by the CPU, not timed at start-up: a timing
    could pick differently on the next start, and a resumed run must compute what the
    interrupted one would have, bit for bit. `OLMOLAB_CPU_MATMUL=onednn` or `=mkl` overrides it.
    """
    wanted = os.environ.get(CPU_MATMUL_ENV, "").strip().lower()
    if wanted not in ("", "onednn", "mkl"):
        raise ValueError(f"{CPU_MATMUL_ENV}={wanted!r}: expected 'onednn' or 'mkl' (or unset, to choose by CPU)")
    if wanted == "onednn" and not onednn_linear_works():
        raise ValueError(f"{CPU_MATMUL_ENV}=onednn, but this torch build has no working oneDNN linear")
    if not wanted:
        wanted = "onednn" if cpu_vendor() == "AuthenticAMD" and onednn_linear_works() else "mkl"
    return wanted


def onednn_pays(x: Tensor, weight: Tensor) -> bool:
    """Eager fp32 CPU products, where this CPU's matmul library is oneDNN."""
    return (
        x.device.type == "cpu"
        and x.dtype == weight.dtype == torch.float32
        and x.dim() >= 2
        and not torch.is_autocast_enabled("cpu")
        and not torch.compiler.is_compiling()  # inductor picks its own matmuls
        and cpu_matmul_library() == "onednn"
    )


def linear_by_onednn(x: Tensor, weight: Tensor) -> Tensor:
    """`F.linear(x, weight)` by oneDNN, with MKL for the weight's gradient."""
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad):
        return _OneDNNLinear.apply(x, weight)
    return onednn_linear(x, weight)


# oneDNN builds (JIT-compiles) a kernel for each new shape of a product it computes: on AMX, the
# first (rows x 16384) @ (16384 x 384) of a shape took ~25 ms more than the 2 ms it runs in, an
# MLP's (rows x 384) @ (384 x 2048) 3-5 ms more than its 0.3. Post-training's token counts
# change with every batch, and a bf16 SFT step over conversations of varied lengths spent a
# fifth of its time building kernels (bench/README.md). Rounded up, the counts come from a few
# dozen shapes, whose kernels are built once: a product's rows (a stream's tokens, the labelled
# ones) to a multiple of 64; a row's length (padded rows, attention's rows) to a multiple of 16,
# as a batch of B rows pays its padding B times, and attention its rows' length squared.
ONEDNN_TOKEN_MULTIPLE, ONEDNN_LENGTH_MULTIPLE = 64, 16


def _onednn_products(dtype: torch.dtype, device: torch.device) -> bool:
    """Whether oneDNN computes the products (bf16 on a CPU). MKL's fp32 products cost the same at
    any shape; a GPU's libraries choose among prebuilt kernels."""
    return device.type == "cpu" and dtype == torch.bfloat16


def token_multiple(dtype: torch.dtype, device: torch.device) -> int:
    """What a product's row count (tokens) is best rounded up to: 64 where oneDNN computes it, else 1."""
    return ONEDNN_TOKEN_MULTIPLE if _onednn_products(dtype, device) else 1


def length_multiple(dtype: torch.dtype, device: torch.device) -> int:
    """What a batch row's length is best rounded up to: 16 where oneDNN computes the products, else 1."""
    return ONEDNN_LENGTH_MULTIPLE if _onednn_products(dtype, device) else 1


def round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple
