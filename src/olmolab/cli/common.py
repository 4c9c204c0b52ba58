"""What every command module uses: a command whose `--help` shows its examples as written."""

from __future__ import annotations

import argparse
import sys

import torch

from olmolab.precision import PRECISIONS, Precision, resolve_precision


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


def add_dtype_argument(parser: argparse.ArgumentParser) -> None:
    """`--dtype auto|fp32|bf16`: the number format the command computes in (olmolab/precision.py)."""
    parser.add_argument(
        "--dtype", choices=PRECISIONS, default="auto",
        help="compute in fp32 or bf16; auto (default) = bf16 where the device multiplies bf16 fast "
             "(a GPU with bf16, a CPU with AMX or AVX512-BF16), else fp32. bf16 is said on stderr",
    )  # fmt: skip


def chosen_precision(args: argparse.Namespace, device: str | torch.device) -> Precision:
    """`--dtype` made concrete for `device`."""
    return resolve_precision(args.dtype, device, key="--dtype")


def say_precision(precision: Precision) -> None:
    """Say on stderr (stdout may be the command's output) when the command computes in bf16, and
    why: fp32, the default everywhere bf16 is not fast, goes without saying."""
    if precision.name != "fp32":
        print(f"olmolab: computing in {precision}", file=sys.stderr)
