"""Verifiers: programs that score a response against a known answer, for RL with verifiable rewards.

A verifier is a plain function `(response, ground_truth) -> score in [0, 1]`. RLVR rows name
theirs in the `dataset` field (open-instruct's format), and `verifier_for(name)` finds it:

    {"messages": [...], "ground_truth": "72", "dataset": "gsm8k"}

Adding one takes a few lines:

    from olmolab.posttrain.verifiers import register_verifier

    @register_verifier("yes_no")
    def yes_no(response: str, ground_truth) -> float:
        return float(response.strip().lower().startswith(str(ground_truth).lower()))

Built in: `gsm8k` (the last number) and `math` (the boxed or "final answer is" answer); with
the `ifeval` extra installed (`pip install 'olmolab[ifeval]'`), `ifeval` (IFEval's constraints,
checked by lm-eval's copy of Google's checkers). References: open-instruct `ground_truth_utils.py`
(GSM8KVerifier, MathVerifier, IFEvalVerifier); Lewkowycz et al. 2022 (Minerva), appendix D.1, for
the answer normalisation; Zhou et al. 2023 (IFEval).
"""

from __future__ import annotations

import ast
import importlib.util
import json
import re
from collections.abc import Callable
from typing import Any

from olmolab.errors import UserError

Verifier = Callable[[str, Any], float]

VERIFIERS: dict[str, Verifier] = {}


def register_verifier(name: str) -> Callable[[Verifier], Verifier]:
    """Decorator: rows with `"dataset": name` are scored by the decorated function. Names are
    case-insensitive (open-instruct's RLVR sets say "MATH" for `math`)."""
    name = name.lower()

    def add(function: Verifier) -> Verifier:
        if name in VERIFIERS and VERIFIERS[name] is not function:
            raise ValueError(f"a verifier named {name!r} is already registered ({VERIFIERS[name].__qualname__})")
        VERIFIERS[name] = function
        return function

    return add


OPTIONAL_VERIFIERS = {"ifeval": "pip install 'olmolab[ifeval]' (lm-eval's IFEval checkers)"}
"""Verifiers registered only where their library is installed, and how to install it."""


def verifier_for(name: str) -> Verifier:
    """The verifier registered as `name` (a row's `dataset` field)."""
    if isinstance(name, str) and name.lower() in OPTIONAL_VERIFIERS and name.lower() not in VERIFIERS:
        raise UserError(f"the {name!r} verifier needs an optional extra: {OPTIONAL_VERIFIERS[name.lower()]}")
    if not isinstance(name, str) or name.lower() not in VERIFIERS:
        raise UserError(f"no verifier named {name!r}; known: {', '.join(sorted(VERIFIERS))} "
                        "(add one with @olmolab.posttrain.verifiers.register_verifier)")
    return VERIFIERS[name.lower()]


# ---------------------------------------------------------------------- GSM8K

NUMBER = re.compile(r"[-+]?(?:\d*\.\d+|\d+)")
COMMA_IN_NUMBER = re.compile(r"(\d),(?=\d)")


def last_number(text: str) -> str | None:
    """The last number in `text`, thousands separators removed ("1,234.5" -> "1234.5")."""
    numbers = NUMBER.findall(COMMA_IN_NUMBER.sub(r"\1", text))
    return numbers[-1] if numbers else None


@register_verifier("gsm8k")
def gsm8k_verifier(response: str, ground_truth: Any) -> float:
    """1 if the response's last number equals the answer. Compared as numbers, so "18.0" scores
    like "18" (open-instruct compares the strings)."""
    predicted, expected = last_number(response), last_number(str(ground_truth))
    if predicted is None or expected is None:
        return 0.0
    return float(float(predicted) == float(expected))


# ---------------------------------------------------------------------- MATH


def boxed_answer(text: str) -> str | None:
    """The contents of the last `\\boxed{...}` (or `\\fbox{...}`), braces matched; None if none."""
    start = max(text.rfind("\\boxed{"), text.rfind("\\fbox{"))
    if start < 0:
        return None
    opening = text.index("{", start)
    depth = 0
    for i in range(opening, len(text)):
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        if depth == 0:
            return text[opening + 1 : i]
    return None  # unbalanced: the response was cut off inside the box


MINERVA_FINAL_ANSWER = re.compile(r"final answer is\s*(.+?)(?:\.\s*I hope|\.?\s*$)", re.IGNORECASE | re.MULTILINE)


def math_answer(response: str) -> str | None:
    """The answer a MATH response gives: its last `\\boxed{}`, else Minerva's "The final answer
    is X. I hope it is correct." form."""
    boxed = boxed_answer(response)
    if boxed is not None:
        return boxed
    found = MINERVA_FINAL_ANSWER.findall(response)
    return found[-1] if found else None


# Minerva's normalisation (Lewkowycz et al. 2022, appendix D.1), applied in this order.
SUBSTITUTIONS = [("an ", ""), ("a ", ""), (".$", "$"), ("\\$", ""), ("\\ ", ""), (" ", ""), ("mbox", "text"),
                 (",\\text{and}", ","), ("\\text{and}", ","), ("\\text{m}", "\\text{}"),
                 # not Minerva's: \dfrac and \tfrac print as \frac, and MATH's answers mix them
                 ("\\dfrac", "\\frac"), ("\\tfrac", "\\frac")]
REMOVED_EXPRESSIONS = ["square", "ways", "integers", "dollars", "mph", "inches", "ft", "hours", "km", "units",
                       "\\ldots", "sue", "points", "feet", "minutes", "digits", "cents", "degrees", "cm", "gm",
                       "pounds", "meters", "meals", "edges", "students", "childrentickets", "multiples",
                       "\\text{s}", "\\text{.}", "\\text{\ns}", "\\text{}^2", "\\text{}^3", "\\text{\n}",
                       "\\text{}", "\\mathrm{th}", "^\\circ", "^{\\circ}", "\\;", ",\\!", "{,}", '"', "\\dots"]


def normalize_math_answer(answer: str) -> str:
    """Minerva's canonical form of a final answer: the right-hand side of an equation, without
    units, spaces, `$`, `\\text{}` wrappers, with `\\frac12` as `\\frac{1}{2}` and `1,000` as `1000`."""
    answer = answer.split("=")[-1]
    for before, after in SUBSTITUTIONS:
        answer = answer.replace(before, after)
    for expression in REMOVED_EXPRESSIONS:
        answer = answer.replace(expression, "")
    answer = re.sub(r"(.*?)(\$)(.*?)(\$)(.*)", r"$\3$", answer)
    for wrapper in ("text", "textbf", "overline"):
        answer = re.sub(rf"(\\{wrapper}\{{)(.*?)(\}})", r"\2", answer)
    answer = re.sub(r"(\\boxed\{)(.*)(\})", r"\2", answer)
    answer = re.sub(r"(frac)([^{])(.)", r"frac{\2}{\3}", answer)
    answer = re.sub(r"(sqrt)([^{])", r"sqrt{\2}", answer)
    answer = answer.replace("$", "")
    if answer.replace(",", "").isdigit():
        answer = answer.replace(",", "")
    return answer


def _math_verify():
    """HF's `math-verify` (`pip install olmolab[math]`), or None if it is not installed."""
    try:
        import math_verify
    except ImportError:
        return None
    return math_verify


@register_verifier("math")
def math_verifier(response: str, ground_truth: Any) -> float:
    """1 if the response's answer (see `math_answer`) equals the ground truth: as strings after
    Minerva's normalisation (`normalize_math_answer`), or, with `math-verify` installed, by its
    symbolic equivalence (so "0.5" equals "\\frac{1}{2}"). Either test alone falls short: the
    strings miss such rewritings, and math-verify fails to parse some of MATH's own answers
    (3.6% of the reference solutions of MATH's test set, which the strings all accept)."""
    answer = math_answer(response)
    if answer is None:
        return 0.0
    if normalize_math_answer(answer) == normalize_math_answer(str(ground_truth)):
        return 1.0
    checker = _math_verify()
    return float(checker is not None and checker.verify(checker.parse(f"${ground_truth}$"), checker.parse(f"${answer}$")))


# ---------------------------------------------------------------------- IFEval


def ifeval_constraints(ground_truth: Any) -> list[tuple[str, dict]]:
    """[(instruction id, its kwargs)] of an IFEval-style ground truth, as open-instruct's RLVR rows
    and IFEval's own rows write it: a dict with `instruction_id` (open-instruct) or
    `instruction_id_list` (IFEval) and `kwargs`, possibly in a one-element list, possibly as a
    string (JSON, or the Python literal open-instruct's data holds; read by `ast.literal_eval`,
    which evaluates literals only). None-valued kwargs are dropped: the checkers take them as absent."""
    constraints = ground_truth
    if isinstance(constraints, str):
        try:
            constraints = json.loads(constraints)
        except json.JSONDecodeError:
            try:
                constraints = ast.literal_eval(constraints)
            except (ValueError, SyntaxError) as e:
                raise UserError(f"ifeval ground truth {ground_truth!r:.200}: neither JSON nor a Python literal") from e
    if isinstance(constraints, list) and len(constraints) == 1:
        constraints = constraints[0]
        if isinstance(constraints, str):
            constraints = json.loads(constraints)
    ids = constraints.get("instruction_id", constraints.get("instruction_id_list")) if isinstance(constraints, dict) else None
    if not isinstance(ids, list) or not isinstance(constraints.get("kwargs", []), list):
        raise UserError(f"ifeval ground truth {ground_truth!r:.200}: expected "
                        '{"instruction_id": [...], "kwargs": [...]} (or IFEval\'s "instruction_id_list")')
    kwargs = constraints.get("kwargs") or [{}] * len(ids)
    if len(kwargs) != len(ids):
        raise UserError(f"ifeval ground truth {ground_truth!r:.200}: {len(ids)} instructions but {len(kwargs)} kwargs")
    return [(i, {k: v for k, v in (args or {}).items() if v is not None}) for i, args in zip(ids, kwargs, strict=True)]


def _ifeval_checkers() -> dict:
    """lm-eval's registry of IFEval checkers: instruction id -> class. lm-eval downloads NLTK's
    `punkt_tab` sentence model on first import where it is missing (the sentence-counting
    constraints use it); offline, install it beforehand with `python -m nltk.downloader punkt_tab`."""
    try:
        from lm_eval.tasks.ifeval import instructions_registry
    except ImportError as e:
        raise UserError(f"the 'ifeval' verifier cannot import lm-eval's IFEval checkers ({e}): "
                        f"{OPTIONAL_VERIFIERS['ifeval']}") from e
    return instructions_registry.INSTRUCTION_DICT


def ifeval_verifier(response: str, ground_truth: Any) -> float:
    """The fraction of the row's IFEval constraints that the response follows (open-instruct's
    IFEvalVerifier; IFEval's "strict" check: the response as it is). An empty response follows none."""
    checkers = _ifeval_checkers()
    constraints = ifeval_constraints(ground_truth)
    if not response.strip() or not constraints:
        return 0.0
    followed = 0
    for instruction_id, kwargs in constraints:
        if instruction_id not in checkers:
            raise UserError(f"ifeval: no IFEval instruction {instruction_id!r} "
                            f"(lm-eval knows {len(checkers)}, e.g. {', '.join(sorted(checkers)[:3])})")
        checker = checkers[instruction_id](instruction_id)
        checker.build_description(**kwargs)
        try:
            followed += bool(checker.check_following(response))
        except LookupError as e:  # NLTK data missing: the sentence tokenizer, which lm-eval could not fetch
            missing = next((line.strip() for line in str(e).splitlines() if "not found" in line), str(e))
            raise UserError(f"ifeval: {instruction_id} needs NLTK's sentence tokenizer: run "
                            f"`python -m nltk.downloader punkt_tab` ({missing})") from e
    return followed / len(constraints)


# Registered only with lm-eval installed: without it, `verifier_for("ifeval")` names the extra.
# find_spec does not import lm-eval, which is slow to import and only needed when a row is scored.
if importlib.util.find_spec("lm_eval") is not None:
    register_verifier("ifeval")(ifeval_verifier)
