"""Post-training fixtures: a tiny base checkpoint with a trained BPE, and chat data files."""

import gzip
import json
import random

import pytest
import torch
import yaml

from olmolab import ModelConfig, Transformer
from olmolab.model_files import save_model
from olmolab.tokenizer import train_bpe

MAX_SEQ_LEN = 96


def conversation(rng: random.Random) -> list[dict]:
    a, b = rng.randint(0, 99), rng.randint(0, 99)
    messages = [{"role": "user", "content": f"What is {a} + {b}?"}, {"role": "assistant", "content": f"{a + b}"}]
    if rng.random() < 0.3:
        messages = [{"role": "system", "content": "Answer with a number."}, *messages]
    if rng.random() < 0.3:
        messages += [{"role": "user", "content": "Double it."}, {"role": "assistant", "content": f"{2 * (a + b)}"}]
    return messages


def write_jsonl(path, rows) -> str:
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "wt", encoding="utf-8") as f:
        for row in rows:
            f.write((row if isinstance(row, str) else json.dumps(row)) + "\n")
    return str(path)


@pytest.fixture(scope="session")
def chat_tokenizer():
    rng = random.Random(0)
    texts = [m["content"] for _ in range(300) for m in conversation(rng)]
    return train_bpe(texts + ["<|user|>\n<|assistant|>\n<|system|>\n"] * 50, vocab_size=320)


@pytest.fixture
def base_checkpoint(tmp_path, chat_tokenizer):
    torch.manual_seed(0)
    model = Transformer(ModelConfig.preset("olmo2-tiny", max_seq_len=MAX_SEQ_LEN))
    return save_model(model, tmp_path / "base", tokenizer=chat_tokenizer)


@pytest.fixture
def sft_data(tmp_path):
    rng = random.Random(1)
    return write_jsonl(tmp_path / "chat.jsonl.gz", [{"messages": conversation(rng)} for _ in range(24)])


def write_config(path, base_checkpoint, method: str, section: dict, trainer: dict, optim: dict, scheduler: dict):
    """An `olmolab METHOD` config of a few steps from `base_checkpoint`, written to `path`."""
    defaults = {"load_path": str(base_checkpoint), "run_dir": str(path.parent / method), "global_batch_size": 4,
                "micro_batch_size": 2, "max_steps": 2, "save_interval": 2, "progress": False, "peak_flops": 1e11}
    raw = {method: section, "trainer": defaults | trainer, "optim": optim, "scheduler": scheduler}
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.fixture
def sft_config(tmp_path, base_checkpoint, sft_data):
    """A function writing an `olmolab sft` config (YAML) of a few steps; returns its path."""

    def make(name="sft.yaml", sft=None, **trainer):
        return write_config(tmp_path / name, base_checkpoint, "sft",
                            {"paths": [sft_data], "max_seq_len": MAX_SEQ_LEN, "seed": 2} | (sft or {}),
                            {"max_steps": 4} | trainer, {"lr": 3e-3}, {"name": "linear", "alpha_f": 0.0})

    return make


@pytest.fixture
def dpo_data(tmp_path):
    """Arithmetic pairs: the chosen answer is right, the rejected one is off by one."""
    rng = random.Random(2)
    rows = []
    for _ in range(16):
        a, b = rng.randint(0, 99), rng.randint(0, 99)
        prompt = [{"role": "user", "content": f"What is {a} + {b}?"}]
        rows.append({"chosen": [*prompt, {"role": "assistant", "content": str(a + b)}],
                     "rejected": [*prompt, {"role": "assistant", "content": str(a + b + 1)}]})
    return write_jsonl(tmp_path / "pairs.jsonl", rows)


@pytest.fixture
def dpo_config(tmp_path, base_checkpoint, dpo_data):
    def make(name="dpo.yaml", dpo=None, **trainer):
        return write_config(tmp_path / name, base_checkpoint, "dpo",
                            {"paths": [dpo_data], "max_seq_len": MAX_SEQ_LEN, "beta": 0.5} | (dpo or {}),
                            trainer, {"lr": 1e-3}, {"name": "constant"})

    return make
