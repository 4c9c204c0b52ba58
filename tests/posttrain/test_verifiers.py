"""Verifiers on real examples: GSM8K and MATH test questions with responses in the forms models give."""

from __future__ import annotations

import json

import pytest

from olmolab.errors import UserError
from olmolab.posttrain import verifiers
from olmolab.posttrain.verifiers import (
    boxed_answer,
    gsm8k_verifier,
    ifeval_constraints,
    math_answer,
    math_verifier,
    normalize_math_answer,
    register_verifier,
    verifier_for,
)

# GSM8K test question 0 (Janet's ducks), answer 18; its reference solution ends "#### 18".
JANET_SOLUTION = ("Janet sells 16 - 3 - 4 = <<16-3-4=9>>9 duck eggs a day.\n"
                  "She makes 9 * 2 = $<<9*2=18>>18 every day at the farmer’s market.\n#### 18")


@pytest.mark.parametrize(("response", "ground_truth", "score"), [
    (JANET_SOLUTION, "18", 1.0),
    ("She sells 16 - 3 - 4 = 9 eggs, so she makes 9 * 2 = $18. So the answer is 18.", "18", 1.0),
    ("9 * 2 = 18 dollars, minus 2 for the stall: 16. So the answer is 16.", "18", 0.0),  # the LAST number counts
    ("The toy store has 1,250 cars and sells 1,000, so 250 are left... no: the answer is 2,250.", "2250", 1.0),
    ("The answer is 2,250.", "2,250", 1.0),
    ("He ends up with -3 degrees.", "-3", 1.0),
    ("It costs $18.00 in all.", "18", 1.0),  # compared as numbers
    ("I cannot tell from the question.", "18", 0.0),
])
def test_gsm8k_takes_the_last_number_without_thousands_separators(response, ground_truth, score):
    assert gsm8k_verifier(response, ground_truth) == score


def test_boxed_answer_matches_nested_braces_and_takes_the_last_box():
    assert boxed_answer(r"first \boxed{3}, then $\boxed{\frac{10}{11}}$.") == r"\frac{10}{11}"
    assert boxed_answer(r"so $x = \boxed{\sqrt{2}}$") == r"\sqrt{2}"
    assert boxed_answer(r"the answer is \boxed{\frac{1") is None  # cut off inside the box
    assert boxed_answer("no box here") is None


def test_math_answer_falls_back_to_minervas_final_answer_form():
    minerva = ("Therefore, the domain of the expression is $[2,5)$.\n"
               "Final Answer: The final answer is $[2,5)$. I hope it is correct.")
    assert math_answer(minerva) == "$[2,5)$"
    assert math_answer("The final answer is 7") == "7"
    assert math_answer("I think it is 7.") is None


@pytest.mark.parametrize(("answer", "normalized"), [
    (r"$\frac{10}{11}$", r"\frac{10}{11}"),
    (r"\dfrac{1}{2}", r"\frac{1}{2}"),
    (r"\frac12", r"\frac{1}{2}"),
    (r"x = 5", "5"),
    (r"10\text{ inches}", "10"),
    (r"90^\circ", "90"),
    ("1,000", "1000"),
    (r"\text{(B)}", "(B)"),
])
def test_normalize_math_answer_follows_minerva(answer, normalized):
    assert normalize_math_answer(answer) == normalized


@pytest.mark.parametrize(("response", "ground_truth", "score"), [
    # MATH algebra test problem 0 (vertical asymptotes of 2/(x^2+x-6)), its reference solution
    ("The denominator of the rational function factors into $x^2+x-6=(x-2)(x+3)$. ... "
     r"Therefore, the graph has $\boxed{2}$ vertical asymptotes.", "2", 1.0),
    # MATH counting & probability test problem 0 (1 - 1/11)
    (r"the probability it doesn't rain is $1 - \frac{1}{11} = \boxed{\frac{10}{11}}$.", r"\frac{10}{11}", 1.0),
    (r"the probability it doesn't rain is $\boxed{\dfrac{10}{11}}$.", r"\frac{10}{11}", 1.0),
    (r"Final Answer: The final answer is $\frac{10}{11}$. I hope it is correct.", r"\frac{10}{11}", 1.0),
    (r"the probability it doesn't rain is $\boxed{\frac{1}{11}}$.", r"\frac{10}{11}", 0.0),
    (r"so the angle is $\boxed{90^\circ}$", "90", 1.0),
    ("the probability is ten elevenths", r"\frac{10}{11}", 0.0),  # no answer found
])
def test_math_scores_the_boxed_or_final_answer(response, ground_truth, score, monkeypatch):
    monkeypatch.setattr(verifiers, "_math_verify", lambda: None)  # the string comparison, installed or not
    assert math_verifier(response, ground_truth) == score


def test_without_math_verify_equal_values_written_differently_do_not_match(monkeypatch):
    monkeypatch.setattr(verifiers, "_math_verify", lambda: None)
    assert math_verifier(r"the probability is $\boxed{0.5}$", r"\frac{1}{2}") == 0.0


def test_with_math_verify_equal_values_written_differently_match():
    pytest.importorskip("math_verify")  # the optional `math` extra
    assert math_verifier(r"the probability is $\boxed{0.5}$", r"\frac{1}{2}") == 1.0
    assert math_verifier(r"so $x \in \boxed{[2, 5)}$", "[2,5)") == 1.0
    assert math_verifier(r"the probability is $\boxed{0.4}$", r"\frac{1}{2}") == 0.0


def test_a_user_registers_a_verifier_in_a_few_lines(monkeypatch):
    monkeypatch.setattr(verifiers, "VERIFIERS", dict(verifiers.VERIFIERS))

    @register_verifier("yes_no")
    def yes_no(response: str, ground_truth) -> float:
        return float(response.strip().lower().startswith(str(ground_truth).lower()))

    assert verifier_for("yes_no")("Yes, it is.", "yes") == 1.0
    assert verifier_for("gsm8k") is gsm8k_verifier and verifier_for("MATH") is math_verifier  # open-instruct's name
    with pytest.raises(ValueError, match="already registered"):
        register_verifier("gsm8k")(yes_no)


def test_an_unknown_verifier_names_the_known_ones():
    with pytest.raises(UserError, match="known: gsm8k, (ifeval, )?math"):  # ifeval: with its extra installed
        verifier_for("gsm9k")


# ---------------------------------------------------------------------- IFEval (optional extra)

# IFEval's first row (key 1000), as its input_data.jsonl has it.
IFEVAL_1000 = {"instruction_id_list": ["punctuation:no_comma", "detectable_format:number_highlighted_sections",
                                       "length_constraints:number_words"],
               "kwargs": [{}, {"num_highlights": 3}, {"relation": "at least", "num_words": 300}]}
SUMMARY = ("*Raymond III Count of Tripoli* ruled Tripoli from 1152 and Galilee by marriage. "
           + "He was regent of Jerusalem twice and fought Saladin before the fall of the kingdom. " * 12
           + "*His regencies* shaped the politics of the Latin East for a generation. "
           + "*His legacy* is debated by historians to this day and the debate goes on. " * 10)


@pytest.fixture
def ifeval(monkeypatch):
    """The `ifeval` verifier (needs `pip install 'olmolab[ifeval]'`)."""
    for module in ("lm_eval", "langdetect", "immutabledict"):
        pytest.importorskip(module)
    nltk = pytest.importorskip("nltk")
    # lm-eval fetches NLTK's punkt_tab on its first import where it is missing: tests stay offline
    monkeypatch.setattr(nltk, "download", lambda *args, **kwargs: False)
    return verifier_for("ifeval")


def test_ifeval_scores_the_fraction_of_the_rows_constraints_followed(ifeval):
    assert len(SUMMARY.split()) > 300 and "," not in SUMMARY
    assert ifeval(SUMMARY, IFEVAL_1000) == 1.0
    assert ifeval(SUMMARY.replace(" and ", ", and "), IFEVAL_1000) == pytest.approx(2 / 3)  # commas
    assert ifeval(SUMMARY.replace("*", ""), IFEVAL_1000) == pytest.approx(2 / 3)  # no highlighted sections
    assert ifeval("*A* *B* *C* too short", IFEVAL_1000) == pytest.approx(2 / 3)  # 5 words, not 300
    assert ifeval("Too short, and plain.", IFEVAL_1000) == 0.0
    assert ifeval("", IFEVAL_1000) == 0.0


def test_ifeval_checks_case_placeholders_and_endings(ifeval):
    lowercase = {"instruction_id_list": ["change_case:english_lowercase"], "kwargs": [{}]}
    assert ifeval("dear sam, please go and vote on tuesday. it matters.", lowercase) == 1.0
    assert ifeval("Dear Sam, please go and vote on Tuesday.", lowercase) == 0.0
    placeholders = {"instruction_id_list": ["detectable_content:number_placeholders"], "kwargs": [{"num_placeholders": 2}]}
    assert ifeval("Name: [name]\nAddress: [address]", placeholders) == 1.0
    assert ifeval("Name: [name]", placeholders) == 0.0
    ending = {"instruction_id_list": ["startend:end_checker"], "kwargs": [{"end_phrase": "Is there anything else I can help with?"}]}
    assert ifeval("Here it is. Is there anything else I can help with?", ending) == 1.0
    assert ifeval("Is there anything else I can help with? Here it is.", ending) == 0.0


def test_ifeval_reads_open_instructs_ground_truth_forms(ifeval):
    """open-instruct's rows hold `str([{"instruction_id": [...], "kwargs": [...]}])`, a Python literal
    (None, single quotes); JSON strings and plain dicts mean the same."""
    ids, kwargs = ["punctuation:no_comma", "length_constraints:number_words"], [None, {"relation": "less than", "num_words": 5}]
    forms = [str([{"instruction_id": ids, "kwargs": kwargs}]), json.dumps({"instruction_id": ids, "kwargs": kwargs}),
             {"instruction_id_list": ids, "kwargs": kwargs}, [{"instruction_id": ids, "kwargs": kwargs}]]
    for form in forms:
        assert ifeval_constraints(form) == [("punctuation:no_comma", {}),
                                            ("length_constraints:number_words", {"relation": "less than", "num_words": 5})]
        assert ifeval("Four words no commas", form) == 1.0
        assert ifeval("Here, five words, with commas", form) == 0.0


def test_ifeval_names_what_is_wrong_with_a_ground_truth(ifeval):
    with pytest.raises(UserError, match="no IFEval instruction 'punctuation:no_semicolon'"):
        ifeval("text", {"instruction_id_list": ["punctuation:no_semicolon"], "kwargs": [{}]})
    with pytest.raises(UserError, match="2 instructions but 1 kwargs"):
        ifeval("text", {"instruction_id": ["punctuation:no_comma", "change_case:english_lowercase"], "kwargs": [{}]})
    with pytest.raises(UserError, match="expected"):
        ifeval("text", {"constraints": ["no commas"]})


def test_a_sentence_count_without_nltks_sentence_model_says_how_to_install_it(ifeval):
    import nltk

    try:
        nltk.data.find("tokenizers/punkt_tab")
        pytest.skip("NLTK's punkt_tab is installed here")
    except LookupError:
        pass
    sentences = {"instruction_id_list": ["length_constraints:number_sentences"],
                 "kwargs": [{"relation": "at least", "num_sentences": 2}]}
    with pytest.raises(UserError, match=r"python -m nltk.downloader punkt_tab.*Resource 'punkt_tab' not found"):
        ifeval("One. Two.", sentences)


def test_without_the_extra_the_ifeval_verifier_names_it(monkeypatch):
    monkeypatch.setattr(verifiers, "VERIFIERS", {k: v for k, v in verifiers.VERIFIERS.items() if k != "ifeval"})
    with pytest.raises(UserError, match=r"pip install 'olmolab\[ifeval\]'"):
        verifier_for("ifeval")
