"""SFT and DPO on the trainer's engine: exact resume after a kill, and DDP / FSDP2 under torchrun
with the loss of one process."""

import signal
import subprocess
import sys
import time

import pytest

from olmolab.revisions import list_revisions
from olmolab.train.metrics import read_metrics

from ..train.test_trainer import final_weights, olmolab_cmd, run_env

pytestmark = pytest.mark.slow

STEPS = 8


def curve(run_dir, keys=("loss", "grad_norm")):
    return [(r["step"], *(r[k] for k in keys)) for r in read_metrics(run_dir) if "loss" in r]


def kill_after_first_revision(cmd, run_dir):
    proc = subprocess.Popen(cmd, env=run_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not list_revisions(run_dir) and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)  # mid-run, no chance to clean up
    proc.wait()
    assert list_revisions(run_dir), "the run was killed before its first checkpoint"
    assert max(r.step for r in list_revisions(run_dir)) < STEPS, "the run finished before the kill"


@pytest.mark.parametrize("method", ["sft", "dpo"])
def test_resume_after_kill_is_bitwise_identical(method, sft_config, dpo_config, tmp_path):
    make = sft_config if method == "sft" else dpo_config
    extra = {"sft": {"packing": True}} if method == "sft" else {}
    straight = make("straight.yaml", run_dir=str(tmp_path / "straight"), max_steps=STEPS, **extra)
    subprocess.run(olmolab_cmd(method, straight), check=True, env=run_env(), capture_output=True)
    killed = make("killed.yaml", run_dir=str(tmp_path / "killed"), max_steps=STEPS, **extra)
    kill_after_first_revision(olmolab_cmd(method, killed), tmp_path / "killed")
    subprocess.run(olmolab_cmd(method, killed), check=True, env=run_env(), capture_output=True)

    assert curve(tmp_path / "killed") == curve(tmp_path / "straight")
    assert len(curve(tmp_path / "straight")) == STEPS
    assert final_weights(tmp_path / "killed") == final_weights(tmp_path / "straight")


def torchrun(method, config_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "olmolab", method, str(config_path)]
    result = subprocess.run(cmd, env=run_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.mark.parametrize("method", ["sft", "dpo"])
def test_ddp_and_fsdp_match_one_process(method, sft_config, dpo_config, tmp_path):
    # One process accumulates 2 micro-batches of 2; two processes run one each.
    make = sft_config if method == "sft" else dpo_config
    keys = ("loss", "grad_norm") + (("rewards/margin",) if method == "dpo" else ())
    paths = {name: make(f"{name}.yaml", run_dir=str(tmp_path / name), max_steps=3, save_interval=3,
                        distributed="fsdp" if name == "fsdp" else "ddp") for name in ("single", "ddp", "fsdp")}
    subprocess.run(olmolab_cmd(method, paths["single"]), check=True, env=run_env(), capture_output=True)
    torchrun(method, paths["ddp"])
    torchrun(method, paths["fsdp"])
    single = curve(tmp_path / "single", keys)
    assert len(single) == 3
    for name in ("ddp", "fsdp"):
        for row, expected in zip(curve(tmp_path / name, keys), single, strict=True):
            assert row == pytest.approx(expected, rel=1e-5, abs=1e-6), name
