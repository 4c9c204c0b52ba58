"""On glibc, the trainer's allocator setting keeps large CPU tensors on malloc's heap."""

import ctypes
import ctypes.util
import subprocess
import sys

import pytest

from tests.train.test_trainer import run_env

libc_name = ctypes.util.find_library("c")
pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux") or libc_name is None or not hasattr(ctypes.CDLL(libc_name), "mallinfo2"),
    reason="needs glibc >= 2.33 (mallinfo2)",
)

# Run apart: the setting lasts for the whole process.
SCRIPT = """
import ctypes, ctypes.util, torch
from olmolab.allocator import keep_freed_memory

class MallInfo2(ctypes.Structure):
    _fields_ = [(f, ctypes.c_size_t) for f in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.mallinfo2.restype = MallInfo2

def mmapped_bytes_while_holding(nbytes):
    held = torch.empty(nbytes // 4)
    return libc.mallinfo2().hblkhd

size = 64 << 20
before = mmapped_bytes_while_holding(size)
tuned = keep_freed_memory()
after = mmapped_bytes_while_holding(size)
print(tuned, before >= size, after < size)
"""


def test_large_tensors_come_from_the_heap_once_tuned():
    result = subprocess.run([sys.executable, "-c", SCRIPT], env=run_env(), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["True", "True", "True"]
