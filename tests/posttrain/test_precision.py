"""Post-training in bf16 (what `precision: auto` chooses on a CPU with a bf16 unit): SFT, DPO and
RLVR run on fp32 master weights with bf16 compute, as pretraining does."""

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from olmolab.cli import main
from olmolab.revisions import list_revisions
from olmolab.train.metrics import read_metrics

from .test_rlvr import rlvr_config  # noqa: F401  (a fixture)


@pytest.mark.parametrize("method", ["sft", "dpo", "rlvr"])
def test_each_method_trains_in_bf16_on_fp32_master_weights(method, request, tmp_path):
    config = request.getfixturevalue(f"{method}_config")(precision="bf16", max_steps=2, save_interval=2)
    assert main([method, str(config)]) == 0
    run_dir = tmp_path / method
    rows = [r for r in read_metrics(run_dir) if "loss" in r]
    assert [r["step"] for r in rows] == [1, 2] and all(math.isfinite(r["loss"]) for r in rows)
    assert json.loads((run_dir / "config.json").read_text())["trainer"]["precision"] == "bf16"
    saved = load_file(list_revisions(run_dir)[-1].path / "model.safetensors")
    assert {t.dtype for t in saved.values()} == {torch.float32}
