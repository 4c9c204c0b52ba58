"""Causal attention of the bench model's shapes: olmolab's `kernel("causal_attention")` against SDPA.

Same tokens per batch (4096) at every length, 6 heads of 64, 2 threads, in fp32 and (where the
CPU has a bf16 unit) bf16. Both sides are timed interleaved (medians), forward plus backward
and forward alone; prints the ratio SDPA / olmolab and which of olmolab's paths ran: tiles
(fp32, olmolab's C++ kernel, `tiled_pays`), halves (fp32 without it, `halves_pay`), scores kept
(bf16 training, `kept_scores_pay`) or SDPA itself (then the two are the same call, and the ratio
is ~1).

    python bench/attention.py [--lengths 256,384,448,512,640,1024] [--dtypes fp32,bf16] [--rounds 7]
                              [--keep-freed-memory]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from common import (
    add_keep_freed_memory_flag,
    bf16_skipped,
    interleaved_medians,
    keep_freed_memory_if_asked,
    setup,
)

from olmolab.kernels import kernel
from olmolab.kernels.causal_attention import halves_pay, kept_scores_pay, tiled_pays

causal_attention = kernel("causal_attention")

TOKENS, HEADS, HEAD_DIM = 4096, 6, 64


def sdpa(q, k, v):
    return F.scaled_dot_product_attention(q, k, v, is_causal=True)


def olmolab_path(q: torch.Tensor) -> str:
    """Which path olmolab's causal attention takes in training on queries like `q`."""
    q = q.detach().requires_grad_()
    for name, pays in (("scores kept", kept_scores_pay), ("tiles", tiled_pays), ("halves", halves_pay)):
        if pays(q, q, q):
            return name
    return "SDPA"


def timed_pair(T: int, dtype: torch.dtype, rounds: int) -> tuple[float, float, float, float]:
    """(SDPA, olmolab) seconds for forward + backward, then for the forward alone."""
    q, k, v = (torch.randn(TOKENS // T, T, HEADS, HEAD_DIM, dtype=dtype).transpose(1, 2).requires_grad_()
               for _ in range(3))
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
    parser.add_argument("--lengths", default="128,256,332,384,448,512,640,1024")
    parser.add_argument("--dtypes", default="fp32,bf16", help="bf16 only where the CPU has a bf16 unit")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    add_keep_freed_memory_flag(
        parser, ": the kept scores' (T x T) buffers then stop page-faulting on fresh memory every call")
    args = parser.parse_args()
    setup(args.threads)
    keep_freed_memory_if_asked(args)
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}
    names = [d for d in args.dtypes.split(",") if not (d == "bf16" and bf16_skipped("bf16 rows"))]
    print(f"{TOKENS} tokens a batch, {HEADS} heads of {HEAD_DIM}, {args.threads} threads"
          + (", malloc keeping freed memory (both sides)" if args.keep_freed_memory else ""))
    print(f"{'dtype':>5}  {'length':>6}  {'path':>11}  {'fwd+bwd SDPA':>12}  {'olmolab':>8}  {'ratio':>6}  "
          f"{'fwd SDPA':>8}  {'olmolab':>8}  {'ratio':>6}")
    for name in names:
        for T in (int(t) for t in args.lengths.split(",")):
            train_sdpa, train_ours, fwd_sdpa, fwd_ours = timed_pair(T, dtypes[name], args.rounds)
            path = olmolab_path(torch.empty(1, HEADS, T, HEAD_DIM, dtype=dtypes[name]))
            print(f"{name:>5}  {T:6d}  {path:>11}  {train_sdpa * 1e3:9.1f} ms  {train_ours * 1e3:5.1f} ms  "
                  f"{train_sdpa / train_ours:5.2f}x  {fwd_sdpa * 1e3:5.1f} ms  {fwd_ours * 1e3:5.1f} ms  "
                  f"{fwd_sdpa / fwd_ours:5.2f}x")


if __name__ == "__main__":
    main()
