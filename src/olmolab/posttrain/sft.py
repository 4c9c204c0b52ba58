"""Supervised fine-tuning on chat data (Tülu 3's SFT, which made OLMo 2-SFT).

    olmolab sft configs/official/olmo2-7b-sft.yaml

Each conversation is rendered in OLMo 2-Instruct's template and tokenized whole. The loss is
only on the assistant's turns: a target token is trained when it lies after `<|assistant|>\\n`
and up to the turn's end, its EOS (and the newline after a non-final turn) included
(`Tokenizer.encode_chat_with_mask`). Rows with nothing to train on are dropped; rows over
`max_seq_len` are truncated or dropped; all of it is counted (RUN_DIR/data_stats.json).

Reduction: `mean` divides the summed token losses by the global batch's trained tokens (as
pretraining does); `sum` does not divide (OLMo 2's SFT; open-instruct also divides by the
accumulation steps and ranks, a constant factor that AdamW's update does not see).

Packing puts several conversations in one sequence of up to `max_seq_len` tokens. Attention
never crosses from one conversation to another and RoPE positions restart at each, so a
packed conversation is computed exactly as it would be alone, only without the padding.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np
import torch

from olmolab.model.loss import IGNORE_INDEX
from olmolab.posttrain.batches import pad_rows
from olmolab.posttrain.chat_data import read_rows, sft_row
from olmolab.posttrain.config import SFTConfig
from olmolab.posttrain.engine import PostTrainer
from olmolab.train import distributed as dist_utils


@dataclass(frozen=True)
class ChatExample:
    ids: np.ndarray
    """int64 (T,): the rendered conversation's token ids."""
    trained: np.ndarray
    """bool (T,): which tokens are targets of the loss."""


def chat_example(messages, tokenizer, max_seq_len: int, overlong: str, counts: Counter,
                 last_turn_only: bool = False) -> ChatExample | None:
    """A conversation as an example, or None (counted) if it is too long to keep or has nothing
    to train on; `counts` gains truncated, dropped_overlong and dropped_untrained."""
    ids, trained = tokenizer.encode_chat_with_mask(messages, last_turn_only=last_turn_only)
    if len(ids) > max_seq_len:
        if overlong == "drop":
            counts["dropped_overlong"] += 1
            return None
        counts["truncated"] += 1
        ids, trained = ids[:max_seq_len], trained[:max_seq_len]
    if not any(trained[1:]):  # the first token is never a target: nothing precedes it
        counts["dropped_untrained"] += 1
        return None
    return ChatExample(np.asarray(ids, dtype=np.int64), np.asarray(trained, dtype=bool))


def tokenize_conversations(rows: list, tokenizer, max_seq_len: int, overlong: str, counts: Counter) -> list[ChatExample]:
    examples = (chat_example(messages, tokenizer, max_seq_len, overlong, counts) for messages in rows)
    return [e for e in examples if e is not None]


def pack(lengths: list[int], max_seq_len: int) -> list[list[int]]:
    """Example indices grouped into sequences of at most `max_seq_len` tokens, in order (a new
    sequence starts where the next example does not fit)."""
    packs: list[list[int]] = []
    used = max_seq_len
    for i, length in enumerate(lengths):
        if used + length > max_seq_len:
            packs.append([])
            used = 0
        packs[-1].append(i)
        used += length
    return packs


def segment_labels(example: ChatExample) -> np.ndarray:
    """Targets aligned with the inputs: position t predicts token t + 1 where that one is trained."""
    labels = np.full(len(example.ids), IGNORE_INDEX, dtype=np.int64)
    labels[:-1] = np.where(example.trained[1:], example.ids[1:], IGNORE_INDEX)
    return labels


def collate_sequences(sequences: list[list[ChatExample]], pad_id: int, packed: bool) -> dict[str, torch.Tensor]:
    """Sequences (each one or more examples) as right-padded input_ids and labels; packed ones
    also carry each token's RoPE position and conversation index (`doc_ids`; padding is -1)."""
    ids = [np.concatenate([e.ids for e in seq]) for seq in sequences]
    batch = {"input_ids": pad_rows(ids, pad_id),
             "labels": pad_rows([np.concatenate([segment_labels(e) for e in seq]) for seq in sequences], IGNORE_INDEX)}
    if packed:
        length = batch["input_ids"].shape[1]
        positions, doc_ids = [], []
        for seq in sequences:
            pad = length - sum(len(e.ids) for e in seq)
            positions.append(np.concatenate([np.arange(len(e.ids)) for e in seq] + [np.arange(pad)]))
            doc_ids.append(np.concatenate([np.full(len(e.ids), k) for k, e in enumerate(seq)] + [np.full(pad, -1)]))
        batch["positions"] = torch.as_tensor(np.stack(positions))
        batch["doc_ids"] = torch.as_tensor(np.stack(doc_ids))
    return batch


def document_attention_mask(doc_ids: torch.Tensor) -> torch.Tensor:
    """(B, 1, T, T) boolean, True = may attend: causal, and only within the same conversation
    (padding attends to padding, so no row is empty)."""
    T = doc_ids.shape[1]
    causal = torch.ones(T, T, dtype=torch.bool, device=doc_ids.device).tril()
    return ((doc_ids[:, :, None] == doc_ids[:, None, :]) & causal)[:, None]


class SFTTrainer(PostTrainer):
    def load_examples(self, counts: Counter) -> list[list[ChatExample]]:
        section: SFTConfig = self.config.data
        rows = read_rows(section.paths, sft_row, skip_bad=section.skip_bad, counts=counts)
        examples = tokenize_conversations(rows, self.tokenizer, section.max_seq_len, section.overlong, counts)
        if not section.packing:
            return [[e] for e in examples]
        packs = pack([len(e.ids) for e in examples], section.max_seq_len)
        counts["sequences"] = len(packs)
        return [[examples[i] for i in group] for group in packs]

    def example_arrays(self, sequence: list[ChatExample]) -> list[np.ndarray]:
        return [a for e in sequence for a in (e.ids, e.trained)]

    def collate(self, items: list[int]) -> dict[str, torch.Tensor]:
        pad_id = self.config.model.pad_token_id
        return collate_sequences([self.examples[i] for i in items], pad_id, self.config.data.packing)

    def forward_backward(self, batch: dict) -> dict:
        tc, reduction = self.config.trainer, self.config.data.reduction
        batch = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
        labels = batch["labels"]
        positions = batch.get("positions")
        mask = document_attention_mask(batch["doc_ids"]) if "doc_ids" in batch else None
        trained_tokens = dist_utils.all_reduce_sum((labels != IGNORE_INDEX).sum().float()).clamp(min=1)
        # DDP / FSDP average the ranks' gradients: each rank's loss is scaled up by the world size.
        div = (trained_tokens if reduction == "mean" else torch.ones((), device=self.device)) / self.world_size

        def micro_loss(rows: slice):
            out = self.model(batch["input_ids"][rows], labels[rows], z_loss_multiplier=tc.z_loss_multiplier,
                             loss_div_factor=div, positions=None if positions is None else positions[rows],
                             attn_mask=None if mask is None else mask[rows])
            return out.loss, torch.stack([out.ce_loss, out.z_loss])

        total = self.accumulate(micro_loss) / self.world_size
        # Logged per token whatever the reduction, so runs compare.
        ce, z = (total if reduction == "mean" else total / trained_tokens).tolist()
        return {"loss": ce + z, "ce_loss": ce, "z_loss": z, "trained_tokens": int(trained_tokens.item())}
