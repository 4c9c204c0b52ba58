"""Causal self-attention on CPU, two ways faster than SDPA's flash kernel where they apply.

**Halves (fp32).** On CPU, `F.scaled_dot_product_attention(..., is_causal=True)` runs PyTorch's
flash kernel, which skips causal work only in whole blocks of 512 keys. Up to 1024 tokens it
therefore computes most of the (T x T) score matrix and then masks half of it away: at 512
tokens causal and full attention take the same time.

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
halves as they are (inductor calls the same kernels).

**Scores kept (bf16 training).** In bf16 the flash kernel's backward is slow on CPU (small
matmuls per tile, each converting its operands): at 512 tokens it takes five times its forward.
Up to 512 tokens the whole (T x T) matrix of probabilities is small enough to keep, and then the
backward is four batched bf16 matmuls (AMX) and one fused softmax backward. The forward computes
the scores in fp32 (one fp32 matmul of the upcast queries and keys, as the flash kernel keeps
its scores in fp32: rounded to bf16 before the softmax, they would double the error), the
softmax in fp32, and keeps the probabilities in bf16 for the two matmuls that use them (B x
heads x T x T of them: 25 MB per layer at batch 8, 6 heads, 512 tokens). The errors are the
flash kernel's (`tests/kernels/test_bf16.py`), and a bf16 training step's attention takes about
40 ms per layer on the bench model instead of 55-70 (`bench/attention.py`; `bench/README.md`).
Without a backward (evaluation, generation) the flash kernel's forward is the faster, and stays.
"""

from __future__ import annotations

import functools
import math

import torch
from torch import Tensor

from olmolab.kernels.autograd import backward_will_run

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
    return _HalvedCausalAttention.apply(q, *_one_key_per_query_head(q, k, v))


def _one_key_per_query_head(q: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
    """k and v repeated to q's number of heads: neither path has a grouped-query mode; autograd
    sums the copies' gradients."""
    if k.shape[1] == q.shape[1]:
        return k, v
    groups = q.shape[1] // k.shape[1]
    return k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)


# Up to this many tokens the bf16 scores are kept (see the module docstring): there the flash
# kernel computes the full square anyway, and the scores' memory is bounded.
_KEPT_SCORES_MAX_TOKENS = 512


def kept_scores_pay(q: Tensor, k: Tensor, v: Tensor) -> bool:
    """Whether attention with its scores kept pays: bf16 CPU training (a backward will run), up to
    `_KEPT_SCORES_MAX_TOKENS` tokens."""
    return (
        q.device.type == "cpu"
        and q.dtype == torch.bfloat16
        and 1 < q.shape[2] <= _KEPT_SCORES_MAX_TOKENS
        and backward_will_run(q, k, v)
    )


def kept_scores_causal_attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """`plain.causal_attention(q, k, v)` by batched matmuls, the softmax's probabilities kept."""
    return _KeptScoresCausalAttention.apply(q, *_one_key_per_query_head(q, k, v))


@functools.cache
def _causal_bias(T: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """(T, T): 0 where a query may see the key, -inf above the diagonal."""
    return torch.full((T, T), -math.inf, dtype=dtype, device=device).triu_(1)


class _KeptScoresCausalAttention(torch.autograd.Function):
    """softmax(q k^T / sqrt(hd) + causal mask) v over (B * heads) batched matmuls."""

    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        B, H, T, hd = q.shape
        q3, k3, v3 = (t.reshape(B * H, T, hd) for t in (q, k, v))
        score_dtype = torch.promote_types(q.dtype, torch.float32)
        # The mask enters as the matmul's addend: no separate pass over the scores to mask them.
        bias = _causal_bias(T, score_dtype, q.device).expand(B * H, T, T)
        scores = torch.baddbmm(bias, q3.to(score_dtype), k3.to(score_dtype).transpose(1, 2), alpha=1 / math.sqrt(hd))
        probs = torch.softmax(scores, dim=-1, out=scores).to(q.dtype)
        ctx.save_for_backward(q3, k3, v3, probs)
        ctx.shape = q.shape
        return torch.bmm(probs, v3).view(B, H, T, hd)

    @staticmethod
    def backward(ctx, grad_out: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        q3, k3, v3, probs = ctx.saved_tensors
        BH, T, hd = q3.shape
        grad_out = grad_out.reshape(BH, T, hd)
        grad_v = torch.bmm(probs.transpose(1, 2), grad_out)
        grad_probs = torch.bmm(grad_out, v3.transpose(1, 2))
        # probs * (grad_probs - rowsum(grad_probs * probs)), fused, in fp32 inside (the flash
        # kernel's backward, too, hands its bf16 matmuls this gradient rounded to bf16).
        grad_scores = torch._softmax_backward_data(grad_probs, probs, -1, probs.dtype)
        scale = 1 / math.sqrt(hd)
        grad_q = torch.bmm(grad_scores, k3).mul_(scale)
        grad_k = torch.bmm(grad_scores.transpose(1, 2), q3).mul_(scale)
        return grad_q.view(ctx.shape), grad_k.view(ctx.shape), grad_v.view(ctx.shape)


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
