"""Fixtures for the interchange and CLI tests: tiny checkpoints."""

import pytest

from olmolab.model_files import save_model
from tests.conftest import random_model


@pytest.fixture
def checkpoint(tmp_path, tokenizer):
    """An olmolab checkpoint directory of a random olmo2-tiny model, with its tokenizer."""
    return save_model(random_model(), tmp_path / "ckpt", tokenizer=tokenizer)
