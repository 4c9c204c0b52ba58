"""Choosing the next token from logits: greedy, or sampling after temperature, top-k and top-p."""

from __future__ import annotations

import torch
from torch import Tensor

from olmolab.generation.config import GenerationConfig


def next_token(logits: Tensor, config: GenerationConfig, generator: torch.Generator | None) -> Tensor:
    """(B, V) logits -> (B,) token ids: argmax, or a sample after temperature, top-k and top-p
    (applied in that order, as transformers does)."""
    if config.greedy:
        return logits.argmax(dim=-1)
    logits = logits.float() / config.temperature
    if config.top_k and config.top_k < logits.shape[-1]:
        kth_best = logits.topk(config.top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth_best, float("-inf"))
    if config.top_p is not None and config.top_p < 1:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        # Drop a token when the tokens ranked above it already reach top_p; the best one stays.
        outside = probs.cumsum(dim=-1) - probs >= config.top_p
        sorted_logits = sorted_logits.masked_fill(outside, float("-inf"))
        logits = torch.empty_like(logits).scatter_(-1, order, sorted_logits)
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(-1)

