"""What every command module uses: a command whose `--help` shows its examples as written."""

from __future__ import annotations

import argparse


def add_command(
    subparsers: argparse._SubParsersAction, name: str, help: str, description: str | None = None, examples: str = ""
) -> argparse.ArgumentParser:
    """A command whose `--help` shows its description and examples as written, not re-wrapped.
    Without a description, the one-line `help` serves as one."""
    description = description or help[0].upper() + help[1:].rstrip(".") + "."
    return subparsers.add_parser(
        name, help=help, description=description, epilog=examples, formatter_class=argparse.RawDescriptionHelpFormatter
    )


def add_command_group(
    subparsers: argparse._SubParsersAction, name: str, help: str, description: str, examples: str
) -> argparse._SubParsersAction:
    """A command with commands of its own (`olmolab data tokenize`): alone, it prints its help."""
    group = add_command(subparsers, name, help, description, examples)
    group.set_defaults(handler=lambda args: group.print_help() or 2)
    return group.add_subparsers(dest=f"{name}_command", metavar="COMMAND")
