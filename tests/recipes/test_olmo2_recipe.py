"""The OLMo 2 recipe end to end at tiny scale: stage 1, three anneals, the soup, the table."""

import importlib.util
import json
import statistics
import sys

import yaml

from olmolab.revisions import latest_revision

from ..conftest import REPO_ROOT


def load_recipe(monkeypatch):
    """recipes/ is scripts, not a package: load the file as a module (registered, as dataclasses need)."""
    spec = importlib.util.spec_from_file_location("olmo2_recipe", REPO_ROOT / "recipes" / "olmo2.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)
    spec.loader.exec_module(module)
    return module


def test_the_olmo2_recipe_runs_at_tiny_scale_and_its_soup_is_no_worse_than_its_ingredients(tmp_path, shared_data, capsys, monkeypatch):
    recipe = load_recipe(monkeypatch)
    assert recipe.main(["--scale", "tiny", "--out", str(tmp_path)]) == 0

    stage1 = yaml.safe_load((tmp_path / "configs" / "stage1.yaml").read_text())
    for seed in (42, 42069, 666):
        anneal = yaml.safe_load((tmp_path / "configs" / f"stage2-seed{seed}.yaml").read_text())
        assert anneal["data"]["seed"] == seed
        assert [s["weight"] for s in anneal["data"]["sources"]] == [0.5, 0.5]
        assert anneal["trainer"]["load_path"] == str(latest_revision(tmp_path / "stage1").path)
        assert anneal["scheduler"] == {"name": "linear", "t_warmup": 0, "alpha_f": 0.0}
        assert anneal["optim"]["lr"] < stage1["optim"]["lr"]  # from where stage 1 left off
    soup = json.loads((tmp_path / "soup" / "config.json").read_text())
    assert len(soup["soup"]["ingredients"]) == 3

    results = json.loads((tmp_path / "results.json").read_text())
    bpb = {name: score["bpb"] for name, score in results["scores"].items()}
    assert list(bpb) == ["stage 1", "stage 2, seed 42", "stage 2, seed 42069", "stage 2, seed 666", "soup"]
    assert bpb["soup"] <= statistics.fmean(bpb[f"stage 2, seed {seed}"] for seed in (42, 42069, 666))
    assert f"| soup | {bpb['soup']:.4f} |" in capsys.readouterr().out  # the table is printed
    footprints = results["footprints"]
    assert footprints["soup"]["kwh"] > footprints["stage 2, seed 42"]["kwh"] > footprints["stage 1"]["kwh"] > 0
    assert (tmp_path / "stage1" / "report.html").exists()
