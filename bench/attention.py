"""Causal attention of the bench model's shapes: olmolab's `kernel("causal_attention")` against SDPA.

Same tokens per batch (4096) at every length, 6 heads of 64, fp32, 2 threads. Both sides are
timed interleaved (medians), forward plus backward and forward alone; prints the ratio
SDPA / olmolab. Where `halves_pay` is false the two are the same call, and the ratio is ~1.

    python bench/attention.py [--lengths 256,384,448,512,640,1024] [--rounds 7]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from common import interleaved_medians, setup

from olmolab.kernels import kernel
from olmolab.kernels.causal_attention import halves_pay

causal_attention = kernel("causal_attention")

TOKENS, HEADS, HEAD_DIM = 4096, 6, 64


def sdpa(q, k, v):
    return F.scaled_dot_product_attention(q, k, v, is_causal=True)


def timed_pair(T: int, rounds: int) -> tuple[float, float, float, float]:
    """(SDPA, olmolab) seconds for forward + backward, then for the forward alone."""
    q, k, v = (torch.randn(TOKENS // T, T, HEADS, HEAD_DIM).transpose(1, 2).requires_grad_() for _ in range(3))
    grad = torch.randn_like(q)

    def training(attention):
        def run():
            q.grad = k.grad = v.grad = None  # (accumulating into them would time an extra pass)
            attention(q, k, v).backward(grad)
        return run

    def inference(attention):
        def run():
            with torch.no_grad():
                attention(q, k, v)
        return run

    both = interleaved_medians({"sdpa": training(sdpa), "olmolab": training(causal_attention)}, rounds)
    fwd = interleaved_medians({"sdpa": inference(sdpa), "olmolab": inference(causal_attention)}, rounds)
    return both["sdpa"], both["olmolab"], fwd["sdpa"], fwd["olmolab"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", default="256,384,448,512,640,1024")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    setup(args.threads)
    print(f"{TOKENS} tokens a batch, {HEADS} heads of {HEAD_DIM}, fp32, {args.threads} threads")
    print(f"{'length':>6}  {'halves':>6}  {'fwd+bwd SDPA':>12}  {'olmolab':>8}  {'ratio':>6}  "
          f"{'fwd SDPA':>8}  {'olmolab':>8}  {'ratio':>6}")
    for T in (int(t) for t in args.lengths.split(",")):
        train_sdpa, train_ours, fwd_sdpa, fwd_ours = timed_pair(T, args.rounds)
        halves = halves_pay(torch.empty(1, HEADS, T, HEAD_DIM))
        print(f"{T:6d}  {'yes' if halves else 'no':>6}  {train_sdpa * 1e3:9.1f} ms  {train_ours * 1e3:5.1f} ms  "
              f"{train_sdpa / train_ours:5.2f}x  {fwd_sdpa * 1e3:5.1f} ms  {fwd_ours * 1e3:5.1f} ms  "
              f"{fwd_sdpa / fwd_ours:5.2f}x")


if __name__ == "__main__":
    main()
