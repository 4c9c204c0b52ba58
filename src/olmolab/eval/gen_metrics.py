"""How a generated answer is scored against its gold answers, as OLMES scores each task.

Every metric takes the model's answer (already cut at the first stop sequence) and the doc's
gold answers, and returns `Scored`: 1/0 or F1 values per metric name, and the answer it
extracted (what was compared).

- `gsm8k`: the number after the last "So the answer is", else the last number, compared exactly
  with the gold after OLMES's `regexes_to_ignore` (commas, `$`, the rationale before `####`, a
  final full stop) are removed from both.
- `squad`: SQuAD's normalisation (lower case, no punctuation, no articles, single spaces), then
  exact match and token F1, each the max over the gold answers (TriviaQA: over the aliases).
- `drop`: the official DROP script's F1 and EM: answers split into spans, each normalised
  (numbers as numbers: "1,000" = "1000.0"), spans of prediction and gold paired by a maximum
  bipartite matching of their F1 (a span with numbers scores 0 against one without the same
  numbers), rounded to 2 decimals; the max over gold answers. Natural Questions uses it too.
- `math`: Minerva's answer extraction ("Final Answer: The final answer is X. I hope it is
  correct.", else the last `\\boxed{X}`) and normalisation, then string equality with the
  normalised gold (OLMES's `exact_match`). Where the optional `math-verify` package is
  installed, `exact_match_flex` also counts answers it proves equivalent ("1/2" = "0.5").

References: DROP's `drop_eval.py` (allenai/allennlp-reading-comprehension), SQuAD v1.1's
`evaluate-v1.1.py`, Lewkowycz et al. 2022 (Minerva) appendix D, OLMES `oe_eval/metrics`.
"""

from __future__ import annotations

import itertools
import re
import string
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Scored:
    values: dict[str, float]
    extracted: str | None = None


# ---------------------------------------------------------------------------------- GSM8K

GSM8K_IGNORE = (r",", r"\$", r"(?s).*#### ", r"\.$")
"""OLMES's `regexes_to_ignore` for GSM8K: removed from prediction and gold before comparing."""
NUMBER = re.compile(r"-?[\d,]*\.?\d+")


def gsm8k_answer(text: str) -> str:
    """The number after the last "So the answer is", else the last number, else the text itself."""
    cue = text.rfind("So the answer is")
    if cue >= 0 and (after := NUMBER.search(text, cue)):
        return after.group()
    numbers = NUMBER.findall(text)
    return numbers[-1] if numbers else text.strip()


def strip_ignored(text: str, regexes: Sequence[str] = GSM8K_IGNORE) -> str:
    for regex in regexes:
        text = re.sub(regex, "", text)
    return text.strip()


def gsm8k_score(prediction: str, golds: Sequence[str]) -> Scored:
    answer = gsm8k_answer(prediction)
    match = any(strip_ignored(answer) == strip_ignored(gold) for gold in golds)
    return Scored({"exact_match": float(match)}, answer)


# ---------------------------------------------------------------------------------- SQuAD


def squad_normalize(text: str) -> str:
    text = "".join(ch for ch in text.lower() if ch not in PUNCTUATION)
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


PUNCTUATION = frozenset(string.punctuation)


def token_f1(prediction: list[str], gold: list[str]) -> float:
    """Harmonic mean of token precision and recall, tokens counted with multiplicity (SQuAD)."""
    common = sum((Counter(prediction) & Counter(gold)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(prediction), common / len(gold)
    return 2 * precision * recall / (precision + recall)


def squad_score(prediction: str, golds: Sequence[str]) -> Scored:
    pred = squad_normalize(prediction)
    golds_norm = [squad_normalize(g) for g in golds]
    em = max(float(pred == g) for g in golds_norm)
    f1 = max(token_f1(pred.split(), g.split()) for g in golds_norm)
    return Scored({"exact_match": em, "f1": f1}, prediction.strip())


# ---------------------------------------------------------------------------------- DROP


def is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def drop_normalize(span: str) -> str:
    """DROP's normalisation, token by token (tokens split at spaces and hyphens): lower case,
    punctuation removed unless the token is a number, numbers written as floats, no articles."""
    tokens = []
    for token in re.split(r" |-", span.lower()):
        if not is_number(token):
            token = "".join(ch for ch in token if ch not in PUNCTUATION)
        if is_number(token):
            token = str(float(token))
        token = " ".join(re.sub(r"\b(a|an|the)\b", " ", token).split())
        if token.strip():
            tokens.append(token)
    return " ".join(tokens).strip()


def bag_f1(predicted: set[str], gold: set[str]) -> float:
    """DROP's F1 of two token sets; an empty set counts as complete."""
    overlap = len(predicted & gold)
    precision = overlap / len(predicted) if predicted else 1.0
    recall = overlap / len(gold) if gold else 1.0
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


def numbers_agree(gold: set[str], predicted: set[str]) -> bool:
    """A gold span with numbers only matches a predicted span that shares one of them."""
    gold_numbers = {t for t in gold if is_number(t)}
    return not gold_numbers or bool(gold_numbers & {t for t in predicted if is_number(t)})


def best_matching_total(scores: list[list[float]]) -> float:
    """The largest sum of scores[i][j] over a matching (each row and column used at most once).

    DROP answers have a handful of spans, so every assignment of the smaller side is tried:
    exact, and with no dependency on scipy's `linear_sum_assignment`.
    """
    if not scores or not scores[0]:
        return 0.0
    rows, cols = len(scores), len(scores[0])
    if rows > cols:
        scores = [list(col) for col in zip(*scores, strict=True)]
        rows, cols = cols, rows
    return max(
        sum(scores[i][j] for i, j in enumerate(assignment))
        for assignment in itertools.permutations(range(cols), rows)
    )


def drop_em_f1(prediction: Sequence[str], gold: Sequence[str]) -> tuple[float, float]:
    """EM and F1 of one predicted answer against one gold answer, both given as spans."""
    pred_spans = [drop_normalize(s) for s in prediction]
    gold_spans = [drop_normalize(s) for s in gold]
    em = float(sorted(set(pred_spans)) == sorted(set(gold_spans)) and len(pred_spans) == len(gold_spans))
    pred_bags = [set(s.split()) for s in pred_spans]
    gold_bags = [set(s.split()) for s in gold_spans]
    scores = [[bag_f1(p, g) if numbers_agree(g, p) else 0.0 for p in pred_bags] for g in gold_bags]
    f1 = best_matching_total(scores) / max(len(gold_bags), len(pred_bags))
    return em, round(f1, 2)


def drop_score(prediction: str, golds: Sequence[str | Sequence[str]]) -> Scored:
    """Max EM and max F1 over the gold answers (a gold is a span or a list of spans); golds that
    are empty are skipped, as DROP's evaluation does. The prediction is one span."""
    answer = prediction.strip()
    em = f1 = 0.0
    for gold in golds:
        spans = [gold] if isinstance(gold, str) else list(gold)
        if not spans or not spans[0].strip():
            continue
        gold_em, gold_f1 = drop_em_f1([answer], spans)
        em, f1 = max(em, gold_em), max(f1, gold_f1)
    return Scored({"exact_match": em, "f1": f1}, answer)


# ---------------------------------------------------------------------------------- MATH (Minerva)

MINERVA_SUBSTITUTIONS = (
    ("an ", ""), ("a ", ""), (".$", "$"), ("\\$", ""), ("\\ ", ""), (" ", ""), ("mbox", "text"),
    (",\\text{and}", ","), ("\\text{and}", ","), ("\\text{m}", "\\text{}"),
)  # fmt: skip
MINERVA_REMOVED = (
    "square", "ways", "integers", "dollars", "mph", "inches", "ft", "hours", "km", "units", "\\ldots", "sue",
    "points", "feet", "minutes", "digits", "cents", "degrees", "cm", "gm", "pounds", "meters", "meals", "edges",
    "students", "childrentickets", "multiples", "\\text{s}", "\\text{.}", "\\text{\ns}", "\\text{}^2",
    "\\text{}^3", "\\text{\n}", "\\text{}", "\\mathrm{th}", "^\\circ", "^{\\circ}", "\\;", ",\\!", "{,}", '"',
    "\\dots",
)  # fmt: skip
"""Minerva's normalisation tables (Lewkowycz et al. 2022, appendix D), applied in order. Their
bluntness is part of the metric: "ft" goes even from "\\left" (OLMES's MATH-500 golds show it)."""
MINERVA_ANSWER = re.compile(r"Final Answer: The final answer is(.*?)\. I hope it is correct\.", re.DOTALL)
INVALID_ANSWER = "[invalidanswer]"


def last_boxed(text: str) -> str | None:
    """The contents of the last `\\boxed{...}` (braces balanced), or None."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    depth, begin = 0, start + len("\\boxed{")
    for i in range(begin - 1, len(text)):
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        if depth == 0:
            return text[begin:i]
    return None


def minerva_answer(text: str) -> str:
    """The final answer as Minerva's prompt asks for it, else the last boxed expression."""
    if found := MINERVA_ANSWER.search(text):
        return found.group(1).strip()
    boxed = last_boxed(text)
    return boxed if boxed is not None else INVALID_ANSWER


def minerva_normalize(answer: str) -> str:
    answer = answer.split("=")[-1]
    for before, after in MINERVA_SUBSTITUTIONS:
        answer = answer.replace(before, after)
    for removed in MINERVA_REMOVED:
        answer = answer.replace(removed, "")
    # The answer inside math mode, bold, a box...; then TeX shorthand (\frac12, \sqrt2) spelled out.
    answer = re.sub(r"(.*?)(\$)(.*?)(\$)(.*)", "$\\3$", answer)
    for command in ("text", "textbf", "overline"):
        answer = re.sub(rf"(\\{command}\{{)(.*?)(\}})", "\\2", answer)
    answer = re.sub(r"(\\boxed\{)(.*)(\})", "\\2", answer)
    answer = re.sub(r"(frac)([^{])(.)", "frac{\\2}{\\3}", answer)
    answer = re.sub(r"(sqrt)([^{])", "sqrt{\\2}", answer)
    answer = answer.replace("$", "")
    if answer.replace(",", "").isdigit():
        answer = answer.replace(",", "")
    return answer


def math_verify_equivalent() -> Callable[[str, str], bool] | None:
    """`math-verify`'s checker (an optional extra), or None where it is not installed."""
    try:
        from math_verify import parse, verify
    except ImportError:
        return None
    return lambda gold, answer: bool(verify(parse(f"${gold}$"), parse(f"${answer}$")))


def math_score(prediction: str, golds: Sequence[str]) -> Scored:
    answer = minerva_answer(prediction)
    normalized = minerva_normalize(answer)
    values = {"exact_match": float(any(normalized == minerva_normalize(g) for g in golds))}
    equivalent = math_verify_equivalent()
    if equivalent is not None:
        values["exact_match_flex"] = float(values["exact_match"] or any(equivalent(g, answer) for g in golds))
    return Scored(values, normalized)


METRICS: dict[str, Callable[[str, Sequence], Scored]] = {
    "gsm8k": gsm8k_score,
    "squad": squad_score,
    "drop": drop_score,
    "math": math_score,
}
PRIMARY_METRIC = {"gsm8k": "exact_match", "squad": "f1", "drop": "f1", "math": "exact_match"}
