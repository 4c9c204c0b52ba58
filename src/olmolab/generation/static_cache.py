"""Compiled decoding over a static (fixed-size) KV cache: every step is the same computation, so
one `torch.compile`d step serves them all."""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
from torch import Tensor

from olmolab.model.kv_cache import StaticKVCache
from olmolab.model.transformer import Transformer


def decode_step(
    model: Transformer, tokens: Tensor, position: Tensor, key_mask: Tensor, cache: StaticKVCache
) -> Tensor:
    """One token per row over the whole fixed-size cache, so that every step is the same
    computation: the new keys land at the slot after the written ones, and attention reads every
    slot, with the padding (`key_mask`, (B, 1, 1, max_len)) and the slots not yet written
    masked out."""
    attn_mask = key_mask & cache.causal_mask(1, tokens.device)  # (B, 1, 1, max_len)
    hidden = model.trunk(tokens, positions=position, attn_mask=attn_mask, cache=cache)
    return model.logits(hidden, at="last")


@functools.cache
def compiled_decoding() -> Callable[..., Tensor]:
    """`decode_step` through torch.compile: on CPU, inductor fuses each layer's norms, RoPE and
    SwiGLU and turns the single-row matmuls into passes over the weights at near memory bandwidth,
    with no Python between ops. Shapes are static (`dynamic=False`), so each (model, batch size,
    cache size) compiles once; static shapes are also what CUDA graphs would need."""
    return torch.compile(decode_step, dynamic=False)


STATIC_CACHE_MULTIPLE = 256
"""Compiled decoding rounds the cache up to a multiple of this, so that prompts and budgets of
different lengths reuse one compiled step."""


def static_cache_len(needed: int, max_seq_len: int) -> int:
    """`needed` slots rounded up, within the context window (which `needed` never exceeds)."""
    return min(-(-needed // STATIC_CACHE_MULTIPLE) * STATIC_CACHE_MULTIPLE, max_seq_len)

