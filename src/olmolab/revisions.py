"""Revisions: OLMo's names for the checkpoints of a run, and which ones a directory holds.

OLMo publishes intermediate checkpoints as revisions named `step{N}-tokens{M}` (tokens rounded:
`step1000-tokens4B`), sometimes behind a stage prefix (`stage1-step1000-tokens5B`). A run
directory holds one folder per revision; this module is the one place that says what such a
folder is called and which is the latest. What a training revision must contain, and whether
one is intact, is the trainer's business (`olmolab.train.checkpoint`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

REVISION = re.compile(r"^(?:.*-)?step(\d+)(?:-tokens\d+[KMBT]?)?$")


def format_tokens(tokens: int) -> str:
    """4_194_304_000 -> '4B', 12_582_912 -> '13M': OLMo's rounded token counts."""
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if tokens >= scale:
            return f"{round(tokens / scale)}{unit}"
    return str(tokens)


def revision_name(step: int, tokens: int) -> str:
    return f"step{step}-tokens{format_tokens(tokens)}"


@dataclass(frozen=True)
class Revision:
    step: int
    path: Path


def list_revisions(directory: str | Path, marker: str = "train_state.json") -> list[Revision]:
    """The folders of `directory` named like revisions that hold `marker`, by step. The marker
    is the file written last: a training revision's train_state.json (the default), or a model
    directory's config.json."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [
        Revision(int(m.group(1)), child)
        for child in directory.iterdir()
        if not child.name.startswith(".")  # a revision being written (.tmp-) or deleted (.trash-)
        and (m := REVISION.match(child.name)) and (child / marker).exists()
    ]
    return sorted(found, key=lambda r: r.step)


def latest_revision(directory: str | Path, marker: str = "train_state.json") -> Revision | None:
    revisions = list_revisions(directory, marker)
    return revisions[-1] if revisions else None
