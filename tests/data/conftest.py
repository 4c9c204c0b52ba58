"""Fixtures for the data tests: a tiny tokenizer and a directory of small shards."""

from __future__ import annotations

from pathlib import Path

import pytest

from olmolab.data.tokenize import tokenize_files
from olmolab.tokenizer import Tokenizer, train_bpe

from .data_helpers import make_texts, write_jsonl


@pytest.fixture(scope="session")
def tokenizer() -> Tokenizer:
    """A byte-level BPE of 300 tokens (EOS 0, PAD 1), trained in milliseconds."""
    return train_bpe(make_texts(200, seed=1), vocab_size=300)


@pytest.fixture
def token_dir(tmp_path: Path, tokenizer: Tokenizer) -> Path:
    """120 documents tokenized into shards of at most 1000 tokens (several shards)."""
    source = write_jsonl(tmp_path / "docs.jsonl", make_texts(120))
    out = tmp_path / "tokens"
    tokenize_files([source], tokenizer, out, max_shard_bytes=2000)
    return out
