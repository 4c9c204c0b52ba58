"""olmolab's C++ kernels (`kernels/csrc/`), built on first use by PyTorch's extension builder.

They are compiled once per machine and source (cached under PyTorch's extensions directory,
`TORCH_EXTENSIONS_DIR`, by default ~/.cache/torch_extensions; ~30 s on 2 cores), which takes a
C++ compiler and ninja (`pip install ninja`). Where either is missing, the build fails, or
`OLMOLAB_NATIVE_KERNELS=0` is set, `native_kernels()` is None and the registry keeps PyTorch's
own kernels: the C++ ones are only ever a faster path (`kernels/registry.py`).

The build is for any x86-64 CPU with AVX2 and FMA (or the compiler's defaults elsewhere), not for
this CPU alone, so a cache shared between machines stays valid; the matrix products inside are
MKL's, which picks its code for the CPU at run time.
"""

from __future__ import annotations

import functools
import hashlib
import os
import sys
from pathlib import Path
from types import ModuleType

import torch

from olmolab.kernels.cpu_matmul import cpuinfo

NATIVE_ENV = "OLMOLAB_NATIVE_KERNELS"
_SOURCES = [Path(__file__).parent / "csrc" / "causal_attention.cpp"]


def _arch_flags() -> list[str]:
    flags = (cpuinfo("flags") or "").split()
    return ["-mavx2", "-mfma"] if {"avx2", "fma"} <= set(flags) else []


def native_kernels() -> ModuleType | None:
    """The compiled module (`forward`, `backward` of the tiled causal attention), built on the
    first call of a process (`_build` keeps it), or None where it cannot be (see the module
    docstring; `why_not`)."""
    return _build()[0]


def why_not() -> str | None:
    """Why `native_kernels()` is None (None where it is not)."""
    return _build()[1]


@functools.cache
def _build() -> tuple[ModuleType | None, str | None]:
    if os.environ.get(NATIVE_ENV, "1") == "0":
        return None, f"{NATIVE_ENV}=0"
    if sys.platform != "linux":
        return None, "built on Linux only (it calls the MKL that PyTorch's Linux wheels export)"
    flags = ["-O3", *_arch_flags()]
    digest = hashlib.sha256()
    for part in [*(p.read_bytes() for p in _SOURCES), " ".join(flags).encode(), torch.__version__.encode()]:
        digest.update(part)
    try:
        from torch.utils import cpp_extension

        name = f"olmolab_kernels_{digest.hexdigest()[:12]}"
        if not (Path(cpp_extension._get_build_directory(name, verbose=False)) / f"{name}.so").exists():
            print("olmolab: building its C++ attention kernel for this machine (once; ~30 s)", file=sys.stderr)
        module = cpp_extension.load(
            name, [str(p) for p in _SOURCES], extra_cflags=[*flags, "-fopenmp"], extra_ldflags=["-fopenmp"],
            verbose=False,
        )
    except Exception as error:  # no compiler, no ninja, no MKL symbol: PyTorch's kernels instead
        last_line = (str(error).strip().splitlines() or [""])[-1]
        return None, f"{type(error).__name__}: {last_line}"
    return module, None
