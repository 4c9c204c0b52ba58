"""The loss's compiled softmax pass over bf16 logits against its formula in fp64."""

import pytest
import torch

from olmolab.kernels.logits_softmax import compiled_softmax_rows_
from olmolab.kernels.plain import softmax_rows_

BF16_EPS = 2.0**-8


def chunk_of_logits(rows: int, vocab: int) -> torch.Tensor:
    """bf16 logits whose rows span ordinary to extreme spreads (the last: gaps of thousands, where
    most probabilities underflow to zero even in fp64)."""
    g = torch.Generator().manual_seed(rows)
    spread = torch.logspace(-1, 3, rows, dtype=torch.float64)[:, None]
    return (torch.randn(rows, vocab, generator=g, dtype=torch.float64) * spread).bfloat16()


@pytest.mark.parametrize("implementation", [softmax_rows_, compiled_softmax_rows_], ids=["plain", "compiled"])
@pytest.mark.parametrize("rows, vocab", [(7, 300), (33, 1000)])  # the compiled one: any number of rows, once
def test_softmax_rows_in_place_and_their_log_normalisers_match_fp64(implementation, rows, vocab):
    logits = chunk_of_logits(rows, vocab)
    exact = logits.double()
    lse = implementation(logits)
    assert lse.dtype == torch.float32, "the log-normalisers come back in fp32"
    torch.testing.assert_close(lse.double(), torch.logsumexp(exact, dim=-1), rtol=1e-6, atol=1e-5)
    assert logits.dtype == torch.bfloat16, "the softmax is written over the logits"
    probs = torch.softmax(exact, dim=-1)
    # each rounded once from fp32 (below fp32's smallest normal number the rounding is absolute)
    assert ((logits.double() - probs).abs() <= 1.05 * BF16_EPS * probs + 2.0**-126).all()
    assert (logits.sum(dim=-1).double() - 1).abs().max() < rows**0.5 * vocab**0.5 * BF16_EPS
