"""On CPU, keep freed memory in the process rather than handing large blocks back to the OS.

Why: glibc's malloc serves blocks above a threshold (at most 32 MiB) with `mmap` and unmaps
them on free. A training step allocates the same large activations every step (the LM
head's logits alone are tokens x vocabulary x 4 bytes), so every step the OS maps fresh pages
and zero-fills each one on first touch: a matmul writing into fresh memory runs slower than
one writing into reused memory, and so does the whole step. Telling malloc never to `mmap` and
never to trim its heap makes each step reuse the memory of the step before: what jemalloc or
tcmalloc do, and what PyTorch's caching allocator does on GPU.

Evaluation repeats the same large allocations batch after batch and gains too, so the trainer
and `olmolab eval` both set it on CPU. The figures, and the benches that show both sides, are
in bench/README.md ("Notes behind the other settings").

The cost: the process holds on to its peak memory until it exits; a trainer reaches that peak
every step anyway. `trainer.keep_freed_memory: false` turns it off for training.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

# glibc's mallopt parameters (malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4


def keep_freed_memory() -> bool:
    """Tune glibc's malloc as above; returns False, changing nothing, where libc is not glibc."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):  # musl and others have no mallopt
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # -1 as the trim threshold disables trimming (mallopt(3)); 0 mmap'd blocks keeps all on the heap.
    return mallopt(M_MMAP_MAX, 0) == 1 and mallopt(M_TRIM_THRESHOLD, -1) == 1
