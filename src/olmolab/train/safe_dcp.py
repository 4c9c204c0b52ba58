"""Reading `torch.distributed.checkpoint` directories without running code from them.

DCP stores two things as pickles: the `.metadata` file (which tensor lives where) and every
non-tensor value of the state (the optimizer's `lr`, `betas`, ...) inside the `.distcp` files.
Stock DCP reads the first with `pickle.load` and the second with `torch.load(weights_only=False)`,
so a crafted checkpoint runs arbitrary code on resume. Checkpoints are meant to be shared (OLMo
publishes its intermediate ones), so olmolab reads both through restricted unpicklers instead:

- `.metadata` may only name DCP's own metadata classes, `torch.Size`, torch dtypes and paths;
- non-tensor values go through `torch.load(weights_only=True)` (numbers, strings, containers).

Anything else is refused with a `UserError` naming the file, before any of it is executed.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import torch
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint._traverse import set_element
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.metadata import Metadata, StorageMeta

from olmolab.errors import UserError, unpickling_refusal

METADATA_FILE = ".metadata"

# Exactly what DCP writes into `.metadata` (found by recording `find_class` on real checkpoints).
_ALLOWED_GLOBALS = {
    ("pathlib", "PosixPath"), ("pathlib", "PurePosixPath"), ("pathlib", "WindowsPath"),
    ("pathlib", "PureWindowsPath"), ("collections", "OrderedDict"), ("torch", "Size"),
    ("torch.serialization", "_get_layout"), ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
}
_ALLOWED_MODULES = {"torch.distributed.checkpoint.metadata"}


class _MetadataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) in _ALLOWED_GLOBALS or module in _ALLOWED_MODULES:
            return super().find_class(module, name)
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        raise pickle.UnpicklingError(f"refused global {module}.{name}")


def read_metadata(path: Path) -> Metadata:
    """The DCP metadata of `path/.metadata`, unpickled with only DCP's own classes allowed."""
    file = Path(path) / METADATA_FILE
    try:
        with file.open("rb") as f:
            metadata = _MetadataUnpickler(f).load()
    except OSError as e:
        raise UserError(f"{file}: cannot read the checkpoint's metadata ({e.strerror})") from e
    except (pickle.UnpicklingError, EOFError, AttributeError, ValueError, TypeError, IndexError) as e:
        raise UserError(f"{file}: not a valid checkpoint metadata file, refused without running it ({e})") from e
    if not isinstance(metadata, Metadata) or not isinstance(metadata.storage_data, dict):
        raise UserError(f"{file}: holds a {type(metadata).__name__}, not DCP metadata; refused")
    return metadata


class SafeFileSystemReader(FileSystemReader):
    """DCP's file reader, with the metadata read by the restricted unpickler above."""

    def read_metadata(self, *args, **kwargs) -> Metadata:
        metadata = read_metadata(Path(self.path))
        if getattr(metadata, "storage_meta", None) is None:
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata


class SafeLoadPlanner(DefaultLoadPlanner):
    """DCP's default planner, with non-tensor values loaded as plain data only."""

    def load_bytes(self, read_item, value: io.BytesIO) -> None:
        try:
            obj = torch.load(value, weights_only=True)
        except pickle.UnpicklingError as e:
            raise UserError(f"checkpoint value {read_item.dest_index.fqn!r} is not plain data; "
                            f"refused without running it ({unpickling_refusal(e)})") from e
        if self.flatten_state_dict:
            set_element(self.original_state_dict, self.mappings[read_item.dest_index.fqn], obj)
        else:
            self.state_dict[read_item.dest_index.fqn] = obj


def missing_or_short_files(path: Path, metadata: Metadata) -> list[str]:
    """The data files the metadata points into that are absent or shorter than it says."""
    needed: dict[str, int] = {}
    for info in metadata.storage_data.values():
        needed[info.relative_path] = max(needed.get(info.relative_path, 0), info.offset + info.length)
    problems = []
    for name, size in sorted(needed.items()):
        file = Path(path) / name
        if not file.is_file():
            problems.append(f"{name} is missing")
        elif file.stat().st_size < size:
            problems.append(f"{name} is truncated ({file.stat().st_size} of {size} bytes)")
    return problems
