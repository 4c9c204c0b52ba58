"""One training step (forward, backward, grad clipping, AdamW) of olmolab vs transformers.

Same weights, same batch, same optimizer settings, same process; the sides alternate. olmolab
runs eager, with each block torch.compile'd (`trainer.compile`: what inductor's fusion of the
elementwise work between the matmuls is worth on this CPU; in bf16 the loss's softmax over each
chunk of logits is compiled too), and in bf16 as `trainer.precision: bf16` trains (fp32 master
weights and AdamW state, bf16 compute copies and activations), eager and compiled;
transformers in fp32 and under `torch.autocast("cpu", bfloat16)`. The bf16 rows run where the CPU
has a bf16 unit (AMX or AVX512-BF16) and are skipped, saying why, elsewhere. Prints tokens/s of
each, MFU against this machine's measured matmul peak in the row's precision, and each olmolab
mode's ratio to transformers fp32 (olmolab bf16's also to olmolab fp32 and to transformers
bf16; compiled bf16's to compiled fp32) three ways: of the median rounds; the median of each round's own ratio (a round runs
the sides back to back, so a slow spell of a shared machine that outlasts it slows both); and
of each side's fastest round (the round the other tenants disturbed least).

    python bench/train_step.py [--rounds 7] [--no-compile] [--no-bf16] [--keep-freed-memory]

By default both sides run with the system's malloc, which returns large freed blocks to the
OS; transformers allocates more large temporaries than olmolab and pays more for that (page
faults on fresh memory every step). `--keep-freed-memory` gives both sides the allocator
setting olmolab's trainer uses on CPU, which removes that cost: compare the two.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import (
    BENCH_BATCH,
    BENCH_MODEL,
    BENCH_SEQ_LEN,
    add_keep_freed_memory_flag,
    bf16_skipped,
    interleaved_samples,
    keep_freed_memory_if_asked,
    setup,
)

from olmolab import Transformer
from olmolab.convert import hf
from olmolab.kernels.cpu_matmul import cpu_bf16_matmul_unit
from olmolab.precision import resolve_precision
from olmolab.train import distributed as dist_utils
from olmolab.train.energy import cpu_model_name
from olmolab.train.metrics import measure_matmul_flops
from olmolab.train.optim import OptimConfig, build_optimizer


def olmolab_step(model, optimizer, ids, labels):
    def step():
        out = model(ids, labels, z_loss_multiplier=1e-5)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return step


def transformers_step(model, optimizer, ids, autocast=False):
    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            out = model(input_ids=ids, labels=ids)  # HF shifts the labels itself
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return step


def adamw(model):
    """The trainer's AdamW (fused where torch has the kernel), given to both sides alike."""
    return build_optimizer(model, OptimConfig(lr=1e-4))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-compile", action="store_true",
                        help="eager olmolab only (no C++ compiler here, or to save the compilation)")
    parser.add_argument("--no-bf16", action="store_true", help="fp32 rows only")
    add_keep_freed_memory_flag(parser)
    args = parser.parse_args()
    setup(args.threads)
    keep_freed_memory_if_asked(args)
    from transformers import AutoModelForCausalLM

    ours = Transformer(BENCH_MODEL).train()
    with tempfile.TemporaryDirectory() as tmp:
        hf.export(ours, tmp)
        theirs = AutoModelForCausalLM.from_pretrained(tmp, attn_implementation="sdpa").train()
    compiled = None
    if not args.no_compile:
        compiled = copy.deepcopy(ours)
        for block in compiled.blocks:
            block.compile()

    bf16 = None if args.no_bf16 else bf16_copy(ours)
    bf16_compiled = None if bf16 is None or args.no_compile else bf16_copy(ours, compile_blocks=True)

    ids = torch.randint(0, BENCH_MODEL.vocab_size, (BENCH_BATCH, BENCH_SEQ_LEN))
    labels = torch.cat([ids[:, 1:], torch.full((BENCH_BATCH, 1), -100)], dim=1)
    steps = {"olmolab": olmolab_step(ours, adamw(ours), ids, labels)}
    if compiled is not None:
        steps["olmolab compiled"] = olmolab_step(compiled, adamw(compiled), ids, labels)
    if bf16 is not None:
        steps["olmolab bf16"] = olmolab_step(bf16, adamw(bf16), ids, labels)
    if bf16_compiled is not None:
        steps["olmolab bf16 compiled"] = olmolab_step(bf16_compiled, adamw(bf16_compiled), ids, labels)
    steps["transformers"] = transformers_step(theirs, adamw(theirs), ids)
    if bf16 is not None:
        autocast = copy.deepcopy(theirs)
        steps["transformers bf16"] = transformers_step(autocast, adamw(autocast), ids, autocast=True)
    for name, step in list(steps.items()):  # warm-up: allocator, AdamW state, compilation
        try:
            step(), step()
        except Exception as e:  # inductor needs a working C++ compiler; time what can run
            if "compiled" not in name:
                raise
            print(f"compiled blocks failed ({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
                  "timing eager only (--no-compile skips the attempt)")
            del steps[name]
    # The trainer's own MFU denominator, measured before and after the rounds: a single
    # measurement taken in a slow spell of a shared machine understates the peak (MFU over 100%).
    dtypes = (torch.float32, torch.bfloat16) if bf16 is not None else (torch.float32,)
    peaks = {dtype: measure_matmul_flops(n=2048, dtype=dtype) for dtype in dtypes}
    samples = interleaved_samples(steps, rounds=args.rounds)
    peaks = {dtype: max(peak, measure_matmul_flops(n=2048, dtype=dtype)) for dtype, peak in peaks.items()}
    seconds = {name: statistics.median(s) for name, s in samples.items()}
    tokens = BENCH_BATCH * BENCH_SEQ_LEN
    flops = BENCH_MODEL.flops_per_token(BENCH_SEQ_LEN) * tokens
    print(f"CPU: {cpu_model_name()}; bench model: {BENCH_MODEL.num_params() / 1e6:.1f}M params, "
          f"batch {BENCH_BATCH} x seq {BENCH_SEQ_LEN}, {args.threads} threads, "
          f"malloc {'keeping freed memory (both sides)' if args.keep_freed_memory else 'as the system set it'}")
    print("MFU = 6*(non-embedding + lm_head params) + 12*layers*d_model*seq FLOPs per token / the measured "
          "matmul peak of the row's precision (MKL or oneDNN, the faster): "
          + ", ".join(f"{str(d).removeprefix('torch.')} {p / 1e9:.0f} GFLOP/s" for d, p in peaks.items()))
    if len(peaks) == 2:  # what bounds the bf16 rows' gain: AMX's rate varies with the other tenants of a core
        print(f"bf16 matmuls ran {peaks[torch.bfloat16] / peaks[torch.float32]:.1f}x as fast as fp32 ones on this "
              "machine during this run")
    for name, s in seconds.items():
        peak = peaks[torch.bfloat16 if "bf16" in name else torch.float32]
        spread = f"rounds {min(samples[name]) * 1e3:.0f}-{max(samples[name]) * 1e3:.0f} ms"
        print(f"  {name:21s} {s * 1e3:8.1f} ms/step  {tokens / s:9.0f} tokens/s  MFU {flops / s / peak:6.1%}  ({spread})")
    for name in steps:
        anchors = ["transformers"] + {
            "olmolab bf16": ["olmolab", "transformers bf16"],
            "olmolab bf16 compiled": ["olmolab compiled", "transformers bf16"],
        }.get(name, [])
        anchors = [a for a in anchors if a in steps]
        for anchor in anchors if name != "transformers" else []:
            paired = statistics.median(t / o for t, o in zip(samples[anchor], samples[name], strict=True))
            best = min(samples[anchor]) / min(samples[name])
            print(f"ratio {name} / {anchor} (tokens/s): {seconds[anchor] / seconds[name]:.2f}x "
                  f"(median of each round's ratio: {paired:.2f}x; fastest rounds: {best:.2f}x)")


def bf16_copy(model, compile_blocks=False):
    """A copy of `model` set up as the trainer's `precision: bf16` sets it up on CPU (fp32 master
    weights, bf16 compute copies: FSDP2's mixed precision on a one-process group), each block
    torch.compile'd with `compile_blocks` (`trainer.compile`), or None, saying why, where the CPU has
    no bf16 unit (bf16 would be emulated, and this table would say nothing)."""
    if bf16_skipped("olmolab bf16 and transformers bf16"):
        return None
    if not compile_blocks:
        print(f"bf16 rows on this CPU's {cpu_bf16_matmul_unit()} (precision auto: {resolve_precision('auto', 'cpu')})")
    return dist_utils.parallelize(copy.deepcopy(model), strategy="ddp", device=torch.device("cpu"), bf16=True,
                                  compile_blocks=compile_blocks, activation_checkpointing=False)


if __name__ == "__main__":
    main()
