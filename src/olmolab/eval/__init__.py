"""Evaluation: held-out perplexity and the model card's downstream benchmarks.

- `tasks`       benchmark readers and OLMES's exact prompt formats (cloze and multiple choice)
- `downstream`  ranked classification: log-likelihoods, acc / acc_norm / per-token / PMI
- `generative`  OLMES's generative tasks: docs, curated shots, prompts, stop sequences, budgets
- `gen_metrics` how answers are scored: GSM8K, DROP, SQuAD-style F1/EM, Minerva's MATH
- `gen_eval`    batched greedy answers to the prompts, scored; `GenSpec`, chat rendering
- `suites`      what `--tasks` names: task specs of both kinds and OLMES's OLMo 2 suites
- `perplexity`  loss, perplexity and bits-per-byte with a sliding window
- `scoring`     the batched log-probability engine both share
- `evaluator`   `EvalConfig` and `build_evaluators`, what the trainer calls in-loop
- `cli`         `olmolab eval CHECKPOINT --tasks ...`
"""

from olmolab.eval.downstream import TaskResult, evaluate_task
from olmolab.eval.evaluator import (
    DownstreamEvaluator,
    EvalConfig,
    Evaluator,
    GenerativeEvaluator,
    PerplexityEvaluator,
    PerplexitySetConfig,
    build_evaluators,
)
from olmolab.eval.gen_eval import GenResult, GenSpec, evaluate_generative
from olmolab.eval.generative import GEN_TASKS, GenExample, build_gen_examples
from olmolab.eval.perplexity import PerplexityResult, evaluate_documents, load_documents
from olmolab.eval.suites import SUITES, parse_eval_tasks
from olmolab.eval.tasks import CORE_TASKS, TASKS, Example, Request, TaskSpec, build_examples

__all__ = [
    "CORE_TASKS",
    "GEN_TASKS",
    "SUITES",
    "TASKS",
    "DownstreamEvaluator",
    "EvalConfig",
    "Evaluator",
    "Example",
    "GenExample",
    "GenResult",
    "GenSpec",
    "GenerativeEvaluator",
    "PerplexityEvaluator",
    "PerplexityResult",
    "PerplexitySetConfig",
    "Request",
    "TaskResult",
    "TaskSpec",
    "build_evaluators",
    "build_examples",
    "build_gen_examples",
    "evaluate_documents",
    "evaluate_generative",
    "evaluate_task",
    "load_documents",
    "parse_eval_tasks",
]
