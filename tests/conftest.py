"""Shared test fixtures: deterministic torch, where the shared data lives, a tiny tokenizer, tiny
random models and a checkpoint of one (the generation, model-file, convert and CLI tests use
them), and how a test runs a command."""

import os
from pathlib import Path

import pytest
import torch

from olmolab import ModelConfig, Transformer
from olmolab.cli import main
from olmolab.kernels.cpu_matmul import CPU_BF16_ENV
from olmolab.model_files import save_model
from olmolab.tokenizer import train_bpe

# `precision: auto` (every config's default) computes in bf16 on a CPU with AMX and in fp32
# elsewhere; the suite's results must not depend on which machine runs it, so its auto is fp32
# everywhere (subprocesses inherit this), and the bf16 tests ask for bf16.
os.environ[CPU_BF16_ENV] = "none"

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


@pytest.fixture(autouse=True)
def _deterministic_torch():
    torch.manual_seed(0)
    yield


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.exists():
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    return SHARED_DATA


TEXT = [
    "To be, or not to be, that is the question:",
    "Whether 'tis nobler in the mind to suffer",
    "The slings and arrows of outrageous fortune,",
    "Or to take arms against a sea of troubles",
    "And by opposing end them. To die - to sleep,",
    "No more; and by a sleep to say we end",
    "The heart-ache and the thousand natural shocks",
    "That flesh is heir to: 'tis a consummation",
    "Devoutly to be wish'd. To die, to sleep;",
    "To sleep, perchance to dream - ay, there's the rub:",
] * 20


@pytest.fixture(scope="session")
def tokenizer():
    """A byte-level BPE of 400 tokens with EOS = 0 and PAD = 1, as the tiny presets expect."""
    return train_bpe(TEXT, vocab_size=400)


def random_model(preset: str = "olmo2-tiny", seed: int = 0, **overrides) -> Transformer:
    """A tiny model with random weights; norm weights away from 1 so they matter."""
    torch.manual_seed(seed)
    model = Transformer(ModelConfig.preset(preset, **overrides)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
    return model


@pytest.fixture
def make_model():
    """`make_model(preset="olmo2-tiny", seed=0, **config_overrides)` -> a random tiny model."""
    return random_model


@pytest.fixture
def checkpoint(tmp_path, tokenizer):
    """An olmolab checkpoint directory of a random olmo2-tiny model, with its tokenizer."""
    return save_model(random_model(), tmp_path / "ckpt", tokenizer=tokenizer)


def run_cli(capsys, *argv):
    """`olmolab ARGV...` in this process: (exit code, stdout, stderr)."""
    capsys.readouterr()
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code, err, *fragments):
    """A user mistake: exit code 2 and one line on stderr, no traceback, holding each fragment."""
    assert code == 2
    assert err.count("\n") == 1 and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in err, err
