"""RMSNorm, RoPE and SwiGLU with hand-written backward passes.

On CPU a training step is bound by matmuls plus the elementwise passes over activations
between them, and autograd's composite versions of these ops make several passes each way
(RMSNorm: pow, mean, rsqrt, two multiplies, and their gradients; RoPE: a concatenation to
rotate half the features, two multiplies and their gradients; SwiGLU: silu, a multiply, their
gradients, and a concatenation of the two halves' gradients). Written out, each is two or three
passes forward and about three backward (`bench/ops.py` times them; `bench/README.md` has the
figures). Values are the formulas of `plain`, to fp32 rounding; `tests/kernels/test_ops.py`
checks them and their gradients. RMSNorm and RoPE compute in fp32 whatever the input dtype and
return the input's dtype.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def autograd_records(*inputs: Tensor) -> bool:
    """Whether autograd records an op on these inputs, so that its backward will run (training)."""
    return torch.is_grad_enabled() and any(isinstance(t, Tensor) and t.requires_grad for t in inputs)


def backward_will_run(*inputs: Tensor, **_) -> bool:
    """Whether a hand-written backward pays: only in eager autograd. Without a backward
    (generation, evaluation) the plain formula is one C++ call, cheaper on a decode step's tiny
    tensors; under torch.compile inductor fuses the plain formula into one kernel each way, and
    `out=` views would split its graph."""
    return autograd_records(*inputs) and not torch.compiler.is_compiling()


class _RMSNorm(torch.autograd.Function):
    """y = x / rms(x) * w over the last dimension, or residual + y.

    The residual add rides on the norm's last pass (one multiply-add in fp32 rather than a
    multiply and then an add): a pass over the activations fewer, for each of OLMo 2's two
    post-norms a block."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, eps: float, residual: Tensor | None) -> Tensor:
        d = x.shape[-1]
        xf = x.float()
        # One read of x for the norm, rather than squaring into a temporary and averaging it.
        rstd = torch.rsqrt(torch.linalg.vector_norm(xf, dim=-1, keepdim=True).square_() / d + eps)
        x_hat = xf * rstd  # saved in x's place: the backward needs x_hat, not x
        ctx.save_for_backward(x_hat, weight, rstd)
        # In x's shape, not a view of a flattened one: FSDP2 warns of modules returning views.
        if residual is None:
            return (x_hat * weight.float()).to(x.dtype)
        if residual.dtype == x.dtype == torch.float32:
            return torch.addcmul(residual, x_hat, weight)
        return residual + (x_hat * weight.float()).to(x.dtype)  # rounded as the two steps round

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, Tensor, None, Tensor | None]:
        x_hat, weight, rstd = ctx.saved_tensors
        d = x_hat.shape[-1]
        x_hat, rstd = x_hat.reshape(-1, d), rstd.reshape(-1, 1)
        dy = grad.reshape(-1, d).float()
        w = weight.float()
        dy_x_hat = dy * x_hat
        grad_weight = dy_x_hat.sum(0)
        # dx = rstd * (g - x_hat * mean(g * x_hat)) with g = dy * w, and mean(g * x_hat) =
        # (dy * x_hat) @ w / d: a matrix-vector product reads the temporary once and writes nothing.
        mean_g_x_hat = (dy_x_hat @ w).div_(-d).unsqueeze(-1)
        dx = (x_hat * mean_g_x_hat).addcmul_(dy, w).mul_(rstd)
        grad_residual = grad if ctx.needs_input_grad[3] else None
        return dx.to(grad.dtype).view(grad.shape), grad_weight.to(weight.dtype), None, grad_residual


def rms_norm(x: Tensor, weight: Tensor, eps: float, residual: Tensor | None = None) -> Tensor:
    """`plain.rms_norm` with a leaner backward."""
    return _RMSNorm.apply(x, weight, eps, residual)


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
    """`plain.rotary` with a backward that rotates the gradient back."""
    return _Rotary.apply(x, cos, sin)


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
    """`plain.swiglu` with a backward that writes one gradient buffer."""
    return _SwiGLU.apply(x)
