"""Causal self-attention that skips the masked half of the work on CPU.

On CPU, `F.scaled_dot_product_attention(..., is_causal=True)` runs PyTorch's flash kernel, which
skips causal work only in whole blocks of 512 keys. Up to 1024 tokens it therefore computes
most of the (T x T) score matrix and then masks half of it away: at 512 tokens causal and full
attention take the same time.

Here the sequence is cut in two halves. The first half attends to itself, causally; the second
attends to itself causally and to the whole first half without a mask. The two diagonal squares
are batched into one kernel call, the rectangle below them is a second, and the rectangle's and
the square's softmaxes are merged through their log-sum-exps, as flash attention merges its
tiles. The backward runs the kernel's own backward on both pieces, given the *merged* output
and log-sum-exp: then each piece recomputes exactly its share of the full softmax, and its
gradients are the full attention's gradients restricted to its keys.

That computes 3/4 of the square instead of all of it. It pays from 384 to 512 tokens only
(`halves_pay`): below, the halves fall under 192 queries, where the kernel switches to tiles
half as tall; above, the kernel's own 512-key skipping starts to work. torch.compile traces the
halves as they are (inductor calls the same kernels). `bench/attention.py` times it against
SDPA; `bench/README.md` has the figures.
"""

from __future__ import annotations

import torch
from torch import Tensor

# The CPU flash kernel's tiling (aten/src/ATen/native/cpu/FlashAttentionKernel.cpp): keys in
# blocks of up to 512, queries in tiles of 64 from 192 queries on (32 below).
_KERNEL_KEY_BLOCK, _KERNEL_TALL_TILES_FROM = 512, 192


def halves_pay(q: Tensor, *_kv: Tensor) -> bool:
    """Whether splitting these queries' sequence in halves pays (see the module docstring); the
    keys and values (taken so that it can judge any attention call) do not change the answer."""
    T = q.shape[2]
    return (
        q.device.type == "cpu"
        and q.dtype == torch.float32
        and T % 2 == 0
        and 2 * _KERNEL_TALL_TILES_FROM <= T <= _KERNEL_KEY_BLOCK
    )


def halved_causal_attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """`plain.causal_attention(q, k, v)`, computed in halves; T even."""
    if k.shape[1] != q.shape[1]:  # the CPU kernel has no grouped-query mode; autograd sums the copies' grads
        groups = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    return _HalvedCausalAttention.apply(q, k, v)


_flash = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
_flash_backward = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward


def _halves(t: Tensor) -> Tensor:
    """(B, H, T, ...) -> (2B, H, T/2, ...): each half of every sequence becomes a sequence of its own.
    A view when t is the transpose of a contiguous (B, T, H, ...) tensor, as the model's are."""
    B, H, T = t.shape[:3]
    return t.transpose(1, 2).reshape(2 * B, T // 2, H, *t.shape[3:]).transpose(1, 2)


def _joined(t: Tensor) -> Tensor:
    """The inverse of `_halves`: (2B, H, T/2, ...) -> (B, H, T, ...)."""
    B2, H, half = t.shape[:3]
    return t.transpose(1, 2).reshape(B2 // 2, 2 * half, H, *t.shape[3:]).transpose(1, 2)


class _HalvedCausalAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        half = q.shape[2] // 2
        first, second = slice(0, half), slice(half, None)
        # The two diagonal squares, each half against its own keys, causally.
        out_diag, lse_diag = _flash(_halves(q), _halves(k), _halves(v), 0.0, True)
        out, lse = _joined(out_diag), _joined(lse_diag).contiguous()  # (B, H, T, hd), (B, H, T)
        # The rectangle below: the second half's queries against the first half's keys, unmasked.
        out_below, lse_below = _flash(q[:, :, second], k[:, :, first], v[:, :, first], 0.0, False)
        lse_square = lse[:, :, second]
        lse_all = torch.logaddexp(lse_square, lse_below)
        out[:, :, second] = (
            out[:, :, second] * (lse_square - lse_all).exp()[..., None]
            + out_below * (lse_below - lse_all).exp()[..., None]
        )
        lse[:, :, second] = lse_all
        ctx.save_for_backward(q, k, v, out, lse)
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        q, k, v, out, lse = ctx.saved_tensors
        half = q.shape[2] // 2
        first, second = slice(0, half), slice(half, None)
        # Both pieces get the merged output and log-sum-exp, so each recomputes the full
        # softmax's probabilities on its own keys (see the module docstring).
        grads = _flash_backward(
            _halves(grad_out), _halves(q), _halves(k), _halves(v), _halves(out), _halves(lse), 0.0, True
        )
        grad_q, grad_k, grad_v = (_joined(g) for g in grads)
        dq, dk, dv = _flash_backward(
            grad_out[:, :, second], q[:, :, second], k[:, :, first], v[:, :, first],
            out[:, :, second], lse[:, :, second], 0.0, False,
        )
        grad_q[:, :, second] += dq
        grad_k[:, :, first] += dk
        grad_v[:, :, first] += dv
        return grad_q, grad_k, grad_v
