"""The model card's benchmarks: readers for their files, and OLMES's prompt formats.

Every task turns a dataset row (a "doc", in the Hugging Face schema) into an `Example`: one
`Request` (context, continuation) per answer choice and the gold index. Two formulations:

- "rc" (cloze, OLMES's *ranked classification*): the continuation is the answer text,
  `"Question: ...\\nAnswer:"` + `" cellular telephone"`.
- "mc" (multiple choice): the choices are listed in the prompt as `" A. text"` lines and the
  continuation is the letter, `" A"`.

The strings reproduce OLMES exactly (AI2's standard; OLMo-Eval `olmes_v0_1/*_std.py`, oe_eval
`tasks/*`): `tests/eval/test_olmes_parity.py` compares them with OLMES's own rendered requests in
`<data>/olmes/<task>/<variant>/requests.jsonl.gz`. k-shot prompts put k solved examples in
front, joined by blank lines; the shots are OLMES's curated ones (`<data>/olmes/fewshot/<task>.jsonl`,
drawn from each train split) and, for MMLU, the first k rows of the subject's dev split.

Every task evaluates its validation split. For MMLU that is the 1,531 validation questions of
the 57 subjects (OLMo's in-loop choice; OLMES reports the 14k-question test split), and `mmlu`
averages over questions (OLMES's suite score averages over subjects; `mmlu_<subject>` gives one).

Data layout under the data root (`--data-dir`, else $OLMOLAB_EVAL_DATA, else ~/.cache/olmolab/eval):
`hf/<path>/<name>/<split>/data-00000-of-00001.arrow`, what `datasets`' `save_to_disk` writes (an
Arrow IPC stream, read here with pyarrow alone).
"""

from __future__ import annotations

import json
import os
import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Literal

import pyarrow.ipc

from olmolab.errors import UserError

Formulation = Literal["rc", "mc"]
FORMULATIONS = ("rc", "mc")
DATA_ENV = "OLMOLAB_EVAL_DATA"
DEFAULT_DATA_DIR = Path("~/.cache/olmolab/eval")
LETTERS = "ABCDEFGHIJ"
ANSWER_PREFIX = "Answer:"
# OLMES scores PMI (acc_uncond) against the bare answer prefix: log p(cont | ctx) - log p(cont | "Answer:").
UNCOND_CONTEXT = ANSWER_PREFIX
# OLMES evaluates at most 1000 docs per task, drawn with Random(1234).sample; `limit` does the same.
SUBSAMPLE_SEED = 1234


@dataclass(frozen=True)
class Request:
    """One scored string pair: log p(continuation | context)."""

    context: str
    continuation: str


@dataclass(frozen=True)
class Example:
    """One question: a request per choice, the gold choice, and PMI's unconditional requests."""

    doc_index: int
    requests: tuple[Request, ...]
    gold: int
    uncond: tuple[Request, ...] = ()
    """The same continuations after `UNCOND_CONTEXT`, for PMI; empty where PMI does not apply
    (multiple-choice letters, WinoGrande's shared continuation)."""


# ---------------------------------------------------------------------------------- data files


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """The eval data root: the argument, else $OLMOLAB_EVAL_DATA, else ~/.cache/olmolab/eval."""
    chosen = data_dir if data_dir is not None else os.environ.get(DATA_ENV) or DEFAULT_DATA_DIR
    return Path(chosen).expanduser()


def read_arrow_split(split_dir: Path) -> list[dict]:
    """The rows of a `datasets.save_to_disk` split: one or more Arrow IPC stream files."""
    files = sorted(split_dir.glob("data-*.arrow"))
    rows: list[dict] = []
    for path in files:
        try:
            with open(path, "rb") as f:
                rows.extend(pyarrow.ipc.open_stream(f).read_all().to_pylist())
        except (pyarrow.ArrowException, OSError) as e:
            raise UserError(f"{path}: not a readable Arrow stream ({e}); the file is truncated or damaged: "
                            f"copy it again from the data root") from e
    return rows


def read_jsonl(path: Path) -> list[dict]:
    rows = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise UserError(f"{path}:{number}: not valid JSON ({e.msg}, column {e.colno})") from e
    return rows


@dataclass(frozen=True)
class HFSource:
    """Where a split lives under `<data>/hf/`, and the `datasets` call that produces it."""

    path: str
    name: str | None
    split: str

    @property
    def relative_dir(self) -> str:
        return f"{self.path}/{self.name or 'none'}/{self.split}"

    def locate(self, data_dir: Path) -> Path | None:
        split_dir = data_dir / "hf" / self.relative_dir
        return split_dir if any(split_dir.glob("data-*.arrow")) else None

    def how_to_get(self, data_dir: Path) -> str:
        name = f", {self.name!r}" if self.name else ""
        target = data_dir / "hf" / self.relative_dir
        return (
            f'on a machine with network access run `python -c "import datasets; datasets.load_dataset('
            f"{self.path!r}{name}, split={self.split!r}).save_to_disk('{target}')\"` and copy the directory "
            f"here, or point --data-dir / ${DATA_ENV} at a data root that has it"
        )


def load_from_hub(source: HFSource) -> list[dict]:
    """The split through `datasets.load_dataset`, where that library is installed and a hub reachable."""
    import datasets  # optional: only needed where the files are not on disk

    return datasets.load_dataset(source.path, source.name, split=source.split).to_list()


def load_split(task: str, sources: tuple[HFSource, ...], data_dir: Path) -> list[dict]:
    """Rows from the first source on disk, else from the hub; a clear error naming the expected path."""
    for source in sources:
        found = source.locate(data_dir)
        if found is not None:
            return read_arrow_split(found)
    hub_failures = []
    for source in sources:
        try:
            return load_from_hub(source)
        except ImportError:
            hub_failures = ["the `datasets` library is not installed"]
            break
        except Exception as e:  # network, auth, unknown dataset: report them all below
            hub_failures.append(f"{source.path}/{source.name or ''}: {type(e).__name__}: {e}")
    first = sources[0]
    raise UserError(
        f"{task}: no data at {data_dir / 'hf' / first.relative_dir}/data-00000-of-00001.arrow, and the "
        f"hub could not be used ({'; '.join(hub_failures)}); " + first.how_to_get(data_dir)
    )


def load_fewshot_file(task: str, data_dir: Path) -> list[dict]:
    path = data_dir / "olmes" / "fewshot" / f"{task}.jsonl"
    if not path.is_file():
        raise UserError(
            f"{task}: few-shot examples expected at {path} (OLMES's curated shots, one JSON row per "
            f"line); copy them from a data root that has them, or use 0 shots"
        )
    return read_jsonl(path)


# ---------------------------------------------------------------------------------- prompt pieces


def cloze_prompt(question: str, question_prefix: str = "Question: ") -> str:
    return f"{question_prefix}{question}\n{ANSWER_PREFIX}"


def mcq_prompt(
    question: str, choices: list[str], question_prefix: str = "Question: ", choices_prefix: str = ""
) -> str:
    # OLMES puts a space before each label "to avoid ambiguity in tokenization": " A. text".
    lines = "\n".join(f" {LETTERS[i]}. {text}" for i, text in enumerate(choices))
    return f"{question_prefix}{question}\n{choices_prefix}{lines}\n{ANSWER_PREFIX}"


@dataclass(frozen=True)
class Rendered:
    """A doc as prompt pieces: a context per choice (usually all equal), continuations, gold."""

    contexts: tuple[str, ...]
    continuations: tuple[str, ...]
    gold: int
    partial: bool = False
    """WinoGrande-style partial scoring: the choices differ in the context, not the continuation."""

    @property
    def solved(self) -> str:
        """The doc with its answer, as it appears when used as a few-shot example."""
        return self.contexts[self.gold] + self.continuations[self.gold]


def ranked(query: str, choices: list[str], gold: int) -> Rendered:
    """The common shape: one context, the choices as continuations after a space."""
    return Rendered((query,) * len(choices), tuple(f" {c}" for c in choices), gold)


def lettered(query: str, n_choices: int, gold: int) -> Rendered:
    return ranked(query, list(LETTERS[:n_choices]), gold)


# ---------------------------------------------------------------------------------- tasks

RenderFn = Callable[[dict, Formulation, int], Rendered]
"""(doc, formulation, num_shots) -> Rendered. num_shots matters only where OLMES's regimes differ."""


@dataclass(frozen=True)
class Task:
    """A benchmark: where its rows are, how a row is rendered, and where its shots come from."""

    name: str
    sources: tuple[HFSource, ...]
    render: RenderFn
    fewshot: str | None
    """'olmes' (curated shots file), 'dev' (first rows of the dev split), or None (no shots)."""
    subjects: tuple[str, ...] = ()
    """MMLU: the subject datasets that make up the task."""
    description: Callable[[dict], str] | None = None
    """Text put before the shots (MMLU's subject line)."""
    uncond: bool = True
    """Whether the cloze formulation has PMI's unconditional requests (OLMES's `uncond_docid_offset`)."""

    def load_docs(self, data_dir: Path) -> list[dict]:
        if not self.subjects:
            docs = load_split(self.name, self.sources, data_dir)
        else:
            docs = [
                doc
                for subject in self.subjects
                for doc in load_split(
                    f"{self.name} ({subject})", (_mmlu_source(subject, "validation"),), data_dir
                )
            ]
        for index, doc in enumerate(docs):
            doc.setdefault("index", index)  # OLMES's row index; SciQ seeds its shuffle with it
        return docs

    def shot_key(self, doc: dict) -> str:
        """Which shot list a doc draws from: its MMLU subject, else the task's one list ('')."""
        return doc["subject"] if self.subjects else ""

    def load_shots(self, data_dir: Path) -> dict[str, list[dict]]:
        """Shot docs per shot key (the subject for MMLU, '' otherwise), in OLMES's order."""
        if self.fewshot == "olmes":
            return {"": load_fewshot_file(self.name, data_dir)}
        if self.fewshot == "dev":
            return {s: load_split(f"mmlu ({s})", (_mmlu_source(s, "dev"),), data_dir) for s in self.subjects}
        return {}


def _arc_gold(doc: dict) -> int:
    # A few ARC questions label their choices "1".."5"; OLMES maps them to letters first.
    labels = [LETTERS[int(x) - 1] if x.isdigit() else x for x in doc["choices"]["label"]]
    key = doc["answerKey"].strip()
    return labels.index(LETTERS[int(key) - 1] if key.isdigit() else key)


def render_arc(doc: dict, formulation: Formulation, num_shots: int) -> Rendered:
    question = doc["question"] if "question" in doc else doc["question_stem"]  # OpenBookQA: question_stem
    choices, gold = list(doc["choices"]["text"]), _arc_gold(doc)
    if formulation == "mc":
        return lettered(mcq_prompt(question, choices), len(choices), gold)
    return ranked(cloze_prompt(question), choices, gold)


def render_boolq(doc: dict, formulation: Formulation, num_shots: int) -> Rendered:
    # HF `boolq` has `answer: bool`; super_glue/boolq (OLMES's source, and the shots) has `label: 0/1`.
    says_yes = doc["answer"] if "answer" in doc else bool(doc["label"])
    question = f"{doc['passage']}\nQuestion: {doc['question']}?"
    gold = 0 if says_yes else 1
    if formulation == "mc":
        return lettered(mcq_prompt(question, ["yes", "no"], question_prefix=""), 2, gold)
    return ranked(cloze_prompt(question, question_prefix=""), ["yes", "no"], gold)


def render_copa(doc: dict, formulation: Formulation, num_shots: int) -> Rendered:
    # OLMo's COPA: "The man turned on the faucet" + " therefore" + " water flowed from the spout."
    connector = {"cause": "because", "effect": "therefore"}[doc["question"]]
    choices = [c[0].lower() + c[1:] for c in (doc["choice1"], doc["choice2"])]
    premise = doc["premise"].strip()[:-1]
    if formulation == "mc":
        # Not in OLMES (COPA is OLMo-1-era): the same sentence, the two endings lettered.
        return lettered(
            mcq_prompt(f"{premise} {connector} ...", choices, question_prefix=""), 2, doc["label"]
        )
    return ranked(f"{premise} {connector}", choices, doc["label"])


def hellaswag_clean(text: str) -> str:
    """OLMES's clean-up of WikiHow's bracketed markers ([title], [header], [step], ...).

    Unlike lm-eval's `replace(" [title]", ". ")`, OLMES avoids a double full stop before [title].
    """
    text = text.strip()
    text = re.sub(r"\.? \[title\]", ". ", text)
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


def render_hellaswag(doc: dict, formulation: Formulation, num_shots: int) -> Rendered:
    story = f"{doc['activity_label']}: {doc['ctx_a']} {doc['ctx_b'].capitalize()}"
    gold = int(doc["label"])
    if formulation == "mc":
        query = mcq_prompt(
            story, doc["endings"], question_prefix="", choices_prefix="Choose the best continuation:\n"
        )
        return lettered(hellaswag_clean(query), len(doc["endings"]), gold)
    return ranked(hellaswag_clean(story), [hellaswag_clean(e) for e in doc["endings"]], gold)


def render_piqa(doc: dict, formulation: Formulation, num_shots: int) -> Rendered:
    choices = [doc["sol1"], doc["sol2"]]
    if formulation == "mc":
        return lettered(mcq_prompt(doc["goal"], choices, question_prefix="Goal: "), 2, doc["label"])
    return ranked(cloze_prompt(doc["goal"], question_prefix="Goal: "), choices, doc["label"])


def _sciq_choices(doc: dict, formulation: Formulation) -> tuple[list[str], int]:
    if "choices" in doc:  # a shot row: choices already in the order OLMES shows them
        return list(doc["choices"]), doc["gold"]
    choices = [doc["distractor1"], doc["distractor2"], doc["distractor3"], doc["correct_answer"]]
    if formulation == "rc":
        return choices, 3
    # OLMo 3's sciq:mc shuffles each question's choices with Random(row index).
    order = list(range(4))
    random.Random(doc["index"]).shuffle(order)
    return [choices[i] for i in order], order.index(3)


def render_sciq(doc: dict, formulation: Formulation, num_shots: int) -> Rendered:
    choices, gold = _sciq_choices(doc, formulation)
    if formulation == "mc":
        return lettered(mcq_prompt(doc["question"], choices), 4, gold)
    query = cloze_prompt(doc["question"])
    # OLMES's 0-shot SciQ keeps OLMo 1's support passage; the 5-shot regime (sciq:rc::olmo3) drops it.
    if num_shots == 0 and doc.get("support", "").strip():
        query = f"{doc['support'].strip()}\n{query}"
    return ranked(query, choices, gold)


def render_winogrande(doc: dict, formulation: Formulation, num_shots: int) -> Rendered:
    options = [doc["option1"], doc["option2"]]
    gold = int(doc["answer"]) - 1
    sentence = doc["sentence"]
    if formulation == "mc":
        query = mcq_prompt(sentence.replace("_", "___"), options, question_prefix="Fill in the blank: ")
        return lettered(query, 2, gold)
    # Partial scoring (Trinh & Le 2018): each option fills the blank in the context, and the
    # shared rest of the sentence is what gets scored.
    blank = sentence.index("_")
    contexts = tuple(sentence[:blank] + option for option in options)
    rest = " " + sentence[blank + 1 :].strip()
    return Rendered(contexts, (rest, rest), gold, partial=True)


def render_mmlu(doc: dict, formulation: Formulation, num_shots: int) -> Rendered:
    if formulation == "mc":
        return lettered(mcq_prompt(doc["question"], doc["choices"]), len(doc["choices"]), doc["answer"])
    return ranked(cloze_prompt(doc["question"]), doc["choices"], doc["answer"])


def mmlu_description(doc: dict) -> str:
    return f"The following are multiple choice questions (with answers) about {doc['subject'].replace('_', ' ')}.\n\n"


MMLU_SUBJECTS = (
    "abstract_algebra", "anatomy", "astronomy", "business_ethics", "clinical_knowledge", "college_biology",
    "college_chemistry", "college_computer_science", "college_mathematics", "college_medicine", "college_physics",
    "computer_security", "conceptual_physics", "econometrics", "electrical_engineering", "elementary_mathematics",
    "formal_logic", "global_facts", "high_school_biology", "high_school_chemistry", "high_school_computer_science",
    "high_school_european_history", "high_school_geography", "high_school_government_and_politics",
    "high_school_macroeconomics", "high_school_mathematics", "high_school_microeconomics", "high_school_physics",
    "high_school_psychology", "high_school_statistics", "high_school_us_history", "high_school_world_history",
    "human_aging", "human_sexuality", "international_law", "jurisprudence", "logical_fallacies", "machine_learning",
    "management", "marketing", "medical_genetics", "miscellaneous", "moral_disputes", "moral_scenarios", "nutrition",
    "philosophy", "prehistory", "professional_accounting", "professional_law", "professional_medicine",
    "professional_psychology", "public_relations", "security_studies", "sociology", "us_foreign_policy", "virology",
    "world_religions",
)  # fmt: skip


def _mmlu_source(subject: str, split: str) -> HFSource:
    return HFSource("hails/mmlu_no_train", subject, split)


def _mmlu_task(name: str, subjects: tuple[str, ...]) -> Task:
    return Task(name, (), render_mmlu, "dev", subjects=subjects, description=mmlu_description)


def _build_registry() -> dict[str, Task]:
    val = "validation"
    tasks = [
        Task("arc_easy", (HFSource("ai2_arc", "ARC-Easy", val),), render_arc, "olmes"),
        Task("arc_challenge", (HFSource("ai2_arc", "ARC-Challenge", val),), render_arc, "olmes"),
        # super_glue/boolq carries the "Title -- " prefix OLMES shows; HF `boolq` lacks the title.
        Task("boolq", (HFSource("super_glue", "boolq", val), HFSource("boolq", None, val)), render_boolq, "olmes",
             uncond=False),
        Task("copa", (HFSource("super_glue", "copa", val),), render_copa, None),
        Task("hellaswag", (HFSource("hellaswag", None, val),), render_hellaswag, "olmes"),
        Task("openbookqa", (HFSource("openbookqa", "main", val),), render_arc, "olmes"),
        Task("piqa", (HFSource("piqa", "plain_text", val),), render_piqa, "olmes"),
        Task("sciq", (HFSource("sciq", None, val),), render_sciq, "olmes"),
        Task("winogrande", (HFSource("winogrande", "winogrande_xl", val),), render_winogrande, "olmes",
             uncond=False),
        _mmlu_task("mmlu", MMLU_SUBJECTS),
    ]  # fmt: skip
    tasks += [_mmlu_task(f"mmlu_{s}", (s,)) for s in MMLU_SUBJECTS]
    return {t.name: t for t in tasks}


TASKS: dict[str, Task] = _build_registry()
CORE_TASKS = tuple(name for name in TASKS if not name.startswith("mmlu_"))


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise UserError(
            f"unknown task {name!r}; known tasks: {', '.join(CORE_TASKS)} (and mmlu_<subject> for one MMLU subject)"
        )
    return TASKS[name]


# ---------------------------------------------------------------------------------- task specs


@dataclass(frozen=True)
class TaskSpec:
    """What to evaluate: a task, a formulation and a shot count, written `name[:rc|:mc][:Nshot]`.

    `piqa` is cloze with the run's default shot count, `arc_challenge:mc:5shot` multiple choice
    with 5 shots. `label` names its metrics: `eval/downstream/{label}_{metric}`.
    """

    task: str
    formulation: Formulation = "rc"
    num_shots: int = 0

    @classmethod
    def parse(cls, text: str, default_shots: int = 0) -> TaskSpec:
        name, *options = text.strip().split(":")
        # The run's default shot count applies to tasks that have shots (COPA has none: 0-shot).
        formulation, shots = "rc", default_shots if get_task(name).fewshot else 0
        for option in options:
            if option in FORMULATIONS:
                formulation = option
            elif re.fullmatch(r"\d+shot", option):
                shots = int(option[:-4])
            else:
                raise UserError(
                    f"task {text!r}: unknown option {option!r}; write name[:rc|:mc][:Nshot], e.g. arc_easy:mc:5shot"
                )
        return cls(name, formulation, shots)

    @property
    def label(self) -> str:
        """`piqa`, `piqa_mc`, `piqa_5shot`, `piqa_mc_5shot`: cloze and 0 shots are the unmarked case."""
        parts = [self.task]
        if self.formulation != "rc":
            parts.append(self.formulation)
        if self.num_shots:
            parts.append(f"{self.num_shots}shot")
        return "_".join(parts)

    def __str__(self) -> str:
        return f"{self.task}:{self.formulation}:{self.num_shots}shot"


def parse_task_list(text: str | list[str], default_shots: int = 0) -> list[TaskSpec]:
    items = text.split(",") if isinstance(text, str) else text
    return [TaskSpec.parse(item, default_shots) for item in items if item.strip()]


# ---------------------------------------------------------------------------------- examples


def subsample(n_docs: int, limit: int | None) -> list[int]:
    """Doc indices to evaluate: all in order, or OLMES's Random(1234).sample of `limit` of them.

    With limit=1000 these are exactly the docs of OLMES's subsampled variants (BoolQ, HellaSwag, PIQA).
    """
    if limit is None or limit >= n_docs:
        return list(range(n_docs))
    return random.Random(SUBSAMPLE_SEED).sample(range(n_docs), limit)


def shot_prefix(task: Task, shots: list[dict], doc: dict, formulation: Formulation, num_shots: int) -> str:
    """Description plus k solved examples, each followed by a blank line (OLMES's fewshot_context)."""
    solved = [task.render(s, formulation, num_shots).solved for s in shots[:num_shots]]
    description = task.description(doc) if task.description else ""
    return description + "".join(s + "\n\n" for s in solved)


def make_example(
    task: Task,
    doc: dict,
    formulation: Formulation,
    num_shots: int,
    shots: dict[str, list[dict]],
    pmi: bool = True,
) -> Example:
    rendered = task.render(doc, formulation, num_shots)
    prefix = shot_prefix(task, shots.get(task.shot_key(doc), []), doc, formulation, num_shots)
    requests = tuple(
        Request(prefix + c, k) for c, k in zip(rendered.contexts, rendered.continuations, strict=True)
    )
    with_uncond = pmi and formulation == "rc" and task.uncond and not rendered.partial
    uncond = tuple(Request(UNCOND_CONTEXT, k) for k in rendered.continuations) if with_uncond else ()
    return Example(doc["index"], requests, rendered.gold, uncond)


def check_shots(task: Task, shots: dict[str, list[dict]], num_shots: int) -> None:
    if num_shots == 0:
        return
    if not shots:
        raise UserError(
            f"{task.name} has no few-shot examples (OLMES defines none, and there is no train split here); "
            f"evaluate it 0-shot: --tasks {task.name}:0shot"
        )
    available = min(len(rows) for rows in shots.values())
    if num_shots > available:
        raise UserError(
            f"{task.name}: {num_shots} shots asked, {available} available; use at most {available}"
        )


def build_examples(
    spec: TaskSpec, data_dir: str | os.PathLike | None = None, limit: int | None = None, pmi: bool = True
) -> list[Example]:
    """The examples of a task spec: its validation docs (subsampled to `limit`), rendered.

    `pmi=False` leaves out the unconditional requests that only `acc_pmi` needs.
    """
    task = get_task(spec.task)
    root = resolve_data_dir(data_dir)
    docs = _cached_docs(task.name, root)
    shots = _cached_shots(task.name, root) if spec.num_shots else {}
    check_shots(task, shots, spec.num_shots)
    return [
        make_example(task, docs[i], spec.formulation, spec.num_shots, shots, pmi)
        for i in subsample(len(docs), limit)
    ]


# Docs are read once per process: the trainer's in-loop eval rebuilds examples every N steps.
@cache
def _cached_docs(name: str, root: Path) -> list[dict]:
    return TASKS[name].load_docs(root)


@cache
def _cached_shots(name: str, root: Path) -> dict[str, list[dict]]:
    return TASKS[name].load_shots(root)
