"""A model on disk: olmolab model directories, revisions of a run, Hugging Face directories.

`olmolab.load(path)` (this module's `load`) is the one way in; `save_model` the way out.

An olmolab model directory (what the trainer writes in each `stepN-tokensM/` revision) holds

    model.safetensors   weights under olmolab's parameter names
    config.json         the resolved run config; its "model" section is the ModelConfig
    tokenizer.json      the tokenizer, when known

A Hugging Face directory is recognised by the `model_type` key of its config.json.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

from olmolab.convert import hf
from olmolab.errors import UserError
from olmolab.files import write_safetensors
from olmolab.model import ModelConfig, Transformer
from olmolab.revisions import list_revisions
from olmolab.tokenizer import Tokenizer


def save_model(model: Transformer, out_dir: str | Path, run_config: dict | None = None, tokenizer=None) -> Path:
    """Write weights, config and tokenizer; `run_config` is the full config the model was trained with."""
    config = dict(run_config or {})
    config["model"] = model.config.to_dict()
    return write_model_dir(model.state_dict(), config, out_dir, tokenizer)


def write_model_dir(state: dict, run_config: dict, out_dir: str | Path, tokenizer=None) -> Path:
    """The on-disk model directory from a full state dict and a config with a "model" section.

    `tokenizer` is a tokenizer object (saved) or the path of a tokenizer.json (copied)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: t.detach().cpu().contiguous() for k, t in state.items()}
    if run_config["model"].get("weight_tying"):
        state.pop("lm_head.weight", None)  # the same tensor as the embeddings
    write_safetensors(state, out / "model.safetensors")
    (out / "config.json").write_text(json.dumps(run_config, indent=2) + "\n")
    if isinstance(tokenizer, str | Path):
        shutil.copyfile(tokenizer, out / "tokenizer.json")
    elif tokenizer is not None:
        tokenizer.save(out / "tokenizer.json")
    return out


def resolve_model_dir(path: str | Path) -> Path:
    """The directory holding the weights: `path` itself, or a run directory's latest revision."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: no such checkpoint (expected a model directory, a revision or a run directory)")
    if path.is_file():
        raise UserError(f"{path}: is a file; pass the directory that holds config.json and the weights")
    if (path / "config.json").exists() and _has_weights(path):
        return path
    for revision in reversed(list_revisions(path, marker="config.json")):
        problem = _weights_problem(revision.path)
        if problem is None:
            return revision.path
        print(f"olmolab: skipping damaged revision {revision.path}: {problem}", file=sys.stderr)
    raise UserError(f"{path}: no config.json with readable weights here, and no intact stepN-tokensM "
                    f"revision inside")


def _weights_problem(path: Path) -> str | None:
    """Why a revision's weights cannot be loaded (a cheap check: files and the safetensors header)."""
    if not _has_weights(path):
        return "no weights file"
    try:
        if (path / "model.safetensors").exists():
            with safe_open(str(path / "model.safetensors"), framework="pt"):
                pass
    except (SafetensorError, OSError) as e:
        return f"model.safetensors is not readable ({e})"
    return None


def _has_weights(path: Path) -> bool:
    return any((path / name).exists() for name in (
        "model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json"))


def is_hf_dir(path: Path) -> bool:
    try:
        return "model_type" in json.loads((path / "config.json").read_text())
    except (OSError, json.JSONDecodeError):
        return False


def load_model(path: str | Path, device: str | torch.device = "cpu", dtype=torch.float32) -> Transformer:
    """A Transformer from any supported directory, in eval mode."""
    model_dir = resolve_model_dir(path)
    if is_hf_dir(model_dir):
        try:
            return hf.load(model_dir, device=device, dtype=dtype).eval()
        except KeyError as e:
            raise UserError(f"{model_dir / 'config.json'}: missing key {e}; the checkpoint is corrupt") from e
        except (SafetensorError, OSError, RuntimeError, json.JSONDecodeError) as e:
            raise UserError(f"{model_dir}: cannot read the weights ({e}); the checkpoint is missing or corrupt") from e
    config_path = model_dir / "config.json"
    try:
        run_config = json.loads(config_path.read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"{config_path}:{e.lineno}: not valid JSON ({e.msg}); the checkpoint is corrupt") from e
    if "model" not in run_config:
        raise UserError(f"{config_path}: has no 'model' section and no 'model_type'; not a model checkpoint")
    try:
        config = ModelConfig.from_dict(run_config["model"])
    except UserError as e:
        raise UserError(f"{config_path}: bad 'model' section: {e}") from e
    weights = model_dir / "model.safetensors"
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError) as e:
        raise UserError(f"{weights}: cannot read the weights ({e}); the checkpoint is missing or corrupt") from e
    hf.check_shapes(state, config, source=str(weights))
    return Transformer.from_state_dict(config, state, device=device).to(dtype).eval()


def load_tokenizer(path: str | Path):
    """The tokenizer saved with a model (tokenizer.json beside it or in its run directory), or None.

    Beside an HF export, `special_tokens_map.json` names EOS and PAD (`Tokenizer.from_file` reads it).
    """
    path = Path(path)
    model_dir = resolve_model_dir(path)
    for candidate in (model_dir / "tokenizer.json", path / "tokenizer.json", model_dir.parent / "tokenizer.json"):
        if candidate.exists():
            return Tokenizer.from_file(candidate)
    return None


def check_tokenizer(config: ModelConfig, tokenizer, source: str = "tokenizer") -> None:
    """The tokenizer can belong to a model of this config: its ids all have embeddings, and the
    model's EOS is one of its tokens. Raises UserError naming the mismatch."""
    size = tokenizer.vocab_size
    if size > config.embedding_size:
        raise UserError(
            f"{source}: the tokenizer has {size} tokens but the model's embedding has only "
            f"{config.embedding_size} rows; this tokenizer does not belong to this model"
        )
    for what in ("eos", "pad"):
        token_id = getattr(tokenizer, f"{what}_token_id")
        if token_id is not None and not 0 <= token_id < config.embedding_size:
            raise UserError(f"{source}: {what} token id {token_id} is outside the model's vocabulary "
                            f"[0, {config.embedding_size})")
    if not 0 <= config.eos_token_id < size:
        raise UserError(
            f"{source}: the model's eos_token_id {config.eos_token_id} is not a token of the tokenizer "
            f"(ids 0..{size - 1}); this tokenizer does not belong to this model"
        )


def load(path: str | Path, device: str | torch.device = "cpu", dtype=torch.float32):
    """(model, tokenizer or None) from an olmolab checkpoint, a run directory or an HF directory."""
    model = load_model(path, device=device, dtype=dtype)
    tokenizer = load_tokenizer(path)
    if tokenizer is not None:
        check_tokenizer(model.config, tokenizer, source=f"{path}: {tokenizer.name}")
    return model, tokenizer
