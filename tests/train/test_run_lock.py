"""One trainer per run directory: a second one exits at once, naming the holder; a lock left by
a killed trainer is taken over."""

import os
import signal
import subprocess
import sys
import time

from olmolab.config import load_run_config
from olmolab.revisions import list_revisions
from olmolab.train.run_lock import LOCK_FILE
from olmolab.train.trainer import Trainer
from tests.train.test_trainer import olmolab_cmd, run_env


def test_a_second_trainer_on_a_run_directory_exits_naming_the_first(tiny_run, tmp_path):
    path, _ = tiny_run(max_steps=400, save_interval=100)
    first = subprocess.Popen(olmolab_cmd("train", path), env=run_env(),
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        lock = tmp_path / "run" / LOCK_FILE
        deadline = time.time() + 120
        while not (lock.exists() and lock.read_text()) and time.time() < deadline:
            time.sleep(0.05)
        second = subprocess.run(olmolab_cmd("train", path), env=run_env(), capture_output=True, text=True,
                                timeout=120)
        assert second.returncode == 2
        assert f"this run directory is in use by process {first.pid} on" in second.stderr
        assert second.stderr.count("\n") == 1
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()

    # The killed trainer's lock goes with it: the next one takes over and resumes.
    resumed = subprocess.run(olmolab_cmd("train", path, "--trainer.max_steps=2"), env=run_env(),
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert f"taking over the lock left by process {first.pid}" in resumed.stderr
    assert list_revisions(tmp_path / "run")


def lock_from_another_process(run_dir) -> subprocess.CompletedProcess:
    code = f"from olmolab.train.run_lock import RunLock; RunLock({str(run_dir)!r}).acquire()"
    return subprocess.run([sys.executable, "-c", code], env=run_env(), capture_output=True, text=True, timeout=120)


def test_the_lock_is_held_while_training_and_free_after(tiny_run, tmp_path):
    path, _ = tiny_run(max_steps=2)
    trainer = Trainer(load_run_config(path))
    refused = lock_from_another_process(tmp_path / "run")
    assert refused.returncode != 0 and f"in use by process {os.getpid()}" in refused.stderr
    trainer.fit()
    assert lock_from_another_process(tmp_path / "run").returncode == 0


def test_one_process_may_hold_its_run_directory_twice(tiny_run, tmp_path):
    """A notebook that builds a second Trainer on the same directory is not locked out by itself."""
    path, _ = tiny_run(max_steps=2)
    first = Trainer(load_run_config(path))
    Trainer(load_run_config(path)).fit()
    assert lock_from_another_process(tmp_path / "run").returncode != 0  # `first` still holds it
    first.fit()
    assert lock_from_another_process(tmp_path / "run").returncode == 0
