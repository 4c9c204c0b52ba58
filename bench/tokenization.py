"""Tokenization speed: `olmolab data tokenize` with N workers against tokenizers' own batch encoders.

Anchors, the floor of the work: tokenizers' `encode_batch` (and its offset-free twin
`encode_batch_fast`, which olmolab uses) called once on the very texts our pipeline encodes,
already read, parsed and stripped, with the same parallelism: N threads of tokenizers' pool
(RAYON_NUM_THREADS). Ours is the whole job end to end: reading the .jsonl.gz and .txt files,
parsing, encoding in N worker processes, writing shards and indexes. The bar: ours / anchor
speed >= 0.9. Each N runs in its own process (tokenizers sizes its pool once per process); the
sides alternate within each round and the ratio is the median of the rounds' ratios, so load
from other processes hits both sides alike.

    python bench/tokenization.py [--workers 1 2] [--rounds 3]

(Not bench/tokenize.py: a script there would shadow the standard library's `tokenize` for
every script in bench/, and `import torch` needs the real one.)

Corpus: ../shared/data/corpora: the Python 3.11 docs (JSON lines, gzip) and WikiText-2
valid + test (.txt, one document per paragraph); OLMo 2's dolma2 tokenizer.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
INPUTS = [
    SHARED / "corpora/python-docs/python-3.11-docs.jsonl.gz",
    SHARED / "corpora/wikitext-2/valid.txt",
    SHARED / "corpora/wikitext-2/test.txt",
]
TOKENIZER = SHARED / "tokenizers/allenai_dolma2.json"


def cpu_seconds() -> float:
    """CPU time of this process and its finished children (the worker pools)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def timed(fn) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), cpu_seconds()
    fn()
    return time.perf_counter() - wall, cpu_seconds() - cpu


def measure(workers: int, rounds: int) -> None:
    """In a process whose tokenizers thread pool has `workers` threads: alternate the three sides."""
    from olmolab.data.documents import expand_inputs, iter_documents
    from olmolab.data.shards import open_token_files
    from olmolab.data.tokenize import tokenize_files
    from olmolab.tokenizer import Tokenizer

    tokenizer = Tokenizer.from_file(TOKENIZER)
    hf = tokenizer.hf
    texts = [d.text for d in iter_documents(expand_inputs(INPUTS), txt_split="paragraph") if d.text]
    tokens = sum(len(ids) + 1 for ids in tokenizer.encode_batch(texts))  # also warms caches up
    out_root = Path(tempfile.mkdtemp(prefix="olmolab-bench-"))
    sides = {
        "olmolab tokenize": lambda r: tokenize_files(INPUTS, tokenizer, out_root / str(r), workers=workers, txt_split="paragraph"),
        "encode_batch": lambda r: hf.encode_batch(texts, add_special_tokens=False),
        "encode_batch_fast": lambda r: hf.encode_batch_fast(texts, add_special_tokens=False),
    }
    samples: dict[str, list[tuple[float, float]]] = {name: [] for name in sides}
    try:
        for r in range(rounds):
            for name, side in sides.items():
                samples[name].append(timed(lambda side=side, r=r: side(r)))
        assert sum(f.num_tokens for f in open_token_files([out_root / "0"])) == tokens  # the same work
    finally:
        shutil.rmtree(out_root)
    ours = samples["olmolab tokenize"]
    print(f"workers={workers}: {len(texts):,} docs, {tokens:,} tokens, load average {os.getloadavg()[0]:.1f}")
    print(f"  {'olmolab tokenize':18} {tokens / statistics.median(w for w, _ in ours):>11,.0f} tok/s")
    for anchor in ("encode_batch", "encode_batch_fast"):
        wall = statistics.median(a / o for (a, _), (o, _) in zip(samples[anchor], ours, strict=True))
        cpu = statistics.median(a / o for (_, a), (_, o) in zip(samples[anchor], ours, strict=True))
        speed = tokens / statistics.median(w for w, _ in samples[anchor])
        print(f"  {anchor:18} {speed:>11,.0f} tok/s   ratio {wall:.2f} (bar 0.90)   CPU-time ratio {cpu:.2f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not all(p.exists() for p in [*INPUTS, TOKENIZER]):
        print(f"shared data not found under {SHARED}; nothing to measure")
        return 1
    if args.child is not None:
        measure(args.child, args.rounds)
        return 0
    from common import machine  # (torch with it: only in this parent process)

    print(machine())
    print(
        f"tokenize benchmark, {os.cpu_count()} CPUs; ratio = olmolab speed / anchor speed at the same parallelism "
        "(median of per-round ratios); CPU-time ratio = anchor CPU seconds / ours, the overhead without scheduling noise"
    )
    for workers in args.workers:
        env = {**os.environ, "RAYON_NUM_THREADS": str(workers)}
        subprocess.run([sys.executable, __file__, "--child", str(workers), "--rounds", str(args.rounds)], env=env, check=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
