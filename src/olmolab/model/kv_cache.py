"""Keys and values of the tokens seen so far, one type per way of decoding.

Both keep one preallocated buffer per layer, (B, n_kv_heads, max_len, head_dim), the layout
SDPA consumes, and answer the same three questions for `Transformer.trunk`: where the new
tokens sit (`positions`), what they may attend to (`causal_mask`), and which keys and values
attention reads once this layer's are stored (`write`).

- `KVCache` (eager decoding): `length`, a Python int, is how many slots are filled; attention
  reads that filled prefix, so its width grows by one every step.
- `StaticKVCache` (compiled decoding): `filled` is a 0-dim tensor, so every step is the same
  computation (what torch.compile and CUDA graphs need); attention reads the whole buffer and
  the mask hides the slots not yet written.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from olmolab.model.config import ModelConfig


def _buffers(config: ModelConfig, batch_size: int, max_len: int, device, dtype) -> tuple[list[Tensor], list[Tensor]]:
    """Zeroed keys and values, (B, n_kv_heads, max_len, head_dim) per layer."""
    shape = (batch_size, config.n_kv_heads, max_len, config.head_dim)
    return ([torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layers)],
            [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layers)])


@dataclass
class KVCache:
    """The eager cache: the first `length` slots of each layer's buffer are filled, and the
    model advances `length` after each forward."""

    keys: list[Tensor]
    values: list[Tensor]
    length: int = 0

    @classmethod
    def allocate(cls, config: ModelConfig, batch_size: int, max_len: int, device=None, dtype=None) -> KVCache:
        return cls(*_buffers(config, batch_size, max_len, device, dtype))

    @property
    def max_len(self) -> int:
        return self.keys[0].shape[2]

    def positions(self, new: int) -> slice:
        """The RoPE positions of `new` tokens after the cached ones."""
        return slice(self.length, self.length + new)

    def causal_mask(self, new: int, device) -> Tensor | None:
        """The mask for `new` tokens after the cached ones, or None where none is needed (a first
        chunk is plainly causal; one new token may see every cached one)."""
        if self.length == 0 or new == 1:
            return None
        return torch.ones(new, self.length + new, dtype=torch.bool, device=device).tril(diagonal=self.length)

    def write(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Stores `layer`'s new keys and values (B, nkv, T, hd) after the filled prefix; returns
        the prefix including them, what attention reads."""
        end = self.length + k.shape[2]
        self.keys[layer][:, :, self.length : end] = k
        self.values[layer][:, :, self.length : end] = v
        return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]

    def advance(self, new: int) -> None:
        self.length += new

    def keep_rows(self, index: Tensor) -> None:
        """Keeps only the batch rows `index` (the others have finished decoding)."""
        self.keys = [k.index_select(0, index) for k in self.keys]
        self.values = [v.index_select(0, index) for v in self.values]


@dataclass
class StaticKVCache:
    """The compiled decoder's cache: `filled` slots of each fixed-size buffer are written, and
    every step reads the whole buffer, so no shape changes from step to step."""

    keys: list[Tensor]
    values: list[Tensor]
    filled: Tensor
    """0-dim int64: a tensor, not an int, so that the compiled step does not specialise on it."""

    @classmethod
    def allocate(cls, config: ModelConfig, batch_size: int, max_len: int, device=None, dtype=None) -> StaticKVCache:
        return cls(*_buffers(config, batch_size, max_len, device, dtype), torch.zeros((), dtype=torch.long, device=device))

    @classmethod
    def continuing(cls, cache: KVCache) -> StaticKVCache:
        """Continues an eager cache (a prompt prefilled at its own width) on the same buffers."""
        return cls(cache.keys, cache.values, torch.tensor(cache.length, device=cache.keys[0].device))

    @property
    def max_len(self) -> int:
        return self.keys[0].shape[2]

    def positions(self, new: int) -> Tensor:
        """The RoPE positions of `new` tokens after the written ones, (1, new)."""
        return (self.filled + torch.arange(new, device=self.filled.device))[None]

    def causal_mask(self, new: int, device) -> Tensor:
        """(new, max_len): each new token sees the slots written before it and itself, never the
        ones not yet written (zeros, which would still draw attention weight)."""
        slots = torch.arange(self.max_len, device=device)
        return slots[None, :] <= self.filled + torch.arange(new, device=device)[:, None]

    def write(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Stores `layer`'s new keys and values (B, nkv, T, hd) at the slots after the written
        ones; returns the whole buffer, what attention reads under `causal_mask`."""
        slots = self.filled + torch.arange(k.shape[2], device=self.filled.device)
        self.keys[layer].index_copy_(2, slots, k)
        self.values[layer].index_copy_(2, slots, v)
        return self.keys[layer], self.values[layer]

    def advance(self, new: int) -> None:
        self.filled += new  # in place: the compiled step mutates its input, it does not return one


Cache = KVCache | StaticKVCache
