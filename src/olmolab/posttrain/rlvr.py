"""RL with verifiable rewards (GRPO), the last stage of OLMo 2-Instruct's recipe.

    olmolab rlvr configs/official/olmo2-1b-rlvr.yaml

Rows are prompts with a checkable answer, in open-instruct's format:

    {"messages": [{"role": "user", "content": "..."}], "ground_truth": "18", "dataset": "gsm8k"}

`dataset` names the verifier (olmolab.posttrain.verifiers). Each step, every rank takes its
share of the step's prompts (trainer.global_batch_size of them) and

1. samples `samples_per_prompt` responses to each, in the chat template, with the batched
   KV-cache `generate` (temperature 1 by default), from the current policy;
2. scores them with the row's verifier into rewards, and rewards into group advantages;
3. takes `updates_per_rollout` optimizer steps on GRPO's per-token loss (olmolab.posttrain.grpo),
   with the reference log-probs from the frozen starting model (trainer.load_path).

The policy, the sampling policy and the reference score a prompt's group of responses as one
stream row, the prompt computed once for all of them (`share_prefix`, olmolab.model.shared_prefix):
each response's log-probs are those of its conversation alone.

Sampling is seeded by (rlvr.seed, step, rank): ranks draw different samples, and a resumed run
samples what the uninterrupted run would have (after a SIGKILL too: the step is in the revision).
Under torchrun every rank samples its share of the prompts: with DDP from its own replica, with
FSDP2 from a full copy of the sharded policy gathered at each rollout (`sampling_model`). Logged per step: reward mean/std, verifier accuracy,
response length, the share cut off before EOS, dropped groups, KL, clip fraction, policy loss,
the seconds spent on the rollout (sampling, scoring, the reference) and on learning, and
sampling's own seconds and tokens/s (per rank); every
`sample_interval` steps a few responses go to RUN_DIR/samples.jsonl.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.distributed.fsdp import FSDPModule

from olmolab import Transformer, model_files
from olmolab.errors import UserError
from olmolab.generation import GenerationConfig, generate
from olmolab.model.loss import IGNORE_INDEX
from olmolab.model.shared_prefix import SharedPrefix, stream
from olmolab.posttrain.batches import (
    stream_batch,
    stream_inputs,
    stream_padding_pays_removing,
    unpadded_streams,
)
from olmolab.posttrain.chat_data import BadRow, check_messages, read_rows
from olmolab.posttrain.config import RLVRConfig
from olmolab.posttrain.engine import PostTrainer
from olmolab.posttrain.grpo import group_advantages, grpo_token_loss, rewards_of
from olmolab.posttrain.sft import tokenized_chats
from olmolab.posttrain.verifiers import verifier_for
from olmolab.train import distributed as dist_utils

# ---------------------------------------------------------------------- the data


@dataclass(frozen=True)
class Prompt:
    ids: np.ndarray
    """int64: the conversation so far, ending with the template's assistant header."""
    ground_truth: Any
    dataset: str
    """The verifier's name."""


def rlvr_row(row: Any) -> tuple[list, Any, str]:
    """(messages, ground_truth, dataset) of a row, or BadRow saying what is wrong."""
    if not isinstance(row, dict) or not {"messages", "ground_truth", "dataset"} <= row.keys():
        raise BadRow("expected an object with 'messages', 'ground_truth' and 'dataset'")
    messages = check_messages(row["messages"])
    if messages[-1]["role"] == "assistant":
        raise BadRow("the prompt must not end with an assistant turn: the model writes that")
    try:
        verifier_for(row["dataset"])
    except UserError as e:
        raise BadRow(str(e)) from e
    return messages, row["ground_truth"], row["dataset"]


def tokenize_prompts(rows: list, tokenizer, max_prompt_len: int, counts: Counter,
                     progress: str | None = None) -> list[Prompt]:
    """Prompts in the chat template; one longer than `max_prompt_len` is dropped (and counted)."""
    prompts = []
    encoded = tokenized_chats([messages for messages, _, _ in rows], tokenizer, progress, add_generation_prompt=True)
    for (_, ground_truth, dataset), (ids, _) in zip(rows, encoded, strict=True):
        if len(ids) > max_prompt_len:
            counts["dropped_overlong"] += 1
            continue
        prompts.append(Prompt(np.asarray(ids, dtype=np.int64), ground_truth, dataset))
    return prompts


# ---------------------------------------------------------------------- log-probs


def response_streams(prompts: list[np.ndarray], responses: list[list[int]], pad_id: int,
                     share_prefix: bool = True, multiple: int = 1) -> dict[str, Tensor]:
    """Each prompt's group of responses (`responses` holds len(responses) // len(prompts) per
    prompt, in order) as one stream row (`olmolab.model.shared_prefix`): the prompt once but its
    last token, then each response after its own copy of that token (it predicts the response's
    first). input_ids; labels, the next token where that is a response token (IGNORE_INDEX
    elsewhere); `sample`, which response of the group a position belongs to (-1 on the shared
    prompt and padding); RoPE positions and the attention rows and outputs, lengths rounded up
    to `multiple` (`stream_batch`). Without `share_prefix` each conversation comes whole."""
    group = len(responses) // len(prompts)
    streams = []
    for g, prompt in enumerate(prompts):
        conversations, labels = [], []
        for response in responses[g * group : (g + 1) * group]:
            conversations.append(np.concatenate([prompt, np.asarray(response, dtype=np.int64)]))
            labels.append(np.full(len(conversations[-1]), IGNORE_INDEX, dtype=np.int64))
            labels[-1][len(prompt) - 1 : len(prompt) - 1 + len(response)] = response
        prefix = len(prompt) - 1 if share_prefix else 0
        sample = stream(prefix, [np.full(len(c), k) for k, c in enumerate(conversations)])
        sample[:prefix] = -1
        streams.append((prefix, [len(c) for c in conversations],
                        {"input_ids": stream(prefix, conversations), "labels": stream(prefix, labels), "sample": sample}))
    return stream_batch(streams, {"input_ids": pad_id, "labels": IGNORE_INDEX, "sample": -1}, multiple)


def token_logps(model, input_ids: Tensor, labels: Tensor, *, temperature: float = 1.0,
                vocab_size: int | None = None, positions: Tensor | None = None,
                shared_prefix: SharedPrefix | None = None) -> Tensor:
    """(B, T) the log-prob of each label (0 where there is none) under the distribution the
    sampler draws from: softmax(logits / temperature) over the first `vocab_size` ids (the rest
    of the embedding is padding `generate` never picks). Only labelled positions go through the
    LM head. positions, shared_prefix: the rows are streams (`response_streams`)."""
    at = (labels != IGNORE_INDEX).nonzero(as_tuple=True)
    logits = model(input_ids, at=at, positions=positions, shared_prefix=shared_prefix).float()[:, :vocab_size]
    picked = (logits / temperature).log_softmax(-1).gather(1, labels[at][:, None]).squeeze(1)
    return torch.zeros(labels.shape, dtype=picked.dtype, device=picked.device).index_put(at, picked)


# ---------------------------------------------------------------------- training


class RLVRTrainer(PostTrainer):
    def load_examples(self, counts: Counter) -> list[Prompt]:
        section: RLVRConfig = self.config.data
        rows = read_rows(section.paths, rlvr_row, skip_bad=section.skip_bad, counts=counts)
        return tokenize_prompts(rows, self.tokenizer, section.max_seq_len - section.response_length, counts,
                                self.data_progress("tokenizing prompts"))

    def example_arrays(self, prompt: Prompt) -> list[np.ndarray]:
        answer = json.dumps([prompt.ground_truth, prompt.dataset]).encode()
        return [prompt.ids, np.frombuffer(answer, dtype=np.uint8)]

    def collate(self, items: list[int]) -> dict[str, Tensor]:
        return {"prompt_index": torch.as_tensor(items)}

    def _build_data(self) -> None:
        super()._build_data()
        # The reference is the frozen starting model. Building it leaves the global RNG as it was,
        # so that a resumed run's RNG state is the one its revision saved.
        with torch.random.fork_rng(devices=[]):
            # in the training's compute precision, as CUDA's autocast computes it
            self.reference = model_files.load_model(self.config.trainer.load_path, device=self.device,
                                                    dtype=self.precision.dtype).eval()
        self.reference.requires_grad_(False)
        self.sampler = None  # FSDP's: a full copy of the policy to sample from (see sampling_model)
        self.samples_path = self.run_dir / "samples.jsonl"
        if self.rank == 0 and self.samples_path.exists():  # on resume, steps past the revision are redone
            kept = [line for line in self.samples_path.read_text().splitlines()
                    if json.loads(line)["step"] <= self.state.step]
            self.samples_path.write_text("".join(line + "\n" for line in kept))
        self.rollout_positions = 0

    def batch_tokens(self, batch: dict) -> int:
        """Positions the model learned on this step: the rollout's sequences, padding included."""
        return self.rollout_positions

    def train_step(self, batch: dict) -> dict:
        start = time.perf_counter()
        rollout, stats = self.rollout([int(i) for i in batch["prompt_index"]])
        generated = time.perf_counter()
        for _ in range(self.config.data.updates_per_rollout):
            row = super().train_step(rollout)  # the first computes the sampling policy's log-probs if needed
        return row | stats | {"time/generation_s": generated - start, "time/learning_s": time.perf_counter() - generated}

    @torch.no_grad()
    def rollout(self, items: list[int]) -> tuple[dict, dict]:
        """Sample, score and prepare this rank's share of the step: the batch for `forward_backward`
        and the rollout's logged statistics (over all ranks)."""
        section: RLVRConfig = self.config.data
        group = section.samples_per_prompt
        prompts = [self.examples[i] for i in items for _ in range(group)]
        eos = self.config.model.eos_token_id
        start = time.perf_counter()
        responses = generate(self.sampling_model(), [p.ids.tolist() for p in prompts], GenerationConfig(
            max_new_tokens=section.response_length, temperature=section.temperature, top_p=section.top_p,
            eos_token_id=eos, seed=self.sampling_seed()))
        sampling_s = time.perf_counter() - start
        finished = torch.tensor([len(r) > 0 and r[-1] == eos for r in responses])
        texts = [self.tokenizer.decode(r[:-1] if f else r) for r, f in zip(responses, finished.tolist(), strict=True)]
        scores = torch.tensor([verifier_for(p.dataset)(text, p.ground_truth) for p, text in zip(prompts, texts, strict=True)],
                              dtype=torch.float32)
        rewards = rewards_of(scores, finished, section.verification_reward, section.cutoff_reward)
        advantages, kept = group_advantages(rewards.view(-1, group), section.advantage_normalization)

        batch = response_streams([self.examples[i].ids for i in items], responses, self.config.model.pad_token_id,
                                 section.share_prefix, self.length_multiple)
        # each response's advantage, and whether its group is kept, on each of its tokens
        sample = batch.pop("sample")
        response = sample >= 0
        owner = torch.arange(len(items))[:, None] * group + sample.clamp(min=0)  # index into the group-major samples
        batch |= {"advantages": torch.where(response, advantages.flatten()[owner], 0.0),
                  "kept": response & kept.repeat_interleave(group)[owner]}
        batch = {k: v.to(self.device) for k, v in batch.items()} | {"old_logps": None}
        batch["ref_logps"] = self._logps_in_micro_batches(self.reference, batch)
        self.rollout_positions = batch["input_ids"].numel() * self.world_size
        if self.rank == 0 and section.sample_interval and (self.state.step + 1) % section.sample_interval == 0:
            self._write_samples(prompts, texts, scores, rewards)
        lengths = torch.tensor([len(r) for r in responses], dtype=torch.float32)
        return batch, self._rollout_stats(rewards, scores, lengths, finished, kept) | {
            "time/sampling_s": sampling_s, "sampled_tokens_per_s": lengths.sum().item() / sampling_s}

    def sampling_model(self) -> torch.nn.Module:
        """The policy as a model that this rank alone can decode with. Under FSDP each rank holds a
        shard of the weights, and every forward all-gathers them: ranks whose responses end after
        different numbers of tokens would wait on each other's gathers forever. So each rank samples
        from a full copy, gathered once per rollout (one more model in memory, as the reference is),
        in the training's compute precision. So does one process training in bf16 on CPU (FSDP2's
        mixed precision): decoding in inference mode must not touch the weights FSDP trains."""
        if not isinstance(self.model, FSDPModule):
            return dist_utils.unwrap(self.model)
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        weights = get_model_state_dict(self.model, options=StateDictOptions(full_state_dict=True))
        if self.sampler is None:
            with torch.random.fork_rng(devices=[]):  # the initialization's draws are not the run's
                self.sampler = Transformer(self.config.model).to(self.device, self.precision.dtype)
                self.sampler.eval().requires_grad_(False)
        self.sampler.load_state_dict(weights)
        return self.sampler

    def _rollout_stats(self, rewards: Tensor, scores: Tensor, lengths: Tensor, finished: Tensor, kept: Tensor) -> dict:
        """Means over every response of the step (all ranks), and the counts of groups."""
        sums = dist_utils.all_reduce_sum(torch.stack([
            torch.tensor(float(len(rewards))), rewards.sum(), (rewards**2).sum(), scores.sum(), lengths.sum(),
            (~finished).float().sum(), (~kept).float().sum(), torch.tensor(float(len(kept))),
        ]).to(self.device)).tolist()
        n, reward_sum, reward_sq, score_sum, length_sum, cut, dropped, groups = sums
        reward_mean = reward_sum / n
        return {"reward/mean": reward_mean, "reward/std": max(reward_sq / n - reward_mean**2, 0.0) ** 0.5,
                "accuracy": score_sum / n, "response_length": length_sum / n, "cutoff_fraction": cut / n,
                "groups": groups, "groups/dropped": dropped, "groups/dropped_fraction": dropped / groups}

    def sampling_seed(self) -> int:
        """The seed of this step's sampling on this rank: a pure function of the run's position."""
        return int(np.random.SeedSequence([self.config.data.seed, self.state.step, self.rank]).generate_state(1)[0])

    def forward_backward(self, batch: dict) -> dict:
        section: RLVRConfig = self.config.data
        responses = batch["labels"] != IGNORE_INDEX
        trained = responses & batch["kept"]  # dropped groups train nothing
        trained_tokens = dist_utils.all_reduce_sum(trained.sum().float())
        global_tokens = trained_tokens.clamp(min=1)
        response_tokens = dist_utils.all_reduce_sum(responses.sum().float()).clamp(min=1)
        if batch["old_logps"] is None and section.updates_per_rollout > 1:
            # the sampling policy's, before the first update changes it
            batch["old_logps"] = self._logps_in_micro_batches(self.model, batch)

        def micro_loss(rows: slice):
            logps = self.sampling_logps(self.model, batch, rows)
            old = logps.detach() if batch["old_logps"] is None else batch["old_logps"][rows]
            out = grpo_token_loss(logps, old, batch["ref_logps"][rows], batch["advantages"][rows],
                                  clip_low=section.clip_low, clip_high=section.clip_high, beta=section.beta)
            mask = trained[rows]
            # DDP / FSDP average the ranks' gradients: each rank divides by its share of the tokens.
            loss = (out.loss * mask).sum() / (global_tokens / self.world_size)
            logged = [(term * mask).sum() for term in (out.loss, out.policy, out.clipped.float())]
            # KL over every response, dropped groups' too: how far the policy has drifted
            return loss, torch.stack([*logged, (out.kl * responses[rows]).sum()]).detach()

        sums = self.accumulate(micro_loss)  # micro-batches of micro_batch_size prompts' streams
        loss, policy, clipped = (sums[:3] / global_tokens).tolist()
        return {"loss": loss, "policy_loss": policy, "clip_fraction": clipped, "kl": (sums[3] / response_tokens).item(),
                "trained_tokens": trained_tokens.item()}

    @torch.no_grad()
    def _logps_in_micro_batches(self, model, batch: dict) -> Tensor:
        """`sampling_logps` of the whole batch under `model`, in the training's micro-batches and precision."""
        micro = self.config.trainer.micro_batch_size
        with self._autocast():
            return torch.cat([self.sampling_logps(model, batch, slice(i, i + micro))
                              for i in range(0, len(batch["input_ids"]), micro)])

    def sampling_logps(self, model, batch: dict, rows: slice) -> Tensor:
        """`token_logps` at the rollout's temperature: the policy, the sampling policy and the
        reference are each scored as the distribution responses are drawn from (open-instruct's
        grpo_fast divides the logits by the temperature too). Scored at temperature 1 instead, a
        rollout at 0.7 would push on the log-probs of a distribution nobody samples from, and the
        KL would be measured between two others."""
        at_temperature = {"temperature": self.config.data.temperature, "vocab_size": self.config.model.vocab_size}
        part = {key: batch[key][rows] for key in ("input_ids", "labels", "positions", "rows", "outputs", "stream_lengths")}
        if self.config.data.padding_free and stream_padding_pays_removing(part):
            stream = unpadded_streams(part, self.token_multiple, self.config.model.pad_token_id)
            return stream.restore(token_logps(model, stream.input_ids, stream.labels, **at_temperature, **stream.inputs))
        return token_logps(model, part["input_ids"], part["labels"], **at_temperature, **stream_inputs(part))

    def _write_samples(self, prompts: list[Prompt], texts: list[str], scores: Tensor, rewards: Tensor) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with self.samples_path.open("a") as f:
            for i in range(min(self.config.data.samples_logged, len(texts))):
                f.write(json.dumps({"step": self.state.step + 1, "prompt": self.tokenizer.decode(prompts[i].ids),
                                    "response": texts[i], "ground_truth": prompts[i].ground_truth,
                                    "score": scores[i].item(), "reward": rewards[i].item()}) + "\n")
