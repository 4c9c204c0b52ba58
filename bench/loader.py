"""Training loader speed and memory: tokens/s of `TrainLoader`, and RSS as the corpus grows 8x.

    python bench/loader.py [--base-tokens 32000000] [--batches 3000]

Speed: batches of the bench model's shape (8 x 512 tokens, as bench/common.py) from random
instances of uint16 token files, in the main process and with 2 prefetch workers. The bar is
50x the bench model's training speed; that model trains at roughly 15-25k tokens/s on this
CPU, so the ratio printed is against an ASSUMED 20,000 tokens/s (not measured here).
Memory: the same run over a 1x and an 8x corpus, each in a fresh process; the loader reads
byte ranges, so RSS should not grow with the corpus (only the order, 4 bytes per instance).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SEQ_LEN, BATCH = 512, 8
ASSUMED_TRAIN_TOKENS_PER_S = 20_000
FILE_TOKENS = 8_000_000


def write_corpus(directory: Path, tokens: int) -> None:
    directory.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(0, tokens, FILE_TOKENS):
        rng.integers(0, 50_000, size=min(FILE_TOKENS, tokens - i), dtype=np.uint16).tofile(directory / f"part-{i // FILE_TOKENS:05d}.npy")


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def child(corpus: Path, batches: int, workers: int) -> None:
    """One measurement in a fresh process: RSS before, tokens/s and RSS after."""
    import itertools

    from olmolab.data import DataConfig

    before = rss_mb()
    data = DataConfig(paths=[str(corpus)], seq_len=SEQ_LEN, dtype="uint16", seed=0, num_workers=workers).build(BATCH)
    loader = data.loader()
    next(iter(loader))  # start-up (order, workers) is not throughput
    start = time.perf_counter()
    tokens = sum(batch["input_ids"].numel() for batch in itertools.islice(loader, batches))
    seconds = time.perf_counter() - start
    print(json.dumps({"tokens_per_s": tokens / seconds, "rss_before": before, "rss_after": rss_mb(), "instances": len(data.dataset)}))


def run_child(corpus: Path, batches: int, workers: int) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--child", str(corpus), "--batches", str(batches), "--workers", str(workers)],
        check=True, capture_output=True, text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base-tokens", type=int, default=32_000_000, help="tokens of the 1x corpus")
    parser.add_argument("--batches", type=int, default=3000)
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--workers", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        child(args.child, args.batches, args.workers)
        return 0
    root = Path(tempfile.mkdtemp(prefix="olmolab-loader-bench-"))
    try:
        write_corpus(root / "1x", args.base_tokens)
        write_corpus(root / "8x", 8 * args.base_tokens)
        from common import machine

        print(machine())
        print(f"loader benchmark: batches of {BATCH} x {SEQ_LEN} tokens, {args.batches} batches per measurement")
        for workers in (0, 2):
            r = run_child(root / "1x", args.batches, workers)
            print(
                f"  1x corpus, {workers} workers: {r['tokens_per_s']:,.0f} tokens/s = "
                f"{r['tokens_per_s'] / ASSUMED_TRAIN_TOKENS_PER_S:,.0f}x the assumed {ASSUMED_TRAIN_TOKENS_PER_S:,} tokens/s "
                f"of bench-model training (bar 50x)"
            )
        small, large = run_child(root / "1x", args.batches, 0), run_child(root / "8x", args.batches, 0)
        for name, r, tokens in (("1x", small, args.base_tokens), ("8x", large, 8 * args.base_tokens)):
            print(
                f"  {name} corpus ({tokens / 1e6:,.0f}M tokens, {r['instances']:,} instances): RSS {r['rss_after']:,.0f} MB "
                f"(+{r['rss_after'] - r['rss_before']:,.1f} MB for building the data and loading {args.batches} batches)"
            )
        print(f"  RSS 8x / 1x = {large['rss_after'] / small['rss_after']:.3f} (flat is 1.0)")
    finally:
        shutil.rmtree(root)
    return 0


if __name__ == "__main__":
    sys.exit(main())
