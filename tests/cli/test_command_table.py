"""The command line: one table of command modules, and none left out of it."""

import pkgutil

import olmolab.cli
from olmolab.cli import COMMAND_MODULES, build_parser

NOT_COMMANDS = {"common"}  # helpers the command modules share


def test_every_command_module_is_in_the_one_table():
    modules = {m.name for m in pkgutil.iter_modules(olmolab.cli.__path__)} - NOT_COMMANDS
    assert {module.__name__.rpartition(".")[2] for module in COMMAND_MODULES} == modules


def test_every_command_in_the_table_reaches_the_parser():
    commands = build_parser()._subparsers._group_actions[0].choices
    assert {"tokenizer", "data", "train", "checkpoints", "plot", "eval", "generate", "export", "import",
            "soup"} <= set(commands)
