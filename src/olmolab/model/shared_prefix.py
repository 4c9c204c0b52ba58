"""Conversations that share their beginning, computed once (prefix sharing).

A DPO pair is two conversations that differ only in their last turn, and a GRPO group is a
prompt's K sampled responses; the prompt is usually a large share of each. Laid out as one
*stream* row,

    stream:  [ prefix | suffix 1 | suffix 2 | padding ]
    rows:    [ prefix | suffix 1 ]          (conversation 1, as it would be alone)
             [ prefix | suffix 2 ]          (conversation 2)

the embeddings, norms, projections and MLP, which see one token at a time, run once over the
prefix. Attention is the one op in which the conversations must not see each other: there each
conversation's queries, keys and values are gathered from the stream into a row of its own,
ordinary causal attention runs over the rows, and each stream token takes its output from one
row (the prefix's from the first; the other rows' prefix outputs are dropped). With RoPE
positions counted per conversation (`positions`), every token is computed as in its
conversation alone. The prefix's keys and values are read by every row, so the gather's backward
sums their gradients from all of them, as computing the conversations separately would.

What it saves is the prefix's share of the per-token work (the matmuls: most of a step); what it
costs is two gathers per layer of activations of the model's width, and attention over the
prefix once more per extra conversation (its queries in rows after the first).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor


@dataclass(frozen=True)
class SharedPrefix:
    """Where the attention rows of a batch of stream rows come from, and go back to.

    rows: (B, K, S) int64: row k of stream row b lists, for each of its S places, the stream
        position (in [0, T)) of the token there. Places after the conversation's end repeat any
        position: causal attention never lets a real token see them.
    outputs: (B, T) int64: for each stream position, the place (in [0, K * S), row-major over
        the stream row's K rows) whose attention output it takes.
    """

    rows: Tensor
    outputs: Tensor

    def gather_rows(self, t: Tensor) -> Tensor:
        """(B, T, ...) stream activations -> (B * K, S, ...) attention rows."""
        B, K, S = self.rows.shape
        index = self.rows + t.shape[1] * torch.arange(B, device=t.device)[:, None, None]
        return t.flatten(0, 1).index_select(0, index.flatten()).view(B * K, S, *t.shape[2:])

    def gather_outputs(self, y: Tensor) -> Tensor:
        """(B * K, S, ...) attention outputs -> (B, T, ...) one per stream position."""
        B, T = self.outputs.shape
        index = self.outputs + (y.shape[0] // B) * y.shape[1] * torch.arange(B, device=y.device)[:, None]
        return y.flatten(0, 1).index_select(0, index.flatten()).view(B, T, *y.shape[2:])


def stream(prefix: int, conversations: list[np.ndarray]) -> np.ndarray:
    """The stream row of per-token arrays (ids, labels, ...) of conversations whose first `prefix`
    tokens are the same: the prefix once, then each conversation's rest."""
    return np.concatenate([conversations[0][:prefix]] + [c[prefix:] for c in conversations])


def layout(prefix: int, lengths: list[int], T: int, S: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(positions (T,), rows (K, S), outputs (T,)) of the `stream` of conversations of `lengths`
    tokens sharing `prefix`, padded to T tokens, its K conversations' rows to S (see
    `SharedPrefix`; positions are RoPE's, counted per conversation). Padding is at position 0
    and fills the rows with stream position 0, which comes after every real token of a row."""
    if not 0 <= prefix <= min(lengths) or max(lengths) > S or prefix + sum(n - prefix for n in lengths) > T:
        raise ValueError(f"conversations of {lengths} tokens sharing {prefix} do not fit a stream of {T} and rows of {S}")
    positions, outputs = np.zeros(T, dtype=np.int64), np.zeros(T, dtype=np.int64)
    rows = np.zeros((len(lengths), S), dtype=np.int64)
    rows[:, :prefix] = np.arange(prefix)
    positions[:prefix], outputs[:prefix] = np.arange(prefix), np.arange(prefix)  # from conversation 0's row
    at = prefix
    for k, n in enumerate(lengths):
        rest = np.arange(prefix, n)  # the conversation's own tokens, by their place in it
        positions[at : at + len(rest)] = rest
        outputs[at : at + len(rest)] = k * S + rest
        rows[k, prefix:n] = at + rest - prefix
        at += len(rest)
    return positions, rows, outputs
