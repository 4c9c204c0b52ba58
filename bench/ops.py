"""The model's hand-written elementwise ops (`olmolab.kernels.autograd`) against autograd's composites
of the same functions, forward plus backward, on the bench model's activations (8 x 512 tokens,
d_model 384, 6 heads, SwiGLU hidden 1024), fp32. Prints milliseconds of each and the ratio.

    python bench/ops.py [--rounds 21]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from common import BENCH_BATCH, BENCH_MODEL, BENCH_SEQ_LEN, interleaved_medians, setup

from olmolab.kernels.autograd import rms_norm, rotary, swiglu


def composite_swiglu(x):
    up, gate = x.chunk(2, dim=-1)
    return F.silu(gate) * up


def composite_rotary(x, cos, sin):
    x1, x2 = x.chunk(2, dim=-1)
    cos, sin = torch.cat([cos, cos], dim=-1), torch.cat([sin, sin], dim=-1)
    return x * cos + torch.cat([-x2, x1], dim=-1) * sin


def forward_backward(fn, x: torch.Tensor, *params: torch.Tensor):
    """fn(x, *params) forward and backward, x a fresh leaf each time (as an activation is)."""
    grad = torch.randn_like(fn(x, *params))

    def run():
        leaf = x.clone().requires_grad_()
        fn(leaf, *params).backward(grad)
    return run


def cases() -> dict[str, tuple]:
    c, B, T = BENCH_MODEL, BENCH_BATCH, BENCH_SEQ_LEN
    weight = (torch.rand(c.d_model) + 0.5).requires_grad_()
    angles = torch.rand(T, 1, c.head_dim // 2) * 6
    cos, sin = angles.cos(), angles.sin()
    hidden = torch.randn(B, T, c.d_model)
    return {
        "RMSNorm": (hidden, (weight,), lambda x, w: rms_norm(x, w, 1e-6), lambda x, w: F.rms_norm(x, (c.d_model,), w, 1e-6)),
        "RoPE": (torch.randn(B, T, c.n_heads, c.head_dim), (), lambda x: rotary(x, cos, sin),
                 lambda x: composite_rotary(x, cos, sin)),
        "SwiGLU": (torch.randn(B, T, 2 * c.mlp_hidden_size), (), swiglu, composite_swiglu),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=21)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    setup(args.threads)
    print(f"{BENCH_BATCH} x {BENCH_SEQ_LEN} tokens, fp32, {args.threads} threads; forward + backward")
    for name, (x, params, ours, composite) in cases().items():
        seconds = interleaved_medians(
            {"composite": forward_backward(composite, x, *params), "olmolab": forward_backward(ours, x, *params)},
            args.rounds,
        )
        print(f"  {name:8s} composite {seconds['composite'] * 1e3:6.2f} ms   olmolab {seconds['olmolab'] * 1e3:6.2f} ms   "
              f"ratio {seconds['composite'] / seconds['olmolab']:.2f}x")


if __name__ == "__main__":
    main()
