"""Fixed-length training instances over token files, grouped into named sources.

OLMo's rule (`olmo/data/memmap_dataset.py`): each file is cut into `seq_len`-token blocks and
its tail (fewer than `seq_len` tokens) is dropped; instance ids run over the files in order.
Sources (e.g. "web", "code") are consecutive runs of files, so each source owns a contiguous
range of instance ids and a mixture can weigh them (`order.py`). A dataset of plain paths is
one source named "data", and then its ids are exactly OLMo's.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from olmolab.data.shards import TokenFile
from olmolab.errors import UserError

DEFAULT_SOURCE = "data"


@dataclass(frozen=True)
class InstanceLocation:
    """Where instance `id` lives: tokens `[start, end)` of `file`."""

    id: int
    source: str
    file: TokenFile
    start: int
    end: int


class TokenDataset:
    """Instances of `seq_len` tokens; `instance(i)` gives `input_ids` (int64) and, when any file has one, `label_mask`."""

    def __init__(self, sources: Mapping[str, Sequence[TokenFile]] | Sequence[TokenFile], seq_len: int):
        if seq_len <= 0:
            raise UserError(f"seq_len must be a positive number of tokens, got {seq_len}")
        if not isinstance(sources, Mapping):
            sources = {DEFAULT_SOURCE: sources}
        self.seq_len = seq_len
        self.source_names = list(sources)
        self.files = [file for files in sources.values() for file in files]
        per_file = [file.num_tokens // seq_len for file in self.files]
        self.file_bounds = np.concatenate([[0], np.cumsum(per_file, dtype=np.int64)])
        """File f holds instance ids `[file_bounds[f], file_bounds[f + 1])`."""
        files_per_source = np.cumsum([0] + [len(files) for files in sources.values()])
        self.source_bounds = self.file_bounds[files_per_source]
        """Source s owns instance ids `[source_bounds[s], source_bounds[s + 1])`."""
        self._file_source = np.repeat(np.arange(len(self.source_names)), np.diff(files_per_source))
        self.has_label_mask = any(file.label_mask_path is not None for file in self.files)
        if len(self) == 0:
            raise UserError(
                f"no instances: no token file holds {seq_len} tokens (OLMo's rule drops each file's tail "
                "shorter than seq_len); use a smaller seq_len or more data"
            )

    def __len__(self) -> int:
        return int(self.file_bounds[-1])

    @property
    def source_sizes(self) -> list[int]:
        return np.diff(self.source_bounds).tolist()

    def locate(self, instance_id: int) -> InstanceLocation:
        if not 0 <= instance_id < len(self):
            raise IndexError(f"instance {instance_id} is outside the dataset (size {len(self)})")
        file_index = int(np.searchsorted(self.file_bounds, instance_id, side="right")) - 1
        start = (instance_id - int(self.file_bounds[file_index])) * self.seq_len
        source = self.source_names[self._file_source[file_index]]
        return InstanceLocation(instance_id, source, self.files[file_index], start, start + self.seq_len)

    def instances_overlapping(self, file_index: int, start: int, end: int) -> range:
        """Ids of the instances holding any of tokens `[start, end)` of a file (none in its dropped tail)."""
        first_id, stop_id = int(self.file_bounds[file_index]), int(self.file_bounds[file_index + 1])
        return range(first_id + start // self.seq_len, min(first_id + (end - 1) // self.seq_len + 1, stop_id))

    def instance(self, instance_id: int) -> dict[str, np.ndarray]:
        """`input_ids`: int64 [seq_len]; `label_mask`: bool [seq_len], True where the token counts for the loss."""
        where = self.locate(int(instance_id))
        item = {"input_ids": where.file.read(where.start, where.end).astype(np.int64)}
        if self.has_label_mask:
            mask = where.file.read_label_mask(where.start, where.end)
            item["label_mask"] = mask.copy() if mask is not None else np.ones(self.seq_len, dtype=np.bool_)
        return item

    def read(self, instance_ids: Sequence[int] | np.ndarray) -> dict[str, np.ndarray]:
        """Several instances stacked: `input_ids` int64 [B, seq_len] (and `label_mask` bool [B, seq_len])."""
        items = [self.instance(i) for i in instance_ids]
        if not items:
            raise ValueError("no instance ids to read")
        return {key: np.stack([item[key] for item in items]) for key in items[0]}

    @property
    def fingerprint(self) -> str:
        """Changes when anything that decides what instance i holds changes (file names, not
        directories, so moving the data keeps it)."""
        what = {
            "seq_len": self.seq_len,
            "sources": self.source_names,
            "source_bounds": self.source_bounds.tolist(),
            "files": [[f.path.name, f.dtype.name, f.num_tokens, f.label_mask_path is not None] for f in self.files],
        }
        return hashlib.sha256(json.dumps(what).encode()).hexdigest()

    def __repr__(self) -> str:
        sources = ", ".join(f"{n}={s}" for n, s in zip(self.source_names, self.source_sizes, strict=True))
        return f"TokenDataset({len(self)} instances of {self.seq_len} tokens: {sources}; {len(self.files)} files)"
