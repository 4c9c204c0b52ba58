"""Checkpoint souping: a weighted average of models of one architecture.

OLMo 2's final 7B and 13B models are uniform averages of a few stage-2 runs ("ingredients")
that differ only in data order (allenai/OLMo README: "we just averaged the weights"; OLMo-core
`src/scripts/merge_hf_checkpoints.py` averages in fp32 and casts back). Here every ingredient
is read in fp32, added into one fp32 accumulator, and the soup is saved in fp32.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from olmolab.convert.hf import write_tokenizer
from olmolab.errors import UserError
from olmolab.model import ModelConfig, Transformer
from olmolab.model_files import load, resolve_model_dir, save_model


def soup_weights(weights: Sequence[float] | None, count: int) -> list[float]:
    """One weight per ingredient, non-negative, normalised to sum to 1 (None = uniform)."""
    if weights is None:
        return [1.0 / count] * count
    if len(weights) != count:
        raise UserError(f"got {len(weights)} weights for {count} checkpoints; give one weight per checkpoint")
    if any(w < 0 or w != w for w in weights):
        raise UserError(f"weights {list(weights)} must all be >= 0")
    total = sum(weights)
    if total <= 0:
        raise UserError(f"weights {list(weights)} sum to {total}; at least one must be positive")
    return [w / total for w in weights]


def check_same_architecture(first: ModelConfig, other: ModelConfig, first_name: str, other_name: str) -> None:
    """The soup of models with different shapes or behaviour is meaningless: name the first difference."""
    a, b = first.to_dict(), other.to_dict()
    for key in a:
        if key != "name" and a[key] != b[key]:
            raise UserError(
                f"{other_name} differs from {first_name} in model config key {key!r} "
                f"({b[key]!r} vs {a[key]!r}); only checkpoints of one architecture can be souped"
            )


def soup(paths: Sequence[str | Path], weights: Sequence[float] | None = None):
    """(model, tokenizer of the first ingredient): the weighted average of the checkpoints at `paths`.

    Ingredients are loaded one at a time, so memory holds the accumulator and one model.
    """
    if not paths:
        raise UserError("no checkpoints to soup")
    weights = soup_weights(weights, len(paths))
    first, tokenizer = load(paths[0])
    total = {k: t.detach().float() * weights[0] for k, t in first.state_dict().items()}
    for path, weight in zip(paths[1:], weights[1:], strict=True):
        model, _ = load(path)
        check_same_architecture(first.config, model.config, str(paths[0]), str(path))
        for key, tensor in model.state_dict().items():
            total[key].add_(tensor.float(), alpha=weight)
        del model
    return Transformer.from_state_dict(first.config, total).eval(), tokenizer


def soup_to_dir(paths: Sequence[str | Path], out_dir: str | Path, weights: Sequence[float] | None = None) -> Path:
    """Soup the checkpoints and save the result as an olmolab checkpoint; config.json records
    the ingredients and their normalised weights."""
    model, tokenizer = soup(paths, weights)
    recipe = {"soup": {
        "ingredients": [str(resolve_model_dir(p).resolve()) for p in paths],
        "weights": soup_weights(weights, len(paths)),
    }}
    out = save_model(model, out_dir, run_config=recipe)
    if tokenizer is not None:  # with the files that name EOS / PAD, so AutoTokenizer reads it too
        write_tokenizer(tokenizer, out, model.config)
    return out
