"""Dolma-style token data: tokenizing documents, reading token files, instances, order, loaders, provenance.

For a trainer:

    from olmolab.data import DataConfig
    data = DataConfig.from_dict(config["data"]).build(global_batch_size=64)
    loader = data.loader(rank=rank, world_size=world_size, state=saved_state)
    for batch in loader:          # input_ids (B, T) int64, label_mask (B, T) bool if any
        ...; checkpoint["data"] = loader.state_dict()

The package knows no model. Only `TrainLoader` and `validation_batches` (module `loader`)
import torch, and they are loaded on first use.
"""

from olmolab.data.config import DataConfig, SourceConfig, StageConfig, TrainData
from olmolab.data.instances import InstanceLocation, TokenDataset
from olmolab.data.order import (
    DataState,
    Stage,
    TrainOrder,
    epoch_order,
    micro_batches,
    olmo_order,
    rank_slice,
)
from olmolab.data.provenance import (
    DocumentPiece,
    InstanceDocuments,
    RunDescription,
    documents_at_step,
    instance_documents,
    read_run,
    steps_with_document,
)
from olmolab.data.shards import DocumentIndex, TokenFile, open_token_files
from olmolab.data.tokenize import TokenizeSummary, tokenize_files

_TORCH_NAMES = ("TrainLoader", "validation_batches", "collate")


def __getattr__(name: str):
    if name in _TORCH_NAMES:
        from olmolab.data import loader

        return getattr(loader, name)
    raise AttributeError(f"module 'olmolab.data' has no attribute {name!r}")


__all__ = [
    "DataConfig",
    "DataState",
    "DocumentIndex",
    "DocumentPiece",
    "InstanceDocuments",
    "InstanceLocation",
    "RunDescription",
    "SourceConfig",
    "Stage",
    "StageConfig",
    "TokenDataset",
    "TokenFile",
    "TokenizeSummary",
    "TrainData",
    "TrainOrder",
    "documents_at_step",
    "epoch_order",
    "instance_documents",
    "micro_batches",
    "olmo_order",
    "open_token_files",
    "rank_slice",
    "read_run",
    "steps_with_document",
    "tokenize_files",
    *_TORCH_NAMES,
]
