"""What denormal floats cost a CPU, and what flushing them to zero (olmolab/denormals.py) gives back.

First, how they arise: the trainer's AdamW (fused, OLMo's betas 0.9/0.95 and eps 1e-8) on rows
that get gradients for a few steps and then none, as the embedding rows of tokens the data
stops showing: when their moments turn denormal, and how many still are 3000 steps on. Then two ops, each timed against
an anchor, the same op over normal floats in the same process:

- an AdamW step over a state half of which has decayed into the denormals;
- the fused loss's softmax over a chunk of logits (1024 x 16384) spread wide (std 20 nats: the
  exp of the smallest are denormal) against std 1.

Each runs in a fresh process with and without the flush: it has to be set before PyTorch starts
its thread pool, and once set, it cannot be unset in the pool's threads.

    python bench/denormals.py [--threads 2] [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import interleaved_medians, setup

from olmolab.denormals import flush_denormals
from olmolab.train.energy import cpu_model_name

SMALLEST_NORMAL = torch.finfo(torch.float32).tiny


def denormal_steps(rows: int = 512, width: int = 64, fed_steps: int = 10, steps: int = 3000):
    """Rows fed `fed_steps` steps of gradients, then none, under AdamW as the trainer builds it (no
    flush in this process): the first step at which a moment is denormal, and the share of moments
    denormal at the last step."""
    param = torch.nn.Parameter(torch.randn(rows, width) * 0.02)
    optimizer = torch.optim.AdamW([param], lr=4e-4, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1, fused=True)
    first = None
    for step in range(1, steps + 1):
        param.grad = torch.randn(rows, width) * 1e-3 if step <= fed_steps else torch.zeros(rows, width)
        optimizer.step()
        moments = torch.stack([optimizer.state[param]["exp_avg"], optimizer.state[param]["exp_avg_sq"]])
        denormal = (moments != 0) & (moments.abs() < SMALLEST_NORMAL)
        if first is None and denormal.any():
            first = step
    return first, denormal.float().mean().item()


def adamw_steps(elements: int = 6_000_000):
    """(an AdamW step over a normal state, one over a state half of which is denormal)."""
    def build(denormal: bool):
        param = torch.nn.Parameter(torch.randn(elements) * 0.02)
        optimizer = torch.optim.AdamW([param], lr=4e-4, betas=(0.9, 0.95), eps=1e-8, fused=True)
        param.grad = torch.randn(elements) * 1e-3
        optimizer.step()
        if denormal:  # rows the data stopped reaching: no gradient, moments decayed past 2^-126
            param.grad[elements // 2:] = 0
            state = optimizer.state[param]
            state["exp_avg"][elements // 2:] = 1e-39
            state["exp_avg_sq"][elements // 2:] = 1e-40
        return optimizer.step
    return build(False), build(True)


def softmaxes(rows: int = 1024, vocab: int = 16384):
    """(the softmax of a chunk of logits of std 1, of std 20), in place on an fp32 buffer as the fused loss does."""
    buffer = torch.empty(rows, vocab)
    g = torch.Generator().manual_seed(0)
    narrow, wide = torch.randn(rows, vocab, generator=g), torch.randn(rows, vocab, generator=g) * 20
    return (lambda: torch.softmax(buffer.copy_(narrow), -1, out=buffer),
            lambda: torch.softmax(buffer.copy_(wide), -1, out=buffer))


def child(flush: bool, threads: int, rounds: int) -> None:
    where = flush_denormals() if flush else "nowhere (not asked)"  # before anything starts the thread pool
    setup(threads)
    normal_adamw, denormal_adamw = adamw_steps()
    narrow, wide = softmaxes()
    for fn in (normal_adamw, denormal_adamw, narrow, wide):  # warm-up
        fn()
    ms = interleaved_medians({"adamw normal": normal_adamw, "adamw denormal": denormal_adamw,
                              "softmax std 1": narrow, "softmax std 20": wide}, rounds=rounds)
    print(json.dumps({"flushed": where, **{k: v * 1e3 for k, v in ms.items()}}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--child", choices=["flush", "keep"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child == "flush", args.threads, args.rounds)
        return
    print(f"CPU: {cpu_model_name()}; {args.threads} threads, medians of {args.rounds} interleaved rounds")
    first, share = denormal_steps()
    print(f"AdamW moments of rows fed gradients for 10 steps, then none: the first denormal at step {first}; "
          f"at step 3000, {share:.0%} of them are denormal (0.9 x the smallest denormals rounds back to them)")
    for mode in ("keep", "flush"):
        out = subprocess.run([sys.executable, __file__, "--child", mode, "--threads", str(args.threads),
                              "--rounds", str(args.rounds)], capture_output=True, text=True, check=True)
        ms = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"{'flushed' if mode == 'flush' else 'kept'} denormals (flushed in: {ms['flushed']}):")
        print(f"  AdamW step, half the state denormal: {ms['adamw denormal']:.1f} ms against "
              f"{ms['adamw normal']:.1f} normal: {ms['adamw denormal'] / ms['adamw normal']:.2f}x the time")
        print(f"  softmax of 1024 x 16384 logits, std 20: {ms['softmax std 20']:.1f} ms against "
              f"{ms['softmax std 1']:.1f} at std 1: {ms['softmax std 20'] / ms['softmax std 1']:.2f}x the time")


if __name__ == "__main__":
    main()
