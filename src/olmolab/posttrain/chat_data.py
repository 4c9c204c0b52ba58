"""Reading chat data: JSONL (optionally gzipped) rows of conversations, checked line by line.

    {"messages": [{"role": "system" | "user" | "assistant", "content": "..."}, ...]}      SFT
    {"chosen": [messages...], "rejected": [messages...]}                                   DPO

A bad row (invalid JSON, a missing key, an unknown role, non-string content, no messages) is
an error naming the file and line; with `skip_bad` it is skipped and counted instead, so one
broken line does not cost a long tokenization.
"""

from __future__ import annotations

import gzip
import json
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from olmolab.errors import UserError
from olmolab.tokenizer import CHAT_ROLES

Messages = list[dict[str, str]]


class BadRow(ValueError):
    """A row that is not what the format says; the message says what is wrong with it."""


def check_messages(value: Any, key: str = "messages") -> Messages:
    """`value` as a list of {"role", "content"} messages, or BadRow saying what is wrong."""
    if not isinstance(value, list) or not value:
        raise BadRow(f"{key!r} must be a non-empty list of messages")
    for i, message in enumerate(value):
        if not isinstance(message, dict):
            raise BadRow(f"{key}[{i}] must be an object with 'role' and 'content'")
        if message.get("role") not in CHAT_ROLES:
            raise BadRow(f"{key}[{i}]: unknown role {message.get('role')!r} (expected one of {', '.join(CHAT_ROLES)})")
        if not isinstance(message.get("content"), str):
            raise BadRow(f"{key}[{i}]: content must be a string, got {type(message.get('content')).__name__}")
    return [{"role": m["role"], "content": m["content"]} for m in value]


def sft_row(row: Any) -> Messages:
    if not isinstance(row, dict) or "messages" not in row:
        raise BadRow("expected an object with a 'messages' list")
    return check_messages(row["messages"])


def preference_row(row: Any) -> tuple[Messages, Messages]:
    """(chosen, rejected): the same conversation up to a different final assistant turn."""
    if not isinstance(row, dict) or "chosen" not in row or "rejected" not in row:
        raise BadRow("expected an object with 'chosen' and 'rejected' message lists")
    chosen, rejected = check_messages(row["chosen"], "chosen"), check_messages(row["rejected"], "rejected")
    if chosen[-1]["role"] != "assistant" or rejected[-1]["role"] != "assistant":
        raise BadRow("the last message of 'chosen' and of 'rejected' must be the assistant's")
    if chosen[:-1] != rejected[:-1]:
        raise BadRow("'chosen' and 'rejected' must share every message but the last assistant turn")
    return chosen, rejected


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            yield from enumerate(f, start=1)
    except (OSError, UnicodeDecodeError, EOFError) as e:
        raise UserError(f"{path}: cannot read ({e})") from e


def read_rows(paths: list[str], parse: Callable[[Any], Any], *, skip_bad: bool, counts: Counter) -> list[Any]:
    """Every row of every file, parsed by `parse` (`sft_row` or `preference_row`).

    `counts` gains "rows" (read) and "bad_rows" (skipped with `skip_bad`).
    """
    rows = []
    for name in paths:
        path = Path(name)
        if not path.is_file():
            raise UserError(f"{path}: no such data file")
        for line_number, line in _lines(path):
            if not line.strip():
                continue
            counts["rows"] += 1
            try:
                rows.append(parse(_json(line)))
            except BadRow as e:
                if not skip_bad:
                    raise UserError(f"{path}:{line_number}: {e} (--skip-bad skips and counts such rows)") from e
                counts["bad_rows"] += 1
    if not rows:
        raise UserError(f"{', '.join(paths)}: no usable rows ({counts['bad_rows']} bad)")
    return rows


def _json(line: str) -> Any:
    try:
        return json.loads(line)
    except json.JSONDecodeError as e:
        raise BadRow(f"invalid JSON ({e.msg} at column {e.colno})") from e
