"""Fault injection: a training run SIGKILLed at random points ends bitwise identical to one that
never stopped.

The kills land where crashes hurt most: while a revision is being written (a `.tmp-` directory
exists), while an old one is being pruned (a `.trash-` directory exists), and at random moments
in between (mid-step, mid-log, mid-resume). After each kill the same command is started again,
as a user or a cluster scheduler would, until the run finishes by itself.

    OLMOLAB_FAULT_SEED=7 python -m pytest -m fault_injection    # another sequence of kills
"""

import os
import random
import signal
import subprocess
import time
from collections import Counter

import pytest

from olmolab.revisions import list_revisions
from olmolab.train.checkpoint import check_revision
from tests.train.test_trainer import final_weights, losses, olmolab_cmd, run_env

pytestmark = pytest.mark.fault_injection

MAX_STEPS = 30  # more than the kills can get through: each restart advances a few steps
KILLS = 12
BUDGET_S = 100  # the suite's share of the test run; the run is finished uninterrupted after it
KINDS = ("mid-save", "mid-prune", "anytime")


def start(config):
    return subprocess.Popen(olmolab_cmd("train", config), env=run_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def names_in(run_dir, prefix: str) -> set[str]:
    try:
        return {name for name in os.listdir(run_dir) if name.startswith(prefix)}
    except FileNotFoundError:
        return set()


def wait_for(proc, run_dir, prefix: str, old: set[str], occurrence: int, timeout: float = 60) -> bool:
    """Poll until the `occurrence`-th new directory starting with `prefix` shows up; False if the
    process ended first (it may finish between two polls). Leftovers of an earlier kill, which
    the trainer removes as it starts, do not count."""
    seen: set[str] = set()
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        seen |= names_in(run_dir, prefix) - old
        if len(seen) >= occurrence:
            return True
    return False


def kill_somewhere(config, run_dir, kind: str, rng: random.Random) -> bool:
    """Run the command once and SIGKILL it at a random point of this kind; False if the run
    finished first."""
    prefix = ".tmp-" if kind == "mid-save" else ".trash-"
    old = names_in(run_dir, prefix)  # read before the trainer starts and removes them
    proc = start(config)
    if kind == "anytime":
        time.sleep(rng.uniform(0.3, 5.0))  # from mid-import to several steps in
        hit = proc.poll() is None
    else:
        hit = wait_for(proc, run_dir, prefix, old, rng.randint(1, 3))
    proc.send_signal(signal.SIGKILL)
    code = proc.wait()
    return hit and code == -signal.SIGKILL


def test_random_sigkills_during_training_saving_and_pruning_leave_a_bitwise_identical_run(tiny_run, tmp_path):
    trainer_settings = {"max_steps": MAX_STEPS, "save_interval": 1, "keep_last": 2}
    straight, _ = tiny_run("straight.yaml", run_dir=str(tmp_path / "straight"), **trainer_settings)
    # As the killed run trains: `olmolab train`, with as many threads. A matmul library may split
    # its sums differently across more threads (MKL's AVX2 kernels do, as on an AMD CPU).
    subprocess.run(olmolab_cmd("train", straight), env=run_env(), check=True, capture_output=True)

    killed, _ = tiny_run("killed.yaml", run_dir=str(tmp_path / "killed"), **trainer_settings)
    rng = random.Random(int(os.environ.get("OLMOLAB_FAULT_SEED", 0)))
    kills: Counter[str] = Counter()
    started, attempt = time.monotonic(), 0
    while kills.total() < KILLS and time.monotonic() - started < BUDGET_S:
        kind = KINDS[attempt % len(KINDS)]
        attempt += 1
        if kill_somewhere(killed, tmp_path / "killed", kind, rng):
            kills[kind] += 1
    assert subprocess.run(olmolab_cmd("train", killed), env=run_env(), capture_output=True).returncode == 0
    print(f"kills that landed: {dict(kills)} in {attempt} attempts")  # shown with pytest -s

    assert all(kills[kind] >= 2 for kind in KINDS), f"too few kills landed: {dict(kills)}"
    assert losses(tmp_path / "killed") == losses(tmp_path / "straight")
    assert final_weights(tmp_path / "killed") == final_weights(tmp_path / "straight")
    assert all(check_revision(r.path) == [] for r in list_revisions(tmp_path / "killed"))
    leftovers = [p.name for p in (tmp_path / "killed").iterdir() if p.name.startswith((".tmp-", ".trash-"))]
    assert leftovers == []
