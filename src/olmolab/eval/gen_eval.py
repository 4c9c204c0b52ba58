"""Generative evaluation: greedy answers to OLMES's prompts, cut at the task's stop sequences, scored.

    spec = GenSpec("gsm8k")                           # OLMES's 8 shots; GenSpec("gsm8k", 2) for 2
    examples = build_gen_examples(spec.task, spec.num_shots, data_dir, limit)
    result = evaluate_generative(model, tokenizer, spec, examples, batch_size=32)
    result.metrics                                    # {"exact_match": 0.41}
    result.predictions                                # every answer with its golds and scores

How the work is laid out: prompts are encoded once (BOS first where the tokenizer has one, then
left-truncated so that prompt + max new tokens fit the window, as lm-eval and OLMES do), sorted
by length so a batch pads little, and decoded greedily in batches with the KV cache
(`generation.complete_ids`). A row leaves its batch at EOS or at the first stop sequence, and
the answer is the text before it.

In a torch.distributed group each rank answers every world-th example and the answers are
gathered, so every rank reports the same numbers. Under FSDP each forward gathers the sharded
weights and ranks must make the same calls, so there every rank answers every example.

`--chat` (`chat=True`): the shots become user/assistant turns and the doc the last user turn,
rendered in OLMo 2's Tulu template (`tulu_chat_prompt`), as OLMES's `::tulu` variants do.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from tqdm import tqdm

from olmolab.errors import UserError
from olmolab.eval.downstream import TaskResult, TextTokenizer, encode_many, mean_and_stderr
from olmolab.eval.gen_metrics import METRICS
from olmolab.eval.generative import GenExample, get_gen_task
from olmolab.eval.scoring import model_window
from olmolab.generation import GenerationConfig, complete_ids
from olmolab.train import distributed as dist_utils


@dataclass(frozen=True)
class GenSpec:
    """A generative task, its shot count (None: OLMES's) and whether prompts are chat-rendered.

    Written `name[:Nshot]`; `label` names its metrics: `eval/downstream/{label}_{metric}`.
    """

    task: str
    num_shots: int | None = None
    chat: bool = False
    formulation = "gen"  # not a field: what the results table and JSON call this kind of task

    def __post_init__(self) -> None:
        if self.num_shots is None:  # OLMES's shot count for the task
            object.__setattr__(self, "num_shots", get_gen_task(self.task).num_shots)

    @classmethod
    def parse(cls, text: str, chat: bool = False) -> GenSpec:
        name, *options = text.strip().split(":")
        get_gen_task(name)
        shots = None
        for option in options:
            if not re.fullmatch(r"\d+shot", option):
                raise UserError(
                    f"task {text!r}: unknown option {option!r}; write name[:Nshot], e.g. gsm8k:4shot"
                )
            shots = int(option[:-4])
        return cls(name, shots, chat)

    @property
    def label(self) -> str:
        """`gsm8k`, `gsm8k_2shot` when not OLMES's shot count, `gsm8k_chat` for chat prompts."""
        parts = [self.task]
        if self.num_shots != get_gen_task(self.task).num_shots:
            parts.append(f"{self.num_shots}shot")
        if self.chat:
            parts.append("chat")
        return "_".join(parts)


@dataclass
class GenResult(TaskResult):
    predictions: list[dict] = field(default_factory=list)
    """Every example: doc index, the answer, what was extracted from it, the golds and the scores."""
    settings: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return super().to_dict() | {"settings": self.settings, "predictions": self.predictions}


# ---------------------------------------------------------------------------------- prompts


def tulu_chat_prompt(turns: Sequence[tuple[str, str]], bos: str, eos: str) -> str:
    """OLMo 2's Tulu chat template, the last assistant turn left open for the model.

    `{bos}`, then `<|user|>\\n{content}\\n` per user message and `<|assistant|>\\n{content}{eos}\\n`
    per answer; the generation prompt is `<|assistant|>\\n`. One function, so the tokenizer's own
    template can replace it.
    """
    text = bos
    for user, assistant in turns:
        text += f"<|user|>\n{user}\n<|assistant|>\n"
        if assistant:
            text += f"{assistant}{eos}\n"
    return text


def special_token_text(tokenizer, token_id: int | None) -> str:
    hf = getattr(tokenizer, "hf", None)
    return "" if token_id is None or hf is None else hf.id_to_token(token_id)


def prompt_texts(tokenizer: TextTokenizer, examples: Sequence[GenExample], chat: bool) -> list[str]:
    """The text each prompt is encoded from: OLMES's prompt, or its turns in the chat template."""
    if not chat:
        return [ex.prompt for ex in examples]
    eos = special_token_text(tokenizer, tokenizer.eos_token_id)
    bos = special_token_text(tokenizer, tokenizer.bos_token_id) or eos  # OLMo 2: BOS = EOS
    return [tulu_chat_prompt(ex.turns, bos, eos) for ex in examples]


def encode_prompts(
    tokenizer: TextTokenizer, examples: Sequence[GenExample], chat: bool, max_prompt_tokens: int
) -> list[list[int]]:
    """Token ids of each prompt, BOS first (plain prompts; the chat template has its own) and the
    oldest tokens cut to fit."""
    head = [] if chat or tokenizer.bos_token_id is None else [tokenizer.bos_token_id]
    texts = prompt_texts(tokenizer, examples, chat)
    return [(head + ids)[-max_prompt_tokens:] for ids in encode_many(tokenizer, texts)]


# ---------------------------------------------------------------------------------- generation


def generate_answers(
    model, tokenizer, prompts: list[list[int]], stop_sequences: Sequence[str], max_new_tokens: int,
    batch_size: int, progress: str | None = None,
) -> list[str]:  # fmt: skip
    """Greedy answers, longest prompts first in batches of `batch_size`, returned in prompt order."""
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]), reverse=True)
    config = GenerationConfig(max_new_tokens=max_new_tokens, temperature=0.0)
    answers: list[str] = [""] * len(prompts)
    bar = tqdm(total=len(prompts), desc=progress, unit="ex", disable=progress is None, leave=False)
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        texts = complete_ids(
            model, tokenizer, [prompts[i] for i in chunk], config, stop_strings=stop_sequences
        )
        for i, text in zip(chunk, texts, strict=True):
            answers[i] = text
        bar.update(len(chunk))
    bar.close()
    return answers


def is_sharded(model) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def answers_over_ranks(model, tokenizer, prompts: list[list[int]], **kwargs) -> list[str]:
    """Every prompt's answer; in a process group each rank answers its share and all gather."""
    rank, world = dist_utils.rank(), dist_utils.world_size()
    if world == 1 or is_sharded(model):
        return generate_answers(model, tokenizer, prompts, **kwargs)
    mine = generate_answers(model, tokenizer, prompts[rank::world], **kwargs)
    gathered: list[list[str] | None] = [None] * world
    dist.all_gather_object(gathered, mine)
    answers = [""] * len(prompts)
    for r, share in enumerate(gathered):
        answers[r::world] = share
    return answers


# ---------------------------------------------------------------------------------- evaluation


def evaluate_generative(
    model,
    tokenizer: TextTokenizer,
    spec: GenSpec,
    examples: Sequence[GenExample],
    *,
    batch_size: int = 32,
    max_new_tokens: int | None = None,
    n_samples: int = 3,
    progress: bool = False,
) -> GenResult:
    """Answer and score `examples` (from `build_gen_examples`); `max_new_tokens` caps the task's own."""
    task = get_gen_task(spec.task)
    budget = min(task.max_new_tokens, max_new_tokens or task.max_new_tokens)
    window = model_window(model)
    prompts = encode_prompts(tokenizer, examples, spec.chat, max(1, window - budget))
    with torch.inference_mode():
        answers = answers_over_ranks(
            model, tokenizer, prompts, stop_sequences=task.stop_sequences, max_new_tokens=budget,
            batch_size=batch_size, progress=spec.label if progress else None,
        )  # fmt: skip
    scorer = METRICS[task.metric]
    per_metric: dict[str, list[float]] = {}
    predictions = []
    for ex, answer in zip(examples, answers, strict=True):
        scored = scorer(answer, ex.golds)
        for name, value in scored.values.items():
            per_metric.setdefault(name, []).append(value)
        predictions.append({
            "doc_index": ex.doc_index, "prediction": answer, "extracted": scored.extracted,
            "golds": ex.golds, "scores": scored.values,
        })  # fmt: skip
    metrics, stderr = {}, {}
    for name, values in per_metric.items():
        metrics[name], stderr[name] = mean_and_stderr(values)
    shown = examples[:n_samples]
    samples = [
        {"doc_index": ex.doc_index, "prompt": text}
        for ex, text in zip(shown, prompt_texts(tokenizer, shown, spec.chat), strict=True)
    ]
    settings = {
        "num_shots": spec.num_shots, "stop_sequences": list(task.stop_sequences), "max_new_tokens": budget,
        "chat": spec.chat, "note": task.note,
    }  # fmt: skip
    return GenResult(spec, metrics, stderr, len(examples), samples, predictions, settings)
