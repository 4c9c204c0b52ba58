"""How the model's ops are computed: the plain formulas, and the CPU fast paths (matmul library
per CPU vendor, causal attention in tiles by olmolab's one C++ kernel (`native`, `csrc/`) or in
halves, hand-written backward passes, decode matmuls), chosen in one place (`registry`); and
the fused loss's compiled softmax over bf16 logits (`logits_softmax`), which the loss takes
under `trainer.compile`. Each fast path is tested against its formula (`tests/kernels/`).

This package depends on torch only; the model asks it for its ops, never the other way round.
"""

from olmolab.kernels.cpu_matmul import length_multiple, round_up, token_multiple
from olmolab.kernels.registry import KERNELS, Kernel, KernelName, decode_linear, kernel, using

__all__ = ["KERNELS", "Kernel", "KernelName", "decode_linear", "kernel", "length_multiple", "round_up",
           "token_multiple", "using"]
