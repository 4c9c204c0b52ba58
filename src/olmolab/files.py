"""Writing files the way users expect: permissions from their umask."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from safetensors.torch import save_file


def write_safetensors(state: dict[str, torch.Tensor], path: str | Path) -> None:
    """`save_file`, with the file's mode set from the umask like any other file the user writes
    (safetensors creates it 0600, so a shared checkpoint would be unreadable to the group)."""
    # One metadata key only: safetensors keeps metadata in a hash map, and with two keys their
    # order in the file (hence its bytes) would vary between two saves of the same weights.
    save_file(state, str(path), metadata={"format": "pt"})
    os.chmod(path, 0o666 & ~current_umask())


def current_umask() -> int:
    mask = os.umask(0)  # the only way to read it is to set it
    os.umask(mask)
    return mask
