"""Generative evaluation: batched greedy answers cut at stop sequences, suites, chat, in-loop, JSON."""

import json
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from olmolab.cli import main
from olmolab.errors import UserError
from olmolab.eval import EvalConfig, build_evaluators
from olmolab.eval.gen_eval import (
    GenSpec,
    encode_prompts,
    evaluate_generative,
    generate_answers,
    tulu_chat_prompt,
)
from olmolab.eval.generative import build_gen_examples
from olmolab.eval.suites import parse_eval_tasks
from olmolab.eval.tasks import TaskSpec
from olmolab.generation import GenerationConfig, generate
from olmolab.model_files import save_model
from tests.eval.conftest import EVAL_DATA, tiny_model


def prompts_of(tokenizer, task="drop", limit=6, shots=1):
    examples = build_gen_examples(task, shots, EVAL_DATA, limit)
    return examples, encode_prompts(tokenizer, examples, chat=False, max_prompt_tokens=200)


def test_batched_answers_equal_one_at_a_time_and_stop_at_the_first_stop_sequence(model, tokenizer, eval_data):
    _, prompts = prompts_of(tokenizer)
    one_by_one = generate_answers(model, tokenizer, prompts, (), max_new_tokens=12, batch_size=1)
    batched = generate_answers(model, tokenizer, prompts, (), max_new_tokens=12, batch_size=4)
    assert batched == one_by_one
    # A stop sequence taken from the middle of an answer cuts it there, and only that row.
    row = max(range(len(batched)), key=lambda i: len(batched[i]))
    text = batched[row]
    stop = text[len(text) // 2 : len(text) // 2 + 2]
    cut = generate_answers(model, tokenizer, prompts, (stop,), max_new_tokens=12, batch_size=4)
    assert cut[row] == text[: text.index(stop)]
    assert all(c == (b[: b.index(stop)] if stop in b else b) for c, b in zip(cut, batched, strict=True))


def test_an_answer_is_the_text_of_its_greedy_tokens_and_respects_the_budget(model, tokenizer, eval_data):
    _, prompts = prompts_of(tokenizer, limit=2)
    [answer] = generate_answers(model, tokenizer, prompts[:1], (), max_new_tokens=5, batch_size=2)
    [tokens] = generate(model, prompts[:1], GenerationConfig(max_new_tokens=5))
    assert answer == tokenizer.decode([t for t in tokens if t != tokenizer.eos_token_id])
    assert len(tokens) <= 5


def test_long_prompts_keep_their_last_tokens_and_room_for_the_answer(tokenizer, eval_data):
    examples = build_gen_examples("gsm8k", None, eval_data, 2)
    full = encode_prompts(tokenizer, examples, chat=False, max_prompt_tokens=10**6)
    cut = encode_prompts(tokenizer, examples, chat=False, max_prompt_tokens=100)
    assert all(len(f) > 100 and c == f[-100:] for f, c in zip(full, cut, strict=True))


def test_tulu_chat_template_renders_turns_and_leaves_the_assistant_open(eval_data):
    turns = [("Question: 1+1?\nAnswer:", "2"), ("Question: 2+2?\nAnswer:", "")]
    assert tulu_chat_prompt(turns, "<s>", "</s>") == (
        "<s><|user|>\nQuestion: 1+1?\nAnswer:\n<|assistant|>\n2</s>\n"
        "<|user|>\nQuestion: 2+2?\nAnswer:\n<|assistant|>\n"
    )
    [example] = build_gen_examples("drop", 1, eval_data, 1)
    user, answer = example.turns[0]
    assert user.startswith("The following are reading comprehension") and "\nAnswer:" in user and answer
    assert example.turns[-1][1] == "" and example.prompt.endswith(example.turns[-1][0])


def test_chat_prompts_of_olmo2_start_with_its_bos_and_close_each_answer_with_eos(eval_data):
    from olmolab.tokenizer import Tokenizer
    from tests.eval.conftest import SHARED_DATA

    dolma2 = Tokenizer.from_file(SHARED_DATA / "tokenizers" / "allenai_dolma2.json")  # OLMo 2: no BOS token
    examples = build_gen_examples("gsm8k", 2, eval_data, 1)
    [ids] = encode_prompts(dolma2, examples, chat=True, max_prompt_tokens=10**6)
    assert ids[0] == dolma2.eos_token_id and ids.count(dolma2.eos_token_id) == 1 + 2  # BOS, then one per shot
    assert dolma2.decode(ids).endswith("\nAnswer:\n<|assistant|>\n")


def test_suites_expand_to_olmes_task_lists():
    gen = parse_eval_tasks("olmo2_gen")
    assert [s.task for s in gen] == ["coqa", "squad", "jeopardy", "naturalqs", "drop"]
    assert all(isinstance(s, GenSpec) for s in gen)
    core = parse_eval_tasks("olmo2_core")
    assert len(core) == 10 and TaskSpec("arc_challenge", "mc", 5) in core and TaskSpec("copa") in core
    held = parse_eval_tasks("gsm8k,olmo2_heldout", chat=True)
    assert [s.label for s in held] == ["gsm8k_chat", "triviaqa_chat"]
    assert parse_eval_tasks("gsm8k:2shot,piqa") == [GenSpec("gsm8k", 2), TaskSpec("piqa")]
    assert GenSpec("gsm8k").num_shots == 8 and GenSpec("gsm8k", 2).label == "gsm8k_2shot"
    with pytest.raises(UserError, match="unknown task 'gsm9k'"):
        parse_eval_tasks("gsm9k")
    with pytest.raises(UserError, match="unknown option 'mc'"):
        parse_eval_tasks("gsm8k:mc")


def test_scores_follow_the_task_metric(model, tokenizer, eval_data):
    examples = build_gen_examples("naturalqs", 0, eval_data, 3)
    result = evaluate_generative(model, tokenizer, GenSpec("naturalqs", 0), examples, max_new_tokens=4)
    assert set(result.metrics) == {"exact_match", "f1"} and result.n_examples == 3
    prediction = result.predictions[0]
    assert prediction["golds"] == examples[0].golds and set(prediction["scores"]) == {"exact_match", "f1"}
    assert result.settings["max_new_tokens"] == 4 and result.settings["stop_sequences"] == [
        "Question:",
        "Q:",
        "\n\n",
    ]


def test_chat_results_show_the_prompt_as_rendered_in_the_template(model, tokenizer, eval_data):
    examples = build_gen_examples("naturalqs", 1, eval_data, 2)
    result = evaluate_generative(
        model, tokenizer, GenSpec("naturalqs", 1, chat=True), examples, max_new_tokens=2
    )
    prompt = result.samples[0]["prompt"]
    assert prompt.count("<|user|>\n") == 2 and prompt.endswith("\nAnswer:\n<|assistant|>\n")
    assert result.spec.label == "naturalqs_1shot_chat" and result.settings["chat"]


def test_in_loop_generative_tasks_with_per_task_limits(model, tokenizer, eval_data):
    config = EvalConfig.from_dict({
        "tasks": "gsm8k:1shot,piqa", "limit": 3, "task_limits": {"gsm8k_1shot": 2}, "max_new_tokens": 4,
        "data_dir": str(eval_data),
    })  # fmt: skip
    evaluators = build_evaluators(config, tokenizer)
    assert [len(e.examples) for e in evaluators] == [2, 3]
    metrics = evaluators[0].evaluate(model)
    assert set(metrics) == {"eval/downstream/gsm8k_1shot_exact_match"}
    with pytest.raises(UserError, match="task_limits: gsm8k name no task"):
        EvalConfig.from_dict({"tasks": "gsm8k:1shot", "task_limits": {"gsm8k": 2}})


def test_cli_writes_every_prediction_with_golds_and_scores(tmp_path, tokenizer, eval_data, capsys):
    checkpoint = save_model(tiny_model(seed=3), tmp_path / "ckpt", tokenizer=tokenizer)
    out = tmp_path / "gen.json"
    code = main([
        "eval", str(checkpoint), "--tasks", "drop:1shot,triviaqa", "--limit", "3", "--max-new-tokens", "4",
        "--data-dir", str(eval_data), "--output", str(out), "--samples", "1",
    ])  # fmt: skip
    assert code == 0
    table = capsys.readouterr().out
    assert "| drop (gen, 1-shot) | 3 | exact_match |" in table and "| triviaqa (gen, 0-shot) | 3 |" in table
    report = json.loads(out.read_text())["downstream"]
    assert len(report["drop_1shot"]["predictions"]) == 3 and len(report["drop_1shot"]["samples"]) == 1
    assert report["drop_1shot"]["samples"][0]["prompt"].startswith("The following are reading")
    assert "not available" in report["triviaqa"]["settings"]["note"]


# ---------------------------------------------------------------------------------- two ranks


def _rank_answers(rank: int, port: int, state: dict, tokenizer, queue) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    torch.set_num_threads(1)
    try:
        model = tiny_model()
        model.load_state_dict(state)
        examples = build_gen_examples("naturalqs", 0, EVAL_DATA, 5)
        result = evaluate_generative(model, tokenizer, GenSpec("naturalqs", 0), examples, max_new_tokens=6)
        queue.put((rank, [p["prediction"] for p in result.predictions]))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_ranks_split_the_examples_and_both_get_every_answer(model, tokenizer, eval_data):
    examples = build_gen_examples("naturalqs", 0, eval_data, 5)
    alone = evaluate_generative(model, tokenizer, GenSpec("naturalqs", 0), examples, max_new_tokens=6)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    args = (port, model.state_dict(), tokenizer, queue)
    procs = [ctx.Process(target=_rank_answers, args=(rank, *args)) for rank in range(2)]
    for p in procs:
        p.start()
    answers = dict(queue.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=60)
    expected = [p["prediction"] for p in alone.predictions]
    assert answers[0] == expected and answers[1] == expected
