"""Each label's log-probability under `hidden @ weight.T`, without the full logits' autograd graph.

    log p(label_t) = logits_t[label_t] - logsumexp(logits_t)

What scoring a turn needs (DPO sums these over the turn's tokens). Written with autograd's ops
it keeps the logits and their log-softmax, and its backward adds a zero-filled one-hot scatter
and the log-softmax's gradient: four (tokens x vocab) tensors. Here the tokens are walked in
chunks; each chunk's logits become its softmax in place, which the backward turns into the
gradient in place, (upstream gradient) * (one-hot(label) - softmax): one (tokens x vocab)
tensor, one sweep of it each way, and the LM head's matmuls as the model computes them
(`kernel("linear")`). Without a backward only one chunk is held at a time.

Only the labelled rows are scored: the caller's hidden states are those rows'
(`Transformer.label_log_probs`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from olmolab.kernels import kernel, token_multiple
from olmolab.model import loss as lm_loss  # the fused loss's chunk sizes, dtype rule and log-normaliser


def linear_label_log_probs(hidden: Tensor, weight: Tensor, labels: Tensor) -> Tensor:
    """(N,) log-softmax of `hidden @ weight.T` at `labels`. hidden: (N, d); weight: (V, d); labels: (N,)."""
    backward = torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)
    return _LinearLabelLogProbs.apply(hidden, weight, labels, backward)


class _LinearLabelLogProbs(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, labels, backward):
        dtype = lm_loss._compute_dtype(hidden)
        linear = kernel("linear")  # the LM head's product as the model computes it (oneDNN on AMD CPUs)
        with torch.autocast(hidden.device.type, enabled=False):
            h, w = hidden.to(dtype), weight.to(dtype)
            n, vocab = h.shape[0], w.shape[0]
            rows = lm_loss.chunk_rows(n, vocab, h.device, token_multiple(dtype, h.device))
            acc_dtype = torch.promote_types(dtype, torch.float32)  # softmax in fp32 at least
            log_probs = torch.empty(n, dtype=acc_dtype, device=h.device)
            everyone = torch.ones(min(rows, n), dtype=torch.bool, device=h.device)
            softmaxes = []  # each chunk's, kept for the backward (if one will run)
            for s in range(0, n, rows):
                e = min(s + rows, n)
                logits = linear(h[s:e], w).to(acc_dtype)  # (rows, V)
                target_ids = labels[s:e, None]
                target = logits.gather(1, target_ids).squeeze(1)
                row_max = logits.amax(dim=-1) if logits.is_cuda else None
                softmax = torch.softmax(logits, dim=-1, out=logits)
                lse = lm_loss._logsumexp_from_softmax(softmax, target, target_ids, everyone[: e - s], row_max, h[s:e], w)
                log_probs[s:e] = target - lse
                if backward:
                    softmaxes.append(softmax)
        if backward:
            ctx.save_for_backward(h, w, labels)
            ctx.softmaxes, ctx.rows, ctx.input_dtypes = softmaxes, rows, (hidden.dtype, weight.dtype)
        return log_probs

    @staticmethod
    def backward(ctx, grad):
        if ctx.softmaxes is None:
            raise RuntimeError("linear_label_log_probs: its backward turns the saved softmax into the gradient "
                               "in place, so it runs once (no retain_graph)")
        h, w, labels = ctx.saved_tensors
        softmaxes, ctx.softmaxes = ctx.softmaxes, None
        h_dtype, w_dtype = ctx.input_dtypes
        linear = kernel("linear")
        grad_h = torch.empty_like(h)
        acc_dtype = torch.promote_types(h.dtype, torch.float32)  # the softmaxes' (see forward)
        grad_w = lm_loss._weight_grad_buffer(w, acc_dtype, w_dtype, chunks=len(softmaxes))  # the loss's accumulator
        for k, grad_logits in enumerate(softmaxes):
            s, e = k * ctx.rows, k * ctx.rows + grad_logits.shape[0]
            g = grad[s:e, None].to(grad_logits.dtype)
            # d log p(label) / d logits = one-hot(label) - softmax, times the upstream gradient
            grad_logits = grad_logits.mul_(-g).scatter_add_(1, labels[s:e, None], g).to(h.dtype)
            lm_loss._input_grad_(grad_logits, w, grad_h[s:e], linear)
            lm_loss._add_to_weight_grad_(grad_w, grad_logits, h[s:e], first=k == 0)
        return (grad_h.to(h_dtype) if ctx.needs_input_grad[0] else None,
                grad_w.to(w_dtype) if ctx.needs_input_grad[1] else None, None, None)
