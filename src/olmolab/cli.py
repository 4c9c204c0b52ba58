"""The `olmolab` command.

This module only wires: each area of the package (data, train, eval, ...) owns a small
`register(subparsers)` function that adds its commands. A command's handler returns an exit
code; user mistakes are raised as `UserError` and printed as one clear line, not a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from olmolab.errors import UserError

# Modules that contribute commands, in the order `olmolab --help` lists them.
COMMAND_MODULES = [
    "olmolab.tokenizer_cli",
    "olmolab.data.cli",
    "olmolab.train.cli",
    "olmolab.posttrain.cli",
    "olmolab.eval.cli",
    "olmolab.inference_cli",
]


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="olmolab",
        description="A fully open OLMo / OLMo 2 stack: data, training, evaluation, generation, interchange.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Run `olmolab COMMAND --help` for the options and examples of each command.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name == name:  # that area is not built yet
                continue
            raise
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    try:
        return int(args.handler(args) or 0)
    except UserError as e:
        print(f"olmolab {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
