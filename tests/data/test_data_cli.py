"""The `olmolab data` and `olmolab tokenizer` commands: helpful --help, and `data info`."""

from __future__ import annotations

import pytest

from olmolab.cli import main

COMMANDS = [["data"], ["data", "tokenize"], ["data", "info"], ["data", "inspect"], ["tokenizer"], ["tokenizer", "train"], ["tokenizer", "info"]]


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_every_command_has_help_with_an_example(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([*command, "--help"])
    assert exit_.value.code == 0
    help_text = capsys.readouterr().out
    assert "examples:" in help_text and f"olmolab {' '.join(command)}" in help_text


def test_data_info_describes_token_files(token_dir, capsys):
    assert main(["data", "info", str(token_dir), "--seq-len", "32"]) == 0
    out = capsys.readouterr().out
    assert "part-00000.npy" in out and "documents" in out and "instances of 32" in out and "tokenizer" in out


def test_a_group_without_a_command_prints_its_help(capsys):
    assert main(["data"]) == 2
    assert "tokenize" in capsys.readouterr().out
