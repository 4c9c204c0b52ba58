"""Expanding path arguments (files, directories, globs) the same way for documents and token files."""

from __future__ import annotations

import glob
from collections.abc import Callable, Sequence
from pathlib import Path

from olmolab.errors import UserError


def expand_paths(args: Sequence[str | Path], accepts: Callable[[Path], bool], what: str) -> list[Path]:
    """Paths named directly, plus what globs and directories (searched recursively) hold that `accepts` takes.

    Each glob and directory expands in sorted order, so the result, and every order built on
    it, does not depend on the file system; arguments keep their order and duplicates count once.
    """
    found: list[Path] = []
    for arg in args:
        text = str(arg)
        if glob.has_magic(text):
            matches = [Path(m) for m in sorted(glob.glob(text, recursive=True))]
            found.extend(p for match in matches for p in _inside(match, accepts, what) if match.is_dir() or accepts(p))
            if not matches:
                raise UserError(f"{text}: the pattern matches no {what}; check the path (quote globs for the shell)")
        elif Path(text).is_dir():
            found.extend(_inside(Path(text), accepts, what))
        elif Path(text).exists():
            found.append(Path(text))
        else:
            raise UserError(f"{text}: no such file or directory")
    unique = list(dict.fromkeys(found))
    if not unique:
        raise UserError(f"no {what} in {', '.join(map(str, args))}")
    return unique


def _inside(path: Path, accepts: Callable[[Path], bool], what: str) -> list[Path]:
    if not path.is_dir():
        return [path]
    inside = [p for p in sorted(path.rglob("*")) if p.is_file() and accepts(p)]
    if not inside:
        raise UserError(f"{path}: a directory with no {what}")
    return inside
