"""On CPU, flush denormal floats to zero, in every thread PyTorch computes in.

Why: an x86 core computes with a denormal (a float below 2^-126, about 1.2e-38) through a slow
microcode path, tens of times slower than with a normal one. Training makes them as it runs.
AdamW's moments of a parameter that stops getting gradients (the embedding row of a token the
data no longer shows) decay by beta1 = 0.9 and beta2 = 0.95 a step; some 650 steps later they
are denormal, and they stay so: 0.9 times the smallest denormals rounds back to them, and the
moments settle at 4 and 9 times 2^-149, never reaching 0, until the row's next gradient. A
fused AdamW step over a state half of which is denormal ran 15x slower than over a normal one
(bench/denormals.py). A softmax over logits spread wider than ~87 nats makes them too (its
exp's smallest outputs): 4.9x slower at the LM head's shapes.

Numerics: with the flush on, such values become 0. An AdamW update built from a first moment
that small is at most 2^-99 times the learning rate (its denominator is at least AdamW's eps,
1e-8), which no fp32 weight notices; a probability below 1e-38 is outside what a loss or a score
can see. The trainers (`olmolab train`, and post-training's `sft`, `dpo`, `rlvr`) turn it on
(`trainer.flush_denormals`), and so does `olmolab eval`.

How: the flush is two bits (FTZ, DAZ) of each thread's MXCSR register, and
`torch.set_flush_denormal` sets the calling thread's only. A new thread inherits its creator's
floating-point environment, so the bits must be set before PyTorch starts its OpenMP threads,
that is before the process's first multi-threaded op. Set later, the pool's threads keep
computing with denormals: `flush_denormals` checks, and says so.
"""

from __future__ import annotations

import torch

# Enough elements that an elementwise op is split over every thread of the pool (PyTorch's grain
# size is 32768 elements a thread).
_PROBE_ELEMENTS_PER_THREAD = 1 << 16


def flush_denormals() -> str:
    """Flush denormals to zero in this thread and, if PyTorch's thread pool has not started yet,
    in its threads. Returns where they are flushed now: "every thread", "this thread only" (the
    pool started before), or "nowhere" (a CPU without the mode)."""
    if not torch.set_flush_denormal(True):  # not x86 with SSE3: nothing to set
        return "nowhere"
    return "every thread" if every_thread_flushes_denormals() else "this thread only"


def every_thread_flushes_denormals() -> bool:
    """Whether a product that underflows into the denormals comes out 0 in every thread's share."""
    tiny = torch.full((_PROBE_ELEMENTS_PER_THREAD * torch.get_num_threads(),), 2.0**-70)
    return not bool((tiny * tiny).any())  # 2^-140: a denormal, unless flushed
