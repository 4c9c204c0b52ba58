"""Checkpoints: `RUN_DIR/step{N}-tokens{M}/`, OLMo's revision names, written atomically.

Each revision holds

    model.safetensors     the full weights (olmolab names), loadable by `olmolab.load`
    config.json           the resolved run config ("model" section included)
    tokenizer.json        when the run has one
    model_and_optim/      model + AdamW state via torch.distributed.checkpoint: sharded by
                          rank under FSDP, and loadable at any world size
    train_state.json      step, tokens, data position, skipped steps, world size
    rng/rank{r}.pt        each process's RNG states (tensors and ints only)

Everything is written under `.tmp-<name>` and renamed when complete, so a crash never leaves a
half-written revision that looks whole. Only the last `keep_last` revisions are kept, plus
"permanent" ones at multiples of `permanent_interval`.
"""

from __future__ import annotations

import json
import random
import re
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_state_dict,
)

from olmolab import io
from olmolab.errors import UserError
from olmolab.train import distributed as dist_utils

REVISION = re.compile(r"^step(\d+)-tokens(\d+)([KMBT]?)$")

# One process saves through DCP too (so its checkpoints load at any world size); DCP warns
# that it assumes a single process, which is exactly the intent.
warnings.filterwarnings("ignore", message="torch.distributed is disabled", category=UserWarning)


def format_tokens(tokens: int) -> str:
    """4_194_304_000 -> '4B', 12_582_912 -> '13M': OLMo's rounded token counts."""
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if tokens >= scale:
            return f"{round(tokens / scale)}{unit}"
    return str(tokens)


def revision_name(step: int, tokens: int) -> str:
    return f"step{step}-tokens{format_tokens(tokens)}"


@dataclass(frozen=True)
class Revision:
    step: int
    path: Path


def list_revisions(run_dir: str | Path) -> list[Revision]:
    """Complete revisions of a run, by step."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    found = [
        Revision(int(m.group(1)), child)
        for child in run_dir.iterdir()
        if (m := REVISION.match(child.name)) and (child / "train_state.json").exists()
    ]
    return sorted(found, key=lambda r: r.step)


def latest_revision(run_dir: str | Path) -> Revision | None:
    revisions = list_revisions(run_dir)
    return revisions[-1] if revisions else None


def save_checkpoint(
    run_dir: Path,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    train_state: dict,
    run_config: dict,
    tokenizer_path: str | None,
) -> Path:
    """Write a revision (a collective call: every rank must call it)."""
    name = revision_name(train_state["step"], train_state["tokens"])
    final, tmp = run_dir / name, run_dir / f".tmp-{name}"
    rank = dist_utils.rank()
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    dist_utils.barrier()

    model_state, optim_state = get_state_dict(model, optimizer)
    dcp.save({"model": model_state, "optim": optim_state}, checkpoint_id=tmp / "model_and_optim")
    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    (tmp / "rng").mkdir(exist_ok=True)
    torch.save(rng_state(), tmp / "rng" / f"rank{rank}.pt")
    if rank == 0:
        io.write_model_dir(full, run_config, tmp, tokenizer_path)
        (tmp / "train_state.json").write_text(json.dumps(train_state, indent=2) + "\n")
    dist_utils.barrier()
    if rank == 0:
        if final.exists():  # a re-run of the same step after a resume
            shutil.rmtree(final)
        tmp.rename(final)
    dist_utils.barrier()
    return final


def load_checkpoint(path: Path, *, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None) -> dict:
    """Restore model (and optimizer) state in place; returns the saved train state."""
    if not (path / "model_and_optim").exists():
        raise UserError(f"{path}: not an olmolab training checkpoint (no model_and_optim/ inside)")
    model_state, optim_state = get_state_dict(model, optimizer) if optimizer else (get_model_state_dict(model), None)
    state = {"model": model_state} | ({"optim": optim_state} if optimizer else {})
    dcp.load(state, checkpoint_id=path / "model_and_optim")
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state.get("optim") or {})
    return json.loads((path / "train_state.json").read_text())


def prune(run_dir: Path, keep_last: int, permanent_interval: int | None) -> None:
    """Delete old revisions beyond the last `keep_last`, sparing permanent ones (rank 0 only)."""
    if dist_utils.rank() != 0:
        return
    revisions = list_revisions(run_dir)
    for revision in revisions[:-keep_last]:
        if permanent_interval and revision.step % permanent_interval == 0:
            continue
        shutil.rmtree(revision.path, ignore_errors=True)


# ---------------------------------------------------------------------- RNG states


def rng_state() -> dict:
    """This process's RNG states as tensors and plain ints, so `weights_only` loading works."""
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "python": _python_state_to_tensor(random.getstate()),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def restore_rng_state(path: Path) -> None:
    file = path / "rng" / f"rank{dist_utils.rank()}.pt"
    if not file.exists():  # a different world size: RNG streams cannot carry over
        return
    state = torch.load(file, weights_only=True)
    torch.set_rng_state(state["torch"])
    np_state = state["numpy"]
    np.random.set_state(("MT19937", np_state["keys"].numpy().astype(np.uint32), np_state["pos"],
                         np_state["has_gauss"], np_state["cached_gaussian"]))
    random.setstate(_python_state_from_tensor(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def _python_state_to_tensor(state) -> dict:
    version, internal, gauss = state
    return {"version": version, "internal": torch.tensor(internal, dtype=torch.int64),
            "gauss": gauss if gauss is not None else float("nan")}


def _python_state_from_tensor(state: dict):
    gauss = state["gauss"]
    return state["version"], tuple(int(x) for x in state["internal"]), None if gauss != gauss else gauss
