"""Reading token files: OLMo / Dolma raw arrays and our shards, their document indexes and label masks.

A token file is a flat array of ids with no header (OLMo's format, despite the `.npy` name).
Its dtype comes from our JSON sidecar (`part-00000.json`) when there is one; a file written
by OLMo or Dolma tooling has none, so the dtype must be given. The document index is Dolma's
provenance file beside it (`part-00000.csv.gz`: `start,end,id,source_path,line_number`), which
our tokenizer writes too. A label mask (OLMo's `label_mask_paths`) is a raw `np.bool_` array
of the same length.

Reads are byte ranges (`pread`), as in OLMo's `_read_chunk_from_memmap`: no file stays open
and nothing is mapped, so memory does not grow with the corpus and thousands of files do not
exhaust file descriptors.
"""

from __future__ import annotations

import csv
import gzip
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from olmolab.data.paths import expand_paths
from olmolab.errors import UserError
from olmolab.tokenizer import TokenizerIdentity

TOKEN_DTYPES = ("uint8", "uint16", "uint32", "uint64")


@dataclass(frozen=True)
class DocumentIndex:
    """The documents of one token file, sorted by position: token ranges `[start, end)`, EOS included."""

    starts: np.ndarray
    ends: np.ndarray
    ids: list[str]
    sources: list[str]
    lines: np.ndarray

    def __len__(self) -> int:
        return len(self.ids)

    def overlapping(self, start: int, end: int) -> range:
        """Positions (in this index) of the documents that share tokens with `[start, end)`."""
        first = int(np.searchsorted(self.ends, start, side="right"))
        last = int(np.searchsorted(self.starts, end, side="left"))
        return range(first, last)

    def find(self, doc_id: str) -> list[int]:
        """Positions of the documents with this id (ids need not be unique)."""
        return [i for i, candidate in enumerate(self.ids) if candidate == doc_id]

    @classmethod
    def read_dolma_csv(cls, path: str | Path) -> DocumentIndex:
        try:
            with gzip.open(path, "rt", encoding="utf-8", newline="") as f:
                rows = list(csv.reader(f))
        except (OSError, EOFError, UnicodeDecodeError, csv.Error) as e:
            raise UserError(f"cannot read the document index {path}: {e}") from e
        for number, row in enumerate(rows, start=1):
            if len(row) != 5:
                raise UserError(
                    f"{path}:{number}: expected 5 columns start,end,id,source_path,line_number (Dolma's format), got {len(row)}"
                )
        rows.sort(key=lambda row: int(row[0]))  # Dolma writes rows in its own order
        return cls(
            starts=np.array([int(r[0]) for r in rows], dtype=np.int64),
            ends=np.array([int(r[1]) for r in rows], dtype=np.int64),
            ids=[r[2] for r in rows],
            sources=[r[3] for r in rows],
            lines=np.array([int(r[4]) for r in rows], dtype=np.int64),
        )


class TokenFile:
    """One flat token array on disk and what is known about it."""

    def __init__(self, path: str | Path, dtype: str | np.dtype | None = None, label_mask_path: str | Path | None = None):
        self.path = Path(path)
        self.sidecar = _read_sidecar(self.path)
        self.dtype = _resolve_dtype(self.path, dtype, self.sidecar)
        self.num_tokens = _count(self.path, self.dtype, "token file")
        if self.sidecar is not None and self.sidecar["num_tokens"] != self.num_tokens:
            raise UserError(
                f"{self.path}: holds {self.num_tokens} tokens but its sidecar says {self.sidecar['num_tokens']}; "
                "the file is damaged or was replaced: tokenize it again"
            )
        self.label_mask_path = Path(label_mask_path) if label_mask_path is not None else None
        if self.label_mask_path is not None:
            mask_len = _count(self.label_mask_path, np.dtype(np.bool_), "label mask")
            if mask_len != self.num_tokens:
                raise UserError(
                    f"label mask {self.label_mask_path} has {mask_len} entries but {self.path} has {self.num_tokens} "
                    "tokens; a label mask must be an np.bool_ array of the same length as its token file"
                )

    def __repr__(self) -> str:
        return f"TokenFile({str(self.path)!r}, dtype={self.dtype.name}, num_tokens={self.num_tokens})"

    @property
    def tokenizer(self) -> TokenizerIdentity | None:
        """The tokenizer that wrote the file, when our sidecar says."""
        return TokenizerIdentity.from_dict(self.sidecar["tokenizer"]) if self.sidecar else None

    def read(self, start: int, end: int) -> np.ndarray:
        """Tokens `[start, end)`, in the file's dtype."""
        return _pread(self.path, self.dtype, start, end)

    def read_label_mask(self, start: int, end: int) -> np.ndarray | None:
        if self.label_mask_path is None:
            return None
        return _pread(self.label_mask_path, np.dtype(np.bool_), start, end)

    def memmap(self) -> np.memmap:
        """The whole array as a read-only memmap, for analysis (training reads use `read`)."""
        return np.memmap(self.path, dtype=self.dtype, mode="r")

    @property
    def index_path(self) -> Path:
        if self.sidecar is not None:
            return self.path.with_name(self.sidecar["documents"])
        return self.path.with_name(self.path.name.removesuffix(".npy") + ".csv.gz")

    @cached_property
    def documents(self) -> DocumentIndex | None:
        """The document index, if the file has one (read on first use)."""
        return DocumentIndex.read_dolma_csv(self.index_path) if self.index_path.is_file() else None


def _read_sidecar(path: Path) -> dict | None:
    sidecar = path.with_suffix(".json")
    if not sidecar.is_file():
        return None
    try:
        content = json.loads(sidecar.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read the sidecar {sidecar}: {e}; fix or remove it") from e
    # Only our own sidecars count: some other JSON beside a token file says nothing about it.
    return content if isinstance(content, dict) and str(content.get("format", "")).startswith("olmolab.token_shard") else None


def _resolve_dtype(path: Path, dtype: str | np.dtype | None, sidecar: dict | None) -> np.dtype:
    given = None if dtype is None else _token_dtype(dtype)
    if sidecar is not None:
        recorded = np.dtype(sidecar["dtype"])
        if given is not None and given != recorded:
            raise UserError(f"{path}: dtype {given.name} was given but its sidecar says {recorded.name}; drop the dtype setting")
        return recorded
    if given is None:
        raise UserError(
            f"{path}: a raw token file with no sidecar, so its dtype is unknown; give it "
            f"(data.dtype / --dtype: {', '.join(TOKEN_DTYPES)}; OLMo 1 files are uint16, OLMo 2 files uint32)"
        )
    return given


def _token_dtype(dtype: str | np.dtype) -> np.dtype:
    try:
        resolved = np.dtype(dtype)
    except TypeError:
        resolved = None
    if resolved is None or resolved.name not in TOKEN_DTYPES:
        raise UserError(f"dtype {dtype} is not a token dtype; use one of {', '.join(TOKEN_DTYPES)}")
    return resolved


def _count(path: Path, dtype: np.dtype, what: str) -> int:
    try:
        size = path.stat().st_size
    except OSError as e:
        raise UserError(f"cannot read {what} {path}: {e.strerror}") from e
    if size % dtype.itemsize:
        raise UserError(f"{what} {path} has {size} bytes, not a whole number of {dtype.name} values; is the dtype right?")
    return size // dtype.itemsize


def _pread(path: Path, dtype: np.dtype, start: int, end: int) -> np.ndarray:
    length = (end - start) * dtype.itemsize
    fd = os.open(path, os.O_RDONLY)
    try:
        data = os.pread(fd, length, start * dtype.itemsize)
    finally:
        os.close(fd)
    if len(data) != length:
        raise UserError(f"{path}: short read at token {start} (file changed while reading?)")
    return np.frombuffer(data, dtype=dtype)


def expand_token_paths(paths: Sequence[str | Path]) -> list[Path]:
    """Token files named directly, by glob (its `.npy` matches), or as directories (their `*.npy`, recursively)."""
    return expand_paths(paths, lambda p: p.suffix == ".npy", "token files (*.npy)")


def open_token_files(
    paths: Sequence[str | Path],
    *,
    dtype: str | None = None,
    label_mask_paths: Sequence[str | Path] | None = None,
) -> list[TokenFile]:
    """Token files (with their label masks, paired in order) from paths, globs and directories."""
    files = expand_token_paths(paths)
    masks: list[Path | None] = [None] * len(files)
    if label_mask_paths:
        expanded = expand_token_paths(label_mask_paths)
        if len(expanded) != len(files):
            raise UserError(
                f"{len(expanded)} label mask files for {len(files)} token files; "
                "label_mask_paths must name one mask per token file, in the same order"
            )
        masks = list(expanded)
    return [TokenFile(path, dtype, mask) for path, mask in zip(files, masks, strict=True)]


def check_vocab_fits(files: Sequence[TokenFile], vocab_size: int) -> None:
    """Refuse token files whose sidecar says they were written with a larger vocabulary than
    `vocab_size` (the model's embedding rows): their ids would index past the embedding."""
    for file in files:
        tokenizer = file.tokenizer
        if tokenizer is not None and tokenizer.vocab_size > vocab_size:
            raise UserError(
                f"{file.path}: tokenized with {tokenizer.name} ({tokenizer.vocab_size} tokens), more than the "
                f"model's vocabulary of {vocab_size}; tokenize the data with the model's tokenizer, or raise "
                f"model.vocab_size / embedding_size to at least {tokenizer.vocab_size}"
            )


def describe_token_file(file: TokenFile, seq_len: int | None = None) -> str:
    """One line about a token file, for `olmolab data info`."""
    parts = [f"{file.path}: {file.num_tokens:,} tokens ({file.dtype.name})"]
    docs = file.documents
    parts.append(f"{len(docs):,} documents" if docs is not None else "no document index")
    if file.tokenizer is not None:
        parts.append(f"tokenizer {file.tokenizer.name} (eos {file.tokenizer.eos_token_id})")
    if seq_len:
        parts.append(f"{file.num_tokens // seq_len:,} instances of {seq_len}")
    if file.label_mask_path is not None:
        parts.append(f"label mask {file.label_mask_path}")
    return ", ".join(parts)

