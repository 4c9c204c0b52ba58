"""The one config loader: typed fields, nested sections, errors that name the key and the fix."""

from dataclasses import dataclass, field
from typing import Literal

import pytest

from olmolab.configlib import apply_override, from_dict, load_yaml, to_dict
from olmolab.errors import UserError


@dataclass
class Source:
    name: str
    paths: list[str]
    weight: float | None = None


@dataclass
class Section:
    steps: int
    schedule: Literal["cosine", "linear"] = "cosine"
    betas: tuple[float, float] = (0.9, 0.95)
    sources: list[Source] = field(default_factory=list)
    extra: dict[str, float] = field(default_factory=dict)

    def validate(self) -> None:
        if self.steps < 1:
            raise UserError(f"section.steps={self.steps}: must be at least 1")


def test_nested_sections_are_built_and_round_trip():
    raw = {"steps": 10.0, "betas": ["0.9", 0.99], "sources": [{"name": "web", "paths": ["a.npy"], "weight": 1}],
           "extra": {"x": 2}}
    section = from_dict(Section, raw, "section")
    assert section == Section(10, "cosine", (0.9, 0.99), [Source("web", ["a.npy"], 1.0)], {"x": 2.0})
    assert isinstance(section.steps, int) and isinstance(section.sources[0].weight, float)
    assert from_dict(Section, to_dict(section), "section") == section


@pytest.mark.parametrize("raw, message", [
    ({"steps": 1, "stpes": 2}, r"section: unknown key\(s\) \['stpes'\]; the keys of section are: steps, schedule"),
    ({}, r"section: missing key\(s\) \['steps'\]"),
    ({"steps": "many"}, r"section.steps: expected an integer, got 'many'"),
    ({"steps": 1, "schedule": "wsd"}, r"section.schedule: 'wsd' is not one of 'cosine', 'linear'"),
    ({"steps": 1, "betas": [0.9]}, r"section.betas: expected 2 values, got 1"),
    ({"steps": 1, "sources": [{"name": "web"}]}, r"section.sources\[0\]: missing key\(s\) \['paths'\]"),
    ({"steps": 1, "sources": [{"name": "w", "paths": [], "weight": "nan"}]},
     r"section.sources\[0\].weight: expected a finite number, got 'nan'"),
    ({"steps": 1, "extra": {"x": float("inf")}}, r"section.extra.x: expected a finite number, got inf"),
    ({"steps": 0}, r"section.steps=0: must be at least 1"),
    ([1, 2], r"section: expected a mapping of keys, got list"),
])
def test_mistakes_name_the_key_and_what_was_expected(raw, message):
    with pytest.raises(UserError, match=message):
        from_dict(Section, raw, "section")


def test_overrides_set_nested_keys_parsed_as_yaml():
    raw = {"optim": {"lr": 1e-3}}
    apply_override(raw, "--optim.lr=3e-4")
    apply_override(raw, "trainer.max-steps=5")
    # YAML 1.1 reads 3e-4 (no dot) as a string; a float field takes it as the number.
    assert raw == {"optim": {"lr": "3e-4"}, "trainer": {"max_steps": 5}}
    with pytest.raises(UserError, match="expected --section.key=value"):
        apply_override(raw, "--optim.lr")
    with pytest.raises(UserError, match="lr is not a section"):
        apply_override(raw, "optim.lr.x=1")


def test_yaml_errors_name_the_file_and_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  d_model: [64\n")
    with pytest.raises(UserError, match=r"bad.yaml:3: not valid YAML"):
        load_yaml(bad)
    listed = tmp_path / "list.yaml"
    listed.write_text("- a\n- b\n")
    with pytest.raises(UserError, match="expected a mapping of sections"):
        load_yaml(listed)
