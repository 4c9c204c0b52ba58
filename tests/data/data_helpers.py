"""Helpers for the data tests: small corpora and token files (a module, not conftest, so tests can import it)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

WORDS = (
    "the model reads tokens from shards and every document ends with an end of text token "
    "so that a batch of fixed length instances can cross document boundaries safely"
).split()


def make_texts(n: int, seed: int = 0) -> list[str]:
    """`n` distinct little documents of 5-60 words, some with surrounding whitespace."""
    rng = np.random.default_rng(seed)
    texts = []
    for i in range(n):
        words = rng.choice(WORDS, size=int(rng.integers(5, 60)))
        text = f"doc {i}: " + " ".join(words)
        texts.append(f"  {text}\n" if i % 3 == 0 else text)
    return texts


def write_jsonl(path: Path, texts: list[str], with_ids: bool = True) -> Path:
    rows = [{"id": f"d{i}", "text": t} if with_ids else {"text": t} for i, t in enumerate(texts)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def write_tokens(path: Path, tokens, dtype=np.uint16) -> Path:
    np.asarray(tokens, dtype=dtype).tofile(path)
    return path
