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
"permanent" ones at multiples of `permanent_interval`; a pruned revision is first renamed to
`.trash-<name>`, so a crash mid-delete leaves no half-deleted revision, and leftovers of either
kind are removed at the next start.

A revision can still be damaged after the fact (a full disk, a copy cut short, a hand edit):
`check_revision` says what is wrong with one, and resume falls back to the newest intact one.
No file of a revision is ever unpickled (see `safe_dcp`).
"""

from __future__ import annotations

import json
import pickle
import random
import shutil
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.distributed.checkpoint as dcp
from safetensors import SafetensorError, safe_open
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_state_dict,
)

from olmolab import model_files
from olmolab.errors import UserError, first_line
from olmolab.model import ModelConfig
from olmolab.revisions import list_revisions, revision_name
from olmolab.train import distributed as dist_utils
from olmolab.train import safe_dcp

LEFTOVER_PREFIXES = (".tmp-", ".trash-")
TRAIN_STATE_KEYS = ("step", "tokens", "data")


class DamagedCheckpoint(UserError):
    """A revision whose files cannot be read back: resume falls back to an older one."""


# One process saves through DCP too (so its checkpoints load at any world size); DCP warns
# that it assumes a single process, which is exactly the intent.
warnings.filterwarnings("ignore", message="torch.distributed is disabled", category=UserWarning)


def read_train_state(path: Path) -> dict:
    """A revision's train_state.json, checked for the keys resume needs."""
    file = Path(path) / "train_state.json"
    try:
        state = json.loads(file.read_text())
    except OSError as e:
        raise DamagedCheckpoint(f"{file}: cannot read it ({e.strerror})") from e
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DamagedCheckpoint(f"{file}: not valid JSON ({e})") from e
    if not isinstance(state, dict):
        raise DamagedCheckpoint(f"{file}: expected a JSON object, found a {type(state).__name__}")
    missing = [key for key in TRAIN_STATE_KEYS if key not in state]
    if missing:
        raise DamagedCheckpoint(f"{file}: missing {', '.join(missing)}")
    if not all(isinstance(state[key], int) and state[key] >= 0 for key in ("step", "tokens")):
        raise DamagedCheckpoint(f"{file}: step and tokens must be non-negative integers")
    return state


def saved_model_config(path: Path) -> ModelConfig:
    """The model a revision (or any olmolab model directory) was saved with."""
    file = Path(path) / "config.json"
    try:
        return ModelConfig.from_dict(json.loads(file.read_text())["model"])
    except OSError as e:
        raise DamagedCheckpoint(f"{file}: cannot read it ({e.strerror})") from e
    except (UserError, ValueError, KeyError, TypeError) as e:
        raise DamagedCheckpoint(f"{file}: no valid `model` section ({first_line(e)})") from e


def check_revision(path: Path) -> list[str]:
    """What is wrong with a revision (empty when it is intact enough to resume from).

    Reads only what is cheap: the JSON files, the safetensors header, and the DCP metadata (with
    the restricted unpickler), whose byte ranges must all exist in the data files."""
    path = Path(path)
    problems = []
    for check in (read_train_state, saved_model_config):
        try:
            check(path)
        except UserError as e:
            problems.append(str(e).removeprefix(f"{path}/"))
    try:
        with safe_open(str(path / "model.safetensors"), framework="pt"):
            pass
    except (SafetensorError, OSError):
        problems.append("model.safetensors is missing or not a safetensors file")
    dcp_dir = path / "model_and_optim"
    try:
        problems += [f"model_and_optim/{p}" for p in safe_dcp.missing_or_short_files(
            dcp_dir, safe_dcp.read_metadata(dcp_dir))]
    except UserError as e:
        problems.append(str(e).removeprefix(f"{path}/"))
    return problems


def remove_leftovers(run_dir: Path) -> None:
    """Delete what a crash can leave behind: half-written (.tmp-) and half-deleted (.trash-)
    revisions. Only ever called by a trainer that holds the run directory's lock."""
    if dist_utils.rank() != 0 or not Path(run_dir).is_dir():
        return
    for child in Path(run_dir).iterdir():
        if child.is_dir() and child.name.startswith(LEFTOVER_PREFIXES):
            shutil.rmtree(child, ignore_errors=True)


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
        model_files.write_model_dir(full, run_config, tmp, tokenizer_path)
        (tmp / "train_state.json").write_text(json.dumps(train_state, indent=2) + "\n")
    dist_utils.barrier()
    if rank == 0:
        if final.exists():  # a re-run of the same step after a resume (or a damaged revision)
            trash = final.with_name(f".trash-{name}")
            shutil.rmtree(trash, ignore_errors=True)
            final.rename(trash)
            shutil.rmtree(trash, ignore_errors=True)
        tmp.rename(final)
    dist_utils.barrier()
    return final


def load_checkpoint(path: Path, *, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None) -> dict:
    """Restore model (and optimizer) state in place; returns the saved train state."""
    if not (path / "model_and_optim").exists():
        raise UserError(f"{path}: not an olmolab training checkpoint (no model_and_optim/ inside)")
    problems = check_revision(path)  # before DCP reads anything: it would unpickle the metadata as is
    if problems:
        raise DamagedCheckpoint(f"{path}: {'; '.join(problems)}")
    train_state = read_train_state(path)
    model_state, optim_state = get_state_dict(model, optimizer) if optimizer else (get_model_state_dict(model), None)
    state = {"model": model_state} | ({"optim": optim_state} if optimizer else {})
    dcp_dir = path / "model_and_optim"
    try:
        dcp.load(state, storage_reader=safe_dcp.SafeFileSystemReader(dcp_dir), planner=safe_dcp.SafeLoadPlanner())
    except CheckpointException as e:
        raise _first_failure(e, dcp_dir) from e
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state.get("optim") or {})
    return train_state


def _first_failure(error: CheckpointException, dcp_dir: Path) -> DamagedCheckpoint:
    """DCP gathers each rank's exception into one; say the first as one line."""
    for failure in error.failures.values():
        cause = failure[0] if isinstance(failure, tuple) else failure
        if isinstance(cause, UserError):
            return DamagedCheckpoint(f"{dcp_dir}: {cause}")
        return DamagedCheckpoint(f"{dcp_dir}: cannot be loaded ({type(cause).__name__}: {first_line(cause)})")
    return DamagedCheckpoint(f"{dcp_dir}: cannot be loaded ({first_line(error)})")


def prune(run_dir: Path, keep_last: int, permanent_interval: int | None) -> None:
    """Delete old revisions beyond the last `keep_last`, sparing permanent ones (rank 0 only)."""
    if dist_utils.rank() != 0:
        return
    revisions = list_revisions(run_dir)
    for revision in revisions[:-keep_last]:
        if permanent_interval and revision.step % permanent_interval == 0:
            continue
        trash = revision.path.with_name(f".trash-{revision.path.name}")
        revision.path.rename(trash)  # atomic: from here on it is no longer a revision
        shutil.rmtree(trash, ignore_errors=True)


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
    try:
        state = torch.load(file, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as e:
        raise UserError(f"{file}: not an RNG state of tensors and numbers; refused ({first_line(e)})") from e
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
