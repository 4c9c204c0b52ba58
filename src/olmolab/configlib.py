"""The one config loader: plain dicts (YAML) to typed dataclasses, and back.

Every config of olmolab (model, data, optimizer, scheduler, trainer, evaluation, generation,
post-training) is a dataclass whose fields carry type hints and docstrings. `from_dict` builds
one from a plain mapping, checking as it goes:

- an unknown key lists the keys that exist;
- a missing required key says which;
- a value of the wrong type says the type expected (YAML's spellings are accepted: "3e-4" is a
  float; a whole float is an int); no number may be NaN or infinite;
- nested dataclasses (and lists / dicts of them) are built the same way, with paths in errors
  (`data.sources[1].weight`);
- finally the dataclass's own `validate()` runs, the place for checks that span fields.

Every mistake is a `UserError` that names the key and says what to write instead. This module
imports nothing else of olmolab but its error type, so any package may use it.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from olmolab.errors import UserError

T = TypeVar("T")


def from_dict(cls: type[T], raw: Any, where: str) -> T:
    """A `cls` from a plain mapping, type-checked key by key, then validated."""
    config = cls(**typed_fields(cls, raw, where))
    if hasattr(config, "validate"):
        config.validate()
    return config


def typed_fields(cls: type, raw: Any, where: str) -> dict[str, Any]:
    """The mapping's values coerced to `cls`'s field types (unknown and missing keys refused)."""
    if not isinstance(raw, dict):
        raise UserError(f"{where}: expected a mapping of keys, got {type(raw).__name__} {raw!r}")
    hints = typing.get_type_hints(cls)
    fields = dataclasses.fields(cls)
    names = [f.name for f in fields]
    unknown = sorted(set(raw) - set(names))
    if unknown:
        raise UserError(f"{where}: unknown key(s) {unknown}; the keys of {where} are: {', '.join(names)}")
    missing = [f.name for f in fields if f.name not in raw and f.init
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise UserError(f"{where}: missing key(s) {missing}")
    return {key: coerce(value, hints[key], f"{where}.{key}") for key, value in raw.items()}


def to_dict(config: Any) -> dict[str, Any]:
    """A dataclass as plain, JSON-ready data (the inverse of `from_dict`)."""
    return dataclasses.asdict(config)


def coerce(value: Any, hint: Any, where: str) -> Any:
    """`value` as type `hint`, accepting YAML's spellings; else a UserError naming `where`."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return _coerce_union(value, args, hint, where)
    if origin is typing.Literal:
        if value not in args:
            raise UserError(f"{where}: {value!r} is not one of {', '.join(map(repr, args))}")
        return value
    if origin in (list, tuple):
        return _coerce_sequence(value, origin, args, where)
    if origin is dict:
        if not isinstance(value, dict):
            raise UserError(f"{where}: expected a mapping, got {value!r}")
        return {k: coerce(v, args[1], f"{where}.{k}") for k, v in value.items()} if args else value
    if dataclasses.is_dataclass(hint):
        return value if isinstance(value, hint) else from_dict(hint, value, where)
    return _coerce_scalar(value, hint, where)


def _coerce_union(value: Any, args: tuple, hint: Any, where: str) -> Any:
    if value is None and type(None) in args:
        return None
    errors = []
    for arg in (a for a in args if a is not type(None)):
        try:
            return coerce(value, arg, where)
        except UserError as e:
            errors.append(str(e))
    raise UserError(errors[0] if len(errors) == 1 else f"{where}: {value!r} is none of {_describe(hint)}")


def _coerce_sequence(value: Any, origin: type, args: tuple, where: str) -> Any:
    if not isinstance(value, list | tuple):
        raise UserError(f"{where}: expected a list, got {value!r}")
    if origin is tuple and args and args[-1] is not Ellipsis:
        if len(value) != len(args):
            raise UserError(f"{where}: expected {len(args)} values, got {len(value)}")
        return tuple(coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args, strict=True)))
    item = args[0] if args else Any
    return origin(coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value))


def _coerce_scalar(value: Any, hint: Any, where: str) -> Any:
    if hint is Any:
        return value
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise UserError(f"{where}: expected true or false, got {value!r}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise UserError(f"{where}: expected an integer, got {value!r}")
    if hint is float:
        return _coerce_float(value, where)
    if hint is str:
        if isinstance(value, str):
            return value
        raise UserError(f"{where}: expected a string, got {value!r}")
    return value


def _coerce_float(value: Any, where: str) -> float:
    number = None
    if isinstance(value, int | float) and not isinstance(value, bool):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            pass
    if number is None:
        raise UserError(f"{where}: expected a number, got {value!r}")
    if not math.isfinite(number):  # no setting of a run means "infinite" or "not a number"
        raise UserError(f"{where}: expected a finite number, got {value!r}")
    return number


def _describe(hint: Any) -> str:
    return str(hint).replace("typing.", "")


# ---------------------------------------------------------------------- files and overrides


def load_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML (or JSON) mapping from a file; errors name the file and line."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except OSError as e:
        raise UserError(f"{path}: cannot read the config ({e.strerror})") from e
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise UserError(f"{where}: not valid YAML ({getattr(e, 'problem', e)})") from e
    if not isinstance(raw, dict):
        raise UserError(f"{path}: expected a mapping of sections (model:, data:, trainer:, ...)")
    return raw


def apply_override(raw: dict[str, Any], override: str) -> None:
    """`--optim.lr=3e-4` or `optim.lr=3e-4`: set a nested key; the value is parsed as YAML."""
    key, sep, value = override.removeprefix("--").partition("=")
    if not sep or not key:
        raise UserError(f"override {override!r}: expected --section.key=value")
    *parents, leaf = key.split(".")
    node = raw
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise UserError(f"override {override!r}: {part} is not a section")
    node[leaf.replace("-", "_")] = yaml.safe_load(value)
