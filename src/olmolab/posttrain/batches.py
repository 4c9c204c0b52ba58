"""The order of post-training examples, and padding them into batches.

The order is a pure function of (seed, epoch), as pretraining's is: epoch e visits the examples
in `permutation(seed, e)`, and the epochs follow one another as one endless stream. Global
batch b is items [b * G, (b + 1) * G) of that stream, so the loader's whole state is the number
of batches taken, and a resumed run continues with exactly the batches it would have seen.

Every rank pads the *global* batch to its longest row before taking its share: all ranks then
run the same shapes, and the step's token count is the same number everywhere.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from olmolab.errors import UserError
from olmolab.kernels import round_up
from olmolab.model.loss import IGNORE_INDEX
from olmolab.model.shared_prefix import SharedPrefix, layout


def epoch_order(n_items: int, seed: int, epoch: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(n_items)


class EpochLoader:
    """Global batches of `global_batch_size` items, of which this rank gets its contiguous share."""

    def __init__(
        self,
        n_items: int,
        global_batch_size: int,
        collate: Callable[[Sequence[int]], dict[str, torch.Tensor]],
        *,
        seed: int,
        fingerprint: str,
        rank: int = 0,
        world_size: int = 1,
    ):
        self.n_items, self.global_batch_size, self.collate = n_items, global_batch_size, collate
        self.seed, self.fingerprint, self.rank, self.world_size = seed, fingerprint, rank, world_size
        self.batches = 0

    def batch_items(self, batch: int) -> list[int]:
        """The item indices of global batch `batch`."""
        start = batch * self.global_batch_size
        items: list[int] = []
        while len(items) < self.global_batch_size:
            epoch, offset = divmod(start + len(items), self.n_items)
            take = min(self.n_items - offset, self.global_batch_size - len(items))
            items.extend(epoch_order(self.n_items, self.seed, epoch)[offset : offset + take].tolist())
        return items

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        while True:
            batch = self.collate(self.batch_items(self.batches))
            self.batches += 1
            share = self.global_batch_size // self.world_size
            yield {key: value[self.rank * share : (self.rank + 1) * share] for key, value in batch.items()}

    def state_dict(self) -> dict:
        return {"batches": self.batches, "fingerprint": self.fingerprint}

    def load_state_dict(self, state: dict) -> None:
        if state.get("fingerprint") != self.fingerprint:
            raise UserError(
                "the run's checkpoint was trained on other data (or another tokenization of it) than this "
                "config gives; start a new run_dir, or restore the data the run was started with"
            )
        self.batches = state["batches"]


def pad_rows(rows: Sequence[Sequence[int]], value: int, length: int | None = None) -> torch.Tensor:
    """(len(rows), length) int64, each row right-padded with `value` (to the longest by default)."""
    length = length or max(len(r) for r in rows)
    out = torch.full((len(rows), length), value, dtype=torch.long)
    for i, row in enumerate(rows):
        out[i, : len(row)] = torch.as_tensor(row, dtype=torch.long)
    return out


def stream_batch(streams: Sequence[tuple[int, list[int], dict[str, np.ndarray]]], pads: dict[str, int],
                 multiple: int = 1) -> dict[str, torch.Tensor]:
    """Stream rows (`olmolab.model.shared_prefix`) as a batch. A stream is (its conversations'
    shared prefix length, their lengths, its per-token arrays by key); each array is right-padded
    with `pads[key]` to the longest stream, and each stream's RoPE positions, attention rows and
    outputs are added, every conversation's row padded to the longest conversation; both lengths
    rounded up to `multiple` (`olmolab.kernels.length_multiple`)."""
    stream_lengths = [max(len(arrays[key]) for key in pads) for _, _, arrays in streams]
    T = round_up(max(stream_lengths), multiple)
    S = round_up(max(max(lengths) for _, lengths, _ in streams), multiple)
    batch = {key: pad_rows([arrays[key] for _, _, arrays in streams], pad, T) for key, pad in pads.items()}
    layouts = [layout(prefix, lengths, T, S) for prefix, lengths, _ in streams]
    for i, key in enumerate(("positions", "rows", "outputs")):
        batch[key] = torch.as_tensor(np.stack([arrays[i] for arrays in layouts]))
    batch["stream_lengths"] = torch.as_tensor(stream_lengths)  # each row's tokens before its padding
    return batch


@dataclass(frozen=True)
class UnpaddedStreams:
    """A `stream_batch`'s rows laid end to end as one stream row without their padding (see
    `unpadded_streams`): the model's inputs, and the way back to the rows."""

    input_ids: torch.Tensor
    """(1, length): the rows' tokens, then `pad_id`s up to a multiple."""
    labels: torch.Tensor
    """(1, length), IGNORE_INDEX on the padding."""
    inputs: dict
    """The model's other keyword arguments: the (1, length) RoPE positions and the `SharedPrefix`."""
    index: torch.Tensor
    """The flat indices into the (B, T) rows of the stream's tokens, in stream order."""
    shape: torch.Size
    """(B, T)."""

    def restore(self, values: torch.Tensor) -> torch.Tensor:
        """(1, length) per-token values of the stream -> (B, T) per row, 0 on the rows' padding
        (differentiable)."""
        n = len(self.index)
        return values.new_zeros(self.shape.numel()).index_copy(0, self.index, values[0, :n]).view(self.shape)


def unpadded_streams(batch: dict[str, torch.Tensor], multiple: int = 1, pad_id: int = 0) -> UnpaddedStreams:
    """A `stream_batch`'s rows (input_ids, labels and the stream layout) as one stream row without
    their padding: what `padding_free` does for rows of conversations, for rows that are streams
    already (a DPO pair's, a GRPO group's). Each conversation keeps its attention row (of the same
    length S) and its RoPE positions; only where its tokens sit in the stream changes. The
    stream's length is its token count rounded up to `multiple`
    (`olmolab.kernels.token_multiple`), with `pad_id`s, unlabelled."""
    positions, rows, outputs = batch["positions"], batch["rows"], batch["outputs"]
    (B, T), (K, S) = positions.shape, rows.shape[1:]
    real = torch.arange(T, device=positions.device)[None] < batch["stream_lengths"][:, None]  # (B, T)
    index = real.flatten().nonzero().squeeze(1)
    length = round_up(len(index), multiple)
    # Each old (row, position) -> its place in the new stream. A row's places past its
    # conversation's end name position 0 of their stream row, a real token (`layout`).
    moved = torch.zeros(B * T, dtype=torch.long, device=positions.device)
    moved[index] = torch.arange(len(index), device=positions.device)
    row_starts = torch.arange(B, device=positions.device)
    new_rows = moved[(rows + T * row_starts[:, None, None]).flatten()].view(1, B * K, S)
    # Outputs name places in the (B * K, S) attention rows, row-major: stream row b's start at b K S.
    new_outputs = outputs + K * S * row_starts[:, None]
    # The padding at the stream's end takes place 0 and position 0; nothing reads it.
    unpadded = lambda t, pad=0: stream_row(t, index, length, pad)  # noqa: E731
    return UnpaddedStreams(unpadded(batch["input_ids"], pad_id), unpadded(batch["labels"], IGNORE_INDEX),
                           {"positions": unpadded(positions), "shared_prefix": SharedPrefix(new_rows, unpadded(new_outputs))},
                           index, positions.shape)


def stream_row(t: torch.Tensor, index: torch.Tensor, length: int, pad: int) -> torch.Tensor:
    """(1, length): padded rows `t`'s values at the flat indices `index` (a stream's tokens, as
    `padding_free` and `unpadded_streams` give them), then `pad` up to `length`."""
    return F.pad(t.flatten()[index], (0, length - len(index)), value=pad)[None]


def padding_pays_removing(padding: int, positions: int) -> bool:
    """Whether rows holding `padding` padded positions of `positions` are faster as one stream row
    without it: from 1/16 on. Below, the stream's gathers (of the attention's inputs and outputs,
    each layer) cost about what the padding does."""
    return padding * 16 >= positions


def stream_padding_pays_removing(batch: dict[str, torch.Tensor]) -> bool:
    """`padding_pays_removing` for a `stream_batch` (`unpadded_streams`)."""
    return padding_pays_removing(batch["positions"].numel() - int(batch["stream_lengths"].sum()),
                                 batch["positions"].numel())


def stream_inputs(batch: dict[str, torch.Tensor], rows: slice = slice(None)) -> dict:
    """The model's keyword arguments for rows `rows` of a `stream_batch`: their RoPE positions and
    their `SharedPrefix`."""
    return {"positions": batch["positions"][rows], "shared_prefix": SharedPrefix(batch["rows"][rows], batch["outputs"][rows])}


def padding_free(doc_ids: torch.Tensor, device: torch.device | None = None, multiple: int = 1,
                 length_multiple: int = 1) -> tuple[torch.Tensor, int, dict]:
    """Padded rows of conversations as one stream row without padding: every conversation after
    the other, none sharing a prefix (`olmolab.model.shared_prefix`), so attention keeps each to
    itself and every other op skips the padding.

    doc_ids: (B, T) each token's conversation within its row (several where rows are packed), -1
    for padding; conversations are runs of one id. Returns (the flat indices into the (B, T) rows
    of the stream's N tokens, which come first in it; the stream's length, N rounded up to
    `multiple` (`olmolab.kernels.token_multiple`), its attention rows' length to
    `length_multiple` (`olmolab.kernels.length_multiple`); the model's keyword
    arguments for the stream: its (1, length) RoPE positions, restarting at each conversation,
    and its `SharedPrefix`), those on `device`. Computed where doc_ids are: on the CPU batch, a
    GPU's queue never waits for it."""
    flat = doc_ids.flatten()
    index = (flat >= 0).nonzero().squeeze(1)
    row = torch.div(index, doc_ids.shape[1], rounding_mode="floor")
    conversation = row * (int(doc_ids.max()) + 1) + flat[index]  # unique across rows, in stream order
    lengths = torch.unique_consecutive(conversation, return_counts=True)[1].tolist()
    length = round_up(len(index), multiple)
    arrays = layout(0, lengths, length, round_up(max(lengths), length_multiple))
    positions, rows, outputs = (torch.as_tensor(a, device=device)[None] for a in arrays)
    return index.to(device), length, {"positions": positions, "shared_prefix": SharedPrefix(rows, outputs)}
