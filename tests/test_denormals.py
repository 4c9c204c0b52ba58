"""Denormals are flushed in every thread when set before PyTorch's thread pool starts, and the
check says when they are not."""

import subprocess
import sys

import pytest
import torch

PROBE = """
import torch
from olmolab.denormals import every_thread_flushes_denormals, flush_denormals
torch.set_num_threads(2)
{before}
print(flush_denormals())
print(every_thread_flushes_denormals())
"""


def output_of(code: str) -> list[str]:
    """The lines a fresh Python process running `code` prints."""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


def run(before: str = "") -> list[str]:
    return output_of(PROBE.format(before=before))


pytestmark = pytest.mark.skipif(not torch.backends.cpu.get_cpu_capability().startswith("AVX"),
                                reason="flush-to-zero is an x86 (SSE) mode")


def test_set_before_the_thread_pool_starts_every_thread_flushes():
    assert run() == ["every thread", "True"]


def test_set_after_the_pool_started_its_threads_keep_denormals_and_the_check_says_so():
    assert run(before="(torch.ones(1 << 20) * 2).sum()  # a multi-threaded op starts the pool") == ["this thread only", "False"]


def test_without_the_flush_a_product_underflows_into_a_denormal():
    assert output_of("import torch; torch.set_num_threads(2); "
                     "from olmolab.denormals import every_thread_flushes_denormals as f; print(f())") == ["False"]
