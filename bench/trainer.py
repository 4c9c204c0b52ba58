"""The trainer's throughput against the bare training step, on the bench config.

The bare step is forward, backward, clipping and AdamW on a batch already in memory
(bench/train_step.py's). The trainer adds what a real run has: the data loader over a token
memmap, label building, the LR schedule, logging to metrics.jsonl and the progress bar. Its
per-step time is the difference between a 9-step and a 3-step run divided by 6, so start-up
and the final checkpoint cancel out; the checkpoint's own cost is reported separately, with
what it amounts to at OLMo's save interval of 1000 steps.

    python bench/trainer.py
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import BENCH_BATCH, BENCH_MODEL, BENCH_SEQ_LEN, median_time, setup
from train_step import adamw, olmolab_step

from olmolab import Transformer
from olmolab.config import RunConfig
from olmolab.train.trainer import Trainer


def trainer_seconds(config: dict, steps: int) -> tuple[float, float]:
    """(seconds of fit() for `steps` steps, seconds of its final checkpoint)."""
    config = {**config, "trainer": {**config["trainer"], "max_steps": steps}}
    trainer = Trainer(RunConfig.from_dict(config))
    saves = []
    save = trainer._save

    def timed_save():
        t0 = time.perf_counter()
        save()
        saves.append(time.perf_counter() - t0)

    trainer._save = timed_save
    t0 = time.perf_counter()
    trainer.fit()
    return time.perf_counter() - t0, saves[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    setup(2)
    with tempfile.TemporaryDirectory() as tmp:
        tokens = Path(tmp) / "tokens.npy"
        n = 40 * BENCH_BATCH * BENCH_SEQ_LEN
        np.random.default_rng(0).integers(2, BENCH_MODEL.vocab_size, n, dtype=np.uint16).tofile(tokens)
        base = {
            "model": BENCH_MODEL.to_dict(),
            "data": {"paths": [str(tokens)], "dtype": "uint16", "seq_len": BENCH_SEQ_LEN},
            "trainer": {"global_batch_size": BENCH_BATCH, "micro_batch_size": BENCH_BATCH, "save_interval": None,
                        "progress": True, "peak_flops": 1.8e11, "precision": "fp32"},  # as the bare step
        }
        model = Transformer(BENCH_MODEL).train()
        ids = torch.randint(0, BENCH_MODEL.vocab_size, (BENCH_BATCH, BENCH_SEQ_LEN))
        labels = torch.cat([ids[:, 1:], torch.full((BENCH_BATCH, 1), -100)], dim=1)
        bare = olmolab_step(model, adamw(model), ids, labels)
        bare(), bare()
        per_step, bare_step, saves = [], [], []
        for r in range(args.rounds):
            base["trainer"]["run_dir"] = f"{tmp}/run{r}"
            short, _ = trainer_seconds(base | {"trainer": {**base["trainer"], "run_dir": f"{tmp}/short{r}"}}, 3)
            bare_step.append(median_time(bare, 3))
            long, save = trainer_seconds(base | {"trainer": {**base["trainer"], "run_dir": f"{tmp}/long{r}"}}, 9)
            per_step.append((long - short) / 6)
            saves.append(save)
    trainer_s, bare_s, save_s = statistics.median(per_step), statistics.median(bare_step), statistics.median(saves)
    tokens_per_step = BENCH_BATCH * BENCH_SEQ_LEN
    print(f"bench model, batch {BENCH_BATCH} x seq {BENCH_SEQ_LEN}, fp32, 2 threads")
    print(f"  bare step       {bare_s * 1e3:8.1f} ms  {tokens_per_step / bare_s:8.0f} tokens/s")
    print(f"  trainer step    {trainer_s * 1e3:8.1f} ms  {tokens_per_step / trainer_s:8.0f} tokens/s  "
          f"(loader, labels, schedule, metrics.jsonl, progress bar)")
    print(f"  checkpoint      {save_s * 1e3:8.1f} ms  = {save_s / 1000 / bare_s:.2%} of a step at save_interval 1000")
    print(f"ratio trainer / bare step (tokens/s): {bare_s / trainer_s:.2f}x")


if __name__ == "__main__":
    main()
