"""The plain formulas: what every kernel computes, and what runs where no faster path applies.

Each faster implementation in this package is tested against its formula here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def linear(x: Tensor, weight: Tensor) -> Tensor:
    """x @ weight.T, no bias."""
    return F.linear(x, weight)


def rms_norm(x: Tensor, weight: Tensor, eps: float, residual: Tensor | None = None) -> Tensor:
    """x / rms(x) * weight over the last dimension, in fp32 whatever x's dtype (as OLMo 2 and
    transformers compute it), returned in x's dtype; with `residual`, residual + that (OLMo 2's
    post-norm residual add: x is what a sub-layer returned)."""
    y = F.rms_norm(x.float(), (x.shape[-1],), weight.float(), eps).to(x.dtype)
    return y if residual is None else residual + y


def rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """RoPE in the rotate-half layout: x * [cos, cos] + rotate_half(x) * [sin, sin], in fp32.

    x: (..., D); cos, sin: the angles' (..., D/2) tables, broadcastable against x's halves.
    """
    x1, x2 = x.float().chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).to(x.dtype)


def swiglu(x: Tensor) -> Tensor:
    """silu(gate) * up, where x's last dimension holds [up, gate] (OLMo's fused ff_proj layout)."""
    up, gate = x.chunk(2, dim=-1)
    return F.silu(gate) * up


def softmax_rows_(logits: Tensor) -> Tensor:
    """Overwrite (N, V) `logits` with their softmax over V (computed in fp32 at least), return the
    (N,) log-sum-exps in that dtype: the fused loss's pass over a chunk of logits."""
    upcast = logits.to(torch.promote_types(logits.dtype, torch.float32))
    lse = torch.logsumexp(upcast, dim=-1)
    logits.copy_(torch.softmax(upcast, dim=-1))
    return lse


def causal_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None) -> Tensor:
    """Causal SDPA, or SDPA under `mask` ((B, 1, T, T) boolean, True = may attend: the caller's
    restriction of causal attention, e.g. a packed batch's documents, taken as given); q:
    (B, heads, T, hd), and k, v (B, kv_heads, T, hd) with kv_heads dividing heads (grouped-query
    attention)."""
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None,
                                          enable_gqa=k.shape[1] != q.shape[1])
