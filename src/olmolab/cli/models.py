"""Commands for using trained models: `generate`, `export hf`, `import hf`, `soup`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from olmolab.cli.common import add_command, add_dtype_argument, chosen_precision, say_precision
from olmolab.errors import UserError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def register(subparsers) -> None:
    _register_generate(subparsers)
    _register_export(subparsers)
    _register_import(subparsers)
    _register_soup(subparsers)


def _command(subparsers, name: str, help: str, examples: str) -> argparse.ArgumentParser:
    return add_command(subparsers, name, help, help, f"examples:\n{examples}")


# ---------------------------------------------------------------------- generate


def _register_generate(subparsers) -> None:
    p = _command(subparsers, "generate", "Continue prompts with a model (greedy by default; sampling with --temperature).", """\
  olmolab generate runs/quickstart --prompt "The meaning of life is"
  olmolab generate runs/quickstart/step1000-tokens4M --prompt "Once upon" --temperature 0.8 --top-p 0.95 --seed 1
  olmolab generate exported-hf/ --prompts-file prompts.txt --max-new-tokens 32 --stop "\\n" > out.jsonl
  olmolab generate runs/sft --chat --prompt "What is 2 + 2?" --system "Answer with a number."

CHECKPOINT is an olmolab checkpoint, a revision directory, a run directory (its latest
revision is used) or a Hugging Face OLMo directory. A single prompt streams its continuation
to the terminal; --prompts-file generates in left-padded batches and writes one JSON line
{"prompt", "completion"} per prompt. --chat makes each prompt a user turn in the chat template
(OLMo 2-Instruct's) and generates the assistant's reply; `olmolab chat` holds a conversation.""")
    p.add_argument("checkpoint", metavar="CHECKPOINT")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--prompt", help="the text to continue")
    source.add_argument("--prompts-file", type=Path, metavar="FILE", help="one prompt per line (blank lines skipped)")
    p.add_argument("--max-new-tokens", type=int, default=64, metavar="N", help="default: %(default)s")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default); e.g. 0.8 to sample")
    p.add_argument("--top-k", type=int, default=None, metavar="K", help="sample among the K most likely tokens")
    p.add_argument("--top-p", type=float, default=None, metavar="P", help="nucleus sampling threshold in (0, 1]")
    p.add_argument("--seed", type=int, default=None, help="seed for reproducible sampling")
    p.add_argument("--stop", action="append", default=[], metavar="TEXT",
                   help="stop when this text appears (repeatable; escapes like \\n are understood)")
    p.add_argument("--ignore-eos", action="store_true", help="do not stop at the end-of-text token")
    p.add_argument("--tokenizer", type=Path, metavar="FILE", help="tokenizer.json to use instead of the checkpoint's")
    p.add_argument("--batch-size", type=int, default=8, metavar="N", help="prompts per batch with --prompts-file")
    p.add_argument("--completion-only", action="store_true", help="do not echo a single prompt before its continuation")
    p.add_argument("--chat", action="store_true",
                   help="each prompt is a user message: apply the chat template and generate the assistant's reply")
    p.add_argument("--system", metavar="TEXT", help="with --chat: a system message before each prompt")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    add_dtype_argument(p)
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the decode step: faster per token for a single prompt on CPU, "
                        "after a one-off compilation; worth it for long generations")
    p.set_defaults(handler=_generate)


def _generate(args) -> int:
    from olmolab.generation import GenerationConfig, generate_text
    from olmolab.model_files import check_tokenizer, load
    from olmolab.tokenizer import Tokenizer

    config = GenerationConfig.from_dict(dict(
        max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
        seed=args.seed, stop_at_eos=not args.ignore_eos, compile=args.compile,
    ), where="generate")
    if args.batch_size < 1:
        raise UserError(f"--batch-size {args.batch_size} must be at least 1")
    prompts = [args.prompt] if args.prompt is not None else _read_prompts(args.prompts_file)
    stops = [_unescape(s) for s in args.stop]
    device = _device(args.device)
    precision = chosen_precision(args, device)
    model, tokenizer = load(args.checkpoint, device=device, dtype=precision.dtype)
    if args.tokenizer is not None:
        tokenizer = Tokenizer.from_file(args.tokenizer)
        check_tokenizer(model.config, tokenizer, source=str(args.tokenizer))
    if tokenizer is None:
        raise UserError(f"{args.checkpoint}: no tokenizer.json with this checkpoint; pass --tokenizer FILE")
    if args.system is not None and not args.chat:
        raise UserError("--system needs --chat")
    model_prompts = [_chat_prompt(tokenizer, p, args.system) for p in prompts] if args.chat else prompts
    _warn_if_window_cuts(model_prompts, tokenizer, model.config.max_seq_len, args.max_new_tokens)
    say_precision(precision)

    if args.prompt is not None:
        if not args.completion_only and not args.chat:
            sys.stdout.write(args.prompt)
        def stream(row: int, piece: str) -> None:
            sys.stdout.write(piece)
            sys.stdout.flush()
        generate_text(model, tokenizer, model_prompts, config, stop_strings=stops, on_text=stream)
        sys.stdout.write("\n")
        return 0
    for start in range(0, len(prompts), args.batch_size):
        batch = prompts[start : start + args.batch_size]
        completions = generate_text(model, tokenizer, model_prompts[start : start + args.batch_size], config,
                                    stop_strings=stops)
        for prompt, completion in zip(batch, completions, strict=True):
            print(json.dumps({"prompt": prompt, "completion": completion}, ensure_ascii=False), flush=True)
    return 0


def _warn_if_window_cuts(prompts: list[str], tokenizer, window: int, max_new_tokens: int) -> None:
    """Say up front when the context window, not --max-new-tokens, will end a completion."""
    # The last new token is never fed back, so a prompt of n tokens leaves room for window - n + 1.
    rooms = [window - max(len(tokenizer.encode(p)), 1) + 1 for p in prompts]
    cut = [i for i, room in enumerate(rooms) if 1 <= room < max_new_tokens]  # longer prompts are refused later
    if cut:
        i = cut[0]
        print(f"olmolab generate: note: {len(cut)} prompt(s) leave less room than --max-new-tokens "
              f"{max_new_tokens} in the model's {window}-token context window (prompt {i + 1}: room for "
              f"{rooms[i]} new tokens); their completions stop at the window", file=sys.stderr)


def _chat_prompt(tokenizer, text: str, system: str | None) -> str:
    """`text` as the user's turn of a conversation, followed by the assistant's generation prompt."""
    messages = [{"role": "system", "content": system}] if system else []
    return tokenizer.render_chat([*messages, {"role": "user", "content": text}], add_generation_prompt=True)[0]


def _read_prompts(path: Path) -> list[str]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read prompts file {path}: {e}") from e
    prompts = [line for line in lines if line.strip()]
    if not prompts:
        raise UserError(f"{path}: no prompts (the file has no non-blank lines)")
    return prompts


def _unescape(text: str) -> str:
    """`--stop "\\n"` from a shell means a newline."""
    return text.encode("latin-1", "backslashreplace").decode("unicode_escape")


def _device(name: str) -> torch.device:
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise UserError(f"--device {name!r}: {e}") from e
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is available here; use --device cpu")
    return device


# ---------------------------------------------------------------------- export / import


def _register_export(subparsers) -> None:
    p = _command(subparsers, "export", "Write a model in another format.", """\
  olmolab export hf runs/quickstart exported-hf/
  olmolab export hf runs/quickstart/step2000-tokens8M out/ --dtype bfloat16""")
    formats = p.add_subparsers(dest="format", metavar="FORMAT", required=True)
    hf = _command(formats, "hf", "Export as a Hugging Face transformers directory (OlmoForCausalLM / Olmo2ForCausalLM).", """\
  olmolab export hf runs/quickstart exported-hf/
  python -c "from transformers import AutoModelForCausalLM, AutoTokenizer; \\
             AutoModelForCausalLM.from_pretrained('exported-hf'); AutoTokenizer.from_pretrained('exported-hf')"

The directory loads with AutoModelForCausalLM / AutoTokenizer without trust_remote_code.""")
    hf.add_argument("checkpoint", metavar="CHECKPOINT", help="olmolab checkpoint, revision or run directory")
    hf.add_argument("out", metavar="OUT_DIR", type=Path)
    hf.add_argument("--tokenizer", type=Path, metavar="FILE", help="tokenizer.json to ship instead of the checkpoint's")
    hf.add_argument("--dtype", choices=sorted(DTYPES), default="float32", help="dtype of the written weights")
    hf.add_argument("--overwrite", action="store_true", help="write into OUT_DIR even if it is not empty")
    hf.set_defaults(handler=_export_hf)


def _export_hf(args) -> int:
    from olmolab.convert import hf
    from olmolab.model_files import check_tokenizer, load
    from olmolab.tokenizer import Tokenizer

    _check_out_dir(args.out, args.overwrite)
    model, tokenizer = load(args.checkpoint)
    if args.tokenizer is not None:
        tokenizer = Tokenizer.from_file(args.tokenizer)
        check_tokenizer(model.config, tokenizer, source=str(args.tokenizer))
    hf.export(model, args.out, tokenizer=tokenizer, dtype=DTYPES[args.dtype])
    note = "" if tokenizer is not None else " (no tokenizer found: pass --tokenizer to include one)"
    print(f"exported {args.checkpoint} -> {args.out} ({model.config.family}, {args.dtype}){note}")
    return 0


def _register_import(subparsers) -> None:
    p = _command(subparsers, "import", "Read a model from another format into an olmolab checkpoint.", """\
  olmolab import hf path/to/OLMo-2-0425-1B my-olmo2-1b/""")
    formats = p.add_subparsers(dest="format", metavar="FORMAT", required=True)
    hf = _command(formats, "hf", "Import a Hugging Face OLMo / OLMo 2 directory as an olmolab checkpoint.", """\
  olmolab import hf path/to/OLMo-2-0425-1B my-olmo2-1b/
  olmolab generate my-olmo2-1b/ --prompt "Language models are"

Every tensor is checked by name and shape; the tokenizer.json beside the weights is kept.""")
    hf.add_argument("hf_dir", metavar="HF_DIR", type=Path)
    hf.add_argument("out", metavar="OUT_DIR", type=Path)
    hf.add_argument("--overwrite", action="store_true", help="write into OUT_DIR even if it is not empty")
    hf.set_defaults(handler=_import_hf)


def _import_hf(args) -> int:
    from olmolab.convert.hf import write_tokenizer
    from olmolab.model_files import is_hf_dir, load, save_model

    if args.hf_dir.is_dir() and not is_hf_dir(args.hf_dir):
        raise UserError(f"{args.hf_dir}: not a Hugging Face model directory (no config.json with a model_type)")
    _check_out_dir(args.out, args.overwrite)
    model, tokenizer = load(args.hf_dir)
    save_model(model, args.out, run_config={"imported_from": str(args.hf_dir.resolve())})
    if tokenizer is not None:  # with the files that name EOS / PAD, as in the HF directory
        write_tokenizer(tokenizer, args.out, model.config)
    note = "" if tokenizer is not None else " (no tokenizer.json in HF_DIR: generate will need --tokenizer)"
    print(f"imported {args.hf_dir} -> {args.out} ({model.config.family}, {model.num_params():,} parameters){note}")
    return 0


def _check_out_dir(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: exists and is a file; choose a directory")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise UserError(f"{out}: exists and is not empty; choose a new directory or pass --overwrite")


# ---------------------------------------------------------------------- soup


def _register_soup(subparsers) -> None:
    p = _command(subparsers, "soup", "Average checkpoints of one architecture (OLMo 2's model souping), in fp32.", """\
  olmolab soup runs/seed42 runs/seed42069 runs/seed666 --out soup/
  olmolab soup a/step9000-tokens36M b/step9000-tokens36M --weights 0.7 0.3 --out soup/

Weights are normalised to sum to 1 (default: uniform). The checkpoints must share every model
config key; the first one's tokenizer is kept, and config.json records the recipe.""")
    p.add_argument("checkpoints", nargs="+", metavar="CKPT")
    p.add_argument("--out", required=True, type=Path, metavar="DIR")
    p.add_argument("--weights", nargs="+", type=float, metavar="W", help="one non-negative weight per checkpoint")
    p.add_argument("--overwrite", action="store_true", help="write into DIR even if it is not empty")
    p.set_defaults(handler=_soup)


def _soup(args) -> int:
    from olmolab.soup import soup_to_dir, soup_weights

    weights = soup_weights(args.weights, len(args.checkpoints))
    _check_out_dir(args.out, args.overwrite)
    soup_to_dir(args.checkpoints, args.out, weights)
    shown = ", ".join(f"{w:.3g}" for w in weights)
    print(f"souped {len(args.checkpoints)} checkpoints (weights {shown}) -> {args.out}")
    return 0
