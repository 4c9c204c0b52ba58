"""recipes/posttrain_demo.py runs end to end (at a toy size; the README gives its real figures)."""

import json
import re
import subprocess
import sys

import pytest

from tests.train.test_trainer import REPO, run_env

pytestmark = pytest.mark.slow


def test_the_post_training_demonstration_runs_and_prints_its_table(tmp_path, shared_data):
    cmd = [sys.executable, str(REPO / "recipes" / "posttrain_demo.py"), "--out", str(tmp_path / "demo"),
           "--docs-chars", "30000", "--vocab-size", "512", "--pretrain-problems", "200", "--pretrain-steps", "3",
           "--sft-problems", "64", "--sft-steps", "3", "--dpo-problems", "8", "--samples", "2",
           "--rlvr-problems", "8", "--rlvr-steps", "2", "--rlvr-batch", "2", "--rlvr-samples", "4",
           "--test-problems", "8"]
    result = subprocess.run(cmd, env=run_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "held-out accuracy on 8 sorting problems" in result.stdout
    assert "base, 3-shot" in result.stdout and "SFT" in result.stdout
    # the RLVR stage ran from the SFT model, with the task's verifier, and was scored
    assert re.search(r"RLVR \(from SFT\) +\d+\.\d%", result.stdout), result.stdout
    assert "RLVR: 2 steps; sampled answers" in result.stdout
    assert re.search(r"held-out, sampled at RLVR's temperature 0.3, 8 draws each: SFT \d+\.\d%, RLVR \d+\.\d%", result.stdout)
    results = json.loads((tmp_path / "demo" / "results.json").read_text())
    assert 0 <= results["accuracy"]["RLVR (from SFT)"] <= 1 and results["seconds"]["rlvr"] > 0
    assert set(results["sampled_accuracy"]) == {"SFT", "RLVR"}
