"""The language-modelling loss: cross-entropy plus OLMo's z-loss.

    ce     = sum over labelled tokens of  logsumexp(logits) - logits[label]
    z_loss = z_loss_multiplier * sum over labelled tokens of  logsumexp(logits)^2

both divided by `div_factor` (by default the number of labelled tokens). z-loss keeps the
softmax normaliser near 1 (log Z near 0), which OLMo 2 uses (multiplier 1e-5) for stability.

Two implementations with one contract:
- `cross_entropy_loss(logits, labels)`: the plain reference, from logits.
- `linear_cross_entropy(hidden, lm_head_weight, labels)`: what training uses. It walks the
  tokens in chunks, computing each chunk's logits, loss *and gradient* at once, so the full
  (tokens x vocab) logits never exist and each chunk is swept about four times.
  Its backward only scales the gradients it already holds.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from olmolab.kernels import round_up, token_multiple
from olmolab.kernels.logits_softmax import compiled_softmax_rows_

IGNORE_INDEX = -100

# Most logits held at once. On a CPU, 16M fp32 values (64 MiB; 1024 tokens of a 16k vocabulary):
# the chunk size barely matters once memory is reused, but glibc hands blocks this large straight
# back to the OS, so a bigger buffer page-faults more every step (bench/README.md has the
# figures). On a GPU, 64M: each chunk re-reads the (V, d) fp32 gradient accumulator (800 MB at
# OLMo 2's 100k x 2048), so chunks should be few; the bound keeps 32k tokens x 100k vocabulary
# from needing 13 GB at once.
CHUNK_ELEMENTS = 1 << 24
GPU_CHUNK_ELEMENTS = 1 << 26


def chunk_rows(n: int, vocab: int, device: torch.device, multiple: int = 1) -> int:
    """Rows per chunk of `n` rows' logits: equal chunks of about the bound above (at most 1.5
    times it), rounded up to `multiple` (`olmolab.kernels.token_multiple`). 2056 labelled rows go
    as two chunks of 1028, not 1024 + 1024 + 8: a chunk of a few rows multiplies the whole (V, d)
    head for them, three times, at a tenth of the matmuls' speed (the bench's SFT step 1.008x;
    three chunks of 686 0.998x: bench/README.md)."""
    bound = max(1, (CHUNK_ELEMENTS if device.type == "cpu" else GPU_CHUNK_ELEMENTS) // vocab)
    chunks = max(1, round(n / bound))
    return max(1, round_up(-(-n // chunks), multiple))  # (no rows: a chunk size all the same)


class LMLoss(NamedTuple):
    loss: Tensor
    """ce_loss + z_loss, the differentiable total to call `.backward()` on."""
    ce_loss: Tensor
    """Cross-entropy part, detached (for logging)."""
    z_loss: Tensor
    """z-loss part, multiplier applied, detached (for logging)."""


def cross_entropy_loss(
    logits: Tensor,
    labels: Tensor,
    *,
    z_loss_multiplier: float = 0.0,
    div_factor: float | Tensor | None = None,
    ignore_index: int = IGNORE_INDEX,
) -> LMLoss:
    """Reference loss from logits (..., V) and labels (...) aligned with them."""
    logits = logits.reshape(-1, logits.shape[-1])
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # bf16 upcast, fp64 kept
    labels = labels.reshape(-1)
    valid = labels != ignore_index
    div = valid.sum() if div_factor is None else div_factor
    lse = torch.logsumexp(logits, dim=-1)
    target = logits.gather(1, labels.clamp(min=0)[:, None]).squeeze(1)
    ce = torch.where(valid, lse - target, 0.0).sum() / div
    z = z_loss_multiplier * torch.where(valid, lse.square(), 0.0).sum() / div
    return LMLoss(ce + z, ce.detach(), z.detach())


def linear_cross_entropy(
    hidden: Tensor,
    weight: Tensor,
    labels: Tensor,
    *,
    z_loss_multiplier: float = 0.0,
    div_factor: float | Tensor | None = None,
    ignore_index: int = IGNORE_INDEX,
    compiled: bool = False,
) -> LMLoss:
    """The loss of `hidden @ weight.T` against `labels`, chunked. hidden: (N, d); weight: (V, d).

    compiled: training is torch.compile'd (`trainer.compile`): in bf16 on a CPU each chunk's
    softmax is then one inductor kernel over the bf16 logits (`kernels.logits_softmax`)."""
    if z_loss_multiplier < 0:  # it would reward a large normaliser (and the gradient divides by 1 + 2 z lse)
        raise ValueError(f"z_loss_multiplier={z_loss_multiplier}: must be 0 (no z-loss) or more")
    valid = labels != ignore_index
    div = valid.sum() if div_factor is None else div_factor
    div = torch.as_tensor(div, dtype=torch.float32, device=hidden.device)
    # Unlabelled rows add nothing but their share of the work: the model leaves them out before
    # its last block (`Transformer.forward`, `_labelled_positions`) where that pays.
    loss, ce, z = _LinearCrossEntropy.apply(hidden, weight, labels, valid, div, float(z_loss_multiplier), compiled)
    return LMLoss(loss, ce, z)


def _compute_dtype(t: Tensor) -> torch.dtype:
    """The matmul dtype: autocast's on CUDA (bf16 for OLMo 2 training), else the input's."""
    if t.is_cuda and torch.is_autocast_enabled("cuda"):
        return torch.get_autocast_dtype("cuda")
    return t.dtype


# Below this probability of its label, a row's log-sum-exp is recomputed from its logits (see
# `_logsumexp_from_softmax`): 2^-64, a label 44 nats below the normaliser.
_TINY_LABEL_PROBABILITY = 2.0**-64


def _logsumexp_from_softmax(probs, target, target_ids, ok, row_max, h, w):
    """Each row's log-sum-exp, from its softmax `probs` and its label's logit `target`.

    softmax = exp(logit - lse), so lse = logit - log(probability) at any entry. At the label that
    costs no sweep of the chunk; it is exact while the label's probability is a normal float.
    Labelled rows whose label is too unlikely for that (a model confidently wrong: rare) get
    their log-sum-exp from their logits, recomputed from the chunk's hidden states `h` and the
    lm head `w`. That branch on the data would stall a GPU's queue every chunk; there `row_max`
    (the logits' max, taken before the softmax) is given instead, and lse = max - log(largest
    probability), one sweep of the chunk more.
    """
    if row_max is not None:
        return row_max - probs.amax(dim=-1).log()
    label_probs = probs.gather(1, target_ids).squeeze(1)
    lse = target - label_probs.log()
    unsure = ok & (label_probs < _TINY_LABEL_PROBABILITY)
    if unsure.any():
        lse[unsure] = torch.logsumexp((h[unsure] @ w.T).to(lse.dtype), dim=-1)
    return lse


def _weight_grad_buffer(w: Tensor, acc_dtype: torch.dtype, weight_dtype: torch.dtype, chunks: int) -> Tensor:
    """The LM head's gradient, summed across chunks (`_add_to_weight_grad_`) in fp32 at least,
    except for a bf16 weight on a CPU (bf16 training's compute copy), whose gradient leaves in
    bf16 anyway. There each chunk's product is added by the matmul itself (oneDNN sums in fp32
    inside and rounds once a chunk: as many roundings as the fp32 sum of bf16 products had,
    without a separate pass over an fp32 accumulator of the head's size for every chunk; at the
    bench model's shapes 0.26% of the gradient's norm off the fp64 one, the fp32 sum's 0.23%).
    `w` is the weight in the matmuls' dtype. Not zeroed where the first of `chunks` chunks' matmul
    overwrites it (zeroed where there are none: a batch with nothing labelled)."""
    bf16_cpu = weight_dtype == w.dtype == torch.bfloat16 and w.device.type == "cpu"
    dtype = w.dtype if bf16_cpu else acc_dtype
    return (torch.empty if dtype == w.dtype and chunks else torch.zeros)(w.shape, dtype=dtype, device=w.device)


def _add_to_weight_grad_(grad_w: Tensor, grad_logits: Tensor, h: Tensor, first: bool) -> None:
    """grad_w += grad_logits^T h, a chunk's share of the LM head's gradient."""
    if grad_w.dtype == h.dtype:  # beta 0 on the first chunk, which overwrites what was there
        grad_w.addmm_(grad_logits.T, h, beta=0 if first else 1)
    else:  # a bf16 matmul, accumulated across chunks in fp32
        grad_w += grad_logits.T @ h


# bf16 products of about this many rows at once (see `_input_grad_`).
_BF16_ROWS = 256


def _input_grad_(grad_logits: Tensor, w: Tensor, out: Tensor, linear=None) -> None:
    """out = grad_logits @ w, a chunk's share of the LM head's input gradient; by `linear(x, weight)`
    (x @ weight^T) where the caller computes its products so, else `torch.mm`. In bf16 on a CPU
    `_BF16_ROWS` rows at a time: at these shapes (rows x vocab by vocab x d_model) oneDNN's AMX
    kernel runs at half speed from 512 to 1024 rows and at full speed below and above (torch 2.13;
    bench/README.md, "The LM head's input gradient"): a chunk of 1024 rows goes as four of 256,
    one of 1088 as four of 256 and one of 64 (pieces of a multiple of 64 rows: oneDNN builds a
    kernel for each new shape, `olmolab.kernels.token_multiple`)."""
    if grad_logits.dtype == torch.bfloat16 and grad_logits.device.type == "cpu":
        n = grad_logits.shape[0]
        rows = round_up(-(-n // -(-n // _BF16_ROWS)), token_multiple(grad_logits.dtype, grad_logits.device))
        for s in range(0, n, rows):
            torch.mm(grad_logits[s : s + rows], w, out=out[s : s + rows])
    elif linear is None:
        torch.mm(grad_logits, w, out=out)
    else:
        out.copy_(linear(grad_logits, w.T))


def _softmax_(logits, upcast, bf16_kernel, target_ids, ok, h, w):
    """A chunk's softmax, written over its logits (or over their fp32 `upcast`), with each row's
    label logit and log-sum-exp (fp32 at least): (probs, target, lse)."""
    if bf16_kernel:  # one compiled kernel over the bf16 logits, fp32 inside
        target = logits.gather(1, target_ids).squeeze(1).float()
        return logits, target, compiled_softmax_rows_(logits)
    if upcast is not None:
        logits = upcast.copy_(logits)
    target = logits.gather(1, target_ids).squeeze(1)
    # The softmax in place, by the fused kernel that finishes each row while it is still in cache
    # (one sweep of the chunk, not four for max, subtract, exp and sum); it is also the
    # gradient's main term.
    row_max = logits.amax(dim=-1) if logits.is_cuda else None
    probs = torch.softmax(logits, dim=-1, out=logits)
    return probs, target, _logsumexp_from_softmax(probs, target, target_ids, ok, row_max, h, w)


def _grad_logits_(probs, target_ids, target, lse, label_term, buffer):
    """softmax + label_term at each row's label, in `buffer`'s dtype (the matmuls'), written over
    `probs` (and copied into `buffer` where the softmax was an fp32 upcast)."""
    if probs.dtype != lse.dtype:  # bf16 probabilities: the label's entry from its fp32 probability, rounded once
        rows = torch.arange(probs.shape[0], device=probs.device)  # (`scatter_` into bf16 is ~1000x slower)
        return probs.index_put_((rows, target_ids[:, 0]), ((target - lse).exp() + label_term).to(probs.dtype))
    probs.scatter_add_(1, target_ids, label_term[:, None])
    return probs if probs.dtype == buffer.dtype else buffer.copy_(probs)


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, labels, valid, div, z_mult, compiled):
        dtype = _compute_dtype(hidden)
        needs_grad = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        with torch.autocast(hidden.device.type, enabled=False):
            h, w = hidden.to(dtype), weight.to(dtype)
            n, vocab = h.shape[0], w.shape[0]
            rows = chunk_rows(n, vocab, h.device, token_multiple(dtype, h.device))
            # Softmax and accumulators in fp32 at least: bf16 logits are upcast, fp64 ones kept.
            acc_dtype = torch.promote_types(dtype, torch.float32)
            # bf16 on a CPU under torch.compile: each chunk's softmax is one kernel over the bf16
            # logits, in place, in fp32 inside (no fp32 copy of the chunk).
            bf16_kernel = compiled and h.device.type == "cpu" and acc_dtype != dtype
            ce_sum = torch.zeros((), dtype=acc_dtype, device=h.device)
            z_sum = torch.zeros((), dtype=acc_dtype, device=h.device)
            grad_h = torch.empty_like(h) if needs_grad else None
            grad_w = _weight_grad_buffer(w, acc_dtype, weight.dtype, chunks=n) if needs_grad else None
            # Every chunk's logits, then its gradient, are written into this one buffer: on a CPU a
            # fresh block this large would come from the OS, page-faulting anew for every chunk.
            # bf16 logits are upcast into a second, fp32 one, for the same reason.
            buffer = torch.empty(min(rows, n), vocab, dtype=dtype, device=h.device)
            upcast = torch.empty_like(buffer, dtype=acc_dtype) if acc_dtype != dtype and not bf16_kernel else None
            for s in range(0, n, rows):
                e = min(s + rows, n)
                ok, target_ids = valid[s:e], labels[s:e].clamp(min=0)[:, None]
                logits = torch.mm(h[s:e], w.T, out=buffer[: e - s])  # (rows, V)
                chunk_upcast = None if upcast is None else upcast[: e - s]
                probs, target, lse = _softmax_(logits, chunk_upcast, bf16_kernel, target_ids, ok, h[s:e], w)
                ce_sum += torch.where(ok, lse - target, 0.0).sum()
                z_sum += torch.where(ok, lse.square(), 0.0).sum()
                if not needs_grad:
                    continue
                # d(ce + z)/d logits = r * (softmax - onehot(label) / (1 + 2 z lse)) on labelled rows,
                # with r = (1 + 2 z lse) / div. The row scale r is applied to the (rows, d) sides of
                # the two matmuls, not to the (rows, V) chunk: that saves a sweep of the chunk.
                lse_factor = 1 + 2 * z_mult * lse
                row_scale = torch.where(ok, lse_factor / div, 0.0)[:, None]
                label_term = torch.where(ok, -1.0 / lse_factor, 0.0)  # lse's dtype: acc_dtype
                grad_logits = _grad_logits_(probs, target_ids, target, lse, label_term, buffer[: e - s])
                _input_grad_(grad_logits, w, grad_h[s:e])
                grad_h[s:e].mul_(row_scale)
                _add_to_weight_grad_(grad_w, grad_logits, h[s:e] * row_scale.to(dtype), first=s == 0)
            ce, z = ce_sum / div, z_mult * z_sum / div
        if needs_grad:
            ctx.save_for_backward(grad_h, grad_w)
            ctx.input_dtypes = (hidden.dtype, weight.dtype)
        ctx.mark_non_differentiable(ce, z)
        return ce + z, ce, z

    @staticmethod
    def backward(ctx, grad_loss, _grad_ce, _grad_z):
        grad_h, grad_w = ctx.saved_tensors
        h_dtype, w_dtype = ctx.input_dtypes
        grad_hidden = (grad_h * grad_loss).to(h_dtype) if ctx.needs_input_grad[0] else None
        grad_weight = (grad_w * grad_loss).to(w_dtype) if ctx.needs_input_grad[1] else None
        return grad_hidden, grad_weight, None, None, None, None, None
