"""Checkpoint souping: weighted fp32 averages of models of one architecture."""

import json

import pytest
import torch

import olmolab
from olmolab.cli import main
from olmolab.errors import UserError
from olmolab.model_files import save_model
from olmolab.soup import soup


@pytest.fixture
def ingredients(tmp_path, make_model, tokenizer):
    return [save_model(make_model(seed=seed), tmp_path / f"seed{seed}", tokenizer=tokenizer) for seed in (1, 2, 3)]


def weights_of(path):
    model, _ = olmolab.load(path)
    return model.state_dict()


def test_a_soup_of_one_is_that_model(ingredients):
    model, tokenizer = soup(ingredients[:1])
    for key, tensor in weights_of(ingredients[0]).items():
        assert torch.equal(model.state_dict()[key], tensor), key
    assert tokenizer is not None


def test_a_soup_of_two_is_their_mean(ingredients, tmp_path):
    assert main(["soup", str(ingredients[0]), str(ingredients[1]), "--out", str(tmp_path / "soup")]) == 0
    a, b, souped = weights_of(ingredients[0]), weights_of(ingredients[1]), weights_of(tmp_path / "soup")
    for key in a:
        torch.testing.assert_close(souped[key], (a[key] + b[key]) / 2, atol=1e-7, rtol=1e-6)
    recipe = json.loads((tmp_path / "soup" / "config.json").read_text())["soup"]
    assert recipe["weights"] == [0.5, 0.5] and len(recipe["ingredients"]) == 2


def test_weights_are_normalised_to_sum_to_one(ingredients):
    model, _ = soup(ingredients, weights=[2, 0, 6])
    a, c = weights_of(ingredients[0]), weights_of(ingredients[2])
    for key, tensor in model.state_dict().items():
        torch.testing.assert_close(tensor, 0.25 * a[key] + 0.75 * c[key], atol=1e-7, rtol=1e-6)


@pytest.mark.parametrize("weights, message", [
    ([1.0], "got 1 weights for 3 checkpoints"),
    ([1.0, -1.0, 1.0], "must all be >= 0"),
    ([0.0, 0.0, 0.0], "at least one must be positive"),
])
def test_bad_weights_are_refused(ingredients, weights, message):
    with pytest.raises(UserError, match=message):
        soup(ingredients, weights=weights)


def test_checkpoints_of_different_architectures_are_refused_naming_the_key(tmp_path, make_model, capsys):
    a = save_model(make_model(), tmp_path / "a")
    b = save_model(make_model(n_kv_heads=4), tmp_path / "b")
    assert main(["soup", str(a), str(b), "--out", str(tmp_path / "soup")]) == 2
    err = capsys.readouterr().err
    assert "model config key 'n_kv_heads'" in err and err.count("\n") == 1
    assert not (tmp_path / "soup" / "model.safetensors").exists()
