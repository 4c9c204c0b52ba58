"""Fixtures for evaluation tests: the shared benchmark data, a tiny tokenizer, a tiny random model."""

import sys
from pathlib import Path

import pytest
import torch

from olmolab import ModelConfig, Transformer
from olmolab.tokenizer import train_bpe

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"  # <repo>/../shared/data
EVAL_DATA = SHARED_DATA / "eval"
WIKITEXT = SHARED_DATA / "corpora" / "wikitext-2"


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models gain nothing from a second thread, and on a shared 2-core machine OpenMP's
    spinning threads make these tests 4x slower whenever another process is busy."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _no_hub(monkeypatch):
    """Tests never reach the network: where task files are missing, the hub fallback finds no
    `datasets` library (tests that exercise the fallback put a fake one in its place)."""
    monkeypatch.setitem(sys.modules, "datasets", None)


@pytest.fixture(scope="session")
def eval_data() -> Path:
    """<repo>/../shared/data/eval: the benchmarks' validation splits and OLMES's requests."""
    if not (EVAL_DATA / "hf").is_dir():
        pytest.skip(f"benchmark data not found at {EVAL_DATA} (the shared data of this project)")
    return EVAL_DATA


@pytest.fixture(scope="session")
def tokenizer():
    """A 512-token byte-level BPE (EOS 0, no BOS): it fits olmo2-tiny's vocabulary."""
    if not WIKITEXT.is_dir():
        pytest.skip(f"corpora not found at {WIKITEXT}")
    return train_bpe([(WIKITEXT / "valid.txt").read_text()[:200_000]], vocab_size=512)


def tiny_model(seed: int = 0, **overrides) -> Transformer:
    torch.manual_seed(seed)
    return Transformer(ModelConfig.preset("olmo2-tiny", **overrides)).eval()


@pytest.fixture
def model() -> Transformer:
    """olmo2-tiny with random weights: d_model 64, 2 layers, a 256-token window."""
    return tiny_model()
