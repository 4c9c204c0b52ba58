"""The `olmolab` command.

One module per command group (`olmolab.cli.data`, `.train`, `.evaluation`, ...), each with a
`register(subparsers)` that adds its commands; `COMMAND_MODULES` below is the one table of them.
The modules only parse arguments and call the package: the work lives in `data/`, `train/`,
`eval/`, ... A command's handler returns an exit code; user mistakes are raised as `UserError`
and printed as one clear line, not a traceback. A command module that fails to import is an
error like any other, never a command that silently disappears.
"""

from __future__ import annotations

import argparse
import sys

from olmolab.cli import data, evaluation, models, posttrain, runs, tokenizer, train
from olmolab.errors import UserError

# The one table of commands: each group's module, in the order `olmolab --help` lists them.
COMMAND_MODULES = (tokenizer, data, train, posttrain, runs, evaluation, models)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="olmolab",
        description="A fully open OLMo / OLMo 2 stack: data, training, evaluation, generation, interchange.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Run `olmolab COMMAND --help` for the options and examples of each command.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in COMMAND_MODULES:
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
