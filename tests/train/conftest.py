"""A tiny run: random tokens in a raw OLMo-style memmap, the olmo2-tiny model, a few steps."""

import numpy as np
import pytest
import yaml

SEQ_LEN = 32


def write_tokens(path, n_tokens, seed=0, vocab=500):
    tokens = np.random.default_rng(seed).integers(2, vocab, n_tokens, dtype=np.uint16)
    tokens.tofile(path)  # a raw memmap with no header, as OLMo's tooling writes
    return path


def run_config(tmp_path, **trainer):
    tokens = write_tokens(tmp_path / "train.npy", 64 * SEQ_LEN)
    valid = write_tokens(tmp_path / "valid.npy", 8 * SEQ_LEN, seed=1)
    return {
        "model": {"preset": "olmo2-tiny", "max_seq_len": SEQ_LEN},
        "data": {"paths": [str(tokens)], "validation_paths": [str(valid)], "seq_len": SEQ_LEN, "dtype": "uint16",
                 "seed": 3},
        "trainer": {"run_dir": str(tmp_path / "run"), "global_batch_size": 4, "micro_batch_size": 2,
                    "max_steps": 6, "save_interval": 2, "keep_last": 10, "progress": False, "peak_flops": 1e11,
                    "z_loss_multiplier": 1e-4} | trainer,
        "optim": {"lr": 3e-3},
        "scheduler": {"name": "cosine", "t_warmup": 2},
    }


@pytest.fixture
def tiny_run(tmp_path):
    """A function returning (path of a YAML run config, its dict), with trainer overrides."""

    def make(name="run.yaml", **trainer):
        raw = run_config(tmp_path, **trainer)
        path = tmp_path / name
        path.write_text(yaml.safe_dump(raw))
        return path, raw

    return make
