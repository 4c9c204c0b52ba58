"""Talking to a post-trained model: `olmolab chat`, `olmolab generate --chat`, and the run's
revisions through plot, export hf and eval."""

import io
import json

import pytest
import torch

import olmolab
from olmolab.cli import main
from olmolab.generation import GenerationConfig
from olmolab.posttrain.chat import ChatSession

transformers = pytest.importorskip("transformers")


@pytest.fixture
def sft_run(sft_config, tmp_path):
    assert main(["sft", str(sft_config(max_steps=2))]) == 0
    return tmp_path / "sft"


def test_an_sft_run_plots_exports_with_its_chat_template_and_evaluates(sft_run, tmp_path, capsys):
    assert main(["plot", str(sft_run)]) == 0
    assert main(["export", "hf", str(sft_run), str(tmp_path / "hf")]) == 0
    _, tokenizer = olmolab.load(sft_run)
    messages = [{"role": "user", "content": "What is 1 + 2?"}]
    theirs = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    ids = theirs.apply_chat_template(messages, tokenize=True, add_generation_prompt=True)["input_ids"]
    assert ids == tokenizer.encode_chat(messages, add_generation_prompt=True)
    text = tmp_path / "held-out.txt"
    text.write_text("What is 3 + 4? 7\n" * 20)
    assert main(["eval", str(sft_run), "--perplexity", str(text), "--device", "cpu"]) == 0


def test_generate_chat_applies_the_template_to_the_prompt(sft_run, tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("What is 1 + 2?\n")
    assert main(["generate", str(sft_run), "--chat", "--system", "Be brief.", "--prompts-file", str(prompts),
                 "--max-new-tokens", "3"]) == 0
    (line,) = capsys.readouterr().out.splitlines()
    model, tokenizer = olmolab.load(sft_run)
    prompt = tokenizer.render_chat([{"role": "system", "content": "Be brief."},
                                    {"role": "user", "content": "What is 1 + 2?"}], add_generation_prompt=True)[0]
    expected = olmolab.generation.generate_text(model, tokenizer, [prompt], GenerationConfig(max_new_tokens=3))
    assert json.loads(line) == {"prompt": "What is 1 + 2?", "completion": expected[0]}


def test_a_chat_keeps_its_history_in_the_template_and_stops_at_eos(sft_run):
    model, tokenizer = olmolab.load(sft_run)
    with torch.no_grad():
        model.lm_head.weight.zero_()  # every logit equal: greedy picks id 0, the EOS, at once
    session = ChatSession(model, tokenizer, GenerationConfig(max_new_tokens=20), system="Be brief.")
    assert session.reply("What is 1 + 2?") == ""
    assert session.reply("Double it.") == ""
    assert session.prompt() == (
        "<|endoftext|><|system|>\nBe brief.\n<|user|>\nWhat is 1 + 2?\n<|assistant|>\n<|endoftext|>\n"
        "<|user|>\nDouble it.\n<|assistant|>\n<|endoftext|><|assistant|>\n"
    )
    session.reset()
    assert session.messages == [{"role": "system", "content": "Be brief."}]
    ignoring_eos = ChatSession(model, tokenizer, GenerationConfig(max_new_tokens=5, stop_at_eos=False))
    assert ignoring_eos.reply("hi") == "<|endoftext|>" * 5


def test_olmolab_chat_streams_replies_and_resets(sft_run, monkeypatch, capsys):
    monkeypatch.setattr("sys.stdin", io.StringIO("What is 1 + 2?\n/reset\nhi\n"))
    assert main(["chat", str(sft_run), "--max-new-tokens", "4", "--temperature", "0.8", "--seed", "1"]) == 0
    assert "\n(new conversation)\n" in capsys.readouterr().out
