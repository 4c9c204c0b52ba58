"""`--dtype auto|fp32|bf16` of `olmolab eval` and `olmolab generate`: the weights and activations
are in the chosen format, and the command says which it chose and why."""

import json

import pytest
import torch

from olmolab import model_files
from olmolab.cli import main
from tests.conftest import TEXT


@pytest.fixture
def loaded_dtypes(monkeypatch):
    """The dtype of every model the command loads."""
    seen = []
    load_model = model_files.load_model

    def recording(*args, **kwargs):
        model = load_model(*args, **kwargs)
        seen.append(model.embeddings.weight.dtype)
        return model

    monkeypatch.setattr(model_files, "load_model", recording)
    return seen


@pytest.mark.parametrize("flag, dtype, said", [
    ("fp32", torch.float32, ""),
    ("bf16", torch.bfloat16, "olmolab: computing in bf16 (asked for"),
    ("auto", torch.float32, ""),  # the suite pins auto to fp32 (tests/conftest.py)
])  # fmt: skip
def test_generate_runs_in_the_chosen_dtype_and_says_so_when_it_is_bf16(checkpoint, loaded_dtypes, capsys, flag,
                                                                        dtype, said):
    assert main(["generate", str(checkpoint), "--prompt", "To be", "--max-new-tokens", "5", "--dtype", flag]) == 0
    out, err = capsys.readouterr()
    assert loaded_dtypes == [dtype]
    assert err.startswith(said) and (said or not err)
    assert out.startswith("To be") and len(out) > len("To be\n")


def test_eval_in_bf16_scores_perplexity_close_to_fp32_and_records_the_dtype(checkpoint, tmp_path, capsys):
    text = tmp_path / "held-out.txt"
    text.write_text("\n".join(TEXT[:10]))
    losses = {}
    for flag in ("fp32", "bf16"):
        out_json = tmp_path / f"{flag}.json"
        assert main(["eval", str(checkpoint), "--perplexity", str(text), "--dtype", flag, "--output", str(out_json)]) == 0
        report = json.loads(out_json.read_text())
        assert report["settings"]["dtype"] == flag
        losses[flag] = report["perplexity"]["held-out.txt"]["loss"]
    assert "computing in bf16 (asked for" in capsys.readouterr().err
    assert losses["bf16"] != losses["fp32"], "bf16 really computed in bf16"
    assert losses["bf16"] == pytest.approx(losses["fp32"], rel=0.02)


def test_an_unknown_dtype_is_refused_listing_the_choices(checkpoint, capsys):
    with pytest.raises(SystemExit):
        main(["generate", str(checkpoint), "--prompt", "x", "--dtype", "float16"])
    err = capsys.readouterr().err
    assert "argument --dtype: invalid choice: 'float16'" in err
    assert all(name in err.rpartition("choose from")[2] for name in ("auto", "fp32", "bf16"))
