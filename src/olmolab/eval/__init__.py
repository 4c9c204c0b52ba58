"""Evaluation: held-out perplexity and the model card's downstream benchmarks.

- `tasks`       benchmark readers and OLMES's exact prompt formats (cloze and multiple choice)
- `downstream`  ranked classification: log-likelihoods, acc / acc_norm / per-token / PMI
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
    PerplexityEvaluator,
    PerplexitySetConfig,
    build_evaluators,
)
from olmolab.eval.perplexity import PerplexityResult, evaluate_documents, load_documents
from olmolab.eval.tasks import CORE_TASKS, TASKS, Example, Request, TaskSpec, build_examples

__all__ = [
    "CORE_TASKS",
    "TASKS",
    "DownstreamEvaluator",
    "EvalConfig",
    "Evaluator",
    "Example",
    "PerplexityEvaluator",
    "PerplexityResult",
    "PerplexitySetConfig",
    "Request",
    "TaskResult",
    "TaskSpec",
    "build_evaluators",
    "build_examples",
    "evaluate_documents",
    "evaluate_task",
    "load_documents",
]
