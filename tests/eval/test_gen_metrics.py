"""The generative metrics on hand-checked cases, and on OLMES's own gold continuations."""

import pytest

from olmolab.eval.gen_metrics import (
    METRICS,
    best_matching_total,
    drop_em_f1,
    drop_normalize,
    drop_score,
    gsm8k_answer,
    gsm8k_score,
    last_boxed,
    math_score,
    minerva_answer,
    minerva_normalize,
    squad_normalize,
    squad_score,
)
from olmolab.eval.generative import GEN_TASKS, read_olmes_requests, requests_file

GSM8K_GOLD = "Janet sells 16 - 3 - 4 = <<16-3-4=9>>9 duck eggs a day.\n#### 1234"


def test_gsm8k_takes_the_number_after_the_last_cue_else_the_last_number():
    assert gsm8k_answer("2 + 3 = 5. So the answer is 5. Then 9 more") == "5"
    assert gsm8k_answer("So the answer is 4. No wait. So the answer is $1,234.") == "1,234"
    assert gsm8k_answer("3 + 4 = 7 apples, 8 pears") == "8"
    assert gsm8k_answer("So the answer is unclear, maybe 12") == "12"
    assert gsm8k_answer("no idea") == "no idea"


def test_gsm8k_exact_match_ignores_olmes_regexes_on_both_sides():
    assert gsm8k_score("So the answer is $1,234.", [GSM8K_GOLD]).values == {"exact_match": 1.0}
    assert gsm8k_score("The total is 1234.", [GSM8K_GOLD]).values == {"exact_match": 1.0}
    assert gsm8k_score("So the answer is 1234.5", [GSM8K_GOLD]).values == {"exact_match": 0.0}
    assert gsm8k_score("So the answer is -3.", ["#### -3"]).values == {"exact_match": 1.0}


def test_squad_normalises_and_takes_the_best_gold():
    assert squad_normalize("The Eiffel  Tower!") == "eiffel tower"
    assert squad_score("The Eiffel Tower!", ["Eiffel tower"]).values == {"exact_match": 1.0, "f1": 1.0}
    # "in paris france" vs "paris": precision 1/3, recall 1 -> F1 0.5; vs "paris france": 0.8.
    scored = squad_score("in Paris, France", ["Paris", "Paris France", "Lyon"])
    assert scored.values["exact_match"] == 0.0
    assert scored.values["f1"] == pytest.approx(0.8)
    assert squad_score("cat cat", ["cat"]).values["f1"] == pytest.approx(
        2 / 3
    )  # tokens count with multiplicity


def test_drop_normalises_numbers_punctuation_and_articles():
    assert drop_normalize("1,000") == "1000.0"
    assert drop_normalize("The Lions'") == "lions"
    assert drop_normalize("forty-two yards") == "forty two yards"
    assert drop_score("1,000", [["1000"]]).values == {"exact_match": 1.0, "f1": 1.0}


def test_drop_numbers_must_agree_for_any_credit():
    # "people" overlaps, but 15 is not 14: no credit.
    assert drop_score("15 people", [["14 people"]]).values == {"exact_match": 0.0, "f1": 0.0}
    # {14.0, people} vs {14.0}: precision 1/2, recall 1 -> 0.67 after rounding to 2 decimals.
    assert drop_score("14 people", [["14"]]).values == {"exact_match": 0.0, "f1": 0.67}


def test_drop_multi_span_answers_are_aligned_by_maximum_matching():
    # Greedy takes 1.0 first and ends with 1.0; the best matching is 0.5 + 0.9 = 1.4.
    assert best_matching_total([[1.0, 0.5], [0.9, 0.0]]) == pytest.approx(1.4)
    assert best_matching_total([[0.2], [0.7], [0.1]]) == pytest.approx(0.7)
    assert drop_em_f1(["Spain", "Italy"], ["Italy", "Spain"]) == (1.0, 1.0)
    # One predicted span against three gold spans: F1 1.0 for the one, / 3 spans.
    assert drop_em_f1(["Germany"], ["Germany", "France", "United Kingdom"]) == (0.0, 0.33)
    # The max over gold answers, EM and F1 each; empty golds are skipped.
    golds = [["Germany", "France", "United Kingdom"], ["Germany"], [""]]
    assert drop_score("germany", golds).values == {"exact_match": 1.0, "f1": 1.0}


def test_minerva_extracts_the_final_answer_else_the_last_box():
    text = "So $x=2$.\nFinal Answer: The final answer is $\\frac{1}{2}$. I hope it is correct."
    assert minerva_answer(text) == "$\\frac{1}{2}$"
    assert minerva_answer("hence \\boxed{\\frac{1}{2}} and \\boxed{7}.") == "7"
    assert last_boxed("x \\boxed{\\sqrt{\\frac{a}{b}}} y") == "\\sqrt{\\frac{a}{b}}"
    assert minerva_answer("I give up") == "[invalidanswer]"


def test_minerva_normalisation_and_equivalence():
    assert minerva_normalize("\\frac12") == "\\frac{1}{2}"
    assert minerva_normalize("10,000 dollars") == "10000"
    assert minerva_normalize("x = 5") == "5"
    assert minerva_normalize("\\text{(C)}") == "(C)"
    assert minerva_normalize("90^\\circ") == "90"
    # Its bluntness is OLMES's too: the gold of MATH-500's first problem reads "\le(3,...\right)".
    assert minerva_normalize("\\left( 3, \\frac{\\pi}{2} \\right)") == "\\le(3,\\frac{\\pi}{2}\\right)"
    answer = "Final Answer: The final answer is $\\frac12$. I hope it is correct."
    assert math_score(answer, ["\\frac{1}{2}"]).values["exact_match"] == 1.0
    assert math_score(answer, ["\\frac{1}{3}"]).values["exact_match"] == 0.0


@pytest.mark.parametrize("task", ["gsm8k", "squad", "jeopardy", "minerva_math_500", "minerva_math_algebra"])
def test_olmes_gold_continuations_score_full_marks(eval_data, task):
    """OLMES's requests carry each doc's gold answer as a continuation; scored as a prediction it
    must be right, except GSM8K's two golds that write a negative answer as "- 10"."""
    spec = GEN_TASKS[task]
    wrong = []
    for r in read_olmes_requests(requests_file(spec, eval_data)):
        scored = METRICS[spec.metric](r["request"]["continuation"], spec.golds(r["doc"]))
        if scored.values["exact_match"] != 1.0:
            wrong.append(r["request"]["continuation"])
    if task == "gsm8k":
        assert len(wrong) == 2 and all("So the answer is - " in w for w in wrong)
    else:
        assert wrong == []
