"""What a generate call is asked for: how many tokens, how to choose them, when to stop.

Built in code (`GenerationConfig(max_new_tokens=...)`) or from a plain mapping (a YAML section,
a command line's options) by the one config loader (`GenerationConfig.from_dict`), which also
checks each value's type; either way `validate` checks the values.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from olmolab.configlib import typed_fields
from olmolab.errors import UserError

TokenCallback = Callable[[int, int], bool | None]
"""on_token(row, token_id) -> True to end that row now (e.g. a stop string appeared)."""


@dataclass
class GenerationConfig:
    max_new_tokens: int = 64
    """At most this many new tokens per prompt (fewer when the context window fills up)."""
    temperature: float = 0.0
    """0 = greedy (argmax); otherwise sample from softmax(logits / temperature)."""
    top_k: int | None = None
    """Sample only among the k most likely tokens (None or 0 = no limit)."""
    top_p: float | None = None
    """Nucleus sampling: the smallest set of tokens whose probability reaches p (None or 1 = all)."""
    seed: int | None = None
    """Seed of the sampling generator, for reproducible samples; None draws from torch's global RNG."""
    stop_token_ids: tuple[int, ...] = field(default_factory=tuple)
    """Tokens that end a row (kept as its last token), in addition to EOS."""
    eos_token_id: int | None = None
    """None = the model's `config.eos_token_id`."""
    stop_at_eos: bool = True
    """False generates `max_new_tokens` whatever comes (what a throughput benchmark wants)."""
    compile: bool = False
    """Decode with one `torch.compile`d step over a fixed-size cache (`static_cache`): faster per
    token for one prompt, after a one-off compilation per model, batch size and cache size
    (`bench/decode.py` times both). On CPU, batches keep the eager path, which is faster there."""

    def __post_init__(self) -> None:
        self.validate()  # built in code too, not only by from_dict: a bad value fails where it is set

    def validate(self) -> None:
        """Raise `UserError` naming the first bad value and what to use instead."""
        if self.max_new_tokens < 1:
            raise UserError(f"max_new_tokens={self.max_new_tokens} must be at least 1")
        if self.temperature < 0:
            raise UserError(f"temperature={self.temperature} must be >= 0 (0 means greedy)")
        if self.top_k is not None and self.top_k < 0:
            raise UserError(f"top_k={self.top_k} must be >= 1 (or 0 / unset for no limit)")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise UserError(f"top_p={self.top_p} must be in (0, 1]")

    @classmethod
    def from_dict(cls, raw: dict[str, Any], where: str = "generation") -> GenerationConfig:
        """From a plain mapping by the one config loader: unknown keys, wrong types and bad
        values are `UserError`s naming the key (`where.key`)."""
        fields = typed_fields(cls, raw, where)
        try:
            return cls(**fields)
        except UserError as e:  # `validate` names the key; the caller knows the section
            raise UserError(f"{where}.{e}") from None

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

