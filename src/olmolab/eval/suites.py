"""What `--tasks` (and the run config's `eval.tasks`) may name: tasks, their options, and suites.

- ranked-choice tasks, `name[:rc|:mc][:Nshot]` (`tasks.TaskSpec`), and `all` for the ten core ones;
- generative tasks, `name[:Nshot]` (`gen_eval.GenSpec`), with OLMES's shot count by default;
- suites, OLMES's for OLMo 2 base models, as far as the tasks exist here:
  `olmo2_core`   the ten ranked-choice tasks as multiple choice with 5 shots (COPA, which has
                 no shots or OLMES format, as OLMo's 0-shot cloze);
  `olmo2_gen`    OLMES's `olmo_2_generative`: CoQA, SQuAD, Jeopardy, Natural Questions, DROP;
  `olmo2_heldout` OLMES's `olmo_2_heldout` without AGIEval, BBH and MMLU-Pro (no data here):
                 GSM8K and TriviaQA.
"""

from __future__ import annotations

from olmolab.errors import UserError
from olmolab.eval.gen_eval import GenSpec
from olmolab.eval.generative import GEN_TASKS
from olmolab.eval.tasks import CORE_TASKS, TASKS, TaskSpec

SUITES: dict[str, tuple[str, ...]] = {
    "all": CORE_TASKS,
    "olmo2_core": tuple(f"{name}:mc:5shot" if TASKS[name].fewshot else name for name in CORE_TASKS),
    "olmo2_gen": ("coqa", "squad", "jeopardy", "naturalqs", "drop"),
    "olmo2_heldout": ("gsm8k", "triviaqa"),
}

EvalSpec = TaskSpec | GenSpec


def parse_eval_tasks(text: str | list[str], default_shots: int = 0, chat: bool = False) -> list[EvalSpec]:
    """Task specs from "piqa,gsm8k:4shot,olmo2_gen" (or a list of items); suites expanded in place.

    `default_shots` applies to ranked-choice tasks that do not say `:Nshot`; generative tasks take
    OLMES's shot count. `chat` renders generative prompts in the chat template. A task that
    a suite adds again runs once.
    """
    items = text.split(",") if isinstance(text, str) else list(text)
    specs: list[EvalSpec] = []
    for item in (i.strip() for i in items if i.strip()):
        if item not in SUITES:
            specs.append(parse_one(item, default_shots, chat))
            continue
        for name in SUITES[item]:  # a suite's task already named elsewhere runs once
            spec = parse_one(name, default_shots, chat)
            if spec.label not in {s.label for s in specs}:
                specs.append(spec)
    return specs


def parse_one(text: str, default_shots: int, chat: bool) -> EvalSpec:
    name = text.split(":", 1)[0]
    if name in GEN_TASKS:
        return GenSpec.parse(text, chat)
    if name in TASKS:
        return TaskSpec.parse(text, default_shots)
    raise UserError(
        f"unknown task {name!r}; ranked-choice tasks: {', '.join(CORE_TASKS)}, mmlu_<subject>; generative "
        f"tasks: {', '.join(GEN_TASKS)}; suites: {', '.join(SUITES)}"
    )
