"""DDP and FSDP2 under torchrun (gloo, 2 CPU processes) train exactly like one process."""

import shutil
import subprocess
import sys

import pytest
import yaml

from olmolab.revisions import list_revisions
from olmolab.train.metrics import read_metrics

from .test_trainer import losses, olmolab_cmd, run_env

pytestmark = pytest.mark.slow


def torchrun(config_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "olmolab", "train", str(config_path)]
    result = subprocess.run(cmd, env=run_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]


def configs(tiny_run, tmp_path, shared_data):
    """Three runs of 3 steps (one process, DDP, FSDP), each evaluating PIQA and WikiText at step 3."""
    from olmolab.tokenizer import train_bpe

    wikitext = shared_data / "corpora" / "wikitext-2"
    train_bpe([(wikitext / "valid.txt").read_text()[:100_000]], vocab_size=512).save(tmp_path / "tokenizer.json")
    paths = {}
    for name in ("single", "ddp", "fsdp"):
        paths[name], raw = tiny_run(f"{name}.yaml", run_dir=str(tmp_path / name), max_steps=3, save_interval=3,
                                    distributed="fsdp" if name == "fsdp" else "ddp", eval_interval=3,
                                    tokenizer=str(tmp_path / "tokenizer.json"))
        # 13 PIQA examples and a few WikiText windows: batches do not split evenly over 2 ranks.
        raw["eval"] = {"tasks": ["piqa"], "limit": 13, "data_dir": str(shared_data / "eval"), "batch_size": 4,
                       "perplexity": [{"label": "wikitext", "path": str(wikitext / "test.txt"), "max_tokens": 700}]}
        paths[name].write_text(yaml.safe_dump(raw))
    return paths


def in_loop_eval(run_dir) -> dict[str, float]:
    (row,) = [r for r in read_metrics(run_dir) if "eval/downstream/piqa_acc" in r]
    return {k: v for k, v in row.items() if k.startswith(("eval/downstream/", "eval/wikitext/"))}


def assert_same_curve(a, b, tol=1e-5):
    assert [s for s, *_ in a] == [s for s, *_ in b]
    for (_, loss_a, norm_a), (_, loss_b, norm_b) in zip(a, b, strict=True):
        assert loss_a == pytest.approx(loss_b, abs=tol)
        assert norm_a == pytest.approx(norm_b, rel=tol)


def test_ddp_and_fsdp_match_one_process_with_the_same_global_batch(tiny_run, tmp_path, shared_data):
    # One process accumulates 2 micro-batches; two processes run one each.
    paths = configs(tiny_run, tmp_path, shared_data)
    subprocess.run(olmolab_cmd("train", paths["single"]), check=True, env=run_env(), capture_output=True)
    torchrun(paths["ddp"])
    torchrun(paths["fsdp"])
    single = losses(tmp_path / "single")
    assert len(single) == 3
    assert_same_curve(losses(tmp_path / "ddp"), single)
    assert_same_curve(losses(tmp_path / "fsdp"), single)
    # In-loop evaluation splits its batches over the ranks and gets the one-process numbers.
    expected = in_loop_eval(tmp_path / "single")
    assert len(expected) > 8
    for name in ("ddp", "fsdp"):
        # (perplexities are in the hundreds: fp32 sums in another order differ in the 8th digit)
        assert in_loop_eval(tmp_path / name) == pytest.approx(expected, rel=1e-6, abs=1e-5), name

    # The FSDP checkpoint was written as 2 shards; one process resumes from it.
    sharded = list_revisions(tmp_path / "fsdp")[-1].path
    assert len(list((sharded / "model_and_optim").glob("*.distcp"))) == 2
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copytree(sharded, resumed / sharded.name)
    for name, run_dir in (("resumed", resumed), ("straight", tmp_path / "straight")):
        raw = yaml.safe_load(paths["single"].read_text())
        raw["trainer"] |= {"run_dir": str(run_dir), "max_steps": 4}
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(raw))
        subprocess.run(olmolab_cmd("train", tmp_path / f"{name}.yaml"), check=True, env=run_env(),
                       capture_output=True)
    step4 = [row for row in losses(resumed) if row[0] == 4]
    assert_same_curve(step4, [row for row in losses(tmp_path / "straight") if row[0] == 4])
