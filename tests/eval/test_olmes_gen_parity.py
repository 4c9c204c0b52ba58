"""Our generative prompts are OLMES's, character for character: every request in the shared data.

`<data>/olmes-gen/<task>/<variant>/requests.jsonl.gz` are the requests AI2's harness produced,
one per doc; `request.context` is the exact prompt, few-shot examples included.
"""

import random

import pytest

from olmolab.errors import UserError
from olmolab.eval.generative import (
    GEN_DIR,
    GEN_TASKS,
    build_gen_examples,
    load_shots,
    parse_shot,
    read_olmes_requests,
    render_shot,
    requests_file,
)
from olmolab.eval.tasks import SUBSAMPLE_SEED
from tests.eval.conftest import EVAL_DATA

WITH_REQUESTS = sorted(name for name, task in GEN_TASKS.items() if task.requests_dir)


def requests_of(task_name: str) -> list[dict]:
    return sorted(
        read_olmes_requests(requests_file(GEN_TASKS[task_name], EVAL_DATA)), key=lambda r: r["doc_id"]
    )


def test_every_task_with_requests_in_the_shared_data_is_checked(eval_data):
    present = {d.name for d in (eval_data / GEN_DIR).iterdir()}
    checked = {GEN_TASKS[name].requests_dir for name in WITH_REQUESTS}
    assert present == checked


@pytest.mark.parametrize("task", WITH_REQUESTS)
def test_prompts_reproduce_every_olmes_request_exactly(eval_data, task):
    requests = requests_of(task)
    examples = build_gen_examples(task, data_dir=eval_data, limit=len(requests))
    assert len(examples) == len(requests)
    mismatches = [
        r["doc_id"] for r, ex in zip(requests, examples, strict=True) if ex.prompt != r["request"]["context"]
    ]
    assert not mismatches, f"{len(mismatches)}/{len(requests)} prompts differ; first doc_id {mismatches[0]}"
    # Stop sequences and token budget are OLMES's, where its requests record them.
    recorded = requests[0]["request"]
    if "stop_sequences" in recorded:
        assert tuple(recorded["stop_sequences"]) == GEN_TASKS[task].stop_sequences
        assert recorded["generation_kwargs"]["max_gen_toks"] == GEN_TASKS[task].max_new_tokens


def test_natural_questions_from_the_full_split_draws_olmes_sample(eval_data):
    """nq_open's 3610 docs, subsampled here with Random(1234), are the 1000 OLMES evaluated."""
    requests = requests_of("naturalqs")
    examples = build_gen_examples("naturalqs", data_dir=eval_data, limit=1000)
    assert [ex.doc_index for ex in examples] == [r["native_id"] for r in requests]
    assert [ex.golds for ex in examples] == [r["doc"]["answers"] for r in requests]


@pytest.mark.parametrize(("n_docs", "task"), [(9536, "drop"), (10570, "squad")])
def test_a_smaller_limit_is_a_prefix_of_olmes_1000_sample(n_docs, task):
    """DROP's and SQuAD's files hold Random(1234).sample(range(n), 1000); `limit=k` takes the first k,
    which is what OLMES's own sample of k draws at these sizes."""
    full = random.Random(SUBSAMPLE_SEED).sample(range(n_docs), 1000)
    for k in (1, 7, 100, 999):
        assert random.Random(SUBSAMPLE_SEED).sample(range(n_docs), k) == full[:k]
    assert GEN_TASKS[task].sampled


def test_shots_are_recovered_as_fields_and_render_back(eval_data):
    shots = load_shots("gsm8k", eval_data)
    assert len(shots) == 8
    assert shots[0]["question"].startswith("There are 15 trees in the grove.")
    assert shots[0]["answer"].endswith("So the answer is 6.")
    drop = load_shots("drop", eval_data)
    assert len(drop) == 5 and set(drop[0]) == {"passage", "question", "answer"}
    text = "Question: who wrote it\nAnswer: Ann, Bob"
    assert parse_shot(GEN_TASKS["naturalqs"], text) == {"question": "who wrote it", "answer": "Ann, Bob"}
    assert render_shot(GEN_TASKS["naturalqs"], parse_shot(GEN_TASKS["naturalqs"], text)) == text


def test_fewer_shots_and_limits(eval_data):
    two = build_gen_examples("gsm8k", num_shots=2, data_dir=eval_data, limit=5)
    assert len(two) == 5 and two[0].prompt.count("\n\nQuestion: ") == 2
    assert len(two[0].turns) == 3 and two[0].turns[-1][1] == ""
    zero = build_gen_examples("gsm8k", num_shots=0, data_dir=eval_data, limit=1)
    assert zero[0].prompt.startswith("Question: ") and zero[0].prompt.count("Question: ") == 1


def test_triviaqa_is_zero_shot_and_says_why(eval_data):
    examples = build_gen_examples("triviaqa", data_dir=eval_data, limit=4)
    assert examples[0].prompt.startswith("Question: ") and examples[0].prompt.endswith("\nAnswer:")
    assert len(examples[0].golds) > 1  # the value and its aliases
    assert "not available" in GEN_TASKS["triviaqa"].note
    with pytest.raises(UserError, match="triviaqa: 5 shots asked, 0 available .*not available here"):
        build_gen_examples("triviaqa", 5, eval_data, 4)
