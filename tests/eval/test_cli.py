"""`olmolab eval`: the table, the JSON with the exact prompts, checkpoints and HF exports alike."""

import json
import shutil
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from olmolab.eval.downstream import evaluate_task
from olmolab.eval.tasks import TaskSpec
from olmolab.model_files import save_model
from tests.conftest import run_cli
from tests.eval.conftest import WIKITEXT, tiny_model


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


def test_perplexity_of_a_non_utf8_file_is_one_line(checkpoint, tmp_path, capsys):
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("café au lait".encode("latin-1"))
    code, _, err = run_cli(capsys, "eval", checkpoint, "--perplexity", latin1)
    assert code == 2 and err.count("\n") == 1
    assert f"{latin1}: not UTF-8 text (byte 3: invalid continuation byte)" in err


def test_perplexity_with_a_tokenizer_of_another_model_is_refused(checkpoint, tmp_path, capsys):
    from olmolab.tokenizer import train_bpe

    bigger = train_bpe([(WIKITEXT / "valid.txt").read_text()[:100_000]], vocab_size=1024)  # 512 embeddings
    bigger.save(tmp_path / "big.json")
    code, _, err = run_cli(capsys, "eval", checkpoint, "--perplexity", WIKITEXT / "test.txt",
                           "--tokenizer", tmp_path / "big.json")
    assert code == 2 and err.count("\n") == 1
    assert "the tokenizer has 1024 tokens but the model's embedding has only 512 rows" in err


def test_perplexity_of_a_token_file_with_foreign_ids_names_the_vocabulary(checkpoint, tmp_path, capsys):
    tokens = tmp_path / "foreign.npy"
    np.array([0, 5, 900, 7, 0], dtype=np.uint16).tofile(tokens)
    code, _, err = run_cli(capsys, "eval", checkpoint, "--perplexity", tokens, "--perplexity-dtype", "uint16")
    assert code == 2 and err.count("\n") == 1
    assert f"{tokens}: holds token id 900, outside the model's vocabulary of 512" in err


def test_a_truncated_arrow_file_is_one_line(checkpoint, eval_data, tmp_path, capsys):
    split = "hf/piqa/plain_text/validation"
    copy = tmp_path / "data" / split
    copy.parent.mkdir(parents=True)
    shutil.copytree(eval_data / split, copy)
    arrow = next(copy.glob("data-*.arrow"))
    arrow.write_bytes(arrow.read_bytes()[: arrow.stat().st_size // 3])
    code, _, err = run_cli(capsys, "eval", checkpoint, "--tasks", "piqa", "--limit", 2, "--data-dir", tmp_path / "data")
    assert code == 2 and err.count("\n") == 1
    assert f"{arrow}: not a readable Arrow stream" in err and "truncated or damaged" in err
