"""The model's hot ops, made faster than their plain PyTorch forms: RMSNorm, RoPE and SwiGLU
with hand-written backward passes, and linear layers on the faster CPU matmul.

RMSNorm, RoPE and SwiGLU. On CPU a training step is bound by matmuls plus the elementwise
passes over activations between them, and autograd's composite versions of these ops make
several passes each way (RMSNorm: pow, mean, rsqrt, two multiplies, and their gradients; RoPE:
a concatenation to rotate half the features, two multiplies and their gradients; SwiGLU: silu,
a multiply, their gradients, and a concatenation of the two halves' gradients). Written out,
each is two or three passes forward and about three backward: on the bench shapes each runs
1.4-3x as fast as its composite, forward plus backward (`python bench/ops.py`). Values are the
same functions, to fp32 rounding; `tests/model/test_ops.py` checks them and their gradients
against the composites. RMSNorm and RoPE compute in fp32 whatever the input dtype (as OLMo and
transformers do) and return the input's dtype. Where no backward will run, and under
`torch.compile`, all three are the plain formulas instead (see `_hand_written_backward_pays`).

Linear layers. `F.linear` on CPU calls MKL, which on AMD CPUs is slower than oneDNN at the
model's shapes: on an AMD EPYC a (4096 x 384) @ (384 x 1152) product ran at 167-196 GFLOP/s
against 218, and the bench model's four projections, forward plus backward, 1.06-1.09x as fast
on oneDNN. On an Intel Xeon (AVX-512) it is the other way round: MKL 1.08-1.10x as fast as
oneDNN. So `linear` computes fp32 CPU products and input gradients with the library that suits
the CPU (`cpu_matmul_library`), and keeps MKL for weight gradients, where oneDNN would need
transposed copies of the activations. `python bench/linear.py` times both on the machine at hand.
"""

from __future__ import annotations

import functools
import os

import torch
import torch.nn.functional as F
from torch import Tensor


class _RMSNorm(torch.autograd.Function):
    """y = x / rms(x) * w, over the last dimension."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, eps: float) -> Tensor:
        d = x.shape[-1]
        xf = x.reshape(-1, d).float()
        # One read of x for the norm, rather than squaring into a temporary and averaging it.
        rstd = torch.rsqrt(torch.linalg.vector_norm(xf, dim=-1, keepdim=True).square_() / d + eps)
        x_hat = xf * rstd  # saved in x's place: the backward needs x_hat, not x
        ctx.save_for_backward(x_hat, weight, rstd)
        return (x_hat * weight.float()).to(x.dtype).view(x.shape)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, Tensor, None]:
        x_hat, weight, rstd = ctx.saved_tensors
        d = x_hat.shape[-1]
        dy = grad.reshape(-1, d).float()
        w = weight.float()
        dy_x_hat = dy * x_hat
        grad_weight = dy_x_hat.sum(0)
        # dx = rstd * (g - x_hat * mean(g * x_hat)) with g = dy * w, and mean(g * x_hat) =
        # (dy * x_hat) @ w / d: a matrix-vector product reads the temporary once and writes nothing.
        mean_g_x_hat = (dy_x_hat @ w).div_(-d).unsqueeze(-1)
        dx = (x_hat * mean_g_x_hat).addcmul_(dy, w).mul_(rstd)
        return dx.to(grad.dtype).view(grad.shape), grad_weight.to(weight.dtype), None


def _hand_written_backward_pays(*inputs: Tensor) -> bool:
    """Only in eager autograd. Without a backward (generation, evaluation) the plain formula is one
    C++ call, cheaper on a decode step's tiny tensors; under torch.compile inductor fuses the
    plain formula into one kernel each way, and `out=` views would split its graph."""
    return torch.is_grad_enabled() and any(t.requires_grad for t in inputs) and not torch.compiler.is_compiling()


def rms_norm(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    """`F.rms_norm(x, (d,), weight, eps)` computed in fp32, with a leaner backward."""
    if _hand_written_backward_pays(x, weight):
        return _RMSNorm.apply(x, weight, eps)
    return F.rms_norm(x.float(), (x.shape[-1],), weight.float(), eps).to(x.dtype)


def _rotate(x: Tensor, cos: Tensor, sin: Tensor, sign: float) -> Tensor:
    """Rotates each feature pair (x_i, x_{i+D/2}) by +angle (sign 1) or -angle (sign -1):
    [x1 cos - x2 sin, x2 cos + x1 sin], written straight into the two halves of the output."""
    x1, x2 = x.chunk(2, dim=-1)
    out = torch.empty(x.shape, dtype=torch.float32, device=x.device)
    out1, out2 = out.chunk(2, dim=-1)
    torch.mul(x1, cos, out=out1).addcmul_(x2, sin, value=-sign)
    torch.mul(x2, cos, out=out2).addcmul_(x1, sin, value=sign)
    return out


class _Rotary(torch.autograd.Function):
    """A rotation's gradient is the inverse rotation of the output's gradient."""

    @staticmethod
    def forward(ctx, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        ctx.save_for_backward(cos, sin)
        return _rotate(x.float(), cos, sin, 1.0).to(x.dtype)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None]:
        cos, sin = ctx.saved_tensors
        return _rotate(grad.float(), cos, sin, -1.0).to(grad.dtype), None, None


def rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """RoPE in the rotate-half layout: x * [cos, cos] + rotate_half(x) * [sin, sin].

    x: (..., D); cos, sin: the angles' (..., D/2) tables, broadcastable against x's halves.
    """
    if _hand_written_backward_pays(x):
        return _Rotary.apply(x, cos, sin)
    x1, x2 = x.float().chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).to(x.dtype)


class _SwiGLU(torch.autograd.Function):
    """silu(gate) * up from the fused projection's output [up, gate]. Its backward writes both
    halves' gradients straight into one buffer (autograd's would concatenate them afterwards) in
    three passes: silu(gate), kept from the forward, times the gradient; the gradient times up;
    and silu's own derivative applied to that, in place."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        up, gate = x.chunk(2, dim=-1)
        silu_gate = F.silu(gate)
        ctx.save_for_backward(x, silu_gate)
        return silu_gate * up

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        x, silu_gate = ctx.saved_tensors
        up, gate = x.chunk(2, dim=-1)
        grad_x = torch.empty_like(x)
        grad_up, grad_gate = grad_x.chunk(2, dim=-1)
        torch.mul(grad, silu_gate, out=grad_up)
        torch.mul(grad, up, out=grad_gate)
        torch.ops.aten.silu_backward.grad_input(grad_gate, gate, grad_input=grad_gate)
        return grad_x


def swiglu(x: Tensor) -> Tensor:
    """silu(gate) * up, where x's last dimension holds [up, gate] (OLMo's fused ff_proj layout)."""
    if _hand_written_backward_pays(x):
        return _SwiGLU.apply(x)
    up, gate = x.chunk(2, dim=-1)
    return F.silu(gate) * up


# ---------------------------------------------------------------------- linear layers on CPU


@functools.cache
def onednn_linear_works() -> bool:
    """Whether this torch build has oneDNN's linear, and it computes what F.linear does (with the
    weight as it is, transposed, and packed in oneDNN's blocked layout, as decoding uses it)."""
    try:
        g = torch.Generator().manual_seed(0)  # not the global RNG: sampling must not depend on this check
        weight, x = (torch.randn(*shape, generator=g, device="cpu") for shape in ((24, 16), (3, 16)))
        packed = torch.ops.mkldnn._reorder_linear_weight(weight, 8)
        expected = F.linear(x, weight)
        return all(
            torch.allclose(got, want, rtol=1e-4, atol=1e-5)
            for got, want in (
                (onednn_linear(x, weight), expected),
                (onednn_linear(x, packed), expected),
                (onednn_linear(x, weight.t().contiguous().t()), expected),
                (onednn_linear(expected, weight.t()), expected @ weight),
            )
        )
    except (AttributeError, RuntimeError, NotImplementedError):
        return False


def onednn_linear(x: Tensor, weight: Tensor) -> Tensor:
    """F.linear(x, weight) by oneDNN; `weight` (out, in), any strides, or packed for oneDNN."""
    return torch.ops.mkldnn._linear_pointwise(x, weight, None, "none", [], "")


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


CPU_MATMUL_ENV = "OLMOLAB_CPU_MATMUL"


def cpu_vendor() -> str | None:
    """The CPU's vendor id as Linux reports it ("GenuineIntel", "AuthenticAMD"), else None."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("vendor_id"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


@functools.cache
def cpu_matmul_library() -> str:
    """Which library multiplies the model's fp32 CPU projections: "onednn" or "mkl" (`F.linear`).

    oneDNN on AMD CPUs, MKL everywhere else (see the module docstring for the measurements).
    Chosen by the CPU, not timed at start-up: a timing could pick differently on the next start,
    and a resumed run must compute what the interrupted one would have, bit for bit.
    `OLMOLAB_CPU_MATMUL=onednn` or `=mkl` overrides the choice.
    """
    wanted = os.environ.get(CPU_MATMUL_ENV, "").strip().lower()
    if wanted not in ("", "onednn", "mkl"):
        raise ValueError(f"{CPU_MATMUL_ENV}={wanted!r}: expected 'onednn' or 'mkl' (or unset, to choose by CPU)")
    if wanted == "onednn" and not onednn_linear_works():
        raise ValueError(f"{CPU_MATMUL_ENV}=onednn, but this torch build has no working oneDNN linear")
    if not wanted:
        wanted = "onednn" if cpu_vendor() == "AuthenticAMD" and onednn_linear_works() else "mkl"
    return wanted


def linear(x: Tensor, weight: Tensor) -> Tensor:
    """`F.linear(x, weight)` (no bias); fp32 on CPU by oneDNN where `cpu_matmul_library` says so."""
    if (
        x.device.type == "cpu"
        and x.dtype == weight.dtype == torch.float32
        and x.dim() >= 2
        and not torch.is_autocast_enabled("cpu")
        and not torch.compiler.is_compiling()  # inductor picks its own matmuls
        and cpu_matmul_library() == "onednn"
    ):
        if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad):
            return _OneDNNLinear.apply(x, weight)
        return onednn_linear(x, weight)
    return F.linear(x, weight)
