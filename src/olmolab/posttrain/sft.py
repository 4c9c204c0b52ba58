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

Padding-free (`padding_free`, the default): a micro-batch's rows are laid end to end as one row
without their padding, the stream of `olmolab.model.shared_prefix` with no prefix shared. Only
attention sees each conversation as a row of its own; the projections, MLP, norms and RoPE run
on the conversations' tokens alone. Rows of one conversation each take it where padding is at
least 1/16 of their positions (`padding_pays_removing`); packed rows always (it replaces their
(T x T) documents' mask).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from olmolab.kernels import round_up
from olmolab.model.loss import IGNORE_INDEX
from olmolab.posttrain import batches
from olmolab.posttrain.batches import pad_rows, padding_free, stream_row
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


def fitted_example(ids: list[int], trained: list[bool], max_seq_len: int, overlong: str,
                   counts: Counter) -> ChatExample | None:
    """A tokenized conversation (`Tokenizer.encode_chat_with_mask`) as an example, or None
    (counted) if it is too long to keep or has nothing to train on; `counts` gains truncated,
    dropped_overlong and dropped_untrained."""
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


# Conversations tokenized at once (`Tokenizer.encode_chats_with_mask`): enough to keep tokenizers'
# threads busy, few enough that the progress bar moves.
TOKENIZE_CHUNK = 1024


def tokenized_chats(conversations: list, tokenizer, progress: str | None = None, *, last_turn_only: bool = False,
                    add_generation_prompt: bool = False) -> Iterator[tuple[list[int], list[bool]]]:
    """(ids, trained) of each conversation (`Tokenizer.encode_chat_with_mask`), in order,
    tokenized in parallel chunks; with a progress bar labelled `progress` (a dataset like Tülu
    3's SFT mix takes minutes)."""
    with tqdm(total=len(conversations), desc=progress, unit="conversation", disable=progress is None,
              leave=False) as bar:
        for start in range(0, len(conversations), TOKENIZE_CHUNK):
            chunk = conversations[start : start + TOKENIZE_CHUNK]
            yield from tokenizer.encode_chats_with_mask(chunk, last_turn_only=last_turn_only,
                                                        add_generation_prompt=add_generation_prompt)
            bar.update(len(chunk))


def tokenize_conversations(rows: list, tokenizer, max_seq_len: int, overlong: str, counts: Counter,
                           progress: str | None = None) -> list[ChatExample]:
    examples = (fitted_example(ids, trained, max_seq_len, overlong, counts)
                for ids, trained in tokenized_chats(rows, tokenizer, progress))
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


def collate_sequences(sequences: list[list[ChatExample]], pad_id: int, packed: bool, multiple: int = 1) -> dict[str, torch.Tensor]:
    """Sequences (each one or more examples) as input_ids and labels right-padded to the longest,
    rounded up to `multiple` (`olmolab.kernels.length_multiple`), with each token's conversation
    index within its sequence (`doc_ids`; padding is -1); packed ones also carry each token's
    RoPE position."""
    length = round_up(max(sum(len(e.ids) for e in seq) for seq in sequences), multiple)
    rows = lambda arrays, pad: pad_rows([np.concatenate(a) for a in arrays], pad, length)  # noqa: E731
    batch = {"input_ids": rows([[e.ids for e in seq] for seq in sequences], pad_id),
             "labels": rows([[segment_labels(e) for e in seq] for seq in sequences], IGNORE_INDEX),
             "doc_ids": rows([[np.full(len(e.ids), k) for k, e in enumerate(seq)] for seq in sequences], -1)}
    if packed:
        batch["positions"] = rows([[np.arange(len(e.ids)) for e in seq] for seq in sequences], 0)
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
        examples = tokenize_conversations(rows, self.tokenizer, section.max_seq_len, section.overlong, counts,
                                          self.data_progress("tokenizing conversations"))
        if not section.packing:
            return [[e] for e in examples]
        packs = pack([len(e.ids) for e in examples], section.max_seq_len)
        counts["sequences"] = len(packs)
        return [[examples[i] for i in group] for group in packs]

    def example_arrays(self, sequence: list[ChatExample]) -> list[np.ndarray]:
        return [a for e in sequence for a in (e.ids, e.trained)]

    def collate(self, items: list[int]) -> dict[str, torch.Tensor]:
        pad_id = self.config.model.pad_token_id
        return collate_sequences([self.examples[i] for i in items], pad_id, self.config.data.packing, self.length_multiple)

    def forward_backward(self, batch: dict) -> dict:
        tc, reduction = self.config.trainer, self.config.data.reduction
        labels = batch["labels"].to(self.device)
        trained_tokens = dist_utils.all_reduce_sum((labels != IGNORE_INDEX).sum().float()).clamp(min=1)
        # DDP / FSDP average the ranks' gradients: each rank's loss is scaled up by the world size.
        div = (trained_tokens if reduction == "mean" else torch.ones((), device=self.device)) / self.world_size

        def micro_loss(rows: slice):
            input_ids, labels, inputs = self.model_inputs(batch, rows)
            out = self.model(input_ids, labels, z_loss_multiplier=tc.z_loss_multiplier, loss_div_factor=div, **inputs)
            return out.loss, torch.stack([out.ce_loss, out.z_loss])

        total = self.accumulate(micro_loss) / self.world_size
        # Logged per token whatever the reduction, so runs compare.
        ce, z = (total if reduction == "mean" else total / trained_tokens).tolist()
        return {"loss": ce + z, "ce_loss": ce, "z_loss": z, "trained_tokens": int(trained_tokens.item())}

    def model_inputs(self, batch: dict, rows: slice) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """(input_ids, labels, the model's other keyword arguments) of the batch's rows `rows`: one
        row without padding (`padding_free`) where `sft.padding_free` and that pays, else the rows
        as they are, packed ones with their documents' attention mask."""
        input_ids, labels, doc_ids = (batch[k][rows] for k in ("input_ids", "labels", "doc_ids"))
        packed = "positions" in batch
        if self.config.data.padding_free and (packed or padding_pays_removing(doc_ids)):
            index, length, inputs = padding_free(doc_ids, self.device, self.token_multiple, self.length_multiple)
            return (stream_row(input_ids.to(self.device), index, length, self.config.model.pad_token_id),
                    stream_row(labels.to(self.device), index, length, IGNORE_INDEX), inputs)
        input_ids, labels = input_ids.to(self.device), labels.to(self.device)
        if not packed:
            return input_ids, labels, {}
        return input_ids, labels, {"positions": batch["positions"][rows].to(self.device),
                                   "attn_mask": document_attention_mask(doc_ids.to(self.device))}


def padding_pays_removing(doc_ids: torch.Tensor) -> bool:
    """Whether rows of one conversation each hold enough padding that a stream row without it
    (`padding_free`) is faster (`batches.padding_pays_removing`)."""
    return batches.padding_pays_removing(int((doc_ids < 0).sum()), doc_ids.numel())
