"""`olmolab data ...`: tokenize documents, describe token files, trace a run's data."""

from __future__ import annotations

import argparse
import json
import re
from dataclasses import asdict
from pathlib import Path

from olmolab.cli.common import add_command, add_command_group
from olmolab.data.documents import TXT_SPLITS
from olmolab.data.provenance import InstanceDocuments, documents_at_step, read_run, steps_with_document
from olmolab.data.shards import TOKEN_DTYPES, describe_token_file, open_token_files
from olmolab.data.tokenize import DEFAULT_MAX_SHARD_BYTES, tokenize_files
from olmolab.errors import UserError
from olmolab.tokenizer import Tokenizer

GROUP_EXAMPLES = """\
examples:
  olmolab data tokenize docs/ --tokenizer tokenizer.json --out tokens/ --workers 2
  olmolab data info tokens/ --seq-len 2048
  olmolab data inspect runs/quickstart --step 100

Run `olmolab data COMMAND --help` for each command's options.
"""

TOKENIZE_EXAMPLES = """\
examples:
  olmolab data tokenize docs/*.jsonl.gz --tokenizer ../shared/data/tokenizers/allenai_dolma2.json --out tokens/ --workers 2
  olmolab data tokenize books/ --txt-split paragraph --tokenizer tokenizer.json --out tokens/ --skip-bad

Inputs: JSON lines (.jsonl, .json) with a string `text` and optional `id` (default PATH:LINE);
Parquet with columns `text` and optional `id`; plain .txt, one document per file (default) or
per paragraph (--txt-split paragraph: runs of non-blank lines). .gz and .zst are read too.
Directories are searched recursively; each directory and glob expands in sorted order.
Each document becomes encode(text.strip()) + [EOS], OLMo's format. Output per shard:
part-NNNNN.npy (raw tokens, uint16 if the vocabulary fits else uint32), part-NNNNN.csv.gz
(Dolma's document index) and part-NNNNN.json (dtype, counts, tokenizer). Running the same
command again keeps the finished shards and continues.
"""

INFO_EXAMPLES = """\
examples:
  olmolab data info tokens/
  olmolab data info ../shared/data/tokens/python-docs.dolma2/part-0-00000.npy --dtype uint32 --seq-len 2048
"""

INSPECT_EXAMPLES = """\
examples:
  olmolab data inspect runs/quickstart --step 100 --tokenizer tokenizer.json
  olmolab data inspect run.yaml --global-batch-size 64 --document "python-3.11-docs/about.rst.txt"

RUN is a run directory holding config.yaml (or config.yml / config.json), or such a file. It
needs a `data:` section (the DataConfig: paths or sources, seq_len, seed, stages) and the
global batch size in instances, from trainer.global_batch_size or --global-batch-size. Steps
count from 1: step N trains the N-th batch, and checkpoint stepN has trained steps 1..N.
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    commands = add_command_group(
        subparsers, "data", "tokenize documents; inspect token files and a run's data",
        "Tokenize documents into OLMo's token format, describe token files, and trace the documents a run trained on.",
        GROUP_EXAMPLES,
    )
    _add_tokenize(commands)
    _add_info(commands)
    _add_inspect(commands)


def _add_tokenize(commands) -> None:
    p = add_command(commands, "tokenize", "tokenize documents into OLMo token shards", examples=TOKENIZE_EXAMPLES)
    p.add_argument("inputs", nargs="+", metavar="INPUTS", help="document files, directories or globs")
    p.add_argument("--tokenizer", required=True, help="tokenizer.json (or a Hugging Face directory holding one)")
    p.add_argument("--out", required=True, help="output directory for the shards")
    p.add_argument("--workers", type=int, default=1, help="encoding processes (default 1: this process)")
    p.add_argument("--skip-bad", action="store_true", help="skip and count bad documents and unreadable files instead of stopping")
    p.add_argument("--txt-split", choices=TXT_SPLITS, default="file", help="a .txt document is the whole file (default) or a paragraph")
    p.add_argument("--max-shard-size", type=_size, default=DEFAULT_MAX_SHARD_BYTES, metavar="BYTES",
                   help="largest shard, e.g. 512M or 1G (default 1G); a shard holds whole documents")
    p.add_argument("--eos-token-id", type=int, help="EOS id, if the tokenizer file does not say it")
    p.add_argument("--pad-token-id", type=int, help="PAD id, if the tokenizer file does not say it")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(handler=_tokenize)


def _tokenize(args: argparse.Namespace) -> int:
    if args.workers < 1:
        raise UserError(f"--workers {args.workers}: use 1 or more")
    tokenizer = Tokenizer.from_file(args.tokenizer, eos_token_id=args.eos_token_id, pad_token_id=args.pad_token_id)
    summary = tokenize_files(
        args.inputs, tokenizer, args.out, workers=args.workers, skip_bad=args.skip_bad,
        txt_split=args.txt_split, max_shard_bytes=args.max_shard_size, progress=not args.quiet,
    )
    print(summary.describe())
    return 0


def _add_info(commands) -> None:
    p = add_command(commands, "info", "describe token files: tokens, dtype, documents, tokenizer", examples=INFO_EXAMPLES)
    p.add_argument("paths", nargs="+", help="token files (.npy), directories or globs")
    p.add_argument("--dtype", choices=TOKEN_DTYPES, help="dtype of raw files with no sidecar")
    p.add_argument("--seq-len", type=int, help="also count instances of this length")
    p.set_defaults(handler=_info)


def _info(args: argparse.Namespace) -> int:
    files = open_token_files(args.paths, dtype=args.dtype)
    for file in files:
        print(describe_token_file(file, args.seq_len))
    print(f"{len(files)} files, {sum(f.num_tokens for f in files):,} tokens")
    return 0


def _add_inspect(commands) -> None:
    p = add_command(
        commands, "inspect", "show the documents of a step's batch, or the steps that saw a document",
        examples=INSPECT_EXAMPLES,
    )
    p.add_argument("run", metavar="RUN", help="run directory or config file with a data: section")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--step", type=int, help="show the batch of this step (1-based)")
    which.add_argument("--document", metavar="ID", help="show the steps whose batch holds this document id")
    p.add_argument("--global-batch-size", type=int, help="instances per step (default: trainer.global_batch_size)")
    p.add_argument("--seq-len", type=int, help="override data.seq_len")
    p.add_argument("--until-step", type=int, help="with --document: last step to search (default: trainer.max_steps, else one epoch)")
    p.add_argument("--tokenizer", help="decode previews with this tokenizer (default: the run's trainer.tokenizer, else token ids)")
    p.add_argument("--preview-chars", type=int, default=80, help="characters of each document preview (default 80)")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(handler=_inspect)


def _inspect(args: argparse.Namespace) -> int:
    run = read_run(args.run, global_batch_size=args.global_batch_size, seq_len=args.seq_len)
    data = run.build()
    if args.document is not None:
        until = args.until_step or run.max_steps
        steps = steps_with_document(data, args.document, until_step=until)
        if args.json:
            print(json.dumps({"document": args.document, "steps": steps}))
        else:
            print(f"document {args.document!r}: seen at {len(steps)} steps" + (f": {', '.join(map(str, steps))}" if steps else ""))
        return 0
    instances = documents_at_step(data, args.step)
    if args.json:
        print(json.dumps([asdict(i) for i in instances], indent=1))
        return 0
    tokenizer_path = args.tokenizer or (run.tokenizer if run.tokenizer and Path(run.tokenizer).exists() else None)
    tokenizer = Tokenizer.from_file(tokenizer_path) if tokenizer_path else None
    print(f"step {args.step}: {len(instances)} instances of {data.dataset.seq_len} tokens (seed {data.order.seed})")
    for position, instance in enumerate(instances):
        print(_describe_instance(position, instance, data, tokenizer, args.preview_chars))
    return 0


def _describe_instance(position: int, instance: InstanceDocuments, data, tokenizer, preview_chars: int) -> str:
    lines = [f"[{position}] instance {instance.instance_id} ({instance.source}): {instance.file} tokens {instance.start}-{instance.end}"]
    if not instance.documents:
        lines.append("    (no document index beside this token file)")
    file = data.dataset.locate(instance.instance_id).file
    for doc in instance.documents:
        lines.append(f"    {doc.id}  ({doc.source} line {doc.line}; tokens {doc.start}-{doc.end} of {doc.doc_start}-{doc.doc_end})")
        tokens = file.read(doc.start, doc.end)
        preview = tokenizer.decode(tokens) if tokenizer else " ".join(map(str, tokens[:16].tolist()))
        preview = re.sub(r"\s+", " ", preview).strip()
        lines.append(f"      {preview[:preview_chars]!r}")
    return "\n".join(lines)


def _size(text: str) -> int:
    match = re.fullmatch(r"\s*(\d+)\s*([KMGT]?)i?B?\s*", text, flags=re.IGNORECASE)
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size; use bytes or a suffix, e.g. 512M, 1G")
    return int(match.group(1)) * 1024 ** "_KMGT".index(match.group(2).upper() or "_")
