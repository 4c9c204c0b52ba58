"""`olmolab eval CHECKPOINT --tasks ...`: downstream benchmarks and held-out perplexity."""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

from olmolab.allocator import keep_freed_memory
from olmolab.cli.common import add_command, add_dtype_argument, chosen_precision, say_precision
from olmolab.denormals import flush_denormals
from olmolab.errors import UserError
from olmolab.eval.downstream import TaskResult, evaluate_task
from olmolab.eval.gen_eval import GenSpec, evaluate_generative
from olmolab.eval.generative import GEN_TASKS, build_gen_examples
from olmolab.eval.perplexity import PerplexityResult, evaluate_documents, load_documents
from olmolab.eval.suites import SUITES, EvalSpec, parse_eval_tasks
from olmolab.eval.tasks import CORE_TASKS, DATA_ENV, resolve_data_dir

EXAMPLES = f"""\
examples:
  olmolab eval runs/run --tasks piqa,arc_easy,hellaswag --limit 500
  olmolab eval runs/run/step1000-tokens4M --tasks all --num-fewshot 5 --output results.json
  olmolab eval hf_dir/ --tasks arc_challenge:mc:5shot,mmlu:mc:5shot --batch-size 16
  olmolab eval runs/run --tasks gsm8k,drop --limit 200 --output gen.json
  olmolab eval sft_dir/ --tasks olmo2_heldout,minerva_math_500 --chat
  olmolab eval runs/run --perplexity ../shared/data/corpora/wikitext-2/test.txt
  olmolab eval runs/run --perplexity part-0-00000.npy --perplexity-dtype uint32 --max-tokens 200000

CHECKPOINT is an olmolab model directory, a revision (stepN-tokensM) or a run directory (its
latest revision), or a Hugging Face directory. Ranked-choice tasks: {", ".join(CORE_TASKS)},
mmlu_<subject>, or `all`, with options NAME[:rc|:mc][:Nshot] (rc = cloze, the default; mc =
lettered multiple choice). Generative tasks (greedy answers, OLMES's shots, stop sequences and
token budgets; NAME[:Nshot]): {", ".join(GEN_TASKS)}. Suites: {", ".join(SUITES)}.
Prompts are OLMES's; the shots are OLMES's curated ones (MMLU: the first rows of each subject's
dev split). --limit draws OLMES's Random(1234) subsample.

Benchmark files are read from --data-dir, else ${DATA_ENV}, else ~/.cache/olmolab/eval, laid
out as hf/<dataset>/<config>/validation/ (Hugging Face save_to_disk) and olmes/fewshot/.
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = add_command(
        subparsers, "eval", "evaluate a checkpoint on downstream benchmarks and held-out perplexity",
        "Score a checkpoint on the model card's benchmarks (ranked classification: acc, "
        "acc_norm, per-token, PMI) and on held-out text (loss, perplexity, bits per byte).",
        EXAMPLES,
    )
    parser.add_argument(
        "checkpoint", help="olmolab checkpoint, revision or run directory, or a Hugging Face directory"
    )
    parser.add_argument(
        "--tasks", default="", help="comma-separated task specs and suites, or `all` (the ten core tasks)"
    )
    parser.add_argument("--limit", type=int, default=None, help="examples per task (default: all)")
    parser.add_argument("--num-fewshot", type=int, default=0, help="shots for tasks that do not say :Nshot")
    parser.add_argument("--batch-size", type=int, default=32, help="rows per forward pass (default 32)")
    parser.add_argument("--data-dir", default=None, help=f"benchmark data root (default ${DATA_ENV})")
    parser.add_argument("--no-pmi", action="store_true", help="skip PMI's unconditional requests (faster)")
    parser.add_argument("--chat", action="store_true",
                        help="render generative prompts in the chat template (SFT/DPO/RLVR models)")  # fmt: skip
    parser.add_argument("--max-new-tokens", type=int, default=None,
                        help="cap every generative task's token budget (default: each task's own)")  # fmt: skip
    parser.add_argument("--perplexity", action="append", default=[], metavar="FILE",
                        help="held-out text (.txt, .jsonl[.gz]) or token file; repeatable")  # fmt: skip
    parser.add_argument("--perplexity-dtype", default=None, metavar="DTYPE",
                        help="the files are raw token arrays of this dtype (uint16, uint32)")  # fmt: skip
    parser.add_argument("--max-tokens", type=int, default=None, help="score only this many tokens per file")
    parser.add_argument(
        "--stride", type=int, default=None, help="sliding-window stride (default: half the window)"
    )
    parser.add_argument("--tokenizer", default=None, help="tokenizer.json, if the checkpoint has none")
    parser.add_argument(
        "--output", default=None, help="write results, the first prompts of each task and every answer as JSON"
    )
    parser.add_argument(
        "--samples", type=int, default=3,
        help="prompts per task shown in the JSON (default 3); generative tasks list every answer",
    )
    parser.add_argument("--device", default="auto", help="cpu, cuda, ... (default: cuda if available)")
    add_dtype_argument(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    import olmolab
    from olmolab.model_files import check_tokenizer
    from olmolab.tokenizer import Tokenizer

    specs = parse_eval_tasks(args.tasks, args.num_fewshot, args.chat)
    if not specs and not args.perplexity:
        raise UserError(
            "nothing to evaluate: give --tasks (e.g. --tasks piqa,arc_easy) and/or --perplexity FILE"
        )
    for name in ("limit", "batch_size", "max_tokens", "stride", "max_new_tokens"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} {getattr(args, name)} must be a positive integer")
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    if device == "cpu":
        keep_freed_memory()  # scoring allocates large logits every batch (olmolab/allocator.py)
        flush_denormals()  # log-softmaxes over widely spread logits (olmolab/denormals.py)
    precision = chosen_precision(args, device)
    model, tokenizer = olmolab.load(args.checkpoint, device=device, dtype=precision.dtype)
    if args.tokenizer:
        tokenizer = Tokenizer.from_file(args.tokenizer)
        check_tokenizer(model.config, tokenizer, source=str(args.tokenizer))
    if tokenizer is None:
        raise UserError(f"{args.checkpoint}: no tokenizer.json with the checkpoint; pass --tokenizer PATH")
    model.eval()
    say_precision(precision)
    started = time.perf_counter()
    results = [evaluate_spec(model, tokenizer, spec, args) for spec in specs]
    perplexities = [perplexity_of(model, tokenizer, Path(path), args) for path in args.perplexity]
    print(format_table(results, perplexities))
    if args.output:
        write_json(Path(args.output), args, results, perplexities, time.perf_counter() - started, precision.name)
        print(f"wrote {args.output}")
    return 0


def evaluate_spec(model, tokenizer, spec: EvalSpec, args: argparse.Namespace) -> TaskResult:
    if isinstance(spec, GenSpec):
        examples = build_gen_examples(spec.task, spec.num_shots, args.data_dir, args.limit)
        return evaluate_generative(
            model, tokenizer, spec, examples, batch_size=args.batch_size, max_new_tokens=args.max_new_tokens,
            n_samples=args.samples, progress=True,
        )  # fmt: skip
    return evaluate_task(
        model, tokenizer, spec, data_dir=args.data_dir, limit=args.limit, batch_size=args.batch_size,
        pmi=not args.no_pmi, n_samples=args.samples, progress=True,
    )  # fmt: skip


def perplexity_of(model, tokenizer, path: Path, args: argparse.Namespace) -> PerplexityResult:
    documents = load_documents(path, tokenizer, args.perplexity_dtype, args.max_tokens)
    vocab = model.config.embedding_size
    top = max((int(doc.tokens.max()) for doc in documents if len(doc.tokens)), default=0)
    if top >= vocab:
        raise UserError(
            f"{path}: holds token id {top}, outside the model's vocabulary of {vocab}; it was tokenized "
            f"with another tokenizer (or --perplexity-dtype is wrong)"
        )
    return evaluate_documents(
        model, documents, path.name, stride=args.stride, batch_size=args.batch_size, progress=True
    )


def format_table(results: list[TaskResult], perplexities: list[PerplexityResult]) -> str:
    """A Markdown table like a model card's: task, shots, metric, value, stderr."""
    lines = ["| task | n | metric | value | stderr |", "|---|---:|---|---:|---:|"]
    for r in results:
        for i, (name, value) in enumerate(r.metrics.items()):
            task = f"{r.spec.task} ({r.spec.formulation}, {r.spec.num_shots}-shot)" if i == 0 else ""
            n = str(r.n_examples) if i == 0 else ""
            lines.append(f"| {task} | {n} | {name} | {value:.4f} | {_fmt(r.stderr[name])} |")
    for p in perplexities:
        rows = [("CrossEntropyLoss", p.loss), ("Perplexity", p.perplexity), ("BitsPerByte", p.bits_per_byte)]
        for i, (name, value) in enumerate((n, v) for n, v in rows if v is not None):
            lines.append(
                f"| {p.label if i == 0 else ''} | {p.n_tokens if i == 0 else ''} | {name} | {value:.4f} | |"
            )
    return "\n".join(lines)


def _fmt(x: float) -> str:
    return "" if math.isnan(x) else f"{x:.4f}"


def write_json(
    path: Path,
    args: argparse.Namespace,
    results: list[TaskResult],
    perplexities: list[PerplexityResult],
    seconds: float,
    dtype: str,
) -> None:
    report = {
        "checkpoint": str(args.checkpoint),
        "settings": {
            "dtype": dtype,
            "limit": args.limit, "num_fewshot": args.num_fewshot, "batch_size": args.batch_size,
            "data_dir": str(resolve_data_dir(args.data_dir)), "pmi": not args.no_pmi, "stride": args.stride,
            "chat": args.chat, "max_new_tokens": args.max_new_tokens,
        },
        "downstream": {r.spec.label: r.to_dict() for r in results},
        "perplexity": {
            p.label: {"loss": p.loss, "perplexity": p.perplexity, "bits_per_byte": p.bits_per_byte,
                      "tokens": p.n_tokens, "bytes": p.n_bytes, "documents": p.n_documents}
            for p in perplexities
        },
        "seconds": round(seconds, 2),
    }  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
