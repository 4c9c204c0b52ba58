"""What the benchmarks share: the bench model, thread settings and a robust timer.

The machines are noisy, so every benchmark reports a *ratio* against an anchor measured in
the same run, interleaving the two sides and taking medians.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from olmolab import ModelConfig
from olmolab.allocator import keep_freed_memory
from olmolab.precision import bf16_is_fast

# The bench model of the issues: OLMo 2, d_model 384, 6 layers, 6 heads, SwiGLU 1024, vocab 16384.
BENCH_MODEL = ModelConfig.preset(
    "olmo2-tiny", name="olmo2-bench", d_model=384, n_layers=6, n_heads=6, n_kv_heads=6,
    mlp_hidden_size=1024, vocab_size=16384, embedding_size=16384, max_seq_len=512,
)
BENCH_SEQ_LEN, BENCH_BATCH = 512, 8

WORDS = "the of and to in is was for on that with as by at from his her it an are were which this be".split()
"""Filler vocabulary for the post-training benchmarks' synthetic conversations and prompts."""


def bf16_skipped(rows: str) -> bool:
    """Whether this CPU has no bf16 unit, so the `rows` timing bf16 are skipped (bf16 would be
    emulated: those rows would time the emulation); says why where so."""
    fast, why = bf16_is_fast(torch.device("cpu"))
    if not fast:
        print(f"{rows} skipped: {why}")
    return not fast


def bf16_weights(model: torch.nn.Module, rows: str) -> torch.nn.Module | None:
    """A copy of `model` with bf16 weights (what `--dtype bf16` evaluates and generates with), or
    None where `bf16_skipped(rows)`."""
    return None if bf16_skipped(rows) else copy.deepcopy(model).to(torch.bfloat16)


def bench_tokenizer(shared: Path):
    """The benchmarks' BPE: BENCH_MODEL's vocabulary, trained on two of the shared corpora."""
    from olmolab.tokenizer import train_bpe

    corpora = [shared / "corpora/wikitext-2/valid.txt", shared / "corpora/tinyshakespeare/input.txt"]
    return train_bpe([p.read_text() for p in corpora], BENCH_MODEL.vocab_size)


def add_keep_freed_memory_flag(parser: argparse.ArgumentParser, why: str = "") -> None:
    """`--keep-freed-memory`: malloc tuned as olmolab's trainer tunes it on CPU, for both sides
    (`keep_freed_memory_if_asked` applies it)."""
    parser.add_argument("--keep-freed-memory", action="store_true",
                        help="tune malloc as olmolab's trainer does on CPU (olmolab/allocator.py), for both sides" + why)


def keep_freed_memory_if_asked(args: argparse.Namespace) -> None:
    if args.keep_freed_memory and not keep_freed_memory():
        sys.exit("--keep-freed-memory needs glibc")


def setup(threads: int = 2, seed: int = 0) -> None:
    """Threads and seed for a benchmark; the first call prints the machine the figures come from."""
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    if not _said_machine:
        print(machine(), flush=True)
        _said_machine.append(True)


_said_machine: list[bool] = []


def machine() -> str:
    """The CPU (the figures differ between this project's AMD EPYC and Intel Xeon machines), its
    bf16 unit, the library olmolab's fp32 products run on there, and torch's version."""
    from olmolab.kernels.cpu_matmul import cpu_bf16_matmul_unit, cpu_matmul_library, cpu_vendor
    from olmolab.train.energy import cpu_model_name

    return (f"machine: {cpu_model_name()} ({cpu_vendor() or 'vendor unknown'}, {os.cpu_count()} CPUs, bf16 unit "
            f"{cpu_bf16_matmul_unit() or 'none'}, olmolab's fp32 products on {cpu_matmul_library()}), "
            f"torch {torch.__version__}")


def median_time(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def interleaved_samples(fns: dict[str, Callable[[], object]], rounds: int, per_round: int = 1) -> dict[str, list[float]]:
    """Seconds per call of each fn, one sample a round, alternating them so drift hits all sides alike."""
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            samples[name].append(median_time(fn, per_round))
    return samples


def interleaved_medians(fns: dict[str, Callable[[], object]], rounds: int, per_round: int = 1) -> dict[str, float]:
    """Median seconds per call of each fn, alternating them so drift hits all sides alike."""
    return {name: statistics.median(s) for name, s in interleaved_samples(fns, rounds, per_round).items()}
