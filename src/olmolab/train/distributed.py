"""Processes and parallelism, on PyTorch's own engine: torchrun, DDP, FSDP2.

The model knows nothing of this module; the trainer asks it to start the process group and
to wrap the model. Parallelism is applied from outside, in a fixed order (torchtitan's habit):

    activation checkpointing -> torch.compile per block -> FSDP2 per block, then root  (or DDP)

One process (plain `olmolab train`) needs no process group at all; every helper here then
answers as rank 0 of 1. The exception is bf16 on CPU: its fp32 master weights and bf16 compute
copies are FSDP2's mixed precision, which runs on a process group, so one process training in
bf16 starts a group of its own (`start_one_process_group`).
"""

from __future__ import annotations

import os
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn

from olmolab.errors import UserError


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if is_distributed():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def init_from_env(device_type: str) -> torch.device:
    """Join the torchrun group if launched by torchrun; returns this process's device."""
    launched = "RANK" in os.environ and "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if device_type == "cuda":
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    if launched and not is_distributed():
        backend = "nccl" if device_type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, timeout=timedelta(minutes=30))
    return device


def start_one_process_group() -> None:
    """A process group of this process alone (gloo, in memory), for FSDP2 outside torchrun."""
    if not is_distributed():
        dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)


def shutdown() -> None:
    if is_distributed():
        dist.destroy_process_group()


def parallelize(
    model: nn.Module,
    *,
    strategy: str,
    device: torch.device,
    bf16: bool,
    compile_blocks: bool,
    activation_checkpointing: bool,
) -> nn.Module:
    """Apply checkpointing, compilation and data parallelism to a model already on `device`."""
    if activation_checkpointing:
        from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

        for i, block in enumerate(model.blocks):
            model.blocks[i] = checkpoint_wrapper(block)
    if compile_blocks:
        for block in model.blocks:
            block.compile()
        model.compiled_loss = True
    if bf16 and device.type == "cpu":
        # CPU autocast would cast activations back and forth around every op, and each weight
        # once per micro-batch anyway; FSDP2's policy keeps the activations in bf16 from the
        # embedding on and casts each fp32 master weight once per forward.
        if world_size() > 1 and strategy != "fsdp":
            raise UserError("bf16 on CPU trains under FSDP2's mixed precision: set trainer.distributed=fsdp "
                            "(or trainer.precision=fp32 to keep DDP)")
        start_one_process_group()
        return _fully_shard(model, device, bf16)
    if world_size() == 1:
        return model
    if strategy == "fsdp":
        return _fully_shard(model, device, bf16)
    return nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def _fully_shard(model: nn.Module, device: torch.device, bf16: bool) -> nn.Module:
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method

    # OLMo 2's "mixed" FSDP precision: bf16 parameters in compute, fp32 gradient reduction and
    # fp32 master weights in the optimizer.
    # Alone there is nothing to sum: the "reduction" is a copy, and the bf16 gradients become the
    # same fp32 ones whether cast before it or after (the cast after copies half the bytes).
    reduce_dtype = torch.float32 if world_size() > 1 else None
    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=reduce_dtype) if bf16 else None
    kwargs = {"mp_policy": policy} if policy else {}
    if world_size() == 1:  # nothing to free by resharding after the forward: only casts again for the backward
        kwargs["reshard_after_forward"] = False
    for block in model.blocks:
        fully_shard(block, **kwargs)
    fully_shard(model, **kwargs)  # embeddings, final norm and LM head (tied or not) in the root unit
    # Decoding and scoring call these instead of forward: they must gather the root's weights too.
    for method in ("trunk", "logits"):
        register_fsdp_forward_method(model, method)
    return model


def unwrap(model: nn.Module) -> nn.Module:
    """The olmolab Transformer inside a DDP wrapper (FSDP2 modifies the module in place)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def set_gradient_sync(model: nn.Module, enabled: bool):
    """Skip the gradient all-reduce on all but the last micro-batch of a step."""
    import contextlib

    if isinstance(model, nn.parallel.DistributedDataParallel):
        return contextlib.nullcontext() if enabled else model.no_sync()
    if hasattr(model, "set_requires_gradient_sync"):  # FSDP2
        # Unsynced gradients accumulate in the compute dtype (bf16 under mixed precision); alone,
        # "syncing" is a copy into the fp32 gradient, so a lone process always accumulates there.
        model.set_requires_gradient_sync(enabled or world_size() == 1)
    return contextlib.nullcontext()
