"""GenerationConfig: built in code or by the one config loader, checked the same way."""

import pytest

from olmolab.errors import UserError
from olmolab.generation import GenerationConfig


@pytest.mark.parametrize("bad, message", [
    (dict(max_new_tokens=0), "max_new_tokens=0 must be at least 1"),
    (dict(temperature=-1.0), "temperature=-1.0 must be >= 0"),
    (dict(top_p=1.5), r"top_p=1.5 must be in \(0, 1\]"),
    (dict(top_k=-2), "top_k=-2 must be >= 1"),
])
def test_invalid_generation_settings_say_what_to_change(bad, message):
    with pytest.raises(UserError, match=message):
        GenerationConfig(**bad)


def test_from_dict_takes_yaml_spellings_and_equals_the_config_built_in_code():
    raw = {"max_new_tokens": 32.0, "temperature": "0.7", "top_p": 0.9, "seed": 3, "stop_token_ids": [5, 7]}
    config = GenerationConfig.from_dict(raw)
    assert config == GenerationConfig(max_new_tokens=32, temperature=0.7, top_p=0.9, seed=3, stop_token_ids=(5, 7))
    assert isinstance(config.max_new_tokens, int) and isinstance(config.temperature, float)


def test_from_dict_refuses_an_unknown_key_and_lists_the_keys():
    with pytest.raises(UserError, match=r"generation: unknown key\(s\) \['max_tokens'\]; .*max_new_tokens"):
        GenerationConfig.from_dict({"max_tokens": 10})


@pytest.mark.parametrize("raw, message", [
    ({"max_new_tokens": "many"}, "generation.max_new_tokens: expected an integer, got 'many'"),
    ({"temperature": "hot"}, "generation.temperature: expected a number, got 'hot'"),
    ({"compile": "yes"}, "generation.compile: expected true or false, got 'yes'"),
    ({"stop_token_ids": 5}, "generation.stop_token_ids: expected a list, got 5"),
    ({"stop_token_ids": [5, "eos"]}, r"generation.stop_token_ids\[1\]: expected an integer, got 'eos'"),
])
def test_from_dict_names_the_key_of_a_value_of_the_wrong_type(raw, message):
    with pytest.raises(UserError, match=message):
        GenerationConfig.from_dict(raw)


def test_from_dict_names_the_section_and_key_of_a_bad_value():
    with pytest.raises(UserError, match=r"^sampling\.top_p=0\.0 must be in \(0, 1\]$"):
        GenerationConfig.from_dict({"top_p": 0}, where="sampling")
