"""The trainer: exact resume after a kill, atomic revisions, skipped non-finite steps, label masks."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from olmolab import model_files
from olmolab.config import load_run_config
from olmolab.errors import UserError
from olmolab.revisions import format_tokens, list_revisions, revision_name
from olmolab.train.metrics import read_metrics
from olmolab.train.trainer import Trainer, make_labels

REPO = Path(__file__).resolve().parents[2]


def olmolab_cmd(*args):
    return [sys.executable, "-m", "olmolab", *map(str, args)]


def run_env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src")}


def losses(run_dir):
    return [(r["step"], r["loss"], r["grad_norm"]) for r in read_metrics(run_dir) if "loss" in r]


def final_weights(run_dir):
    return (list_revisions(run_dir)[-1].path / "model.safetensors").read_bytes()


def test_revisions_are_named_like_olmo():
    assert revision_name(1000, 4_194_304_000) == "step1000-tokens4B"
    assert format_tokens(2_460_000_000_000) == "2T" and format_tokens(12_582_912) == "13M"


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_resume_after_kill_is_bitwise_identical(tiny_run, tmp_path, precision):
    straight, _ = tiny_run("straight.yaml", run_dir=str(tmp_path / "straight"), precision=precision)
    subprocess.run(olmolab_cmd("train", straight), check=True, env=run_env(), capture_output=True)

    killed, _ = tiny_run("killed.yaml", run_dir=str(tmp_path / "killed"), precision=precision)
    proc = subprocess.Popen(olmolab_cmd("train", killed), env=run_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not any(r.step >= 2 for r in list_revisions(tmp_path / "killed")) and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)  # mid-run, no chance to clean up
    proc.wait()
    assert list_revisions(tmp_path / "killed"), "the run was killed before its first checkpoint"
    assert max(r.step for r in list_revisions(tmp_path / "killed")) < 6, "the run finished before the kill"
    subprocess.run(olmolab_cmd("train", killed), check=True, env=run_env(), capture_output=True)

    assert losses(tmp_path / "killed") == losses(tmp_path / "straight")
    assert len(losses(tmp_path / "straight")) == 6
    assert final_weights(tmp_path / "killed") == final_weights(tmp_path / "straight")


def test_a_half_written_revision_is_not_a_revision(tiny_run, tmp_path):
    path, _ = tiny_run(max_steps=2)
    Trainer(load_run_config(path)).fit()
    run_dir = tmp_path / "run"
    (run_dir / ".tmp-step4-tokens512").mkdir()
    (run_dir / ".tmp-step4-tokens512" / "train_state.json").write_text("{}")  # written last, then renamed
    shutil.copytree(run_dir / "step2-tokens256", run_dir / ".trash-step8-tokens1K")  # being pruned
    (run_dir / "step6-tokens768").mkdir()  # a crash before train_state.json was written
    assert [r.step for r in list_revisions(run_dir)] == [2]


def test_keep_last_prunes_old_revisions_but_spares_permanent_ones(tiny_run, tmp_path):
    path, _ = tiny_run(max_steps=6, save_interval=1, keep_last=2, permanent_interval=3)
    Trainer(load_run_config(path)).fit()
    assert [r.step for r in list_revisions(tmp_path / "run")] == [3, 5, 6]


def test_checkpoint_holds_what_is_needed_to_inspect_and_reproduce(tiny_run, tmp_path):
    path, _ = tiny_run(max_steps=2)
    Trainer(load_run_config(path, ["optim.lr=1e-3"])).fit()
    revision = list_revisions(tmp_path / "run")[-1].path
    assert revision.name == "step2-tokens256"
    state = json.loads((revision / "train_state.json").read_text())
    assert state["step"] == 2 and state["tokens"] == 2 * 4 * 32
    assert state["data"]["data_state"]["batch_index"] == 2
    config = json.loads((revision / "config.json").read_text())
    assert config["optim"]["lr"] == 1e-3  # the override, not the file's value
    model, _ = model_files.load(revision)
    assert model.config.n_layers == 2


def test_non_finite_loss_skips_the_step_and_counts_it(tiny_run):
    path, _ = tiny_run(max_steps=3)
    trainer = Trainer(load_run_config(path))
    with torch.no_grad():
        trainer.raw_model.blocks[0].feed_forward.w_out.weight[0, 0] = float("nan")
    before = trainer.raw_model.lm_head.weight.clone()
    row = trainer.train_step(next(iter(trainer.loader)))
    assert row["skipped_steps"] == 1 and not np.isfinite(row["loss"])
    torch.testing.assert_close(trainer.raw_model.lm_head.weight, before, rtol=0, atol=0)


def test_labels_shift_by_one_and_honour_the_label_mask():
    ids = torch.tensor([[10, 11, 12, 13, 14]])
    mask = torch.tensor([[True, False, False, True, True]])
    assert make_labels(ids).tolist() == [[11, 12, 13, 14, -100]]
    assert make_labels(ids, mask).tolist() == [[-100, -100, 13, 14, -100]]


def test_fine_tuning_starts_from_a_checkpoint_with_fresh_trainer_state(tiny_run, tmp_path):
    path, _ = tiny_run(max_steps=4)
    Trainer(load_run_config(path)).fit()
    base = list_revisions(tmp_path / "run")[-1].path
    mask = np.zeros(64 * 32, dtype=np.bool_)
    mask[::2] = True  # learn only every other token
    mask.tofile(tmp_path / "train.mask.npy")
    sft = load_run_config(path, [f"trainer.run_dir={tmp_path / 'sft'}", f"trainer.load_path={base}",
                                 "trainer.reset_trainer_state=true", "trainer.max_steps=1",
                                 f"data.label_mask_paths=[{tmp_path / 'train.mask.npy'}]"])
    trainer = Trainer(sft)
    assert trainer.state.step == 0
    loaded, _ = model_files.load(base)
    torch.testing.assert_close(trainer.raw_model.lm_head.weight, loaded.lm_head.weight)
    batch = next(iter(trainer.loader))
    assert batch["label_mask"].float().mean() == 0.5
    trainer.fit()
    assert [r.step for r in list_revisions(tmp_path / "sft")] == [1]


def test_loading_a_checkpoint_of_another_architecture_is_refused(tiny_run, tmp_path):
    path, _ = tiny_run(max_steps=1)
    Trainer(load_run_config(path)).fit()
    base = list_revisions(tmp_path / "run")[-1].path
    other = load_run_config(path, [f"trainer.run_dir={tmp_path / 'other'}", f"trainer.load_path={base}",
                                   "trainer.reset_trainer_state=true", "model.n_layers=3"])
    with pytest.raises(UserError, match=r"saved with another model \(model.n_layers=2 there, 3 here\)"):
        Trainer(other)


def test_compiling_on_cpu_without_a_cxx_compiler_is_refused_up_front(tiny_run, monkeypatch):
    import torch._inductor.config as inductor_config

    monkeypatch.setattr(inductor_config.cpp, "cxx", (None, "/nonexistent/g++"))
    path, _ = tiny_run(compile=True, device="cpu")
    with pytest.raises(UserError, match="C\\+\\+ compiler.*trainer.compile=false"):
        Trainer(load_run_config(path))


def test_validation_reports_loss_perplexity_and_metrics_file(tiny_run, tmp_path):
    path, _ = tiny_run(max_steps=2, eval_interval=1)
    final = Trainer(load_run_config(path)).fit()
    assert final["eval/validation/Perplexity"] == pytest.approx(np.exp(final["eval/validation/CrossEntropyLoss"]))
    rows = read_metrics(tmp_path / "run")
    assert {"loss", "z_loss", "grad_norm", "lr", "tokens", "tokens_per_s", "mfu"} <= set(rows[0])
    assert sum("eval/validation/CrossEntropyLoss" in r for r in rows) == 2


def test_checkpoints_command_lists_revisions(tiny_run, tmp_path, capsys):
    from olmolab.cli import main

    path, _ = tiny_run(max_steps=4)
    Trainer(load_run_config(path)).fit()
    assert main(["checkpoints", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    assert "step2-tokens256" in out and "step4-tokens512" in out


def test_training_reduces_the_loss(tiny_run, tmp_path):
    path, raw = tiny_run(max_steps=12, save_interval=None)
    raw["data"]["paths"] = [str(tmp_path / "repeat.npy")]
    np.tile(np.arange(2, 34, dtype=np.uint16), 64).tofile(tmp_path / "repeat.npy")  # a learnable pattern
    path.write_text(yaml.safe_dump(raw))
    Trainer(load_run_config(path)).fit()
    curve = [loss for _, loss, _ in losses(tmp_path / "run")]
    assert curve[-1] < 0.75 * curve[0]


def test_plot_writes_a_png_of_the_curves(tiny_run, tmp_path):
    pytest.importorskip("matplotlib")
    from olmolab.cli import main

    path, _ = tiny_run(max_steps=2, eval_interval=1)
    Trainer(load_run_config(path)).fit()
    assert main(["plot", str(tmp_path / "run"), "--out", str(tmp_path / "curves.png")]) == 0
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_in_loop_evaluation_logs_downstream_and_perplexity_metrics(tiny_run, tmp_path, shared_data):
    from olmolab.tokenizer import train_bpe

    wikitext = shared_data / "corpora" / "wikitext-2"
    tokenizer = train_bpe([(wikitext / "valid.txt").read_text()[:100_000]], vocab_size=512)
    tokenizer.save(tmp_path / "tokenizer.json")
    path, raw = tiny_run(max_steps=2, eval_interval=1, tokenizer=str(tmp_path / "tokenizer.json"))
    raw["eval"] = {"tasks": ["piqa", "gsm8k:1shot"], "limit": 8, "data_dir": str(shared_data / "eval"),
                   "batch_size": 8, "task_limits": {"gsm8k_1shot": 2}, "max_new_tokens": 4,
                   "perplexity": [{"label": "wikitext", "path": str(wikitext / "test.txt"), "max_tokens": 2000}]}
    path.write_text(yaml.safe_dump(raw))
    Trainer(load_run_config(path)).fit()
    evals = [r for r in read_metrics(tmp_path / "run") if "eval/downstream/piqa_acc" in r]
    assert [r["step"] for r in evals] == [1, 2]
    assert {"eval/wikitext/BitsPerByte", "eval/validation/BitsPerByte"} <= set(evals[-1])
    assert 0 <= evals[-1]["eval/downstream/piqa_acc"] <= 1
    assert 0 <= evals[-1]["eval/downstream/gsm8k_1shot_exact_match"] <= 1  # a generative task, 2 examples


def test_a_diverged_run_stops_with_an_error_after_n_skipped_steps(tiny_run, tmp_path):
    path, _ = tiny_run(max_steps=50, save_interval=None, max_consecutive_skipped_steps=3)
    trainer = Trainer(load_run_config(path))
    with torch.no_grad():
        trainer.raw_model.norm.weight.fill_(float("nan"))  # every later loss is NaN
    with pytest.raises(UserError, match=r"step 3: the last 3 steps were all skipped .* the run has diverged"):
        trainer.fit()
    assert trainer.state.step == 2 and trainer.state.skipped_steps == 3
    assert not list_revisions(tmp_path / "run")  # nothing NaN was saved


def test_a_huge_learning_rate_ends_the_run_with_a_non_zero_exit(tiny_run, tmp_path):
    path, _ = tiny_run(max_steps=200, save_interval=1)
    result = subprocess.run(olmolab_cmd("train", path, "--optim.lr=1e4", "--trainer.max_consecutive_skipped_steps=2"),
                            env=run_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert "the run has diverged" in result.stderr or "not saved" in result.stderr
    for revision in list_revisions(tmp_path / "run"):
        model, _ = model_files.load(revision.path)
        assert all(torch.isfinite(p).all() for p in model.parameters()), f"{revision.path} holds NaN weights"


def test_non_finite_weights_are_never_saved(tiny_run, tmp_path):
    path, _ = tiny_run(max_steps=2)
    trainer = Trainer(load_run_config(path))
    with torch.no_grad():
        trainer.raw_model.lm_head.weight[0, 0] = float("inf")
    with pytest.raises(UserError, match=r"step 0: the weights hold NaN or infinite values, so they are not saved"):
        trainer._save()
    assert not list_revisions(tmp_path / "run")


def test_token_ids_outside_the_vocabulary_are_an_error_naming_the_sizes(tiny_run, tmp_path):
    path, raw = tiny_run(max_steps=2)
    foreign = np.full(64 * 32, 600, dtype=np.uint16)  # olmo2-tiny has 512 embeddings
    foreign.tofile(raw["data"]["paths"][0])
    trainer = Trainer(load_run_config(path))
    with pytest.raises(UserError, match=r"step 1: the data holds token id 600, outside the model's vocabulary "
                                        r"\(model.embedding_size=512\)"):
        trainer.fit()


def test_shards_recorded_with_a_larger_vocabulary_are_refused_up_front(tiny_run, tmp_path):
    from olmolab.tokenizer import TokenizerIdentity

    path, raw = tiny_run(max_steps=2)
    shard = Path(raw["data"]["paths"][0])
    identity = TokenizerIdentity("big.json", "0" * 64, 50_000, 0, 1, None)
    shard.with_suffix(".json").write_text(json.dumps({
        "format": "olmolab.token_shard.v1", "dtype": "uint16", "num_tokens": 64 * 32,
        "tokenizer": identity.to_dict(), "documents": "train.csv.gz"}))
    with pytest.raises(UserError, match=rf"{shard}: tokenized with big.json \(50000 tokens\), more than the "
                                        r"model's vocabulary of 512"):
        Trainer(load_run_config(path))


def test_olmolab_train_flushes_denormals_in_every_thread(tiny_run):
    """The CLI starts the trainer before any multi-threaded op, so PyTorch's threads inherit the flush."""
    path, _ = tiny_run(max_steps=1)
    result = subprocess.run(olmolab_cmd("train", path), env={**run_env(), "OMP_NUM_THREADS": "2"},
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "denormal" not in result.stderr


def test_a_trainer_started_after_torchs_thread_pool_says_its_threads_keep_denormals(tiny_run):
    path, _ = tiny_run(max_steps=1)
    script = ("import torch; torch.set_num_threads(2); (torch.ones(1 << 20) * 2).sum()  # starts the pool\n"
              "from olmolab.config import load_run_config; from olmolab.train.trainer import Trainer\n"
              f"Trainer(load_run_config({str(path)!r}))")
    result = subprocess.run([sys.executable, "-c", script], env=run_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "denormal floats are flushed to zero in this thread only" in result.stderr
