"""Ranked classification: the model's log-likelihood of each answer picks the answer.

Tokenization follows OLMo / olmo_eval (`prep_examples`): context and continuation are encoded
*separately* without special tokens, BOS goes before the context only if the tokenizer has one,
the model input is `context + continuation[:-1]` left-truncated to the context window, and the
logits at `[len(context) - 1, len(context) + len(continuation) - 1)` score the continuation.
(lm-eval instead encodes the pair jointly and splits; the two differ where a merge crosses the
boundary, which the leading space of every continuation makes rare.)

Work sharing, and why this way: OLMo runs one padded row per (example, choice), recomputing the
context for every choice. A KV cache would run the context once but ties a batch to one context.
Instead (`pack=True`) each distinct context becomes one row with all its continuations packed
behind it, kept apart by the attention mask (see `scoring.py`): the context is computed once,
and a batch still mixes many examples. Multiple-choice letters cost one context forward per
question; cloze answers one context plus their own tokens. Identical requests (PMI's
`"Answer: yes"` in every BoolQ example) are scored once, rows are sorted by length so padding
stays small, and the LM head runs only where a token is scored. `bench/eval.py` measures it.

Metrics (per choice score, argmax against the gold index; OLMES / lm-eval names in brackets):

| metric          | score of a choice                                                  |
|-----------------|--------------------------------------------------------------------|
| `acc`           | sum log p(continuation)                       [acc_raw, acc]       |
| `acc_norm`      | sum / characters of the answer, without the leading space [lm-eval acc_norm] |
| `acc_per_char`  | sum / characters of the continuation, with the space [OLMES acc_per_char] |
| `acc_per_token` | sum / continuation tokens                     [OLMES acc_per_token]|
| `acc_pmi`       | sum - sum log p(continuation \\| "Answer:")   [OLMES acc_uncond]    |
| `bpb`           | -(gold log-likelihood) / UTF-8 bytes of the gold continuation / ln 2 |

Multiple-choice letters and WinoGrande's shared continuation make the normalized variants equal
to `acc`, so those formulations report `acc` and `bpb` only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from olmolab.errors import UserError
from olmolab.eval.scoring import Row, model_window, score_rows, supports_packing
from olmolab.eval.tasks import Example, Request, TaskSpec, build_examples


class TextTokenizer(Protocol):
    """What evaluation needs of a tokenizer (olmolab's `Tokenizer` has it)."""

    eos_token_id: int | None
    bos_token_id: int | None

    def encode(self, text: str) -> list[int]: ...


def encode_many(tokenizer: TextTokenizer, texts: Sequence[str]) -> list[list[int]]:
    """Encode without special tokens; batched (and so parallel) where the tokenizer can."""
    unique = list(dict.fromkeys(texts))  # contexts repeat once per choice
    encode_batch = getattr(tokenizer, "encode_batch", None)
    ids = encode_batch(unique) if encode_batch else [tokenizer.encode(t) for t in unique]
    by_text = dict(zip(unique, ids, strict=True))
    return [by_text[t] for t in texts]


@dataclass(frozen=True)
class TokenPair:
    context: tuple[int, ...]
    continuation: tuple[int, ...]


def tokenize_requests(requests: Sequence[Request], tokenizer: TextTokenizer) -> list[TokenPair]:
    bos = [] if getattr(tokenizer, "bos_token_id", None) is None else [tokenizer.bos_token_id]
    contexts = encode_many(tokenizer, [r.context for r in requests])
    continuations = encode_many(tokenizer, [r.continuation for r in requests])
    pairs = [TokenPair(tuple(bos + c), tuple(k)) for c, k in zip(contexts, continuations, strict=True)]
    for request, pair in zip(requests, pairs, strict=True):
        if not pair.continuation or not pair.context:
            raise UserError(f"request {request!r} tokenizes to an empty context or continuation")
    return pairs


def fit_window(pair: TokenPair, window: int) -> TokenPair:
    """Left-truncate so that the model input, context + continuation[:-1], fits the window.

    The context loses its oldest tokens first. A continuation longer than the window itself
    (a tiny test model on a long answer) keeps its last `window` tokens, and only those are scored.
    """
    full = pair.context + pair.continuation
    if len(full) <= window + 1:
        return pair
    kept = full[-(window + 1) :]
    n_context = max(1, len(kept) - len(pair.continuation))
    return TokenPair(kept[:n_context], kept[n_context:])


def plain_rows(pairs: Sequence[TokenPair]) -> list[Row]:
    """One causal row per distinct model input; requests with the same input share it (MC letters)."""
    rows: dict[tuple[int, ...], Row] = {}
    for key, pair in enumerate(pairs):
        inputs = pair.context + pair.continuation[:-1]
        row = rows.setdefault(inputs, Row(list(inputs)))
        start = len(pair.context) - 1
        row.targets.extend((start + j, tok, key) for j, tok in enumerate(pair.continuation))
    return list(rows.values())


def packed_rows(pairs: Sequence[TokenPair], max_len: int) -> list[Row]:
    """Each distinct context once, its continuations packed behind it in rows of at most `max_len`."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for key, pair in enumerate(pairs):
        groups.setdefault(pair.context, []).append(key)
    rows = []
    for context, keys in groups.items():
        row = None
        for key in keys:
            branch = pairs[key].continuation[:-1]
            if row is None or (len(row.tokens) + len(branch) > max_len and row.segments[-1] > 0):
                row = Row(list(context), segments=[0] * len(context), positions=list(range(len(context))))
                rows.append(row)
            add_branch(row, len(context), pairs[key].continuation, key)
    for row in rows:
        if not any(row.segments):  # only single-token continuations: a plain causal row
            row.segments = row.positions = None
    return rows


def add_branch(row: Row, context_len: int, continuation: tuple[int, ...], key: int) -> None:
    """Append continuation[:-1] as a new branch; its first token is predicted by the context's end."""
    branch_id = max(row.segments) + 1
    start = len(row.tokens)
    row.targets.append((context_len - 1, continuation[0], key))
    row.targets.extend((start + j, tok, key) for j, tok in enumerate(continuation[1:]))
    row.tokens.extend(continuation[:-1])
    row.segments.extend([branch_id] * (len(continuation) - 1))
    row.positions.extend(range(context_len, context_len + len(continuation) - 1))


def loglikelihoods(
    model, pairs: Sequence[TokenPair], batch_size: int = 32, pack: bool = True, progress: str | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """log p(continuation | context) and the continuation's token count, per pair.

    `pack` shares each context between its continuations where the model allows it (olmolab's
    `Transformer` does); other models get one row per distinct input.
    """
    window = model_window(model)
    fitted = [fit_window(p, window) for p in pairs]
    unique = list(dict.fromkeys(fitted))  # identical requests (e.g. PMI's "Answer: yes") run once
    index = {p: i for i, p in enumerate(unique)}
    rows = packed_rows(unique, max_len=window) if pack and supports_packing(model) else plain_rows(unique)
    totals, counts = score_rows(model, rows, len(unique), batch_size, progress)
    keys = np.array([index[p] for p in fitted], dtype=np.int64)
    return totals[keys], counts[keys]


# ---------------------------------------------------------------------------------- metrics


@dataclass
class TaskResult:
    spec: TaskSpec
    metrics: dict[str, float]
    stderr: dict[str, float]
    n_examples: int
    samples: list[dict] = field(default_factory=list)
    """The first few examples with their exact prompts and scores, for inspection."""

    def to_dict(self) -> dict:
        return {
            "task": self.spec.task, "formulation": self.spec.formulation, "num_shots": self.spec.num_shots,
            "n_examples": self.n_examples, "metrics": self.metrics, "stderr": self.stderr, "samples": self.samples,
        }  # fmt: skip


def answer_chars(continuation: str) -> int:
    """lm-eval's acc_norm length: the answer without the target delimiter (one leading space)."""
    return len(continuation[1:] if continuation.startswith(" ") else continuation)


def choice_scores(example: Example, ll: np.ndarray, ntok: np.ndarray, uncond_ll: np.ndarray | None) -> dict:
    conts = [r.continuation for r in example.requests]
    scores = {
        "acc": ll,
        "acc_norm": ll / np.array([max(answer_chars(c), 1) for c in conts]),
        "acc_per_char": ll / np.array([len(c) for c in conts]),
        "acc_per_token": ll / ntok,
    }
    if uncond_ll is not None:
        scores["acc_pmi"] = ll - uncond_ll
    return scores


def mean_and_stderr(values: list[float]) -> tuple[float, float]:
    """The mean and its standard error (sample std / sqrt(n), as lm-eval reports)."""
    arr = np.asarray(values, dtype=np.float64)
    if len(arr) < 2:
        return float(arr.mean()), float("nan")
    return float(arr.mean()), float(arr.std(ddof=1) / math.sqrt(len(arr)))


def score_examples(
    examples: Sequence[Example], ll: np.ndarray, ntok: np.ndarray, formulation: str
) -> tuple[dict[str, list[float]], list[int]]:
    """Per-example correctness per metric (1.0 / 0.0) and gold bpb; also the `acc` predictions.

    `ll` / `ntok` hold each example's requests, then its unconditional requests, in order.
    """
    per_metric: dict[str, list[float]] = {}
    predictions, offset = [], 0
    for ex in examples:
        k, has_uncond = len(ex.requests), bool(ex.uncond)
        ex_ll, ex_ntok = ll[offset : offset + k], ntok[offset : offset + k]
        uncond_ll = ll[offset + k : offset + 2 * k] if has_uncond else None
        offset += k * (2 if has_uncond else 1)
        scores = choice_scores(ex, ex_ll, ex_ntok, uncond_ll)
        partial = len({r.continuation for r in ex.requests}) == 1
        if formulation == "mc" or partial:
            scores = {"acc": scores["acc"]}
        for name, s in scores.items():
            per_metric.setdefault(name, []).append(float(int(np.argmax(s)) == ex.gold))
        gold_bytes = len(ex.requests[ex.gold].continuation.encode("utf-8"))
        per_metric.setdefault("bpb", []).append(-ex_ll[ex.gold] / max(gold_bytes, 1) / math.log(2))
        predictions.append(int(np.argmax(ex_ll)))
    return per_metric, predictions


def all_requests(examples: Sequence[Example]) -> list[Request]:
    return [r for ex in examples for r in (*ex.requests, *ex.uncond)]


def inspection_samples(
    examples: Sequence[Example], ll: np.ndarray, predictions: list[int], n: int
) -> list[dict]:
    samples, offset = [], 0
    for ex, pred in zip(examples, predictions, strict=True):
        k = len(ex.requests)
        if len(samples) < n:
            samples.append({
                "doc_index": ex.doc_index, "gold": ex.gold, "prediction": pred,
                "requests": [
                    {"context": r.context, "continuation": r.continuation, "loglikelihood": float(ll[offset + i])}
                    for i, r in enumerate(ex.requests)
                ],
            })  # fmt: skip
        offset += k * (2 if ex.uncond else 1)
    return samples


def evaluate_examples(
    model,
    spec: TaskSpec,
    examples: Sequence[Example],
    pairs: Sequence[TokenPair],
    *,
    batch_size: int = 32,
    pack: bool = True,
    n_samples: int = 3,
    progress: bool = False,
) -> TaskResult:
    """Score pre-tokenized examples (`pairs` = tokenize_requests(all_requests(examples)))."""
    ll, ntok = loglikelihoods(model, pairs, batch_size, pack, progress=spec.label if progress else None)
    per_metric, predictions = score_examples(examples, ll, ntok, spec.formulation)
    metrics, stderr = {}, {}
    for name, values in per_metric.items():
        metrics[name], stderr[name] = mean_and_stderr(values)
    return TaskResult(
        spec, metrics, stderr, len(examples), inspection_samples(examples, ll, predictions, n_samples)
    )


def evaluate_task(
    model,
    tokenizer: TextTokenizer,
    spec: TaskSpec,
    *,
    data_dir=None,
    limit: int | None = None,
    batch_size: int = 32,
    pack: bool = True,
    pmi: bool = True,
    n_samples: int = 3,
    progress: bool = False,
) -> TaskResult:
    """Build, tokenize and score one task spec, e.g. `TaskSpec("piqa", "rc", 0)`."""
    examples = build_examples(spec, data_dir, limit, pmi)
    pairs = tokenize_requests(all_requests(examples), tokenizer)
    return evaluate_examples(
        model, spec, examples, pairs, batch_size=batch_size, pack=pack, n_samples=n_samples, progress=progress
    )
