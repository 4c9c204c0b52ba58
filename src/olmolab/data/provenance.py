"""Provenance both ways: the documents in the batch of a step, and the steps that saw a document.

The chain is OLMo's (issues allenai/OLMo#728, #763): step -> instance ids (the order) -> token
ranges in the token files (the dataset) -> documents (each file's Dolma `.csv.gz` index).
Nothing is stored by the run: it is recomputed from the run's data config and global batch
size, which must be the ones the run used (batch size constant over the run).

Steps are counted as the trainer counts them: step 1 trains batch index 0, and a checkpoint
`stepN` has trained steps 1..N.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from olmolab.data.config import DataConfig, TrainData
from olmolab.data.instances import TokenDataset
from olmolab.errors import UserError

RUN_CONFIG_NAMES = ("config.yaml", "config.yml", "config.json")


@dataclass(frozen=True)
class DocumentPiece:
    """A document, or the part of it, inside one instance."""

    id: str
    source: str
    """The file the document was read from, and its line there (Dolma's source_path, line_number)."""
    line: int
    doc_start: int
    doc_end: int
    """The whole document: tokens `[doc_start, doc_end)` of the token file (EOS included)."""
    start: int
    end: int
    """The part in the instance: tokens `[start, end)` of the token file."""


@dataclass(frozen=True)
class InstanceDocuments:
    instance_id: int
    source: str
    """The data source (mixture component) the instance belongs to."""
    file: str
    start: int
    end: int
    documents: list[DocumentPiece]
    """Empty when the token file has no document index."""


def instance_documents(dataset: TokenDataset, instance_id: int) -> InstanceDocuments:
    where = dataset.locate(int(instance_id))
    index = where.file.documents
    pieces = []
    if index is not None:
        for i in index.overlapping(where.start, where.end):
            start, end = int(index.starts[i]), int(index.ends[i])
            pieces.append(
                DocumentPiece(index.ids[i], index.sources[i], int(index.lines[i]), start, end, max(start, where.start), min(end, where.end))
            )
    return InstanceDocuments(where.id, where.source, str(where.file.path), where.start, where.end, pieces)


def documents_at_step(data: TrainData, step: int) -> list[InstanceDocuments]:
    """The instances of the global batch of `step` (1-based), with their documents, in batch order."""
    if step < 1:
        raise UserError(f"step {step}: steps count from 1 (step 1 trains the first batch)")
    return [instance_documents(data.dataset, i) for i in data.order.global_batch(step - 1)]


def steps_with_document(data: TrainData, doc_id: str, until_step: int | None = None) -> list[int]:
    """The steps (1-based, ascending, repeated if seen twice in a step) whose batch holds any token of the document.

    `until_step` bounds the search (default: the end of the first epoch of the last stage).
    A document only in a file's dropped tail (OLMo's rule) is never seen.
    """
    instance_ids = _instances_of_document(data.dataset, doc_id)
    if until_step is None:
        last = len(data.order.stages) - 1
        until_step = data.order.stages[last].start_step + data.order.batches_per_epoch(last)
    return [b + 1 for b in data.order.batches_containing(instance_ids, end_batch=until_step)]


def _instances_of_document(dataset: TokenDataset, doc_id: str) -> np.ndarray:
    ids: list[int] = []
    found = indexed = 0
    for file_index, file in enumerate(dataset.files):
        index = file.documents
        if index is None:
            continue
        indexed += 1
        for i in index.find(doc_id):
            found += 1
            ids.extend(dataset.instances_overlapping(file_index, int(index.starts[i]), int(index.ends[i])))
    if not found:
        raise UserError(f"no document with id {doc_id!r} in the document indexes of {indexed} of {len(dataset.files)} token files")
    return np.array(ids, dtype=np.int64)


@dataclass
class RunDescription:
    """The minimal inputs that fix a run's data order: its data config and global batch size."""

    config: DataConfig
    global_batch_size: int
    max_steps: int | None = None
    tokenizer: str | None = None
    """The run's `trainer.tokenizer`, for decoding previews."""

    def build(self) -> TrainData:
        return self.config.build(self.global_batch_size)


def read_run(path: str | Path, *, global_batch_size: int | None = None, seq_len: int | None = None) -> RunDescription:
    """A run directory (with config.yaml / config.yml / config.json) or a config file with a `data:` section.

    The global batch size (instances) comes from `global_batch_size`, else `trainer.global_batch_size`;
    `trainer.max_steps`, if present, bounds document searches.
    """
    file = _config_file(Path(path))
    try:
        text = file.read_text(encoding="utf-8")
        config = json.loads(text) if file.suffix == ".json" else yaml.safe_load(text)
    except (OSError, ValueError, yaml.YAMLError) as e:
        raise UserError(f"cannot read the run config {file}: {e}") from e
    if not isinstance(config, dict) or not isinstance(config.get("data"), dict):
        raise UserError(f"{file}: no `data:` section; expected a run config with the data settings under `data:`")
    data = dict(config["data"])
    if seq_len is not None:
        data["seq_len"] = seq_len
    trainer = config.get("trainer") if isinstance(config.get("trainer"), dict) else {}
    batch_size = global_batch_size if global_batch_size is not None else trainer.get("global_batch_size")
    if not isinstance(batch_size, int) or batch_size <= 0:
        raise UserError(
            f"{file}: the global batch size (instances per step) is unknown; set trainer.global_batch_size "
            "or pass --global-batch-size"
        )
    max_steps = trainer.get("max_steps")
    tokenizer = trainer.get("tokenizer") if isinstance(trainer.get("tokenizer"), str) else None
    return RunDescription(DataConfig.from_dict(data), batch_size, max_steps if isinstance(max_steps, int) else None,
                          tokenizer)


def _config_file(path: Path) -> Path:
    if path.is_dir():
        for name in RUN_CONFIG_NAMES:
            if (path / name).is_file():
                return path / name
        raise UserError(f"{path}: a directory with no {' / '.join(RUN_CONFIG_NAMES)}; pass the run directory or its config file")
    if not path.is_file():
        raise UserError(f"{path}: no such run directory or config file")
    return path
