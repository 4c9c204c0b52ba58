"""Our prompts are OLMES's, character for character: every request of every rendered variant.

`<data>/olmes/<task>/<variant>/requests.jsonl.gz` are the requests AI2's own harness produced
(one per example and choice, plus PMI's unconditional ones at doc_id >= 1,000,000). We render the
same docs from the raw Hugging Face rows and compare context, continuation and gold label.
"""

import gzip
import json
import re
from pathlib import Path

import pyarrow as pa
import pytest

from olmolab.eval.tasks import Request, TaskSpec, build_examples, read_arrow_split
from tests.eval.conftest import EVAL_DATA

VARIANTS = {"rc_0shot": ("rc", 0), "rc_5shot": ("rc", 5), "mc_5shot": ("mc", 5)}
UNCOND_OFFSET = 1_000_000


def present_variants() -> list[tuple[str, str]]:
    root = EVAL_DATA / "olmes"
    if not root.is_dir():
        return []
    return sorted(
        (task.name, variant.name)
        for task in root.iterdir()
        if task.name != "fewshot"
        for variant in task.iterdir()
        if variant.name in VARIANTS and (variant / "requests.jsonl.gz").is_file()
    )


def read_requests(task: str, variant: str) -> list[dict]:
    with gzip.open(EVAL_DATA / "olmes" / task / variant / "requests.jsonl.gz", "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def boolq_without_title(ours: Request, theirs: Request) -> bool:
    """HF `boolq` passages lack the "Title -- " that super_glue/boolq (OLMES's source) puts first.

    The shots (from OLMES's own list) carry their titles, so only the final question may differ,
    and only by that prefix.
    """
    head, _, question = ours.context.rpartition("\n\n")
    their_head, _, their_question = theirs.context.rpartition("\n\n")
    title = their_question[: len(their_question) - len(question)]
    return (
        head == their_head
        and their_question.endswith(question)
        and re.fullmatch(r"[^\n]+ -- ", title) is not None
        and ours.continuation == theirs.continuation
    )


def test_every_olmes_variant_of_the_shared_data_is_checked(eval_data):
    tasks = {task for task, _ in present_variants()}
    assert tasks >= {
        "arc_easy",
        "arc_challenge",
        "boolq",
        "copa",
        "hellaswag",
        "openbookqa",
        "piqa",
        "sciq",
        "winogrande",
    }


@pytest.mark.parametrize(("task", "variant"), present_variants())
def test_formatting_reproduces_olmes_requests_exactly(eval_data, task, variant):
    requests = read_requests(task, variant)
    formulation, shots = VARIANTS[variant]
    n_docs = len({r["doc_id"] for r in requests if r["doc_id"] < UNCOND_OFFSET})
    # OLMES subsamples big sets to 1000 docs with Random(1234); limit=n_docs draws the same ones.
    examples = build_examples(TaskSpec(task, formulation, shots), eval_data, limit=n_docs)
    titles_missing = task == "boolq" and not (eval_data / "hf" / "super_glue" / "boolq").is_dir()
    mismatches = []
    for r in requests:
        theirs = Request(r["request"]["context"], r["request"]["continuation"])
        if r["doc_id"] >= UNCOND_OFFSET:
            example = examples[r["doc_id"] - UNCOND_OFFSET]
            ours = example.uncond[r["idx"]] if example.uncond else None
        else:
            example = examples[r["doc_id"]]
            ours = example.requests[r["idx"]]
        same = ours == theirs or (titles_missing and ours is not None and boolq_without_title(ours, theirs))
        if not same or example.gold != r["label"]:
            mismatches.append((r["doc_id"], r["idx"], ours, theirs))
    assert not mismatches, f"{len(mismatches)}/{len(requests)} requests differ; first: {mismatches[0]}"
    # OLMES leaves out PMI's requests for multiple choice, BoolQ and WinoGrande; so do we.
    has_uncond = any(r["doc_id"] >= UNCOND_OFFSET for r in requests)
    assert any(e.uncond for e in examples) == has_uncond


def write_arrow_split(split_dir: Path, rows: list[dict]) -> None:
    """The `datasets.save_to_disk` layout that olmolab reads: an Arrow IPC stream."""
    split_dir.mkdir(parents=True)
    table = pa.Table.from_pylist(rows)
    with pa.OSFile(str(split_dir / "data-00000-of-00001.arrow"), "wb") as sink:
        with pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)


@pytest.fixture(scope="module")
def super_glue_root(eval_data, tmp_path_factory) -> Path:
    """A data root whose BoolQ is super_glue/boolq, the titled source OLMES formats.

    The shared data ships HF `boolq`, whose passages lack the "Title -- " prefix. OLMES's 0-shot
    requests hold every validation doc (`idx` 0..3269, in order) with its titled passage, so the
    super_glue rows can be rebuilt from them; the rebuilt rows are checked against HF `boolq`
    (same questions, same answers, passages that differ only by the title).
    """
    root = tmp_path_factory.mktemp("data")
    (root / "olmes").symlink_to(eval_data / "olmes")
    (root / "hf").mkdir()
    for entry in (eval_data / "hf").iterdir():
        if entry.name != "super_glue":
            (root / "hf" / entry.name).symlink_to(entry)
    (root / "hf" / "super_glue").mkdir()
    for entry in (eval_data / "hf" / "super_glue").iterdir():
        (root / "hf" / "super_glue" / entry.name).symlink_to(entry)

    docs = {r["doc"]["idx"]: r["doc"] for r in read_requests("boolq", "rc_0shot") if r["doc_id"] < UNCOND_OFFSET}
    plain = read_arrow_split(eval_data / "hf" / "boolq" / "none" / "validation")
    rows = []
    for idx, hf_row in enumerate(plain):
        passage, _, rest = docs[idx]["query"].rpartition("\nQuestion: ")
        question = rest.removesuffix("?\nAnswer:")
        says_yes = docs[idx]["gold"] == 0
        assert (question, says_yes) == (hf_row["question"], hf_row["answer"])
        assert re.fullmatch(r"[^\n]+ -- ", passage[: len(passage) - len(hf_row["passage"])])
        rows.append({"question": question, "passage": passage, "idx": idx, "label": int(says_yes)})
    write_arrow_split(root / "hf" / "super_glue" / "boolq" / "validation", rows)
    return root


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_boolq_from_super_glue_reproduces_olmes_exactly(super_glue_root, variant):
    formulation, shots = VARIANTS[variant]
    requests = read_requests("boolq", variant)
    n_docs = len({r["doc_id"] for r in requests})
    examples = build_examples(TaskSpec("boolq", formulation, shots), super_glue_root, limit=n_docs)
    for r in requests:
        example = examples[r["doc_id"]]
        theirs = Request(r["request"]["context"], r["request"]["continuation"])
        assert (example.requests[r["idx"]], example.gold) == (theirs, r["label"]), r["doc_id"]
