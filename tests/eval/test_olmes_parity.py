"""Our prompts are OLMES's, character for character: every request of every rendered variant.

`<data>/olmes/<task>/<variant>/requests.jsonl.gz` are the requests AI2's own harness produced
(one per example and choice, plus PMI's unconditional ones at doc_id >= 1,000,000). We render the
same docs from the raw Hugging Face rows and compare context, continuation and gold label.
"""

import gzip
import json
import re

import pytest

from olmolab.eval.tasks import Request, TaskSpec, build_examples
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
