"""ModelConfig: the architecture of an OLMo / OLMo 2 model, its named presets, and its size.

The two families differ in a few named switches (see `Transformer` for where each acts):

| switch          | OLMo 1 (2024)                         | OLMo 2 (2024-25)                        |
|-----------------|---------------------------------------|-----------------------------------------|
| `norm`          | "layernorm": non-parametric LayerNorm | "rmsnorm": RMSNorm with a weight        |
| `norm_placement`| "pre": norm the sub-layer *input*     | "post": norm the sub-layer *output*     |
| `qk_norm`       | False                                 | True (full-width, before the head split)|
| `norm_eps`      | 1e-5                                  | 1e-6                                    |
| `rope_theta`    | 10,000                                | 500,000                                 |
| `weight_tying`  | True for OLMo-1B only                 | False                                   |
| `clip_qkv`      | None, or 8.0 for OLMo 1.7             | None                                    |
| `init`          | "mitchell"                            | "normal" (trunc-normal, std 0.02, ±3σ)  |

Official dimensions come from AI2's published configs (allenai/OLMo `configs/official-*`, the
Hugging Face `config.json` of each release); see `../shared/OLMO_REFERENCE.md` §3.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Literal

from olmolab.configlib import from_dict, to_dict
from olmolab.errors import UserError

NormKind = Literal["layernorm", "rmsnorm"]
NormPlacement = Literal["pre", "post"]
InitKind = Literal["normal", "mitchell"]


def pad_vocab(vocab_size: int, multiple: int = 128) -> int:
    """The embedding size OLMo uses: the tokenizer's vocabulary rounded up to a multiple of 128."""
    return multiple * math.ceil(vocab_size / multiple)


@dataclass
class ModelConfig:
    d_model: int
    n_layers: int
    n_heads: int
    mlp_hidden_size: int
    """Width of the SwiGLU hidden layer (Hugging Face's `intermediate_size`; OLMo's fused
    `mlp_hidden_size` is twice this)."""
    vocab_size: int
    """Tokens the tokenizer can produce."""
    embedding_size: int | None = None
    """Rows of the embedding and LM head; OLMo pads the vocabulary to a multiple of 128.
    None means `pad_vocab(vocab_size)`."""
    n_kv_heads: int | None = None
    """Key/value heads for grouped-query attention (1 = MQA). None means `n_heads` (MHA)."""
    max_seq_len: int = 2048
    rope_theta: float = 10_000.0
    norm: NormKind = "rmsnorm"
    norm_placement: NormPlacement = "post"
    qk_norm: bool = True
    norm_eps: float = 1e-6
    clip_qkv: float | None = None
    weight_tying: bool = False
    init: InitKind = "normal"
    init_std: float = 0.02
    init_cutoff_factor: float = 3.0
    eos_token_id: int = 0
    pad_token_id: int = 1
    bos_token_id: int | None = None
    name: str = field(default="custom", compare=False)

    def __post_init__(self) -> None:
        if self.embedding_size is None:
            self.embedding_size = pad_vocab(self.vocab_size)
        if self.n_kv_heads is None:
            self.n_kv_heads = self.n_heads
        self.validate()

    # ------------------------------------------------------------------ validation

    def validate(self) -> None:
        def fail(msg: str) -> None:
            raise UserError(f"ModelConfig({self.name}): {msg}")

        for key in ("d_model", "n_layers", "n_heads", "n_kv_heads", "mlp_hidden_size", "vocab_size", "max_seq_len"):
            if getattr(self, key) < 1:
                fail(f"{key}={getattr(self, key)} must be a positive integer")
        if self.d_model % self.n_heads:
            fail(
                f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}; "
                f"choose n_heads among {_divisors(self.d_model)} or change d_model"
            )
        if self.n_heads % self.n_kv_heads:
            fail(
                f"n_heads={self.n_heads} is not divisible by n_kv_heads={self.n_kv_heads}; "
                f"choose n_kv_heads among {_divisors(self.n_heads)}"
            )
        if self.head_dim % 2:
            fail(f"head_dim = d_model/n_heads = {self.head_dim} must be even for RoPE")
        if self.embedding_size < self.vocab_size:
            fail(f"embedding_size={self.embedding_size} is smaller than vocab_size={self.vocab_size}")
        if self.norm not in ("layernorm", "rmsnorm"):
            fail(f"norm={self.norm!r}; expected 'layernorm' (OLMo 1) or 'rmsnorm' (OLMo 2)")
        if self.norm_placement not in ("pre", "post"):
            fail(f"norm_placement={self.norm_placement!r}; expected 'pre' (OLMo 1) or 'post' (OLMo 2)")
        if self.init not in ("normal", "mitchell"):
            fail(f"init={self.init!r}; expected 'normal' (OLMo 2) or 'mitchell' (OLMo 1)")
        if self.clip_qkv is not None and self.clip_qkv <= 0:
            fail(f"clip_qkv={self.clip_qkv} must be positive, or None to disable clipping")
        for key in ("eos_token_id", "pad_token_id"):
            if not 0 <= getattr(self, key) < self.embedding_size:
                fail(f"{key}={getattr(self, key)} is outside the vocabulary [0, {self.embedding_size})")

    # ------------------------------------------------------------------ derived sizes

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def kv_dim(self) -> int:
        return self.n_kv_heads * self.head_dim

    @property
    def family(self) -> str:
        """'olmo2' for RMSNorm + reordered norm, else 'olmo' (the HF model_type of the export)."""
        return "olmo2" if self.norm == "rmsnorm" else "olmo"

    def num_params(self, include_embedding: bool = True) -> int:
        """Trainable parameters, counted from the config (equals `sum(p.numel())` of the model)."""
        d, kv, h = self.d_model, self.kv_dim, self.mlp_hidden_size
        attention = d * (d + 2 * kv) + d * d
        mlp = 3 * d * h
        norms = 0
        if self.norm == "rmsnorm":
            norms += 2 * d  # the two block norms
            norms += (d + kv) if self.qk_norm else 0
        per_block = attention + mlp + norms
        final_norm = d if self.norm == "rmsnorm" else 0
        total = self.n_layers * per_block + final_norm
        if include_embedding:
            heads = 1 if self.weight_tying else 2
            total += heads * self.embedding_size * d
        return total

    def num_non_embedding_params(self) -> int:
        return self.num_params(include_embedding=False)

    def flops_per_token(self, seq_len: int | None = None) -> float:
        """Training FLOPs per token (forward + backward), as OLMo's speed monitor counts them.

            6 * (non-embedding params + lm_head params)  +  12 * n_layers * d_model * seq_len

        The first term is the matmuls (2 FLOPs per multiply-add, x3 for forward + backward);
        the LM head is a matmul even when tied. The second is attention's QK^T and AV over the
        full (not causally halved) sequence. Forward alone is a third of this.
        """
        seq_len = seq_len or self.max_seq_len
        matmul_params = self.num_non_embedding_params() + self.embedding_size * self.d_model
        return 6.0 * matmul_params + 12.0 * self.n_layers * self.d_model * seq_len

    # ------------------------------------------------------------------ (de)serialisation

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "model") -> ModelConfig:
        """From a plain mapping (a saved config.json's "model", a YAML `model:` section); with a
        `preset: NAME` key, the preset's values with the other keys as overrides."""
        if isinstance(data, dict) and "preset" in data:
            data = dict(data)
            name = data.pop("preset")
            if name not in PRESETS:
                raise UserError(f"{where}.preset={name!r} is unknown; the presets are {', '.join(PRESETS)}")
            data = PRESETS[name] | {"name": name} | data
        return from_dict(cls, data, where)

    def replace(self, **changes: Any) -> ModelConfig:
        return dataclasses.replace(self, **changes)

    # ------------------------------------------------------------------ presets

    @classmethod
    def preset(cls, name: str, /, **overrides: Any) -> ModelConfig:
        """A named architecture, e.g. `ModelConfig.preset("olmo2-7b")`; keyword overrides win."""
        if name not in PRESETS:
            raise UserError(f"unknown model preset {name!r}; available presets: {', '.join(PRESETS)}")
        return cls(**{**PRESETS[name], "name": name, **overrides})

    @staticmethod
    def preset_names() -> list[str]:
        return list(PRESETS)


def _divisors(n: int) -> list[int]:
    return [k for k in range(1, n + 1) if n % k == 0]


# Tokenizer facts (OLMO_REFERENCE §2.4): OLMo 1's GPT-NeoX-based vocabulary of 50,280 padded to
# 50,304, EOS 50279, PAD 1; OLMo 2's dolma2 (cl100k-based) vocabulary of 100,278 padded to 100,352,
# EOS 100257, PAD 100277.
_OLMO1 = dict(
    norm="layernorm", norm_placement="pre", qk_norm=False, norm_eps=1e-5, rope_theta=10_000.0,
    init="mitchell", vocab_size=50280, embedding_size=50304, eos_token_id=50279, pad_token_id=1,
)
_OLMO2 = dict(
    norm="rmsnorm", norm_placement="post", qk_norm=True, norm_eps=1e-6, rope_theta=500_000.0,
    init="normal", vocab_size=100278, embedding_size=100352, eos_token_id=100257, pad_token_id=100277,
)
# The small sizes train on a CPU; their default vocabulary suits a tokenizer trained with
# `olmolab tokenizer train --vocab-size 16384` (override vocab_size for another tokenizer).
_SMALL_VOCAB = dict(vocab_size=16384, embedding_size=16384, eos_token_id=0, pad_token_id=1)

PRESETS: dict[str, dict[str, Any]] = {
    # Official sizes.
    "olmo-1b": dict(_OLMO1, d_model=2048, n_layers=16, n_heads=16, mlp_hidden_size=8192,
                    max_seq_len=2048, weight_tying=True),
    "olmo-7b": dict(_OLMO1, d_model=4096, n_layers=32, n_heads=32, mlp_hidden_size=11008, max_seq_len=2048),
    "olmo2-1b": dict(_OLMO2, d_model=2048, n_layers=16, n_heads=16, mlp_hidden_size=8192, max_seq_len=4096),
    "olmo2-7b": dict(_OLMO2, d_model=4096, n_layers=32, n_heads=32, mlp_hidden_size=11008, max_seq_len=4096),
    "olmo2-13b": dict(_OLMO2, d_model=5120, n_layers=40, n_heads=40, mlp_hidden_size=13824, max_seq_len=4096),
    # Tiny sizes for tests: a few layers, GQA on, a vocabulary that fits a toy tokenizer.
    "olmo-tiny": dict(_OLMO1, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, mlp_hidden_size=192,
                      max_seq_len=256, weight_tying=True, vocab_size=512, embedding_size=512,
                      eos_token_id=0, pad_token_id=1),
    "olmo2-tiny": dict(_OLMO2, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, mlp_hidden_size=192,
                       max_seq_len=256, vocab_size=512, embedding_size=512, eos_token_id=0, pad_token_id=1),
    # CPU-trainable sizes (~20M and ~60M parameters with the 16k vocabulary).
    "olmo2-20m": dict(_OLMO2, **_SMALL_VOCAB, d_model=256, n_layers=10, n_heads=8, mlp_hidden_size=1024,
                      max_seq_len=1024),
    "olmo2-60m": dict(_OLMO2, **_SMALL_VOCAB, d_model=512, n_layers=12, n_heads=8, mlp_hidden_size=1536,
                      max_seq_len=1024),
}
