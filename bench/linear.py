"""The bench model's projections, forward plus backward, by the two libraries `kernel("linear")` chooses
between on CPU: oneDNN (for the product and the input gradient, MKL for the weight gradient)
against `F.linear` (MKL). Prints which one `cpu_matmul.cpu_matmul_library()` picks on this machine.

8 x 512 tokens, fp32, 2 threads, interleaved medians; prints GFLOP/s of each and the ratio.

    python bench/linear.py [--rounds 9]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from common import BENCH_BATCH, BENCH_MODEL, BENCH_SEQ_LEN, interleaved_medians, setup

from olmolab.kernels.cpu_matmul import _OneDNNLinear, cpu_matmul_library, cpu_vendor, onednn_linear_works


def projections() -> dict[str, tuple[int, int]]:
    c = BENCH_MODEL
    return {
        "w_qkv": (c.d_model, c.d_model + 2 * c.kv_dim),
        "attention w_out": (c.d_model, c.d_model),
        "w_in": (c.d_model, 2 * c.mlp_hidden_size),
        "feed-forward w_out": (c.mlp_hidden_size, c.d_model),
    }


def timed_pair(d_in: int, d_out: int, rounds: int) -> dict[str, float]:
    x = torch.randn(BENCH_BATCH, BENCH_SEQ_LEN, d_in, requires_grad=True)
    weight = (torch.randn(d_out, d_in) / d_in**0.5).requires_grad_()
    grad = torch.randn(BENCH_BATCH, BENCH_SEQ_LEN, d_out)

    def step(fn):
        def run():
            x.grad = weight.grad = None  # (accumulating into them would time an extra pass)
            fn(x, weight).backward(grad)
        return run

    return interleaved_medians({"F.linear": step(F.linear), "oneDNN": step(_OneDNNLinear.apply)}, rounds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    setup(args.threads)
    if not onednn_linear_works():
        sys.exit("this torch build has no oneDNN linear: kernel('linear') is F.linear here")
    print(f"CPU vendor {cpu_vendor()}: kernel('linear') uses {cpu_matmul_library()}")
    tokens = BENCH_BATCH * BENCH_SEQ_LEN
    print(f"{tokens} tokens, fp32, {args.threads} threads; forward + backward (3 matmuls)")
    total = {"F.linear": 0.0, "oneDNN": 0.0}
    for name, (d_in, d_out) in projections().items():
        seconds = timed_pair(d_in, d_out, args.rounds)
        flops = 3 * 2 * tokens * d_in * d_out
        for side, s in seconds.items():
            total[side] += s
        print(f"  {name:18s} {d_in:5d} -> {d_out:5d}   F.linear {flops / seconds['F.linear'] / 1e9:4.0f} GFLOP/s  "
              f"oneDNN {flops / seconds['oneDNN'] / 1e9:4.0f} GFLOP/s   "
              f"oneDNN / F.linear {seconds['F.linear'] / seconds['oneDNN']:.2f}x")
    print(f"all four: F.linear {total['F.linear'] * 1e3:.1f} ms, oneDNN {total['oneDNN'] * 1e3:.1f} ms, "
          f"oneDNN / F.linear {total['F.linear'] / total['oneDNN']:.2f}x")


if __name__ == "__main__":
    main()
