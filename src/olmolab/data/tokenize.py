"""Documents -> token shards in OLMo's format, in parallel, resumable.

Output, in `out_dir`, for k = 0, 1, ...:
- `part-{k:05d}.npy`: a raw flat array of token ids, no header (OLMo / Dolma format): each
  document is `encode(text.strip()) + [eos]`. uint16 when the vocabulary fits, else uint32.
- `part-{k:05d}.csv.gz`: the document index, in Dolma's provenance format (no header; one
  row `start,end,id,source_path,line_number` per document, `end` exclusive and including
  the EOS). Sharing Dolma's format means one reader serves OLMo's files and ours.
- `part-{k:05d}.json`: the sidecar - dtype, token and document counts, tokenizer identity,
  the name of the index file, counts of skipped documents, and what resuming needs.

A shard holds whole documents, at most `max_shard_bytes` of tokens (more only when one
document alone is larger). Documents keep input order, and workers only encode, so the
output is byte-identical for any number of workers.

Each shard is written under temporary names; the `.npy` is renamed last, so a shard whose
`.npy` exists is complete. A re-run with the same inputs, tokenizer and options keeps the
complete shards and continues after the last one: its sidecar records the input position
(file, record) where the next shard starts. Inputs before that point must be unchanged.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import multiprocessing
import os
import time
from collections import deque
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from olmolab.data.documents import BadInputError, expand_inputs, input_format, parse_record, read_records
from olmolab.errors import UserError
from olmolab.tokenizer import Tokenizer

SIDECAR_FORMAT = "olmolab.token_shard.v1"
DEFAULT_MAX_SHARD_BYTES = 1 << 30  # Dolma's default shard size
# A unit of work for a worker: enough text that process overhead is small, small enough that
# the last units of a run keep all workers busy.
_BATCH_BYTES = 256 << 10
_BATCH_RECORDS = 2048
_MAX_EXAMPLES = 20  # bad-document messages kept for the summary


def token_dtype(vocab_size: int) -> np.dtype:
    """OLMo's rule: uint16 when every id fits, else uint32."""
    return np.dtype(np.uint16 if vocab_size <= 1 << 16 else np.uint32)


def shard_name(index: int) -> str:
    return f"part-{index:05d}"


@dataclass
class TokenizeSummary:
    out_dir: Path
    files: int = 0
    documents: int = 0
    tokens: int = 0
    shards_written: int = 0
    shards_reused: int = 0
    reused_documents: int = 0
    reused_tokens: int = 0
    empty_skipped: int = 0
    bad_skipped: int = 0
    bad_examples: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def describe(self) -> str:
        seconds = self.seconds or float("inf")
        new_documents, new_tokens = self.documents - self.reused_documents, self.tokens - self.reused_tokens
        lines = [
            f"{self.documents:,} documents, {self.tokens:,} tokens from {self.files} files -> "
            f"{self.shards_written + self.shards_reused} shards in {self.out_dir} "
            f"({self.shards_written} written, {self.shards_reused} kept from an earlier run)",
            f"skipped: {self.empty_skipped:,} empty documents, {self.bad_skipped:,} bad documents or files",
            f"{self.seconds:.1f} s, {new_documents / seconds:,.0f} docs/s, {new_tokens / seconds:,.0f} tokens/s (this run)",
        ]
        lines += [f"  bad: {example}" for example in self.bad_examples]
        if self.bad_skipped > len(self.bad_examples):
            lines.append(f"  ... and {self.bad_skipped - len(self.bad_examples):,} more")
        return "\n".join(lines)


def tokenize_files(
    inputs: Sequence[str | Path],
    tokenizer: Tokenizer,
    out_dir: str | Path,
    *,
    workers: int = 1,
    skip_bad: bool = False,
    txt_split: str = "file",
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
    progress: bool = False,
) -> TokenizeSummary:
    """Tokenize documents from files, directories and globs into shards in `out_dir`.

    `workers` > 1 encodes in that many processes; 1 encodes in this one. Bad documents and
    unreadable files raise `BadInputError`, or with `skip_bad` are skipped and counted.
    """
    started = time.perf_counter()
    paths = expand_inputs(inputs)
    tokenizer.require_eos()
    dtype = token_dtype(tokenizer.vocab_size)
    if max_shard_bytes < dtype.itemsize:
        raise UserError(f"max shard size {max_shard_bytes} bytes is smaller than one token ({dtype.itemsize} bytes)")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    header = {
        "format": SIDECAR_FORMAT,
        "dtype": dtype.name,
        "tokenizer": tokenizer.identity.to_dict(),
        "run_fingerprint": _run_fingerprint(tokenizer, paths, txt_split, max_shard_bytes),
    }
    finished = _finished_shards(out_dir, header)
    summary = TokenizeSummary(out_dir, files=len(paths), shards_reused=len(finished))
    for sidecar in finished:
        _count_shard(summary, sidecar)
    summary.reused_documents, summary.reused_tokens = summary.documents, summary.tokens
    if finished and finished[-1]["last"]:
        summary.seconds = time.perf_counter() - started
        return summary
    resume_at = tuple(finished[-1]["next_input"]) if finished else (0, 0)

    batches = _work_batches(paths, txt_split, resume_at)
    encoder = _Encoder(tokenizer, dtype)
    # The worker pool starts (forks) before tqdm starts its monitor thread.
    with _results(batches, encoder, workers) as results, tqdm(
        desc="tokenize", unit="doc", disable=not progress, dynamic_ncols=True
    ) as bar, _ShardWriter(out_dir, header, max_shard_bytes // dtype.itemsize, len(paths), summary) as writer:
        writer.open(len(finished))
        for result in results:
            if isinstance(result, BadInputError):
                writer.bad(result, skip_bad)
                continue
            writer.add_batch(result, skip_bad)
            if progress:
                bar.update(len(result.ids))
                bar.set_postfix_str(f"{summary.tokens / max(bar.format_dict['elapsed'], 1e-9):,.0f} tok/s", refresh=False)
        if summary.documents == 0:
            raise UserError(
                f"no documents in {', '.join(map(str, inputs))} "
                f"({summary.empty_skipped} empty and {summary.bad_skipped} bad skipped); check the inputs"
            )
        writer.close(next_input=(len(paths), 0))
    summary.seconds = time.perf_counter() - started
    return summary


def _count_shard(summary: TokenizeSummary, sidecar: dict) -> None:
    summary.documents += sidecar["num_documents"]
    summary.tokens += sidecar["num_tokens"]
    summary.empty_skipped += sidecar["skipped"]["empty"]
    summary.bad_skipped += sidecar["skipped"]["bad"]


def _run_fingerprint(tokenizer: Tokenizer, paths: Sequence[Path], txt_split: str, max_shard_bytes: int) -> str:
    """What must match for an earlier run's shards to be kept."""
    what = {
        "format": SIDECAR_FORMAT,
        "tokenizer": [tokenizer.fingerprint, tokenizer.eos_token_id],  # not its file name
        "inputs": [str(p) for p in paths],
        "txt_split": txt_split,
        "max_shard_bytes": max_shard_bytes,
    }
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()


def _finished_shards(out_dir: Path, header: dict) -> list[dict]:
    """Sidecars of the complete shards 0, 1, ... an earlier run of the same job left."""
    finished = []
    while True:
        stem = out_dir / shard_name(len(finished))
        npy, sidecar_path = stem.with_suffix(".npy"), stem.with_suffix(".json")
        if not (npy.exists() and sidecar_path.exists()):
            return finished
        try:
            sidecar = json.loads(sidecar_path.read_text())
        except ValueError as e:
            raise UserError(f"{sidecar_path}: not valid JSON ({e}); delete the shard to tokenize it again") from e
        if sidecar.get("run_fingerprint") != header["run_fingerprint"]:
            raise UserError(
                f"{out_dir} holds shards from a different tokenize run (other inputs, tokenizer or options); "
                "use an empty --out directory, or delete its part-* files"
            )
        if npy.stat().st_size != sidecar["num_tokens"] * np.dtype(sidecar["dtype"]).itemsize:
            return finished  # cut short by something outside this tool: write it again
        finished.append(sidecar)


# -- reading work ---------------------------------------------------------------------------------


@dataclass
class _WorkBatch:
    file_index: int
    kind: str
    source: str
    records: list  # RawRecord


def _work_batches(paths: Sequence[Path], txt_split: str, resume_at: tuple[int, int]) -> Iterator[_WorkBatch | BadInputError]:
    """Records of all files from `resume_at` on, in batches; a file that cannot be read is an item too."""
    first_file, first_record = resume_at
    for file_index in range(first_file, len(paths)):
        path = paths[file_index]
        start = first_record if file_index == first_file else 0
        batch = _WorkBatch(file_index, input_format(path), str(path), [])
        size = 0
        try:
            for record in read_records(path, txt_split=txt_split, start=start):
                batch.records.append(record)
                size += len(record.payload or "")
                if size >= _BATCH_BYTES or len(batch.records) >= _BATCH_RECORDS:
                    yield batch
                    batch, size = _WorkBatch(file_index, batch.kind, batch.source, []), 0
        except BadInputError as e:
            if batch.records:
                yield batch
            yield e
            continue
        if batch.records:
            yield batch


# -- encoding (in workers) --------------------------------------------------------------------------


@dataclass
class _BatchResult:
    file_index: int
    source: str
    record_indexes: list[int]
    record_lines: list[int]
    outcomes: list  # per record: None = a document, "" = empty, else what was wrong
    ids: list[str]  # per document
    lengths: np.ndarray  # tokens per document, EOS included
    tokens: np.ndarray  # the documents' tokens, concatenated


class _Encoder:
    """What a worker runs: parse records, encode the texts, lay out tokens with EOS."""

    def __init__(self, tokenizer: Tokenizer, dtype: np.dtype):
        self.tokenizer, self.dtype = tokenizer, dtype

    def __call__(self, batch: _WorkBatch) -> _BatchResult:
        outcomes: list[str | None] = []
        docs = []  # (record position in the batch, Document)
        for i, record in enumerate(batch.records):
            try:
                doc = parse_record(batch.kind, record, batch.source)
            except ValueError as e:
                outcomes.append(str(e))
                continue
            outcomes.append(None if doc.text else "")
            if doc.text:
                docs.append((i, doc))
        encoded = []
        for (i, doc), ids in zip(docs, self._encode([doc.text for _, doc in docs]), strict=True):
            if isinstance(ids, str):
                outcomes[i] = ids
            else:
                encoded.append((doc.id, ids))
        lengths = np.array([len(ids) + 1 for _, ids in encoded], dtype=np.int64)
        ends = np.cumsum(lengths)
        tokens = np.empty(int(ends[-1]) if len(ends) else 0, dtype=self.dtype)
        tokens[ends - 1] = self.tokenizer.eos_token_id
        for end, (_, ids) in zip(ends, encoded, strict=True):
            tokens[end - len(ids) - 1 : end - 1] = ids
        return _BatchResult(
            batch.file_index,
            batch.source,
            [r.index for r in batch.records],
            [r.line for r in batch.records],
            outcomes,
            [doc_id for doc_id, _ in encoded],
            lengths,
            tokens,
        )

    def _encode(self, texts: list[str]) -> list[list[int] | str]:
        """Token ids per text (no special tokens), or what is wrong with the text."""
        try:
            return self.tokenizer.encode_batch(texts)
        except TypeError:
            pass  # a text is not valid Unicode (a lone surrogate from a JSON escape): find which
        return [self._encode_one(text) for text in texts]

    def _encode_one(self, text: str) -> list[int] | str:
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as e:
            return f"text has an unpaired surrogate ({text[e.start]!a}); expected valid Unicode"
        return self.tokenizer.encode(text)


_worker_encoder: _Encoder | None = None


def _init_worker(encoder: _Encoder) -> None:
    global _worker_encoder
    _worker_encoder = encoder


def _encode_in_worker(batch: _WorkBatch) -> _BatchResult:
    return _worker_encoder(batch)


@contextmanager
def _results(batches: Iterator, encoder: _Encoder, workers: int) -> Iterator[Iterator]:
    """Encoded batches in input order, however many workers encode them."""
    if workers <= 1:
        yield (item if isinstance(item, BadInputError) else encoder(item) for item in batches)
        return
    # Fork shares the loaded tokenizer with the workers at no cost. Each worker encodes
    # serially: the parallelism is the processes', not tokenizers' threads (which would
    # oversubscribe the cores; the setting also silences tokenizers' warning about forking).
    context = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
    with _environment(TOKENIZERS_PARALLELISM="false"):
        pool = context.Pool(workers, initializer=_init_worker, initargs=(encoder,))
    try:
        yield _in_order(batches, pool, in_flight=4 * workers)
    finally:
        pool.terminate()
        pool.join()


def _in_order(batches: Iterator, pool, in_flight: int) -> Iterator:
    # A bounded window of submitted batches: memory stays flat however large the input, and
    # results come back in submission order.
    pending: deque = deque()
    for item in batches:
        pending.append(item if isinstance(item, BadInputError) else pool.apply_async(_encode_in_worker, (item,)))
        while len(pending) > in_flight:
            yield _resolved(pending.popleft())
    while pending:
        yield _resolved(pending.popleft())


def _resolved(item):
    return item if isinstance(item, BadInputError) else item.get()


@contextmanager
def _environment(**values: str) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


# -- writing ------------------------------------------------------------------------------------


@dataclass
class _OpenShard:
    index: int
    tokens_file: io.BufferedWriter
    num_tokens: int = 0
    rows: list = field(default_factory=list)  # Dolma index rows: start, end, id, source, line
    empty: int = 0
    bad: int = 0


class _ShardWriter:
    """Appends documents to the open shard; closes it (atomically) when the next one does not fit."""

    def __init__(self, out_dir: Path, header: dict, max_tokens: int, num_inputs: int, summary: TokenizeSummary):
        self.out_dir, self.header, self.max_tokens = out_dir, header, max_tokens
        self.num_inputs, self.summary = num_inputs, summary
        self.shard: _OpenShard | None = None

    def __enter__(self) -> _ShardWriter:
        return self

    def __exit__(self, *exc_info) -> None:
        if self.shard is not None:  # stopped early: drop the half-written shard
            self.shard.tokens_file.close()
            os.remove(self.shard.tokens_file.name)

    def open(self, index: int) -> None:
        self.shard = _OpenShard(index, open(self._path(index, ".npy.tmp"), "wb"))

    def add_batch(self, result: _BatchResult, skip_bad: bool) -> None:
        ends = np.cumsum(result.lengths)
        doc = 0
        for index, line, outcome in zip(result.record_indexes, result.record_lines, result.outcomes, strict=True):
            if outcome == "":
                self.shard.empty += 1
                self.summary.empty_skipped += 1
            elif outcome is not None:
                self.bad(BadInputError(result.source, line, outcome), skip_bad)
            else:
                length = int(result.lengths[doc])
                if self.shard.rows and self.shard.num_tokens + length > self.max_tokens:
                    full = self.shard.index
                    self.close(next_input=(result.file_index, index))
                    self.open(full + 1)
                self._append(result.tokens[ends[doc] - length : ends[doc]], result.ids[doc], result.source, line)
                doc += 1

    def bad(self, error: BadInputError, skip_bad: bool) -> None:
        if not skip_bad:
            raise error
        self.shard.bad += 1
        self.summary.bad_skipped += 1
        if len(self.summary.bad_examples) < _MAX_EXAMPLES:
            self.summary.bad_examples.append(error.brief)

    def _append(self, tokens: np.ndarray, doc_id: str, source: str, line: int) -> None:
        shard = self.shard
        shard.tokens_file.write(tokens.data)
        shard.rows.append((shard.num_tokens, shard.num_tokens + len(tokens), doc_id, source, line))
        shard.num_tokens += len(tokens)
        self.summary.documents += 1
        self.summary.tokens += len(tokens)

    def _path(self, index: int, suffix: str) -> Path:
        return self.out_dir / (shard_name(index) + suffix)

    def close(self, next_input: tuple[int, int]) -> None:
        """Finish the open shard; `next_input` (file, record) is where the next shard's input starts."""
        shard, self.shard = self.shard, None
        shard.tokens_file.close()
        stem = shard_name(shard.index)
        _write_atomic(self._path(shard.index, ".csv.gz"), _dolma_csv(shard.rows))
        sidecar = {
            **self.header,
            "num_tokens": shard.num_tokens,
            "num_documents": len(shard.rows),
            "documents": stem + ".csv.gz",
            "skipped": {"empty": shard.empty, "bad": shard.bad},
            "next_input": list(next_input),
            "last": tuple(next_input) == (self.num_inputs, 0),
        }
        _write_atomic(self._path(shard.index, ".json"), (json.dumps(sidecar, indent=2) + "\n").encode())
        # The .npy appears last: a shard with a .npy is complete.
        os.replace(self._path(shard.index, ".npy.tmp"), self._path(shard.index, ".npy"))
        self.summary.shards_written += 1


def _dolma_csv(rows: list) -> bytes:
    text = io.StringIO()
    csv.writer(text, lineterminator="\n").writerows(rows)
    buffer = io.BytesIO()
    # mtime=0 and no file name in the gzip header keep the bytes the same from run to run.
    with gzip.GzipFile(filename="", mode="wb", fileobj=buffer, mtime=0) as zipped:
        zipped.write(text.getvalue().encode("utf-8"))
    return buffer.getvalue()


def _write_atomic(path: Path, content: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(content)
    os.replace(tmp, path)
