"""Each row of a chunk of bf16 logits replaced by its softmax, in place, and each row's
log-sum-exp returned in fp32: the fused loss's pass over a chunk (`olmolab.model.loss`) when
training is compiled (`trainer.compile`) in bf16 on a CPU.

    softmax(x)_i = exp(x_i - lse(x)),   lse(x) = m + log(sum_i exp(x_i - m)),  m = max_i x_i

in fp32 throughout, rounded to bf16 once on the way out. Eager, the loss upcasts each chunk into
an fp32 copy, runs ATen's softmax over it and rounds it back: three sweeps over a buffer twice
the chunk's size (ATen's CPU softmax takes no bf16 input with an fp32 result). Compiled, inductor
makes it one kernel that reads each bf16 row three times while it is in cache (max, sum, output)
and keeps every fp32 value in registers: at the bench model's 1024 x 16384 chunks 2x as fast
(`bench/README.md`, "The LM head's softmax"). The log-sum-exp is exact for any logits, however
far apart; the eager path's trick of reading it off the label's probability needs a fallback
where that probability underflows.
"""

from __future__ import annotations

from functools import cache

import torch
from torch import Tensor


def compiled_softmax_rows_(logits: Tensor) -> Tensor:
    """`plain.softmax_rows_` as one inductor kernel (torch.compile; the first call compiles it,
    for any number of rows)."""
    row_max, row_sum = _compiled()(logits)
    return row_max + row_sum.log()


def _softmax_rows_in_fp32_(logits: Tensor) -> tuple[Tensor, Tensor]:
    """Each row's softmax written over it, and its max and sum of exp(x - max). Written so, with
    the log-sum-exp taken outside, inductor makes it one loop over the rows (max, sum, output
    within a row while it is in cache); with the log-sum-exp taken inside, or the output as
    exp(x - lse), it made four loops over the whole chunk."""
    x = logits.float()
    row_max = x.amax(dim=-1, keepdim=True)
    row_sum = (x - row_max).exp().sum(dim=-1, keepdim=True)
    logits.copy_((x - row_max).exp() / row_sum)
    return row_max.squeeze(-1), row_sum.squeeze(-1)


@cache
def _compiled():
    return torch.compile(_softmax_rows_in_fp32_, dynamic=True, fullgraph=True)
