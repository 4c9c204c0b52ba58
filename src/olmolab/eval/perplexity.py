"""Loss, perplexity and bits-per-byte on held-out text or token files.

Every document is scored on its own, from its start, so the numbers do not depend on how
documents happen to be laid out or chunked:

- A document is `[start] + tokens`, where `start` is BOS if the tokenizer has one, else EOS:
  in OLMo's packed training data every document follows the previous one's EOS, so EOS is what
  the model has learned to see before a document. Every token of the text is then predicted.
- A document longer than the context window is scored with a sliding window: the first window
  scores its first `window` tokens; each next window moves `stride` tokens on, scores only the
  tokens not scored yet, and keeps the `window - stride` tokens before them as context. Every
  token is scored exactly once, with at least `window - stride` tokens of context (or all of
  the document before it). `stride = window` gives disjoint chunks; smaller strides cost
  `window / stride` times more compute for more context per token.

Reported (token-weighted over the whole set, as OLMo-core's LM evaluator):
    CrossEntropyLoss = total nats / scored tokens,  Perplexity = exp(CrossEntropyLoss),
    BitsPerByte      = total nats / (ln 2 * UTF-8 bytes of the scored text)
BPB does not depend on the tokenizer, so it compares models with different vocabularies.
For token files the bytes are those of the decoded documents (EOS decodes to nothing).
"""

from __future__ import annotations

import gzip
import json
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from olmolab.errors import UserError
from olmolab.eval.downstream import TextTokenizer, encode_many
from olmolab.eval.scoring import Row, model_window, score_rows


@dataclass(frozen=True)
class Document:
    tokens: np.ndarray
    """`[start] + tokens`: the first token is context only, all others are scored."""
    n_bytes: int | None
    """UTF-8 bytes of the scored text; None when unknown (a token file without a tokenizer)."""


@dataclass
class PerplexityResult:
    label: str
    loss: float
    perplexity: float
    bits_per_byte: float | None
    n_tokens: int
    n_bytes: int | None
    n_documents: int

    def metrics(self, prefix: str = "eval") -> dict[str, float]:
        """OLMo's in-loop names: eval/{label}/CrossEntropyLoss, .../Perplexity, .../BitsPerByte."""
        out = {
            f"{prefix}/{self.label}/CrossEntropyLoss": self.loss,
            f"{prefix}/{self.label}/Perplexity": self.perplexity,
        }
        if self.bits_per_byte is not None:
            out[f"{prefix}/{self.label}/BitsPerByte"] = self.bits_per_byte
        return out


# ---------------------------------------------------------------------------------- documents


def start_token(tokenizer: TextTokenizer) -> int:
    start = (
        tokenizer.bos_token_id
        if getattr(tokenizer, "bos_token_id", None) is not None
        else tokenizer.eos_token_id
    )
    if start is None:
        raise UserError("the tokenizer has neither BOS nor EOS; perplexity needs one to start each document")
    return int(start)


def text_documents(
    texts: Sequence[str], tokenizer: TextTokenizer, max_tokens: int | None = None
) -> list[Document]:
    """Documents of texts; `max_tokens` keeps them in order until that many tokens, cutting the last."""
    start = start_token(tokenizer)
    docs, budget = [], max_tokens
    for text, ids in zip(texts, encode_many(tokenizer, texts), strict=True):
        if budget is not None:
            if budget <= 0:
                break
            if len(ids) > budget:
                ids = ids[:budget]
                text = tokenizer.decode(ids)
            budget -= len(ids)
        if ids:
            docs.append(Document(np.array([start, *ids], dtype=np.int64), len(text.encode("utf-8"))))
    return docs


def read_texts(path: Path) -> list[str]:
    """Documents of a text file: a .txt file is one document; .jsonl[.gz] has one `text` per line."""
    if not path.is_file():
        raise UserError(
            f"{path}: no such file (expected .txt, or .jsonl / .jsonl.gz with a 'text' field per line)"
        )
    try:
        if path.name.endswith((".jsonl", ".jsonl.gz", ".json.gz")):
            return _read_jsonl_texts(path)
        return [path.read_text(encoding="utf-8")]
    except UnicodeDecodeError as e:
        raise UserError(
            f"{path}: not UTF-8 text (byte {e.start}: {e.reason}); convert it to UTF-8, or score a raw "
            f"token file with --perplexity-dtype"
        ) from e
    except OSError as e:  # a truncated or non-gzip .gz among them
        raise UserError(f"{path}: cannot read it ({e})") from e


def _read_jsonl_texts(path: Path) -> list[str]:
    opener = gzip.open if path.suffix == ".gz" else open
    texts = []
    with opener(path, "rt", encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"{path}:{line_no}: not valid JSON ({e.msg}, column {e.colno})") from e
            if not isinstance(row, dict) or not isinstance(row.get("text"), str):
                raise UserError(
                    f"{path}:{line_no}: no 'text' string; each line must be a JSON object with 'text'"
                )
            texts.append(row["text"])
    return texts


def split_token_stream(tokens: np.ndarray, eos: int) -> Iterator[np.ndarray]:
    """Documents of a flat token array (OLMo's shard layout: each document ends with EOS)."""
    ends = np.flatnonzero(tokens == eos) + 1
    start = 0
    for end in [*ends.tolist(), len(tokens)]:
        if end > start:
            yield tokens[start:end]
        start = end


def token_documents(
    tokens: np.ndarray, eos: int, tokenizer: TextTokenizer | None = None, max_tokens: int | None = None
) -> list[Document]:
    """Documents of a raw token array (e.g. `np.memmap(path, dtype=np.uint32)`), each scored after an EOS.

    `max_tokens` keeps the first that many tokens of the file (the last document may be cut).
    """
    decode = getattr(tokenizer, "decode", None)
    docs = []
    for doc in split_token_stream(np.asarray(tokens[:max_tokens]), eos):
        ids = doc.astype(np.int64)
        text_ids = ids[:-1] if ids[-1] == eos else ids
        n_bytes = len(decode(text_ids.tolist()).encode("utf-8")) if decode else None
        docs.append(Document(np.concatenate([[eos], ids]), n_bytes))
    return docs


def read_token_file(path: Path, dtype: str) -> np.ndarray:
    """A raw token file as written by OLMo / Dolma tooling: no header, the dtype is not recorded."""
    if not path.is_file():
        raise UserError(f"{path}: no such token file")
    try:
        np_dtype = np.dtype(dtype)
    except TypeError as e:
        raise UserError(f"{path}: dtype {dtype!r} is not a numpy dtype; use uint16 or uint32") from e
    if path.stat().st_size % np_dtype.itemsize:
        raise UserError(
            f"{path}: size is not a multiple of {np_dtype.itemsize} bytes; is dtype {dtype} right?"
        )
    return np.memmap(path, dtype=np_dtype, mode="r")


# ---------------------------------------------------------------------------------- scoring


def windows(n_tokens: int, window: int, stride: int) -> Iterator[tuple[int, int, int]]:
    """(begin, end, first) per window over a document of `n_tokens` (with its start token).

    The model input is tokens[begin:end]; input positions `first..end-1` are scored, each
    predicting the token after it. Positions 0..n_tokens-2 are each scored exactly once.
    """
    scored = 0
    while scored < n_tokens - 1:
        end = min(window if scored == 0 else scored + stride, n_tokens - 1)
        begin = max(0, end - window)
        yield begin, end, scored
        scored = end


def document_rows(docs: Sequence[Document], window: int, stride: int) -> list[Row]:
    rows = []
    for key, doc in enumerate(docs):
        tokens = doc.tokens.tolist()
        for begin, end, first in windows(len(tokens), window, stride):
            targets = [(pos - begin, tokens[pos + 1], key) for pos in range(first, end)]
            rows.append(Row(tokens[begin:end], targets))
    return rows


def evaluate_documents(
    model,
    docs: Sequence[Document],
    label: str = "perplexity",
    *,
    stride: int | None = None,
    batch_size: int = 32,
    progress: bool = False,
) -> PerplexityResult:
    """Token-weighted loss, perplexity and BPB of `docs`; stride defaults to half the window."""
    if not docs:
        raise UserError(f"{label}: no documents to score")
    window = model_window(model)
    stride = stride or max(1, window // 2)
    if not 1 <= stride <= window:
        raise UserError(f"{label}: stride {stride} must be between 1 and the model's window ({window})")
    rows = document_rows(docs, window, stride)
    totals, counts = score_rows(model, rows, len(docs), batch_size, progress=label if progress else None)
    known_bytes = all(d.n_bytes is not None for d in docs)
    n_bytes = sum(d.n_bytes for d in docs) if known_bytes else None
    return perplexity_from_totals(label, -float(totals.sum()), int(counts.sum()), n_bytes, len(docs))


def perplexity_from_totals(label: str, nats: float, n_tokens: int, n_bytes: int | None,
                           n_documents: int) -> PerplexityResult:
    """Loss, perplexity and bits-per-byte from summed negative log-likelihood (nats): the one
    definition of these metrics, for `olmolab eval` and the trainer's validation alike."""
    loss = nats / max(n_tokens, 1)
    perplexity = math.exp(loss) if loss < 700 else math.inf  # exp overflows a float past ~709
    bpb = nats / (math.log(2) * n_bytes) if n_bytes else None
    return PerplexityResult(label, loss, perplexity, bpb, n_tokens, n_bytes, n_documents)


def load_documents(
    path: str | Path, tokenizer: TextTokenizer | None, dtype: str | None = None, max_tokens: int | None = None
) -> list[Document]:
    """Documents of a text file (`dtype=None`) or of a raw token file of that dtype."""
    path = Path(path)
    if dtype is None:
        if tokenizer is None:
            raise UserError(f"{path}: scoring text needs a tokenizer")
        return text_documents(read_texts(path), tokenizer, max_tokens)
    eos = getattr(tokenizer, "eos_token_id", None)
    if eos is None:
        raise UserError(
            f"{path}: a token file is split into documents at EOS; give a tokenizer with an EOS id"
        )
    return token_documents(read_token_file(path, dtype), eos, tokenizer, max_tokens)
