"""Causal self-attention on CPU, three ways faster than SDPA's flash kernel where they apply.

**Tiled (fp32, C++).** PyTorch's CPU flash kernel takes the keys in blocks of 512 and skips a
block only when it lies wholly after a tile's queries, so below 512 tokens it computes the whole
(T x T) square of scores and masks half of it away. `kernels/csrc/causal_attention.cpp` takes
each tile of queries against the keys up to its last query only: the scores as one MKL product,
the softmax row by row while they are in cache (a vectorised exp), then the product with the
values; the backward recomputes each tile's probabilities from the log-sum-exps, as flash
attention does. Built on first use where a C++ compiler is (`kernels/native.py`); elsewhere the
paths below apply. It pays most from 256 to 512 tokens, and loses from 2048 on, where the flash
kernel's skipped blocks outweigh what finer tiles skip (`bench/README.md` has the figures).

**Halves (fp32, where the C++ kernel is not built, and under torch.compile).** On CPU,
`F.scaled_dot_product_attention(..., is_causal=True)` runs PyTorch's flash kernel, which skips causal work only in whole blocks of 512 keys. Up to 1024 tokens it
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
matmuls per tile, each converting its operands): at 512 tokens it takes nearly six times its
forward. Up to 512 tokens the probabilities are small enough to keep, and then the backward is
four batched bf16 matmuls (AMX) and one fused softmax backward. The forward's queries go in
bands of 64, each against the keys up to its last query only (9/16 of the square at 512 tokens,
not all of it). It computes the scores in fp32 (one fp32 matmul of the upcast queries and keys,
as the flash kernel keeps its scores in fp32: rounded to bf16 before the softmax, they would
double the error), the softmax in fp32, and keeps the probabilities in bf16, as one square zero
above the diagonal (25 MB per layer at batch 8, 6 heads, 512 tokens). The backward's matmuls
take the whole square: on AMX the products the bands would skip cost less than summing their
gradients band by band did, and each key's and value's gradient is then summed over all
queries in fp32 inside one matmul and rounded once. A packed batch's mask (SFT's packing:
causal within each document) applies too, filled into each band's scores: it removes keys the
bands keep, never ones they skip (`packed_causal` checks). The errors are the flash kernel's
(`tests/kernels/test_bf16.py`); `bench/attention.py` times the two
(`bench/README.md`). Without a backward (evaluation, generation) the flash kernel's forward is
the faster, and stays. torch.compile traces the bands as they are (inductor calls the flash
kernel for SDPA too: it has no attention of its own to fuse on CPU).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from olmolab.kernels.autograd import autograd_records
from olmolab.kernels.native import native_kernels

# The CPU flash kernel's tiling (aten/src/ATen/native/cpu/FlashAttentionKernel.cpp): keys in
# blocks of up to 512, queries in tiles of 64 from 192 queries on (32 below).
_KERNEL_KEY_BLOCK, _KERNEL_TALL_TILES_FROM = 512, 192


# Queries per tile of the tiled kernel (the fastest of 32, 48 and 64 at the bench model's shapes),
# and the longest sequences it takes: from 2048 tokens the flash kernel, which then skips whole
# blocks of 512 keys, is the faster (bench/README.md).
_TILE_QUERIES = 48
_TILED_MAX_TOKENS = 1024


def tiled_pays(q: Tensor, k: Tensor | None = None, v: Tensor | None = None, mask: Tensor | None = None) -> bool:
    """Whether the tiled C++ kernel applies: plain causal fp32 attention on a CPU (no mask) of up to
    `_TILED_MAX_TOKENS` tokens, eager (torch.compile would break its graph at the call), with the
    kernel built here."""
    return (
        mask is None
        and q.device.type == "cpu"
        and q.dtype == torch.float32
        and 1 < q.shape[2] <= _TILED_MAX_TOKENS
        and not torch.compiler.is_compiling()
        and native_kernels() is not None
    )


def tiled_causal_attention(q: Tensor, k: Tensor, v: Tensor, mask: None = None) -> Tensor:
    """`plain.causal_attention(q, k, v)` by the tiled C++ kernel (`tiled_pays`)."""
    return _TiledCausalAttention.apply(q, *_one_key_per_query_head(q, k, v))


def _last_dim_contiguous(t: Tensor) -> Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


class _TiledCausalAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        q, k, v = (_last_dim_contiguous(t) for t in (q, k, v))
        out, lse = native_kernels().forward(q, k, v, _TILE_QUERIES)
        ctx.save_for_backward(q, k, v, out, lse)
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        q, k, v, out, lse = ctx.saved_tensors
        return tuple(native_kernels().backward(_last_dim_contiguous(grad_out), q, k, v, out, lse, _TILE_QUERIES))


def halves_pay(q: Tensor, k: Tensor | None = None, v: Tensor | None = None, mask: Tensor | None = None) -> bool:
    """Whether splitting these queries' sequence in halves pays (see the module docstring): plain
    causal attention only (no mask); the keys and values (taken so that it can judge any
    attention call) do not change the answer."""
    T = q.shape[2]
    return (
        mask is None
        and q.device.type == "cpu"
        and q.dtype == torch.float32
        and T % 2 == 0
        and 2 * _KERNEL_TALL_TILES_FROM <= T <= _KERNEL_KEY_BLOCK
    )


def halved_causal_attention(q: Tensor, k: Tensor, v: Tensor, mask: None = None) -> Tensor:
    """`plain.causal_attention(q, k, v)`, computed in halves; T even, no mask (`halves_pay`)."""
    return _HalvedCausalAttention.apply(q, *_one_key_per_query_head(q, k, v))


def _one_key_per_query_head(q: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
    """k and v repeated to q's number of heads: neither path has a grouped-query mode; autograd
    sums the copies' gradients."""
    if k.shape[1] == q.shape[1]:
        return k, v
    groups = q.shape[1] // k.shape[1]
    return k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)


# Up to this many tokens the bf16 scores are kept (see the module docstring): there the flash
# kernel computes the full square anyway. And up to this many (B x heads x T x T) scores a call:
# its probabilities, kept in bf16 until the backward, then take at most 128 MiB a layer (the
# bench model's: 25 MB, beside ~90 MB of its other activations); a bigger batch keeps the flash
# kernel, whose memory grows with T, not T^2.
_KEPT_SCORES_MAX_TOKENS = 512
_KEPT_SCORES_MAX_ELEMENTS = 1 << 26


def kept_scores_pay(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None) -> bool:
    """Whether attention with its scores kept pays: bf16 CPU training (a backward will run), up to
    `_KEPT_SCORES_MAX_TOKENS` tokens and `_KEPT_SCORES_MAX_ELEMENTS` scores a call, under a mask
    too where it is a packed batch's (`packed_causal`); under torch.compile too (inductor calls the
    flash kernel as eager does: it has nothing of its own to fuse attention into on CPU)."""
    return (
        q.device.type == "cpu"
        and q.dtype == torch.bfloat16
        and 1 < q.shape[2] <= _KEPT_SCORES_MAX_TOKENS
        and q.shape[0] * q.shape[1] * q.shape[2] ** 2 <= _KEPT_SCORES_MAX_ELEMENTS
        and autograd_records(q, k, v)
        and (mask is None or packed_causal(mask, q.shape[0], q.shape[2]))
    )


def packed_causal(mask: Tensor, B: int, T: int) -> bool:
    """Whether `mask` ((B, 1, T, T) boolean, True = may attend) only removes keys from causal
    attention and leaves every query itself: a packed batch's documents (SFT's packing), where
    the kept scores' bands, which skip the keys after each band, lose nothing, and no row is
    empty. One pass over the mask, in eager only: under torch.compile the check would split the
    graph, and a masked call keeps SDPA."""
    if torch.compiler.is_compiling() or mask.dtype != torch.bool or mask.shape != (B, 1, T, T):
        return False
    causal = torch.ones(T, T, dtype=torch.bool, device=mask.device).tril_()
    return bool((causal >= mask).all() and mask.diagonal(dim1=-2, dim2=-1).all())


def kept_scores_causal_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None) -> Tensor:
    """`plain.causal_attention(q, k, v, mask)` by batched matmuls, the softmax's probabilities
    kept; `mask` as `packed_causal` allows."""
    return _KeptScoresCausalAttention.apply(q, *_one_key_per_query_head(q, k, v), mask)


def _causal_bias(T: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """(T, T): 0 where a query may see the key, -inf above the diagonal (built anew each call: a
    pass over T^2 elements, next to the B x heads x T^2 of the scores)."""
    return torch.full((T, T), -math.inf, dtype=dtype, device=device).triu_(1)


# Queries per band of the kept-scores path (see `_bands`): at the bench model's shapes bands of 64
# made the bf16 training step 1.5-2% faster than bands of 128 (compiled; 0.7% eager), 32 2% slower
# than 64 (bench/README.md).
_BAND_QUERIES = 64


def _bands(T: int) -> list[tuple[int, int]]:
    """The query bands [start, end) of the kept-scores path. A band's queries see keys [0, end)
    only, so its scores are (end - start) x end: 8 bands of 64 at 512 tokens compute 9/16 of
    the (T x T) square, where one band would compute all of it and mask half away."""
    return [(start, min(start + _BAND_QUERIES, T)) for start in range(0, T, _BAND_QUERIES)]


class _KeptScoresCausalAttention(torch.autograd.Function):
    """softmax(q k^T / sqrt(hd) + causal mask [+ a packed batch's]) v over (B * heads) batched
    matmuls: the scores a band of queries at a time, the probabilities kept for the backward."""

    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> Tensor:
        B, H, T, hd = q.shape
        q3, k3, v3 = (t.reshape(B * H, T, hd) for t in (q, k, v))
        score_dtype = torch.promote_types(q.dtype, torch.float32)
        q_up, k_up = q3.to(score_dtype), k3.to(score_dtype)
        bias = _causal_bias(T, score_dtype, q.device)
        # The whole (T x T) square of probabilities, zero right of each band's keys (see `backward`).
        # Eager, each band goes straight into its rows of the square. Under torch.compile a write
        # into rows of a buffer becomes a copy of all of it, so there the bands are padded and joined.
        square = None if torch.compiler.is_compiling() else q.new_empty(B * H, T, T)
        padded = []
        for start, end in _bands(T):
            # The causal mask enters as the matmul's addend: no separate pass over the scores for it.
            band_bias = bias[start:end, :end].expand(B * H, -1, -1)
            scores = torch.baddbmm(band_bias, q_up[:, start:end], k_up[:, :end].transpose(1, 2), alpha=1 / math.sqrt(hd))
            if mask is not None:  # a packed batch's documents: no key of another one (every head alike)
                scores.view(B, H, end - start, end).masked_fill_(~mask[:, :, start:end, :end], -math.inf)
            band = torch.softmax(scores, dim=-1, out=scores)
            if square is None:
                padded.append(F.pad(band.to(q.dtype), (0, T - end)))
            else:
                square[:, start:end, :end] = band
                square[:, start:end, end:] = 0
        probs = torch.cat(padded, dim=1) if square is None else square
        ctx.save_for_backward(q3, k3, v3, probs)
        ctx.shape = q.shape
        return torch.bmm(probs, v3).view(B, H, T, hd)

    @staticmethod
    def backward(ctx, grad_out: Tensor) -> tuple[Tensor, Tensor, Tensor, None]:
        # Over the whole square, where the bands would skip 3/8 of it: in bf16 those products cost
        # little on AMX, and each gradient is then one matmul summing over all queries in fp32
        # inside and rounding once (summed band by band, they took longer than these matmuls).
        # Above the diagonal (and outside a mask) the probabilities are zero, and so are the scores'
        # gradients.
        q3, k3, v3, probs = ctx.saved_tensors
        grad_out = grad_out.reshape(q3.shape)
        scale = 1 / math.sqrt(q3.shape[-1])
        grad_v = torch.bmm(probs.transpose(1, 2), grad_out)
        grad_probs = torch.bmm(grad_out, v3.transpose(1, 2))
        # probs * (grad_probs - rowsum(grad_probs * probs)), fused, in fp32 inside (the flash
        # kernel's backward, too, hands its bf16 matmuls this gradient rounded to bf16).
        # (written over grad_probs: each row's sum is taken before its row is written)
        grad_scores = torch.ops.aten._softmax_backward_data.out(grad_probs, probs, -1, probs.dtype, grad_input=grad_probs)
        grad_q = torch.bmm(grad_scores, k3).mul_(scale)
        grad_k = torch.bmm(grad_scores.transpose(1, 2), q3).mul_(scale)
        return grad_q.view(ctx.shape), grad_k.view(ctx.shape), grad_v.view(ctx.shape), None


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
