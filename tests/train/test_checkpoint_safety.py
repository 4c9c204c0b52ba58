"""Checkpoints as untrusted input: nothing in them runs, and a damaged revision falls back.

Checkpoints are shared between people (OLMo publishes its intermediate ones), so a revision is
read like any file from the internet: DCP's pickles go through restricted unpicklers, and a
revision that is damaged is skipped, with a warning saying what is wrong, in favour of the
newest intact one.
"""

import json
import os
import pickle
import shutil
import subprocess
import sys

import pytest
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException

from olmolab.cli import main
from olmolab.config import load_run_config
from olmolab.errors import UserError
from olmolab.revisions import list_revisions
from olmolab.train import safe_dcp
from olmolab.train.checkpoint import check_revision
from olmolab.train.trainer import Trainer
from tests.train.test_trainer import final_weights, olmolab_cmd, run_env


class RunsACommand:
    """Unpickling this runs `touch MARKER`: what a malicious checkpoint would do."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_malicious_dcp_metadata_is_refused_without_running_it(tiny_run, tmp_path):
    path, _ = tiny_run(max_steps=2)
    Trainer(load_run_config(path)).fit()
    revision = list_revisions(tmp_path / "run")[-1].path
    marker = tmp_path / "pwned"
    (revision / "model_and_optim" / ".metadata").write_bytes(pickle.dumps(RunsACommand(marker)))

    # --load-path reads the revision's DCP state directly: one line naming the file, nothing run.
    result = subprocess.run(olmolab_cmd("train", path, "--run-dir", tmp_path / "other", "--load-path", revision),
                            env=run_env(), capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0, result.stderr
    assert f"{revision}: model_and_optim/.metadata" in result.stderr and "refused global posix.system" in result.stderr
    # Resuming the run directory itself: the revision is named as damaged, never loaded.
    with pytest.raises(UserError, match="every revision in it is damaged"):
        Trainer(load_run_config(path, ["trainer.max_steps=4"]))
    assert not marker.exists()


def test_a_malicious_non_tensor_value_in_dcp_data_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "pwned"
    dcp.save({"weight": torch.ones(2), "lr": RunsACommand(marker)}, checkpoint_id=tmp_path / "ckpt")
    state = {"weight": torch.zeros(2), "lr": 0.0}
    with pytest.raises(CheckpointException) as caught:
        dcp.load(state, storage_reader=safe_dcp.SafeFileSystemReader(tmp_path / "ckpt"),
                 planner=safe_dcp.SafeLoadPlanner())
    causes = [f[0] if isinstance(f, tuple) else f for f in caught.value.failures.values()]
    assert any(isinstance(c, UserError) and "'lr' is not plain data" in str(c) for c in causes)
    # the refused global is named; torch's advice to load with weights_only=False is not repeated
    assert any("GLOBAL posix.system" in str(c) and "weights_only` set to `False" not in str(c) for c in causes)
    assert not marker.exists()


def test_safe_loading_reads_every_value_of_a_real_checkpoint(tmp_path):
    saved = {"weight": torch.arange(4.0), "lr": 3e-4, "betas": (0.9, 0.95), "name": "adamw", "fused": True}
    dcp.save(saved, checkpoint_id=tmp_path / "ckpt")
    state = {"weight": torch.zeros(4), "lr": 0.0, "betas": (0.0, 0.0), "name": "", "fused": False}
    dcp.load(state, storage_reader=safe_dcp.SafeFileSystemReader(tmp_path / "ckpt"),
             planner=safe_dcp.SafeLoadPlanner())
    assert torch.equal(state["weight"], saved["weight"])
    assert {k: v for k, v in state.items() if k != "weight"} == {k: v for k, v in saved.items() if k != "weight"}


def _delete_distcp(revision):
    next((revision / "model_and_optim").glob("*.distcp")).unlink()


def _truncate_distcp(revision):
    data = next((revision / "model_and_optim").glob("*.distcp"))
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])


def _delete_metadata(revision):
    (revision / "model_and_optim" / ".metadata").unlink()


def _garbage_train_state(revision):
    (revision / "train_state.json").write_text("\x00garbage{")


def _empty_train_state(revision):
    (revision / "train_state.json").write_text("{}")


DAMAGES = {
    "distcp deleted": (_delete_distcp, "__0_0.distcp is missing"),
    "distcp truncated": (_truncate_distcp, "__0_0.distcp is truncated"),
    "metadata deleted": (_delete_metadata, ".metadata: cannot read"),
    "train_state garbage": (_garbage_train_state, "train_state.json: not valid JSON"),
    "train_state empty": (_empty_train_state, "train_state.json: missing step, tokens, data"),
}


@pytest.mark.parametrize("damage", DAMAGES, ids=list(DAMAGES))
def test_resume_skips_a_damaged_latest_revision_for_the_newest_intact_one(damage, tiny_run, tmp_path, capsys):
    path, _ = tiny_run(max_steps=4)
    Trainer(load_run_config(path)).fit()
    latest = list_revisions(tmp_path / "run")[-1].path
    assert latest.name == "step4-tokens512"
    damage_it, problem = DAMAGES[damage]
    damage_it(latest)

    assert main(["checkpoints", str(tmp_path / "run")]) == 0
    listing = capsys.readouterr().out
    assert "step2-tokens256" in listing and "DAMAGED:" in listing and problem in listing

    trainer = Trainer(load_run_config(path, ["trainer.max_steps=6"]))
    warning = capsys.readouterr().err
    assert f"skipping damaged revision {latest}" in warning and problem in warning
    assert trainer.state.step == 2


def test_a_run_resumed_past_a_damaged_revision_ends_bitwise_identical(tiny_run, tmp_path):
    straight, _ = tiny_run("straight.yaml", run_dir=str(tmp_path / "straight"))
    Trainer(load_run_config(straight)).fit()
    damaged, _ = tiny_run("damaged.yaml", run_dir=str(tmp_path / "damaged"), max_steps=4)
    Trainer(load_run_config(damaged)).fit()
    _truncate_distcp(list_revisions(tmp_path / "damaged")[-1].path)

    Trainer(load_run_config(damaged, ["trainer.max_steps=6"])).fit()  # from step 2, over the damaged step 4
    assert final_weights(tmp_path / "damaged") == final_weights(tmp_path / "straight")
    assert check_revision(list_revisions(tmp_path / "damaged")[1].path) == []  # step 4 was written anew


def test_resuming_with_a_changed_model_names_the_key(tiny_run):
    path, _ = tiny_run(max_steps=2)
    Trainer(load_run_config(path)).fit()
    with pytest.raises(UserError, match=r"saved with another model \(model.d_model=64 there, 128 here\)"):
        Trainer(load_run_config(path, ["trainer.max_steps=4", "model.d_model=128"]))


def test_leftovers_of_a_crash_mid_save_or_mid_prune_are_removed_at_the_next_start(tiny_run, tmp_path):
    path, _ = tiny_run(max_steps=2)
    Trainer(load_run_config(path)).fit()
    run_dir = tmp_path / "run"
    shutil.copytree(run_dir / "step2-tokens256", run_dir / ".trash-step1-tokens128")
    (run_dir / ".tmp-step3-tokens384" / "model_and_optim").mkdir(parents=True)
    Trainer(load_run_config(path, ["trainer.max_steps=3"])).fit()
    assert sorted(p.name for p in run_dir.iterdir() if p.name.startswith(".t")) == []


def test_pruning_renames_a_revision_away_before_deleting_it(tiny_run, tmp_path, monkeypatch):
    path, _ = tiny_run(max_steps=3, save_interval=1, keep_last=1)
    removed = []
    real_rmtree = shutil.rmtree

    def record(target, *args, **kwargs):
        removed.append(os.path.basename(target))
        real_rmtree(target, *args, **kwargs)

    monkeypatch.setattr(shutil, "rmtree", record)
    Trainer(load_run_config(path)).fit()
    pruned = [name for name in removed if "step" in name and not name.startswith(".tmp-")]
    assert pruned and all(name.startswith(".trash-step") for name in pruned)
    assert [r.step for r in list_revisions(tmp_path / "run")] == [3]


def test_revisions_hold_no_pickle_outside_dcp(tiny_run, tmp_path):
    """Everything but DCP's files is JSON, safetensors or a weights-only torch file."""
    path, _ = tiny_run(max_steps=2)
    Trainer(load_run_config(path)).fit()
    revision = list_revisions(tmp_path / "run")[-1].path
    json.loads((revision / "train_state.json").read_text())
    rng = torch.load(revision / "rng" / "rank0.pt", weights_only=True)
    assert set(rng) >= {"torch", "numpy", "python"}


def test_the_cli_reports_a_refused_checkpoint_on_one_line(tiny_run, tmp_path):
    path, _ = tiny_run(max_steps=2)
    Trainer(load_run_config(path)).fit()
    revision = list_revisions(tmp_path / "run")[-1].path
    (revision / "model_and_optim" / ".metadata").write_bytes(pickle.dumps(RunsACommand(tmp_path / "pwned")))
    result = subprocess.run([sys.executable, "-m", "olmolab", "checkpoints", str(tmp_path / "run")],
                            env=run_env(), capture_output=True, text=True)
    assert result.returncode == 0 and "DAMAGED" in result.stdout and not (tmp_path / "pwned").exists()
