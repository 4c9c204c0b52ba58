"""Direct preference optimisation (Rafailov et al. 2023), as Tülu 3 ran it for OLMo 2-Instruct.

    olmolab dpo configs/official/olmo2-7b-dpo.yaml

Each row is a conversation with two final assistant turns, `chosen` and `rejected`; only that
last turn is scored. With π the policy's and r the reference's score of a turn,

    z     = (π_chosen - π_rejected) - (r_chosen - r_rejected)
    loss  = -(1 - ε) log σ(β z) - ε log σ(-β z)          (ε: label smoothing; 0 = plain DPO)

`dpo` scores a turn by its summed token log-probs; `dpo_norm` (Tülu 3's default) by their
mean, so long answers are not favoured. Logged: rewards/chosen = β (π_chosen - r_chosen),
rewards/rejected likewise, their margin, the share of pairs with chosen > rejected
(rewards/accuracy), and the policy's log-probs.

A pair goes through the model as one row, its two conversations' shared beginning (everything
before the scored turn) computed once (`olmolab.model.shared_prefix`; `share_prefix: false`
computes both whole, for comparison): each token is computed as in its conversation alone.
Padding-free (`padding_free`, the default): where padding is at least 1/16 of a micro-batch's
positions, its pairs' rows are laid end to end as one row without it
(`olmolab.posttrain.batches.unpadded_streams`), as SFT lays out its conversations.

The reference is the model training starts from (trainer.load_path). Its scores never change,
so they are computed once, before the first step, into RUN_DIR/reference_logps-<key>.pt (the
key hashes the tokenized data and the reference's weight files), and the reference is freed:
training holds one model. A resumed run finds the file and reuses it.
"""

from __future__ import annotations

import hashlib
import pickle
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm import tqdm

from olmolab import model_files
from olmolab.errors import UserError, first_line, refused_unpickling
from olmolab.model.loss import IGNORE_INDEX
from olmolab.model.shared_prefix import stream
from olmolab.posttrain.batches import (
    stream_batch,
    stream_inputs,
    stream_padding_pays_removing,
    unpadded_streams,
)
from olmolab.posttrain.chat_data import preference_row, read_rows
from olmolab.posttrain.config import DPOConfig
from olmolab.posttrain.engine import PostTrainer
from olmolab.posttrain.sft import ChatExample, fitted_example, segment_labels, tokenized_chats
from olmolab.train import distributed as dist_utils

# ---------------------------------------------------------------------- the loss


class DPOLoss(NamedTuple):
    losses: Tensor
    """(B,) per pair; the step's loss is their mean over the global batch."""
    chosen_rewards: Tensor
    """(B,) β (π_chosen - r_chosen), detached."""
    rejected_rewards: Tensor


def dpo_loss(policy_chosen: Tensor, policy_rejected: Tensor, ref_chosen: Tensor, ref_rejected: Tensor,
             beta: float, label_smoothing: float = 0.0) -> DPOLoss:
    """The DPO loss of each pair from its four scores (each (B,))."""
    z = (policy_chosen - policy_rejected) - (ref_chosen - ref_rejected)
    losses = -(1 - label_smoothing) * F.logsigmoid(beta * z) - label_smoothing * F.logsigmoid(-beta * z)
    return DPOLoss(losses, beta * (policy_chosen - ref_chosen).detach(), beta * (policy_rejected - ref_rejected).detach())


def pair_scores(model, batch: dict[str, Tensor], average: bool, padding_free: bool = False,
                multiple: int = 1, pad_id: int = 0) -> tuple[Tensor, Tensor]:
    """(B,) scores of the chosen and of the rejected turns of a batch of pairs (`collate_pairs`):
    each turn's summed (or, with `average`, mean) token log-probs. Only the labelled positions
    go through the LM head (`Transformer.label_log_probs`). With `padding_free`, the pairs' rows
    go as one row without their padding where that pays (`unpadded_streams`; its length rounded up
    to `multiple`, `olmolab.kernels.token_multiple`, with `pad_id`s, unlabelled)."""
    labels = batch["labels"]
    if padding_free and stream_padding_pays_removing(batch):
        stream = unpadded_streams(batch, multiple, pad_id)
        log_probs = stream.restore(model(stream.input_ids, stream.labels, label_log_probs=True, **stream.inputs))
    else:
        log_probs = model(batch["input_ids"], labels, label_log_probs=True, **stream_inputs(batch))  # 0 where unlabelled
    labelled = labels != IGNORE_INDEX
    scores = []
    for side in (labelled & ~batch["rejected"], labelled & batch["rejected"]):
        sums = torch.where(side, log_probs, 0.0).sum(dim=1)
        scores.append(sums / side.sum(dim=1).clamp(min=1) if average else sums)
    return scores[0], scores[1]


# ---------------------------------------------------------------------- the data


@dataclass(frozen=True)
class PreferencePair:
    chosen: ChatExample
    rejected: ChatExample


def tokenize_pairs(rows: list, tokenizer, max_seq_len: int, overlong: str, counts: Counter,
                   progress: str | None = None) -> list[PreferencePair]:
    """Pairs whose two sides are both kept (see `fitted_example`), only their last turns trained;
    `counts` gains dropped_pairs."""
    sides = tokenized_chats([side for pair in rows for side in pair], tokenizer, progress, last_turn_only=True)
    pairs = []
    for chosen, rejected in zip(sides, sides, strict=False):  # the iterator's items two at a time
        kept = [fitted_example(ids, trained, max_seq_len, overlong, counts) for ids, trained in (chosen, rejected)]
        if None in kept:
            counts["dropped_pairs"] += 1
            continue
        pairs.append(PreferencePair(*kept))
    return pairs


def shared_prefix_length(pair: PreferencePair) -> int:
    """How many first tokens the pair's two conversations share and neither scores: their common
    token prefix, ending before the first position that predicts a scored token (the last prompt
    token predicts each side's first answer token, so each side keeps its own copy of it)."""
    a, b = pair.chosen, pair.rejected
    n = min(len(a.ids), len(b.ids))
    differ = np.flatnonzero(a.ids[:n] != b.ids[:n])
    common = int(differ[0]) if len(differ) else n
    first_scored = min(int(np.argmax(e.trained)) for e in (a, b)) - 1  # the position predicting it
    return max(0, min(common, first_scored))


def pair_stream(pair: PreferencePair, share_prefix: bool) -> tuple[int, list[int], dict[str, np.ndarray]]:
    """The pair as a stream (`stream_batch`): input_ids, labels and `rejected`."""
    P = shared_prefix_length(pair) if share_prefix else 0
    c, r = pair.chosen, pair.rejected
    return P, [len(c.ids), len(r.ids)], {
        "input_ids": stream(P, [c.ids, r.ids]),
        "labels": stream(P, [segment_labels(c), segment_labels(r)]),
        "rejected": stream(P, [np.zeros(len(c.ids), dtype=bool), np.ones(len(r.ids), dtype=bool)]),
    }


def collate_pairs(pairs: list[PreferencePair], pad_id: int, share_prefix: bool = True, multiple: int = 1) -> dict[str, Tensor]:
    """Each pair as one stream row, [shared prefix | chosen's rest | rejected's rest], padded (to
    a multiple of `multiple`, see `stream_batch`): input_ids, labels, `rejected` (which positions
    are the rejected side's), RoPE positions and the attention rows and outputs
    (`olmolab.model.shared_prefix`). Without `share_prefix` the prefix is empty: both
    conversations whole, one after the other."""
    batch = stream_batch([pair_stream(p, share_prefix) for p in pairs],
                         {"input_ids": pad_id, "labels": IGNORE_INDEX, "rejected": 0}, multiple)
    batch["rejected"] = batch["rejected"].bool()
    return batch


# ---------------------------------------------------------------------- the reference


def reference_key(data_fingerprint: str, reference_path: str) -> str:
    """Hashes the tokenized data and the reference's weight files."""
    digest = hashlib.sha256(data_fingerprint.encode())
    model_dir = model_files.resolve_model_dir(reference_path)
    for weights in sorted(model_dir.glob("*.safetensors")) + sorted(model_dir.glob("*.bin")):
        with open(weights, "rb") as f:
            while chunk := f.read(1 << 24):
                digest.update(chunk)
    return digest.hexdigest()[:16]


@torch.no_grad()
def reference_scores(model, pairs: list[PreferencePair], pad_id: int, batch_size: int, average: bool,
                     device, share_prefix: bool = True, padding_free: bool = True,
                     progress: str | None = None) -> dict[str, Tensor]:
    """{"chosen", "rejected"}: (N,) fp32 scores of every pair's turns under `model`; with a
    progress bar labelled `progress` (a pass over the data: hours for Tülu 3's 270k pairs)."""
    scores = {"chosen": [], "rejected": []}
    for start in tqdm(range(0, len(pairs), batch_size), desc=progress, unit="batch", disable=progress is None,
                      leave=False):
        batch = collate_pairs(pairs[start : start + batch_size], pad_id, share_prefix)
        batch = {k: v.to(device) for k, v in batch.items()}
        for side, values in zip(scores, pair_scores(model, batch, average, padding_free, pad_id=pad_id), strict=True):
            scores[side].append(values.cpu())
    return {side: torch.cat(values) for side, values in scores.items()}


def load_reference_scores(path: Path, pairs: int) -> dict[str, Tensor]:
    """The reference's cached scores ({"chosen", "rejected"}: (pairs,) each), read by torch's
    restricted unpickler: a file holding anything but tensors is refused, never run."""
    delete = "delete it, and the next run scores the reference again"
    try:
        scores = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise refused_unpickling(path, e, delete) from e
    except (RuntimeError, EOFError) as e:
        raise UserError(f"{path}: cannot read the reference's scores ({first_line(e)}); {delete}") from e
    if not (isinstance(scores, dict) and set(scores) == {"chosen", "rejected"}
            and all(isinstance(t, Tensor) and t.shape == (pairs,) for t in scores.values())):
        raise UserError(f"{path}: expected the reference's chosen and rejected scores of {pairs} pairs; {delete}")
    return scores


# ---------------------------------------------------------------------- training


class DPOTrainer(PostTrainer):
    def load_examples(self, counts: Counter) -> list[PreferencePair]:
        section: DPOConfig = self.config.data
        rows = read_rows(section.paths, preference_row, skip_bad=section.skip_bad, counts=counts)
        return tokenize_pairs(rows, self.tokenizer, section.max_seq_len, section.overlong, counts,
                              self.data_progress("tokenizing pairs"))

    def example_arrays(self, pair: PreferencePair) -> list[np.ndarray]:
        return [pair.chosen.ids, pair.chosen.trained, pair.rejected.ids, pair.rejected.trained]

    def _build_data(self) -> None:
        super()._build_data()
        self.reference = self._reference()

    def _reference(self) -> dict[str, Tensor]:
        """The cached reference scores; computed (by rank 0, with the reference then freed) if absent."""
        key = reference_key(self.loader.fingerprint, self.config.trainer.load_path)
        path = self.run_dir / f"reference_logps-{self.config.data.loss}-{key}.pt"
        if self.rank == 0 and not path.exists():
            progress = f"reference: scoring {len(self.examples)} pairs" if self.config.trainer.progress else None
            reference = model_files.load_model(self.config.trainer.load_path, device=self.device)
            scores = reference_scores(reference, self.examples, self.config.model.pad_token_id,
                                      self.config.trainer.micro_batch_size, self.config.data.loss == "dpo_norm",
                                      self.device, self.config.data.share_prefix, self.config.data.padding_free,
                                      progress)
            del reference
            self.run_dir.mkdir(parents=True, exist_ok=True)
            tmp = Path(f"{path}.tmp")
            torch.save(scores, tmp)
            tmp.replace(path)
        dist_utils.barrier()
        return load_reference_scores(path, len(self.examples))

    def collate(self, items: list[int]) -> dict[str, Tensor]:
        batch = collate_pairs([self.examples[i] for i in items], self.config.model.pad_token_id,
                              self.config.data.share_prefix, self.length_multiple)
        index = torch.as_tensor(items)
        return batch | {"ref_chosen": self.reference["chosen"][index], "ref_rejected": self.reference["rejected"][index]}

    def forward_backward(self, batch: dict) -> dict:
        section: DPOConfig = self.config.data
        batch = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
        global_pairs = self.config.trainer.global_batch_size

        def micro_loss(rows: slice):
            # both sides in one forward: DDP expects one forward per backward
            chosen, rejected = pair_scores(self.model, {k: v[rows] for k, v in batch.items()},
                                           section.loss == "dpo_norm", section.padding_free, self.token_multiple,
                                           self.config.model.pad_token_id)
            out = dpo_loss(chosen, rejected, batch["ref_chosen"][rows], batch["ref_rejected"][rows],
                           section.beta, section.label_smoothing)
            # DDP / FSDP average the ranks' gradients: each rank divides by its share of the pairs.
            loss = out.losses.sum() / (global_pairs / self.world_size)
            logged = torch.stack([out.losses.sum(), out.chosen_rewards.sum(), out.rejected_rewards.sum(),
                                  (out.chosen_rewards > out.rejected_rewards).float().sum(),
                                  (out.chosen_rewards - out.rejected_rewards).sum(), chosen.sum(), rejected.sum()])
            return loss, logged.detach()

        values = (self.accumulate(micro_loss) / global_pairs).tolist()
        names = ["loss", "rewards/chosen", "rewards/rejected", "rewards/accuracy", "rewards/margin",
                 "logps/chosen", "logps/rejected"]
        return dict(zip(names, values, strict=True))
