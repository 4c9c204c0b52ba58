"""`olmolab tokenizer ...`: train a byte-level BPE; show what a tokenizer file holds."""

from __future__ import annotations

import argparse

from olmolab.cli.common import add_command, add_command_group
from olmolab.data.documents import TXT_SPLITS, expand_inputs, iter_documents
from olmolab.tokenizer import Tokenizer, train_bpe

TRAIN_EXAMPLES = """\
examples:
  olmolab tokenizer train corpus/*.jsonl.gz --vocab-size 8192 --out tokenizer.json
  olmolab tokenizer train notes.txt --txt-split paragraph --vocab-size 1024 --out tiny.json

Inputs are read as `olmolab data tokenize` reads them (JSON lines with a `text` field, Parquet,
plain text; .gz / .zst). The tokenizer is byte-level BPE (no unknown tokens) with
<|endoftext|> (EOS, id 0) and <|pad|> (PAD, id 1).
"""

INFO_EXAMPLES = """\
examples:
  olmolab tokenizer info ../shared/data/tokenizers/allenai_dolma2.json
  olmolab tokenizer info tokenizer.json --text "Hello world"
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    commands = add_command_group(
        subparsers, "tokenizer", "train or inspect a tokenizer",
        "Train a byte-level BPE tokenizer, or show what a tokenizer file holds.",
        "examples:\n  olmolab tokenizer train corpus/ --vocab-size 8192 --out tokenizer.json\n"
        "  olmolab tokenizer info tokenizer.json\n\nRun `olmolab tokenizer COMMAND --help` for each command's options.",
    )

    train = add_command(
        commands, "train", "train a byte-level BPE tokenizer with EOS and PAD",
        "Train a byte-level BPE tokenizer on documents and write tokenizer.json.", TRAIN_EXAMPLES,
    )
    train.add_argument("inputs", nargs="+", metavar="FILES", help="document files, directories or globs")
    train.add_argument("--vocab-size", type=int, required=True, help="vocabulary size, special tokens included (>= 258)")
    train.add_argument("--out", required=True, help="where to write tokenizer.json")
    train.add_argument("--min-frequency", type=int, default=2, help="least count of a pair to merge (default 2)")
    train.add_argument("--txt-split", choices=TXT_SPLITS, default="file", help=".txt documents: whole file (default) or paragraphs")
    train.set_defaults(handler=_train)

    info = add_command(
        commands, "info", "show vocabulary size, EOS / PAD ids and fingerprint",
        "Show what a tokenizer file holds, as olmolab reads it.", INFO_EXAMPLES,
    )
    info.add_argument("tokenizer", help="a tokenizer.json, or a Hugging Face directory holding one")
    info.add_argument("--text", help="also show the token ids of this text")
    info.set_defaults(handler=_info)


def _train(args: argparse.Namespace) -> int:
    texts = (doc.text for doc in iter_documents(expand_inputs(args.inputs), txt_split=args.txt_split) if doc.text)
    tokenizer = train_bpe(texts, args.vocab_size, min_frequency=args.min_frequency, show_progress=True)
    tokenizer.save(args.out)
    print(f"wrote {args.out}: {tokenizer!r}")
    return 0


def _info(args: argparse.Namespace) -> int:
    tokenizer = Tokenizer.from_file(args.tokenizer)
    print(repr(tokenizer))
    print(f"fingerprint {tokenizer.fingerprint}")
    if args.text is not None:
        print(tokenizer.encode(args.text))
    return 0
