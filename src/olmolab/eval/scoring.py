"""The engine both evaluations share: score token log-probabilities of many rows in few forwards.

A `Row` is one model input plus the targets to score in it: `(position, token, key)` means
"add log p(token | row[: position + 1]) to the total of `key`". Downstream keys are requests,
perplexity keys are documents. Rows are sorted by length (longest first, so memory fails early
if it fails at all), right-padded into batches, and run under `torch.inference_mode`.

Right padding needs no attention mask: a causal model never looks at later positions, so pad
tokens after a row's end cannot change its logits.

A *packed* row (`segments` set) holds one context followed by several continuation branches:
branch tokens attend to the context and to earlier tokens of their own branch only, and take the
positions they would have right after the context. Each branch then gets exactly the logits it
would get alone as `context + branch`, while the context is computed once. This needs a model
that takes `positions` and `attn_mask` (olmolab's `Transformer` does); unpacked rows need only
`model(input_ids) -> logits`.

Only scored positions go through the LM head (`selected_logits`): in a 5-shot prompt almost
every position is context, and the head is a third of a small model's compute.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm import tqdm

from olmolab.model.transformer import Transformer
from olmolab.train import distributed as dist_utils

# Cap on the scored logits of one batch (targets x vocab, fp32: 512 MiB), so OLMo 2's 100k vocabulary
# with many scored tokens still fits; otherwise the batch size (rows) is the limit.
LOGITS_BUDGET = 1 << 27


@dataclass
class Row:
    tokens: list[int]
    targets: list[tuple[int, int, int]] = field(default_factory=list)
    """(position in the row, target token, key): the logits at `position` predict `token`."""
    segments: list[int] | None = None
    """Packed rows: 0 = shared context, i > 0 = branch i. None = a plain causal row."""
    positions: list[int] | None = None
    """Packed rows: the RoPE position of each token (branches restart after the context)."""


def model_window(model) -> int:
    """The context window: `config.max_seq_len` of olmolab (and most) models."""
    return int(model.config.max_seq_len)


def model_vocab(model) -> int:
    config = model.config
    return int(getattr(config, "embedding_size", None) or config.vocab_size)


def supports_packing(model) -> bool:
    """Whether the model takes `positions` and `attn_mask`, which packed rows need: olmolab's
    through `trunk` (`selected_logits`), another model through its forward."""
    parameters = inspect.signature(model.trunk if isinstance(model, Transformer) else model.forward).parameters
    return "positions" in parameters and "attn_mask" in parameters


def model_device(model) -> torch.device:
    return next(model.parameters()).device


def batches(rows: list[Row], batch_size: int, vocab: int) -> Iterator[list[Row]]:
    """Rows longest first, at most `batch_size` per batch and within the logits budget.

    A batch also ends where rows get shorter than half its longest, so padding never exceeds
    half of a row's compute (packed rows of a shared context can be much longer than the rest).
    """
    batch: list[Row] = []
    n_targets = 0
    for row in sorted(rows, key=lambda r: len(r.tokens), reverse=True):
        full = len(batch) >= batch_size or (n_targets + len(row.targets)) * vocab > LOGITS_BUDGET
        if batch and (full or 2 * len(row.tokens) < len(batch[0].tokens)):
            yield batch
            batch, n_targets = [], 0
        batch.append(row)
        n_targets += len(row.targets)
    if batch:
        yield batch


def packed_mask(segments: torch.Tensor) -> torch.Tensor:
    """(B, T) segment ids -> (B, 1, T, T) boolean mask, True where a query may attend to a key.

    Causal, and a key is visible if it is context (segment 0) or in the query's own branch.
    Padding (segment -1) sees the context and itself, so no query row is all False (SDPA's NaN).
    """
    T = segments.shape[1]
    causal = torch.ones(T, T, dtype=torch.bool, device=segments.device).tril()
    keys, queries = segments[:, None, :], segments[:, :, None]  # (B, 1, Tk), (B, Tq, 1)
    visible = (keys == 0) | (keys == queries)
    return (causal & visible)[:, None]


def batch_inputs(batch: list[Row]) -> dict[str, torch.Tensor]:
    """Keyword arguments of the model call for a right-padded batch."""
    T = len(batch[0].tokens)
    ids = torch.zeros(len(batch), T, dtype=torch.long)
    for b, row in enumerate(batch):
        ids[b, : len(row.tokens)] = torch.tensor(row.tokens)
    if all(row.segments is None for row in batch):
        return {"input_ids": ids}
    segments = torch.full((len(batch), T), -1, dtype=torch.long)
    positions = torch.zeros(len(batch), T, dtype=torch.long)
    for b, row in enumerate(batch):
        n = len(row.tokens)
        segments[b, :n] = torch.tensor(row.segments) if row.segments is not None else 0
        positions[b, :n] = torch.tensor(row.positions) if row.positions is not None else torch.arange(n)
    return {"input_ids": ids, "positions": positions, "attn_mask": packed_mask(segments)}


def selected_logits(model, inputs: dict[str, torch.Tensor], b_idx: torch.Tensor, pos_idx: torch.Tensor) -> torch.Tensor:
    """Logits (N, V) at the N positions (b_idx[i], pos_idx[i]) of the batch: olmolab's model runs
    its last block after attention, and its LM head, on just those (`Transformer.forward`'s `at`);
    other models give all logits, indexed afterwards."""
    if isinstance(model, Transformer):
        return model(**inputs, at=(b_idx, pos_idx))
    return model(**inputs)[b_idx, pos_idx]


def target_logprobs(model, batch: list[Row], device: torch.device) -> tuple[np.ndarray, np.ndarray]:
    """(log-probs, keys) of every target in the batch."""
    flat = [(b, pos, tok, key) for b, row in enumerate(batch) for pos, tok, key in row.targets]
    if not flat:
        return np.zeros(0), np.zeros(0, dtype=np.int64)
    b_idx, pos_idx, tokens, keys = (torch.tensor(col, device=device) for col in zip(*flat, strict=True))
    inputs = {name: t.to(device) for name, t in batch_inputs(batch).items()}
    logits = selected_logits(model, inputs, b_idx, pos_idx).float()  # (N, V)
    logprobs = logits.gather(1, tokens[:, None]).squeeze(1) - torch.logsumexp(logits, dim=-1)
    return logprobs.double().cpu().numpy(), keys.cpu().numpy()


def score_rows(
    model, rows: list[Row], n_keys: int, batch_size: int = 32, progress: str | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Per key: the summed log-probability of its targets (float64) and how many there were.

    In a torch.distributed group (in-loop evaluation under torchrun) each rank scores every
    world-th batch and the sums are all-reduced, so evaluation takes 1/world of the time and
    every rank gets the same numbers. A sharded (FSDP) model gathers its weights inside forward,
    so every rank makes the same number of calls: a rank with fewer batches repeats one and
    drops the result.
    """
    totals, counts = np.zeros(n_keys), np.zeros(n_keys, dtype=np.int64)
    device, vocab = model_device(model), model_vocab(model)
    rank, world = dist_utils.rank(), dist_utils.world_size()
    every = list(batches(rows, batch_size, vocab))
    mine = every[rank::world]
    n_calls = -(-len(every) // world)
    bar = tqdm(total=sum(map(len, mine)), desc=progress, unit="row", disable=progress is None, leave=False)
    with torch.inference_mode():
        for i in range(n_calls):
            logprobs, keys = target_logprobs(model, mine[i] if i < len(mine) else every[0], device)
            if i < len(mine):
                np.add.at(totals, keys, logprobs)
                np.add.at(counts, keys, 1)
                bar.update(len(mine[i]))
    bar.close()
    if world > 1:
        summed = torch.from_numpy(np.stack([totals, counts.astype(np.float64)])).to(device)
        dist_utils.all_reduce_sum(summed)
        totals, counts = summed[0].cpu().numpy(), summed[1].cpu().numpy().astype(np.int64)
    return totals, counts
