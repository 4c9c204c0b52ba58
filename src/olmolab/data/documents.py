"""Documents to tokenize: finding input files, reading their records, parsing records.

What a document is, per format (the suffix decides; `.gz` / `.zst` may follow any but Parquet):
- JSON lines (`.jsonl`, and `.json` as Dolma names its JSON-lines files): one JSON object per
  line with a string field `text` and an optional `id` (default `PATH:LINE`). Blank lines
  are ignored.
- Parquet (`.parquet`): one row, columns `text` and optional `id`; its "line" is the 1-based
  row number.
- Plain text (`.txt`): with `txt_split="file"` (the default) the whole file is one document
  with id `PATH`; with `txt_split="paragraph"` each run of non-blank lines is a document
  with id `PATH:LINE`, LINE being its first line. Blank lines separate paragraphs and are
  not part of them.
Every text is stripped of leading and trailing whitespace (Dolma's rule); what is empty then
is skipped and counted by the caller.

Reading (decompression, line splitting) happens in the calling process; parsing happens
wherever `parse_record` is called (the tokenize workers), so its errors are values, not
exceptions across processes.
"""

from __future__ import annotations

import gzip
import json
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import zstandard

from olmolab.data.paths import expand_paths
from olmolab.errors import UserError

TXT_SPLITS = ("file", "paragraph")
_COMPRESSIONS = (".gz", ".zst")
_FORMATS = {".jsonl": "jsonl", ".json": "jsonl", ".txt": "txt", ".parquet": "parquet"}
SUPPORTED_SUFFIXES = ".jsonl, .json (JSON lines), .parquet, .txt; .gz / .zst after any but .parquet"
_CHUNK_BYTES = 1 << 20


class BadInputError(UserError):
    """A document or file that cannot be used, with where it is and what was expected."""

    def __init__(self, path: str | Path, line: int | None, problem: str):
        self.path, self.line, self.problem = str(path), line, problem
        where = f"{path}:{line}" if line else str(path)
        self.brief = f"{where}: {problem}"
        super().__init__(f"{self.brief} (fix it, or pass --skip-bad to skip and count bad input)")


@dataclass(frozen=True)
class RawRecord:
    """One unparsed record of an input file."""

    index: int
    """0-based position in the file, in the file's own unit (line, row or paragraph): resume points use it."""
    line: int
    """1-based line (Parquet: row) where the record starts: what provenance reports."""
    payload: bytes | str | None
    id: str | None = None


@dataclass(frozen=True)
class Document:
    id: str
    text: str
    """Already stripped; may be empty."""


def input_format(path: str | Path) -> str:
    """'jsonl', 'parquet' or 'txt' from the file name, or raise if it is not a supported input."""
    suffixes = [s.lower() for s in Path(path).suffixes]
    if suffixes and suffixes[-1] in _COMPRESSIONS:
        suffixes.pop()
        if suffixes and suffixes[-1] == ".parquet":
            suffixes = []  # Parquet compresses inside the file, never around it
    kind = _FORMATS.get(suffixes[-1]) if suffixes else None
    if kind is None:
        raise UserError(f"{path}: unsupported input format; expected {SUPPORTED_SUFFIXES}")
    return kind


def expand_inputs(inputs: Sequence[str | Path]) -> list[Path]:
    """Document files named directly, by glob, or as directories (searched recursively), in argument order."""
    paths = expand_paths(inputs, _is_supported, f"input files ({SUPPORTED_SUFFIXES})")
    for path in paths:
        input_format(path)  # a file named on purpose must be one we can read
    return paths


def _is_supported(path: Path) -> bool:
    try:
        input_format(path)
    except UserError:
        return False
    return True


# -- reading ------------------------------------------------------------------------------------


def read_records(path: str | Path, *, txt_split: str = "file", start: int = 0) -> Iterator[RawRecord]:
    """The records of one input file from record `start` on; raises `BadInputError` if it cannot be read."""
    if txt_split not in TXT_SPLITS:
        raise UserError(f"txt split {txt_split!r} is not one of {', '.join(TXT_SPLITS)}")
    kind = input_format(path)
    if kind == "parquet":
        return _parquet_records(Path(path), start)
    if kind == "jsonl":
        return _jsonl_records(Path(path), start)
    if txt_split == "paragraph":
        return _paragraph_records(Path(path), start)
    return _whole_file_records(Path(path), start)


def _jsonl_records(path: Path, start: int) -> Iterator[RawRecord]:
    for line_no, line in enumerate(_lines(path), start=1):
        if line_no > start and line.strip():
            yield RawRecord(line_no - 1, line_no, line)


def _paragraph_records(path: Path, start: int) -> Iterator[RawRecord]:
    paragraph: list[bytes] = []
    first_line = count = 0
    for line_no, line in enumerate(_lines(path), start=1):
        if line.strip():
            if not paragraph:
                first_line = line_no
            paragraph.append(line)
            continue
        if paragraph:
            if count >= start:
                yield RawRecord(count, first_line, b"".join(paragraph))
            count += 1
            paragraph = []
    if paragraph and count >= start:
        yield RawRecord(count, first_line, b"".join(paragraph))


def _whole_file_records(path: Path, start: int) -> Iterator[RawRecord]:
    if start == 0:
        try:
            content = b"".join(_chunks(path))
        except _READ_ERRORS as e:
            raise _unreadable(path, e, lines_read=0) from e
        yield RawRecord(0, 1, content, id=str(path))


def _parquet_records(path: Path, start: int) -> Iterator[RawRecord]:
    import pyarrow.parquet as pq  # only Parquet inputs pay for importing pyarrow

    try:
        table = pq.ParquetFile(path)
        names = table.schema_arrow.names
        if "text" not in names:
            raise BadInputError(path, None, f"no column 'text' (columns: {', '.join(names)}); expected a string column 'text'")
        columns = ["text"] + (["id"] if "id" in names else [])
        row = 0
        for batch in table.iter_batches(batch_size=4096, columns=columns):
            if row + batch.num_rows <= start:  # resuming: skip whole batches unread
                row += batch.num_rows
                continue
            texts = batch.column("text").to_pylist()
            ids = batch.column("id").to_pylist() if "id" in columns else [None] * len(texts)
            for text, doc_id in zip(texts, ids, strict=True):
                if row >= start:
                    yield RawRecord(row, row + 1, text, None if doc_id is None else str(doc_id))
                row += 1
    except (OSError, ValueError) as e:  # pyarrow's ArrowInvalid / ArrowIOError derive from these
        raise _unreadable(path, e, lines_read=0) from e


# Errors of reading and decompressing; each becomes a BadInputError naming the file.
_READ_ERRORS = (OSError, EOFError, zlib.error, zstandard.ZstdError)


def _unreadable(path: Path, error: Exception, lines_read: int) -> BadInputError:
    after = f" after line {lines_read}" if lines_read else ""
    return BadInputError(path, None, f"cannot read the file{after}: {type(error).__name__}: {error}")


def _lines(path: Path) -> Iterator[bytes]:
    """Lines (with their newline) of a possibly compressed file, in bounded memory."""
    pending = bytearray()
    lines_read = 0
    try:
        for chunk in _chunks(path):
            pending += chunk
            cut = pending.rfind(b"\n") + 1
            if cut:
                lines = bytes(pending[:cut]).splitlines(keepends=True)
                del pending[:cut]
                lines_read += len(lines)
                yield from lines
    except _READ_ERRORS as e:
        raise _unreadable(path, e, lines_read) from e
    if pending:
        yield bytes(pending)


def _chunks(path: Path) -> Iterator[bytes]:
    """Decompressed bytes of a file, by the compression its suffix names."""
    compression = path.suffix.lower()
    with open(path, "rb") as raw:
        if compression == ".gz":
            with gzip.GzipFile(fileobj=raw) as unzipped:
                yield from iter(lambda: unzipped.read(_CHUNK_BYTES), b"")
        elif compression == ".zst":
            yield from _zstd_chunks(raw)
        else:
            yield from iter(lambda: raw.read(_CHUNK_BYTES), b"")


def _zstd_chunks(raw) -> Iterator[bytes]:
    # zstandard's stream_reader returns a truncated file's data without complaint, so frames
    # are decoded here one by one, and a frame cut short is an error.
    decoder, frame_started = zstandard.ZstdDecompressor().decompressobj(), False
    for compressed in iter(lambda: raw.read(_CHUNK_BYTES), b""):
        while compressed:
            yield decoder.decompress(compressed)
            frame_started = True
            compressed = b""
            if decoder.eof:  # a file may hold several frames back to back
                compressed = decoder.unused_data
                decoder, frame_started = zstandard.ZstdDecompressor().decompressobj(), False
    if frame_started:
        raise EOFError("the zstd stream ends inside a frame (truncated file?)")


# -- parsing ------------------------------------------------------------------------------------


def parse_record(kind: str, record: RawRecord, source: str) -> Document:
    """The document in a record; raises `ValueError` saying what was wrong and what was expected."""
    if kind == "jsonl":
        text, doc_id = _parse_json_line(record.payload)
    elif record.payload is None:
        raise ValueError("'text' is null; expected a string")
    else:
        text, doc_id = _decode(record.payload), record.id
    if doc_id is None:
        doc_id = f"{source}:{record.line}"
    return Document(doc_id, text.strip())


def _parse_json_line(payload: bytes) -> tuple[str, str | None]:
    line = _decode(payload)
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        # json's messages can end in "at" ("Unterminated string starting at"): the column follows it.
        reason = f"{e.msg.removesuffix(' at')} at column {e.colno}"
        raise ValueError(f"malformed JSON ({reason}); expected one JSON object per line") from e
    if not isinstance(obj, dict) or "text" not in obj:
        raise ValueError("no field 'text'; expected a JSON object with a string field 'text'")
    text = obj["text"]
    if not isinstance(text, str):
        raise ValueError(f"field 'text' is {type(text).__name__}; expected a string")
    doc_id = obj.get("id")
    return text, None if doc_id is None else str(doc_id)


def _decode(payload: bytes | str) -> str:
    if isinstance(payload, str):
        return payload
    try:
        return payload.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"invalid UTF-8 (byte {e.start} of the record); expected UTF-8 text") from e


def iter_documents(paths: Sequence[Path], *, txt_split: str = "file") -> Iterator[Document]:
    """Every document of the files, in order; stops at the first bad one (for tokenizer training)."""
    for path in paths:
        kind = input_format(path)
        for record in read_records(path, txt_split=txt_split):
            try:
                yield parse_record(kind, record, str(path))
            except ValueError as e:
                raise BadInputError(path, record.line, str(e)) from e
