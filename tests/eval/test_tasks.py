"""Reading the benchmarks' files and turning rows into prompts (beyond the OLMES parity test)."""

import random
import sys
import types

import pytest

from olmolab.errors import UserError
from olmolab.eval.tasks import (
    CORE_TASKS,
    DATA_ENV,
    MMLU_SUBJECTS,
    TaskSpec,
    build_examples,
    get_task,
    hellaswag_clean,
    parse_task_list,
    read_arrow_split,
    resolve_data_dir,
    subsample,
)

ROWS = {"arc_easy": 570, "arc_challenge": 299, "boolq": 3270, "copa": 100, "hellaswag": 10042,
        "openbookqa": 500, "piqa": 1838, "sciq": 1000, "winogrande": 1267}  # fmt: skip


def test_the_ten_core_tasks_are_registered():
    assert set(CORE_TASKS) == set(ROWS) | {"mmlu"}


@pytest.mark.parametrize("task", sorted(ROWS))
def test_validation_split_is_read_from_the_save_to_disk_arrow_stream(eval_data, task):
    docs = get_task(task).load_docs(eval_data)
    assert len(docs) == ROWS[task]
    examples = build_examples(TaskSpec(task), eval_data, limit=5)
    assert all(0 <= e.gold < len(e.requests) for e in examples)


def test_mmlu_reads_all_57_subjects_and_5_shot_prompts_start_with_the_subject_and_dev_rows(eval_data):
    docs = get_task("mmlu").load_docs(eval_data)
    assert {d["subject"] for d in docs} == set(MMLU_SUBJECTS) and len(MMLU_SUBJECTS) == 57
    [example] = build_examples(TaskSpec("mmlu_anatomy", "mc", 5), eval_data, limit=1)
    dev = get_task("mmlu_anatomy").load_shots(eval_data)["anatomy"]
    context = example.requests[0].context
    assert context.startswith("The following are multiple choice questions (with answers) about anatomy.\n\n")
    assert context.count("\nAnswer:") == 6  # five dev shots, then the question
    first_shot = f"Question: {dev[0]['question']}\n A. {dev[0]['choices'][0]}"
    assert first_shot in context and "ABCD"[dev[0]["answer"]] == context.split("Answer: ")[1][0]
    assert [r.continuation for r in example.requests] == [" A", " B", " C", " D"]


def test_missing_task_files_name_the_expected_path_and_how_to_get_them(tmp_path):
    with pytest.raises(UserError) as e:
        build_examples(TaskSpec("piqa"), tmp_path)
    message = str(e.value)
    assert str(tmp_path / "hf" / "piqa" / "plain_text" / "validation") in message
    assert "load_dataset('piqa', 'plain_text', split='validation').save_to_disk(" in message
    assert "`datasets` library is not installed" in message


class FakeHub:
    """Stands in for `datasets`: serves PIQA's rows the way `load_dataset(...).to_list()` does."""

    def __init__(self, rows, fail_with=None):
        self.rows, self.fail_with, self.calls = rows, fail_with, []

    def load_dataset(self, path, name=None, split=None):
        self.calls.append((path, name, split))
        if self.fail_with:
            raise self.fail_with
        return types.SimpleNamespace(to_list=lambda: [dict(r) for r in self.rows])


def test_missing_task_files_are_fetched_through_datasets_where_it_can_reach_a_hub(eval_data, tmp_path, monkeypatch):
    local = build_examples(TaskSpec("piqa"), eval_data, limit=20)
    hub = FakeHub(read_arrow_split(eval_data / "hf" / "piqa" / "plain_text" / "validation"))
    monkeypatch.setitem(sys.modules, "datasets", hub)
    assert build_examples(TaskSpec("piqa"), tmp_path, limit=20) == local
    assert hub.calls == [("piqa", "plain_text", "validation")]


def test_an_unreachable_hub_is_reported_with_the_expected_path(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", FakeHub([], fail_with=ConnectionError("offline")))
    with pytest.raises(UserError) as e:
        build_examples(TaskSpec("piqa"), tmp_path)
    assert "ConnectionError: offline" in str(e.value)
    assert str(tmp_path / "hf" / "piqa" / "plain_text" / "validation") in str(e.value)


def test_missing_fewshot_file_is_a_clear_error(eval_data, tmp_path):
    (tmp_path / "hf").symlink_to(eval_data / "hf")
    with pytest.raises(UserError, match=r"few-shot examples expected at .*olmes/fewshot/piqa.jsonl"):
        build_examples(TaskSpec("piqa", "rc", 5), tmp_path)


def test_data_root_comes_from_argument_then_environment(monkeypatch, tmp_path):
    monkeypatch.setenv(DATA_ENV, str(tmp_path / "env"))
    assert resolve_data_dir() == tmp_path / "env"
    assert resolve_data_dir(tmp_path / "arg") == tmp_path / "arg"
    monkeypatch.delenv(DATA_ENV)
    assert resolve_data_dir().name == "eval"


def test_task_specs_parse_formulation_and_shots_and_name_their_metrics():
    specs = parse_task_list("piqa, arc_easy:mc:5shot,hellaswag:3shot", default_shots=0)
    assert specs == [TaskSpec("piqa", "rc", 0), TaskSpec("arc_easy", "mc", 5), TaskSpec("hellaswag", "rc", 3)]
    assert [s.label for s in specs] == ["piqa", "arc_easy_mc_5shot", "hellaswag_3shot"]
    assert parse_task_list(["piqa", "copa"], default_shots=5) == [
        TaskSpec("piqa", "rc", 5),
        TaskSpec("copa", "rc", 0),
    ]
    with pytest.raises(UserError, match="unknown task 'piqaa'"):
        parse_task_list("piqaa")
    with pytest.raises(UserError, match="unknown option 'mcq'"):
        parse_task_list("piqa:mcq")


def test_shots_come_from_olmes_curated_list_and_cannot_exceed_it(eval_data):
    [example] = build_examples(TaskSpec("piqa", "rc", 2), eval_data, limit=1)
    assert example.requests[0].context.startswith(
        "Goal: how do you stab something?\nAnswer: stick a sharp object through it.\n\n"
        "Goal: how do you shake something?\nAnswer: move it up and down and side to side quickly.\n\nGoal: "
    )
    with pytest.raises(UserError, match="8 shots asked, 7 available"):
        build_examples(TaskSpec("piqa", "rc", 8), eval_data, limit=1)
    with pytest.raises(UserError, match="copa has no few-shot examples.*copa:0shot"):
        build_examples(TaskSpec("copa", "rc", 5), eval_data, limit=1)


def test_limit_is_olmes_random_1234_subsample_and_deterministic():
    assert subsample(1838, 1000) == random.Random(1234).sample(range(1838), 1000)
    assert subsample(10, 50) == list(range(10))
    assert subsample(1838, 200) == subsample(1838, 200)


def test_winogrande_cloze_scores_the_shared_rest_of_the_sentence(eval_data):
    example = build_examples(TaskSpec("winogrande"), eval_data)[0]
    assert [r.context for r in example.requests] == [
        "Sarah was a much better surgeon than Maria so Sarah",
        "Sarah was a much better surgeon than Maria so Maria",
    ]
    assert {r.continuation for r in example.requests} == {" always got the easier cases."}
    assert example.gold == 1 and example.uncond == ()


def test_cloze_examples_carry_pmi_requests_after_answer_colon(eval_data):
    [example] = build_examples(TaskSpec("arc_easy"), eval_data, limit=1)
    assert [r.context for r in example.uncond] == ["Answer:"] * 4
    assert [r.continuation for r in example.uncond] == [r.continuation for r in example.requests]
    [without] = build_examples(TaskSpec("arc_easy"), eval_data, limit=1, pmi=False)
    assert without.uncond == ()


def test_hellaswag_cleanup_drops_wikihow_markers_without_double_full_stops():
    raw = "Health: [header] How to cope [title] Put off any plans. [title] Promise yourself. [step] Wait."
    assert hellaswag_clean(raw) == "Health: How to cope. Put off any plans. Promise yourself. Wait."
