"""Generation as text: stop strings, and streaming the text as it is produced without ever
showing half a character or the start of a stop string."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

from olmolab.generation.config import GenerationConfig
from olmolab.generation.decode import generate
from olmolab.model.transformer import Transformer


class _TextRow:
    """One prompt's completion as text: stop strings, and what may safely be streamed so far."""

    def __init__(self, tokenizer, stop_strings: Sequence[str], skip_ids: set[int]):
        self.tokenizer, self.stop_strings, self.skip_ids = tokenizer, stop_strings, skip_ids
        self.ids: list[int] = []
        self.text = ""
        self.emitted = 0  # characters of `text` already handed to the stream
        self.done = False

    def add(self, token: int) -> bool:
        """Take a new token; True when a stop string has appeared (the text is cut before it)."""
        if token in self.skip_ids:
            return False
        self.ids.append(token)
        self.text = self.tokenizer.decode(self.ids)
        longest = max((len(s) for s in self.stop_strings), default=0)
        search_from = max(0, self.emitted - longest)
        hits = [i for s in self.stop_strings if (i := self.text.find(s, search_from)) >= 0]
        if hits:
            self.text, self.done = self.text[: min(hits)], True
        return self.done

    def ready(self) -> str:
        """New text that can be shown: not a half-decoded character, not the start of a stop string."""
        end = len(self.text)
        if not self.done:
            if self.text.endswith("\ufffd"):  # the byte-level BPE has not finished this character
                end -= 1
            end -= max((k for stop in self.stop_strings for k in range(1, min(len(stop), end + 1))
                        if self.text[:end].endswith(stop[:k])), default=0)
        end = max(end, self.emitted)
        piece, self.emitted = self.text[self.emitted : end], end
        return piece


def generate_text(
    model: Transformer,
    tokenizer,
    prompts: Sequence[str],
    config: GenerationConfig | None = None,
    *,
    stop_strings: Sequence[str] = (),
    on_text: Callable[[int, str], None] | None = None,
) -> list[str]:
    """The completion of each prompt as text, cut before the first stop string.

    `tokenizer` has `encode(text) -> ids` and `decode(ids) -> text` (olmolab.tokenizer.Tokenizer).
    EOS, stop tokens and stop strings are not part of the returned text. `on_text(row, piece)`
    receives the text as it is produced (pieces join to the returned text).
    An empty prompt starts from EOS, the document separator OLMo models were trained with.
    """
    config = config or GenerationConfig()
    eos = model.config.eos_token_id if config.eos_token_id is None else config.eos_token_id
    encoded = [tokenizer.encode(p) or [eos] for p in prompts]
    return complete_ids(model, tokenizer, encoded, config, stop_strings=stop_strings, on_text=on_text)


def complete_ids(
    model: Transformer,
    tokenizer,
    prompts: Sequence[Sequence[int]],
    config: GenerationConfig | None = None,
    *,
    stop_strings: Sequence[str] = (),
    on_text: Callable[[int, str], None] | None = None,
) -> list[str]:
    """`generate_text` for prompts already encoded (evaluation adds BOS and truncates them itself)."""
    config = config or GenerationConfig()
    eos = model.config.eos_token_id if config.eos_token_id is None else config.eos_token_id
    tokenizer_eos = getattr(tokenizer, "eos_token_id", None)
    if config.stop_at_eos and tokenizer_eos is not None and tokenizer_eos != eos:
        config = dataclasses.replace(config, stop_token_ids=(*config.stop_token_ids, tokenizer_eos))
    stop_strings = [s for s in stop_strings if s]
    skip_ids = set(config.stop_token_ids) | ({eos} if config.stop_at_eos else set())
    rows = [_TextRow(tokenizer, stop_strings, skip_ids) for _ in prompts]

    def on_token(row: int, token: int) -> bool:
        stop = rows[row].add(token)
        if on_text is not None and (piece := rows[row].ready()):
            on_text(row, piece)
        return stop

    generate(model, prompts, config, on_token=on_token)
    for row, state in enumerate(rows):
        state.done = True
        if on_text is not None and (piece := state.ready()):
            on_text(row, piece)
    return [state.text for state in rows]
