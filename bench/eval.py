"""Downstream evaluation throughput on PIQA: olmolab's scorer against a naive baseline.

The bench model (OLMo 2: d_model 384, 6 layers, 6 heads, SwiGLU 1024, vocab 16384, window 512),
random init, fp32, 2 threads; a 16k byte-level BPE trained on the shared corpora gives realistic
token counts. Three ways to score the same requests, alternated within each round (medians):

- naive:  one forward per (example, choice) request, batch 1, full logits: the anchor.
- rows:   identical model inputs run once, rows sorted by length and batched (`pack=False`).
- packed: each distinct context run once with all its continuations packed behind it (`pack=True`,
          the default), logits computed only where tokens are scored.

All three must agree on every log-likelihood (checked below). Where the CPU has a bf16 unit
(AMX or AVX512-BF16), a fourth side scores packed with the weights in bf16 (`olmolab eval
--dtype bf16`); its log-likelihoods are reported against fp32's, not required to agree. Prints
examples/s and the ratio against naive for each PIQA variant.

    python bench/eval.py [--variants rc:0,rc:5,mc:5] [--examples 32] [--rounds 3] [--batch-size 32]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.append(str(Path(__file__).parent))
from common import BENCH_MODEL, bench_tokenizer, bf16_weights, setup

from olmolab import Transformer
from olmolab.eval.downstream import all_requests, fit_window, loglikelihoods, tokenize_requests
from olmolab.eval.tasks import TaskSpec, build_examples
from olmolab.kernels.cpu_matmul import cpu_bf16_matmul_unit
from olmolab.train.energy import cpu_model_name

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def naive_loglikelihoods(model, pairs) -> np.ndarray:
    """The anchor: one request per forward, log-softmax over the full logits."""
    window = model.config.max_seq_len
    out = []
    with torch.inference_mode():
        for pair in pairs:
            pair = fit_window(pair, window)
            ids = torch.tensor([pair.context + pair.continuation[:-1]])
            logprobs = model(ids)[0].log_softmax(-1)
            start = len(pair.context) - 1
            out.append(sum(float(logprobs[start + j, tok]) for j, tok in enumerate(pair.continuation)))
    return np.array(out)


def bench_variant(model, bf16, tokenizer, spec: TaskSpec, n_examples: int, rounds: int, batch_size: int) -> None:
    examples = build_examples(spec, SHARED / "eval", limit=n_examples)
    pairs = tokenize_requests(all_requests(examples), tokenizer)
    sides = {
        "naive": lambda: naive_loglikelihoods(model, pairs),
        "rows": lambda: loglikelihoods(model, pairs, batch_size, pack=False)[0],
        "packed": lambda: loglikelihoods(model, pairs, batch_size, pack=True)[0],
    }
    if bf16 is not None:
        sides["packed bf16"] = lambda: loglikelihoods(bf16, pairs, batch_size, pack=True)[0]
    times: dict[str, list[float]] = {name: [] for name in sides}
    results = {}
    for _ in range(rounds):
        for name, fn in sides.items():
            t0 = time.perf_counter()
            results[name] = fn()
            times[name].append(time.perf_counter() - t0)
    for name in ("rows", "packed"):
        diff = float(np.abs(results[name] - results["naive"]).max())
        assert diff < 1e-3, f"{name} disagrees with naive by {diff}"
    n_tokens = sum(len(p.context) + len(p.continuation) for p in pairs)
    print(
        f"\nPIQA {spec.formulation} {spec.num_shots}-shot: {n_examples} examples, {len(pairs)} requests "
        f"(incl. PMI's), {n_tokens} request tokens"
    )
    naive = statistics.median(times["naive"])
    for name in sides:
        median = statistics.median(times[name])
        print(f"  {name:11s} {n_examples / median:7.2f} examples/s   {naive / median:5.2f}x naive")
    if bf16 is not None:
        diff = np.abs(results["packed bf16"] - results["packed"])
        print(f"  bf16 log-likelihoods vs fp32: mean |difference| {diff.mean():.4f}, max {diff.max():.4f} nats")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--variants", default="rc:0,rc:5,mc:5", help="formulation:shots, comma-separated")
    parser.add_argument("--examples", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if not (SHARED / "eval" / "hf" / "piqa").exists():
        sys.exit(f"shared data not found at {SHARED}; this benchmark reads PIQA and the corpora from there")
    setup(args.threads)
    tokenizer = bench_tokenizer(SHARED)
    model = Transformer(BENCH_MODEL).eval()
    bf16 = bf16_weights(model, "packed bf16")
    print(
        f"CPU: {cpu_model_name()} (bf16 unit: {cpu_bf16_matmul_unit() or 'none'}); bench model {BENCH_MODEL.name}: "
        f"{model.num_params() / 1e6:.1f}M params, {torch.get_num_threads()} threads, batch size {args.batch_size}"
    )
    for variant in args.variants.split(","):
        formulation, shots = variant.split(":")
        bench_variant(
            model,
            bf16,
            tokenizer,
            TaskSpec("piqa", formulation, int(shots)),
            args.examples,
            args.rounds,
            args.batch_size,
        )


if __name__ == "__main__":
    main()
