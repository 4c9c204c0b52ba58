"""`olmolab eval`: the table, the JSON with the exact prompts, checkpoints and HF exports alike."""

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from olmolab.cli import main
from olmolab.eval.downstream import evaluate_task
from olmolab.eval.tasks import TaskSpec
from olmolab.io import save_model
from tests.eval.conftest import WIKITEXT, tiny_model


def run_cli(capsys, *argv):
    capsys.readouterr()
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def checkpoint(tmp_path, tokenizer):
    return save_model(tiny_model(seed=3), tmp_path / "ckpt", tokenizer=tokenizer)


def test_eval_prints_a_model_card_table_and_writes_prompts_to_json(checkpoint, eval_data, tmp_path, capsys):
    out_json = tmp_path / "results.json"
    code, out, _ = run_cli(capsys, "eval", checkpoint, "--tasks", "piqa,arc_easy:mc:1shot", "--limit", 12,
                           "--data-dir", eval_data, "--output", out_json, "--perplexity", WIKITEXT / "test.txt",
                           "--max-tokens", 500)  # fmt: skip
    assert code == 0
    assert "| task | n | metric | value | stderr |" in out
    assert "| piqa (rc, 0-shot) | 12 | acc |" in out and "| arc_easy (mc, 1-shot) | 12 | acc |" in out
    assert "| test.txt | 500 | CrossEntropyLoss |" in out
    report = json.loads(out_json.read_text())
    piqa = report["downstream"]["piqa"]
    assert piqa["n_examples"] == 12 and set(piqa["metrics"]) >= {
        "acc",
        "acc_norm",
        "acc_per_token",
        "acc_pmi",
    }
    sample = piqa["samples"][0]
    assert sample["requests"][0]["context"].startswith("Goal: ") and "loglikelihood" in sample["requests"][0]
    mc_context = report["downstream"]["arc_easy_mc_1shot"]["samples"][0]["requests"][0]["context"]
    assert mc_context.startswith("Question: Lichens are symbiotic organisms") and "\n A. " in mc_context
    assert report["perplexity"]["test.txt"]["tokens"] == 500


class TransformersLM(torch.nn.Module):
    """A transformers model behind the plain `model(input_ids) -> logits` interface."""

    def __init__(self, hf_model, max_seq_len: int):
        super().__init__()
        self.hf = hf_model
        self.config = SimpleNamespace(max_seq_len=max_seq_len, vocab_size=hf_model.config.vocab_size)

    def forward(self, input_ids):
        return self.hf(input_ids=input_ids).logits


def test_checkpoint_and_its_hf_export_give_the_same_numbers(
    checkpoint, tokenizer, eval_data, tmp_path, capsys
):
    from olmolab import load
    from olmolab.convert.hf import export

    model, _ = load(checkpoint)
    hf_dir = export(model, tmp_path / "hf", tokenizer=tokenizer)
    reports = {}
    for name, path in (("olmolab", checkpoint), ("hf", hf_dir)):
        code, _, _ = run_cli(capsys, "eval", path, "--tasks", "piqa,winogrande", "--limit", 16,
                             "--data-dir", eval_data, "--output", tmp_path / f"{name}.json")  # fmt: skip
        assert code == 0
        reports[name] = json.loads((tmp_path / f"{name}.json").read_text())["downstream"]
    for task in ("piqa", "winogrande"):
        for metric, value in reports["olmolab"][task]["metrics"].items():
            assert reports["hf"][task]["metrics"][metric] == pytest.approx(value, abs=1e-5), (task, metric)
    # transformers itself, running the export, scores the same log-likelihoods.
    from transformers import AutoModelForCausalLM

    hf_model = TransformersLM(AutoModelForCausalLM.from_pretrained(hf_dir).eval(), model.config.max_seq_len)
    spec = TaskSpec("piqa")
    ours = evaluate_task(model, tokenizer, spec, data_dir=eval_data, limit=16)
    theirs = evaluate_task(hf_model, tokenizer, spec, data_dir=eval_data, limit=16)  # unpacked: plain forward
    lls = [[[r["loglikelihood"] for r in s["requests"]] for s in res.samples] for res in (ours, theirs)]
    np.testing.assert_allclose(lls[0], lls[1], atol=1e-4)
    assert theirs.metrics == pytest.approx(ours.metrics, abs=1e-6)


def test_user_mistakes_are_one_line_errors(checkpoint, tmp_path, capsys):
    code, _, err = run_cli(capsys, "eval", checkpoint, "--tasks", "piqa", "--data-dir", tmp_path / "none")
    assert code == 2 and err.count("\n") == 1
    assert "piqa: no data at" in err and "save_to_disk" in err
    code, _, err = run_cli(capsys, "eval", checkpoint)
    assert code == 2 and "nothing to evaluate" in err
    code, _, err = run_cli(capsys, "eval", checkpoint, "--tasks", "piqa", "--limit", 0)
    assert code == 2 and "--limit 0 must be a positive integer" in err
