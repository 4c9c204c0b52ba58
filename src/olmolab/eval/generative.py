"""OLMES's generative tasks: the model writes an answer, which is compared with the gold ones.

Each task is a prompt template, a way to read a doc's gold answers, a metric, and OLMES's
generation settings (stop sequences, max new tokens, shots). A prompt is OLMES's:

    description + "".join(shot + "\\n\\n" for shot in shots) + query

where `query` is the template filled with the doc's fields ("Question: ...\\nAnswer:") and a shot
is a solved query: the template filled with the shot's fields, a space, and its answer.
`tests/eval/test_olmes_gen_parity.py` checks every prompt against OLMES's own requests.

Where the data comes from (under the data root, see `tasks.resolve_data_dir`):
- `olmes-gen/<task>/<variant>/requests.jsonl.gz`, OLMES's requests: for every task except
  TriviaQA and Natural Questions these are the only copy of the docs here. For DROP and SQuAD
  the file holds OLMES's Random(1234) sample of 1000 docs, in the order drawn; `random.sample`
  draws a prefix of that sequence for any smaller limit on these sizes, so `limit=N` takes the
  first N. SQuAD's and Jeopardy's processed docs keep only the rendered query, so their fields
  are read back from it with the task's template.
- OLMES's curated shots (`fewshot_source` OLMES:drop, STD:GSM8k, Minerva:MATH:fixed, ...) are
  not shipped; they are recovered from the shot prefix of OLMES's requests (the same for every
  request), split into shots and parsed into fields with the task's template.
- `hf/nq_open/none/validation` and `hf/trivia_qa/rc.wikipedia.nocontext/validation`: the full
  splits. TriviaQA's curated shots (OLMES:triviaqa) are nowhere here, so TriviaQA runs 0-shot
  (OLMES runs it 5-shot) and says so in its results.
"""

from __future__ import annotations

import gzip
import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from olmolab.errors import UserError
from olmolab.eval.tasks import HFSource, load_split, resolve_data_dir, subsample

GEN_DIR = "olmes-gen"


@dataclass(frozen=True)
class GenTask:
    """One OLMES generative task (its `::olmes` configuration)."""

    name: str
    query: str
    """The prompt of one doc, `{field}`s filled from `fields(doc)`; the model's answer follows it."""
    fields: Callable[[dict], dict[str, str]]
    golds: Callable[[dict], list]
    """The doc's gold answers, in the shape its metric takes (DROP: a list of span lists)."""
    metric: str
    """Key of `gen_metrics.METRICS`: gsm8k, drop, squad or math."""
    stop_sequences: tuple[str, ...]
    max_new_tokens: int
    num_shots: int
    """OLMES's shot count, used unless the spec says `:Nshot`."""
    description: str = ""
    requests_dir: str | None = None
    """`olmes-gen/<requests_dir>`: OLMES's requests, which hold the docs (unless `hf` is set) and the shots."""
    hf: HFSource | None = None
    """Read the docs from this full split (and subsample them here) instead of the request file."""
    sampled: bool = False
    """The request file holds OLMES's Random(1234) sample of the split, not the whole split."""
    note: str = ""
    """Where this task differs from OLMES, shown with its results."""

    def render(self, doc: dict) -> str:
        return self.query.format(**self.fields(doc))

    @property
    def has_shots(self) -> bool:
        return self.num_shots > 0


# ---------------------------------------------------------------------------------- templates


def template_regex(template: str) -> re.Pattern:
    """A regex matching what `template.format(...)` renders, one named group per field."""
    parts = re.split(r"\{(\w+)\}", template)
    pattern = "".join(re.escape(p) if i % 2 == 0 else f"(?P<{p}>.*?)" for i, p in enumerate(parts))
    return re.compile(pattern, re.DOTALL)


def parse_rendered(template: str, text: str) -> dict[str, str]:
    """The fields that `template` turned into `text`; inverse of `template.format(**fields)`."""
    match = template_regex(template).fullmatch(text)
    if match is None:
        raise UserError(f"text does not have the form {template!r}: {text[:200]!r}")
    return match.groupdict()


def parse_shot(task: GenTask, text: str) -> dict[str, str]:
    """A rendered shot, `query + " " + answer`, as the query's fields plus `answer`."""
    return parse_rendered(task.query + " {answer}", text)


def render_shot(task: GenTask, shot: dict[str, str]) -> str:
    return task.query.format(**shot) + " " + shot["answer"]


# ---------------------------------------------------------------------------------- the tasks


def _drop_golds(doc: dict) -> list[list[str]]:
    return [list(spans) for spans in doc["answers"]]


def _coqa_fields(doc: dict) -> dict[str, str]:
    """CoQA's turn k shows the passage, the k turns before it as solved questions, then turn k."""
    turn = int(doc["id"].rsplit("_turn", 1)[1])
    before = doc["previous_qa"][:turn]
    history = "".join(f"Question: {t['question']}\nAnswer: {t['answer']}\n\n" for t in before)
    return {
        "story": doc["story"],
        "history": f"Preceding questions:\n\n{history}" if before else "",
        "question": doc["question"],
    }


def _from_query(template: str) -> Callable[[dict], dict[str, str]]:
    """Fields of docs whose processed form keeps only OLMES's rendered `query`."""
    return lambda doc: parse_rendered(template, doc["query"])


def _minerva_golds(doc: dict) -> list[str]:
    return [doc["answer"]]


QA_STOPS = ("Question:", "Q:", "\n\n")
SQUAD_QUERY = "Title: {title}\nBackground: {context}\nQuestion: {question}\nAnswer:"
JEOPARDY_QUERY = "Category: {category}\nQuestion: {question}\nAnswer:"
MATH_SUBJECTS = (
    "algebra", "counting_and_probability", "geometry", "intermediate_algebra", "number_theory",
    "prealgebra", "precalculus",
)  # fmt: skip
DROP_DESCRIPTION = (
    "The following are reading comprehension questions, where the answer to each question is either a "
    "segment of text from the corresponding passage, a number, or a date (containing any of the date, "
    "month, and/or year components). Some questions may require you to pull together information pieces "
    "from the passage and reason over them.\n\n"
)
SQUAD_DESCRIPTION = (
    "The following are reading comprehension questions, where the answer to each question is a segment "
    "of text from the corresponding background text.\n\n"
)
COQA_DESCRIPTION = (
    "Below is a passage followed by a conversation so far, where each turn in the conversation contains "
    "a question and an answer. Please answer the final question by referring to the passage and the "
    "previous questions.\n\n"
)


def _minerva_task(name: str, requests_dir: str) -> GenTask:
    return GenTask(
        name, "Problem:\n{problem}\n\nSolution:", lambda d: {"problem": d["problem"]}, _minerva_golds, "math",
        ("Problem:", "\n\n"), 1024, 4, requests_dir=requests_dir,
    )  # fmt: skip


def _build_registry() -> dict[str, GenTask]:
    question = lambda d: {"question": d["question"]}  # noqa: E731
    tasks = [
        GenTask("gsm8k", "Question: {question}\nAnswer:", question, lambda d: [d["answer"]], "gsm8k",
                ("Question:", "</s>", "<|im_end|>", "\n\n"), 512, 8, requests_dir="gsm8k"),
        GenTask("drop", "Passage: {passage}\nQuestion: {question}\nAnswer:",
                lambda d: {"passage": d["passage"], "question": d["question"]}, _drop_golds, "drop",
                ("Passage:", "Question:", "\n\n"), 50, 5, DROP_DESCRIPTION, "drop", sampled=True),
        GenTask("naturalqs", "Question: {question}\nAnswer:", question, lambda d: list(d["answer"]), "drop",
                QA_STOPS, 50, 5, requests_dir="naturalqs_open", hf=HFSource("nq_open", None, "validation")),
        GenTask("triviaqa", "Question: {question}\nAnswer:", question,
                lambda d: [d["answer"]["value"], *d["answer"]["aliases"], *d["answer"]["normalized_aliases"]],
                "squad", ("\n\n",), 50, 0, hf=HFSource("trivia_qa", "rc.wikipedia.nocontext", "validation"),
                note="OLMES's curated TriviaQA shots (OLMES:triviaqa) are not available here: 0-shot, "
                     "where triviaqa::olmes is 5-shot"),
        GenTask("squad", SQUAD_QUERY, _from_query(SQUAD_QUERY), lambda d: list(d["answers_text"]), "squad",
                ("Title:", "\n\n"), 50, 5, SQUAD_DESCRIPTION, "squad", sampled=True),
        GenTask("coqa", "Passage: {story}\n\n{history}Final question:\n\nQuestion: {question}\nAnswer:",
                _coqa_fields, lambda d: list(d["answers"]), "squad", ("\n\n",), 50, 0, COQA_DESCRIPTION, "coqa"),
        GenTask("jeopardy", JEOPARDY_QUERY, _from_query(JEOPARDY_QUERY), lambda d: [d["answer"]], "squad",
                ("\n\n", "Question:", "Category:"), 50, 5, requests_dir="jeopardy"),
        _minerva_task("minerva_math_500", "minerva_math_500"),
    ]  # fmt: skip
    tasks += [_minerva_task(f"minerva_math_{s}", f"minerva_math_{s}") for s in MATH_SUBJECTS]
    return {t.name: t for t in tasks}


GEN_TASKS: dict[str, GenTask] = _build_registry()


# ---------------------------------------------------------------------------------- data


def requests_file(task: GenTask, root: Path) -> Path:
    """OLMES's request file of `task` under the data root (one variant directory per task)."""
    found = sorted((root / GEN_DIR / task.requests_dir).glob("*/requests.jsonl.gz"))
    if not found:
        raise UserError(
            f"{task.name}: OLMES's requests expected at {root / GEN_DIR / task.requests_dir}/<variant>/"
            f"requests.jsonl.gz (they hold the docs and the curated shots); point --data-dir or "
            f"$OLMOLAB_EVAL_DATA at a data root that has them"
        )
    return found[0]


def read_olmes_requests(path: Path) -> list[dict]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


@cache
def load_docs(task_name: str, root: Path) -> list[dict]:
    """The task's docs, in OLMES's doc_id order where they come from its request file."""
    task = GEN_TASKS[task_name]
    if task.hf is not None:
        return load_split(task.name, (task.hf,), root)
    requests = read_olmes_requests(requests_file(task, root))
    return [r["doc"] for r in sorted(requests, key=lambda r: r["doc_id"])]


@cache
def load_shots(task_name: str, root: Path) -> list[dict[str, str]]:
    """OLMES's curated shots as fields (+ `answer`), recovered from the shot prefix of its requests.

    The prefix is the text between the description and the last doc's query: shots joined by
    blank lines. A new shot starts at a blank line followed by the template's first words.
    """
    task = GEN_TASKS[task_name]
    if not task.has_shots:
        return []
    with gzip.open(requests_file(task, root), "rt", encoding="utf-8") as f:
        first = json.loads(f.readline())
    context = first["request"]["context"].removeprefix(task.description)
    opening = task.query[: task.query.index("{")]
    blocks = re.split(rf"\n\n(?={re.escape(opening)})", context)[:-1]  # the last block is the doc itself
    return [parse_shot(task, block) for block in blocks]


# ---------------------------------------------------------------------------------- examples


@dataclass(frozen=True)
class GenExample:
    """One doc to answer: its prompt (as text, and as chat turns), gold answers and where it came from."""

    doc_index: int
    prompt: str
    golds: list
    turns: tuple[tuple[str, str], ...] = ()
    """The prompt as (user, assistant) turns, the last assistant turn empty: the shots then the
    query, for `--chat` (OLMES's few-shot-as-multi-turn chat format)."""


def make_example(task: GenTask, doc_index: int, doc: dict, shots: list[dict[str, str]]) -> GenExample:
    query = task.render(doc)
    prompt = task.description + "".join(render_shot(task, s) + "\n\n" for s in shots) + query
    turns = [(task.query.format(**s), s["answer"]) for s in shots] + [(query, "")]
    if task.description:
        turns[0] = (task.description + turns[0][0], turns[0][1])
    return GenExample(doc_index, prompt, task.golds(doc), tuple(turns))


def doc_indices(task: GenTask, n_docs: int, limit: int | None) -> list[int]:
    """OLMES's Random(1234) subsample; the first `limit` of a file that holds OLMES's sample already."""
    if task.sampled and task.hf is None:
        return list(range(min(n_docs, limit or n_docs)))
    return subsample(n_docs, limit)


def build_gen_examples(
    task_name: str,
    num_shots: int | None = None,
    data_dir: str | os.PathLike | None = None,
    limit: int | None = None,
) -> list[GenExample]:
    """The examples of a generative task: its docs (subsampled to `limit`) with OLMES's prompts."""
    task = get_gen_task(task_name)
    root = resolve_data_dir(data_dir)
    shots_wanted = task.num_shots if num_shots is None else num_shots
    shots = load_shots(task.name, root)[:shots_wanted] if shots_wanted else []
    if len(shots) < shots_wanted:
        why = task.note or "OLMES's curated shots, recovered from its requests"
        raise UserError(
            f"{task.name}: {shots_wanted} shots asked, {len(shots)} available ({why}); use at most {len(shots)}"
        )
    docs = load_docs(task.name, root)
    return [make_example(task, i, docs[i], shots) for i in doc_indices(task, len(docs), limit)]


def get_gen_task(name: str) -> GenTask:
    if name not in GEN_TASKS:
        raise UserError(f"unknown generative task {name!r}; known: {', '.join(GEN_TASKS)}")
    return GEN_TASKS[name]
