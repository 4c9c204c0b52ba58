"""In-loop evaluation: what the trainer builds once and calls every `trainer.eval_interval` steps.

    evaluators = build_evaluators(config.eval, tokenizer)      # reads and tokenizes everything once
    ...
    if step % config.trainer.eval_interval == 0:
        for evaluator in evaluators:
            metrics.update(evaluator.evaluate(model))           # {"eval/downstream/piqa_acc": 0.61, ...}

Metric names follow OLMo's: `eval/downstream/{label}_{metric}` for tasks (label = task, then
`_mc` for multiple choice, then `_{k}shot` when k > 0: `piqa_acc`, `arc_easy_mc_5shot_acc`) and
`eval/{label}/CrossEntropyLoss`, `.../Perplexity`, `.../BitsPerByte` for perplexity sets.
Generative tasks report `eval/downstream/{label}_{metric}` too: `gsm8k_exact_match`, `drop_f1`.

`evaluate(model)` takes the bare model (unwrap DDP's `.module`), runs in eval mode under
`torch.inference_mode()` and gives the model back in the mode it came in. Every rank computes
the same numbers over the same examples (ranked-choice batches and generated answers are split
over the ranks); under FSDP every rank must call it, since each forward gathers the sharded weights.
"""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from olmolab.configlib import from_dict
from olmolab.errors import UserError
from olmolab.eval.downstream import (
    TextTokenizer,
    TokenPair,
    all_requests,
    evaluate_examples,
    tokenize_requests,
)
from olmolab.eval.gen_eval import GenSpec, evaluate_generative
from olmolab.eval.generative import GenExample, build_gen_examples
from olmolab.eval.perplexity import Document, evaluate_documents, load_documents
from olmolab.eval.suites import EvalSpec, parse_eval_tasks
from olmolab.eval.tasks import Example, TaskSpec, build_examples


@dataclass
class PerplexitySetConfig:
    """A held-out set scored for loss / perplexity / bits-per-byte."""

    label: str
    """Metric prefix: eval/{label}/CrossEntropyLoss."""
    path: str
    """A text file (.txt = one document; .jsonl[.gz] = a 'text' per line) or a raw token file."""
    dtype: str | None = None
    """For raw token files (OLMo's .npy memmaps): 'uint16' or 'uint32'. None means text."""
    max_tokens: int | None = None
    """Score only the first this many tokens (whole set if None)."""


@dataclass
class EvalConfig:
    """The trainer YAML's `eval:` section; also what `olmolab eval` runs."""

    tasks: list[str] = field(default_factory=list)
    """Task specs `name[:rc|:mc][:Nshot]`, generative `name[:Nshot]`, or suites (`eval/suites.py`):
    ["piqa", "arc_easy:mc:5shot", "gsm8k", "olmo2_gen"]."""
    limit: int | None = 1000
    """Examples per task (OLMES's Random(1234) subsample); None evaluates every example."""
    task_limits: dict[str, int] = field(default_factory=dict)
    """Per-task limits by label, over `limit`: {"gsm8k": 50} (generative tasks cost far more)."""
    max_new_tokens: int | None = None
    """Caps every generative task's own token budget (GSM8K 512, MATH 1024); None keeps them."""
    chat: bool = False
    """Render generative prompts in the chat template (for SFT/DPO/RLVR models)."""
    num_fewshot: int = 0
    """Shots for task specs that do not say `:Nshot`."""
    perplexity: list[PerplexitySetConfig] = field(default_factory=list)
    batch_size: int = 32
    """Rows per forward pass."""
    data_dir: str | None = None
    """Benchmark data root; None means $OLMOLAB_EVAL_DATA, else ~/.cache/olmolab/eval."""
    stride: int | None = None
    """Perplexity's sliding-window stride; None means half the model's window."""
    pmi: bool = True
    """Also score PMI's unconditional requests (acc_pmi); costs up to 2x on cloze tasks."""

    def validate(self) -> None:
        def fail(key: str, message: str) -> None:
            raise UserError(f"eval.{key}: {message}")

        if self.batch_size < 1:
            fail("batch_size", f"{self.batch_size} must be a positive integer")
        if self.limit is not None and self.limit < 1:
            fail("limit", f"{self.limit} must be positive, or null for every example")
        for label, limit in self.task_limits.items():
            if limit < 1:
                fail(f"task_limits.{label}", f"{limit} must be a positive integer")
        if self.max_new_tokens is not None and self.max_new_tokens < 1:
            fail("max_new_tokens", f"{self.max_new_tokens} must be positive, or null for each task's own")
        if self.num_fewshot < 0:
            fail("num_fewshot", f"{self.num_fewshot} must be 0 or more")
        if self.stride is not None and self.stride < 1:
            fail("stride", f"{self.stride} must be positive, or null for half the model's window")
        labels = [spec.label for spec in self.specs()] + [p.label for p in self.perplexity]
        unknown = sorted(set(self.task_limits) - set(labels))
        if unknown:
            fail("task_limits", f"{', '.join(unknown)} name no task of eval.tasks; use their labels: {labels}")
        duplicates = sorted({label for label in labels if labels.count(label) > 1})
        if duplicates:
            fail(
                "tasks",
                f"label(s) {', '.join(duplicates)} appear twice; every task and perplexity set needs its own",
            )
        for i, ppl in enumerate(self.perplexity):
            if ppl.dtype not in (None, "uint8", "uint16", "uint32", "int32", "int64"):
                fail(
                    f"perplexity[{i}].dtype",
                    f"{ppl.dtype!r}; use uint16 or uint32 for token files, null for text",
                )

    def specs(self) -> list[EvalSpec]:
        return parse_eval_tasks(self.tasks, self.num_fewshot, self.chat)

    def limit_of(self, spec: EvalSpec) -> int | None:
        return self.task_limits.get(spec.label, self.limit)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> EvalConfig:
        """From the YAML `eval:` mapping; keys and value types are checked, `tasks` may be "a,b,c"."""
        data = dict(data or {})
        if isinstance(data.get("tasks"), str):
            data["tasks"] = [t.strip() for t in data["tasks"].split(",") if t.strip()]
        return from_dict(cls, data, "eval")


# ---------------------------------------------------------------------------------- evaluators


class Evaluator(Protocol):
    label: str

    def evaluate(self, model) -> dict[str, float]: ...


@contextlib.contextmanager
def eval_mode(model):
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


@dataclass
class DownstreamEvaluator:
    """One task spec, its examples built and tokenized once."""

    spec: TaskSpec
    examples: list[Example]
    pairs: list[TokenPair]
    batch_size: int = 32

    @property
    def label(self) -> str:
        return self.spec.label

    def evaluate(self, model) -> dict[str, float]:
        with eval_mode(model):
            result = evaluate_examples(
                model, self.spec, self.examples, self.pairs, batch_size=self.batch_size
            )
        return {f"eval/downstream/{self.label}_{name}": value for name, value in result.metrics.items()}


@dataclass
class GenerativeEvaluator:
    """One generative task, its prompts built once; answers are generated at every evaluation."""

    spec: GenSpec
    examples: list[GenExample]
    tokenizer: TextTokenizer
    batch_size: int = 32
    max_new_tokens: int | None = None

    @property
    def label(self) -> str:
        return self.spec.label

    def evaluate(self, model) -> dict[str, float]:
        with eval_mode(model):
            result = evaluate_generative(
                model, self.tokenizer, self.spec, self.examples, batch_size=self.batch_size,
                max_new_tokens=self.max_new_tokens,
            )  # fmt: skip
        return {f"eval/downstream/{self.label}_{name}": value for name, value in result.metrics.items()}


@dataclass
class PerplexityEvaluator:
    """One held-out set, read and tokenized once."""

    label: str
    documents: list[Document]
    stride: int | None = None
    batch_size: int = 32

    def evaluate(self, model) -> dict[str, float]:
        with eval_mode(model):
            result = evaluate_documents(
                model, self.documents, self.label, stride=self.stride, batch_size=self.batch_size
            )
        return result.metrics()


def build_evaluators(config: EvalConfig, tokenizer: TextTokenizer) -> list[Evaluator]:
    """Everything `config` asks for, loaded now so that missing files fail at start-up, not mid-run."""
    config.validate()
    evaluators: list[Evaluator] = []
    for spec in config.specs():
        limit = config.limit_of(spec)
        if isinstance(spec, GenSpec):
            gen_examples = build_gen_examples(spec.task, spec.num_shots, config.data_dir, limit)
            evaluators.append(
                GenerativeEvaluator(spec, gen_examples, tokenizer, config.batch_size, config.max_new_tokens)
            )
            continue
        examples = build_examples(spec, config.data_dir, limit, pmi=config.pmi)
        pairs = tokenize_requests(all_requests(examples), tokenizer)
        evaluators.append(DownstreamEvaluator(spec, examples, pairs, config.batch_size))
    for ppl in config.perplexity:
        documents = load_documents(Path(ppl.path).expanduser(), tokenizer, ppl.dtype, ppl.max_tokens)
        evaluators.append(PerplexityEvaluator(ppl.label, documents, config.stride, config.batch_size))
    return evaluators
