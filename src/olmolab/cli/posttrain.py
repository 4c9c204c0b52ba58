"""`olmolab sft`, `olmolab dpo`, `olmolab rlvr` and `olmolab chat`."""

from __future__ import annotations

import argparse
import json
import os
import sys

from olmolab.cli.common import add_command
from olmolab.errors import UserError

SFT_EXAMPLES = """\
examples:
  olmolab sft sft.yaml
  olmolab sft sft.yaml --load-path runs/base --run-dir runs/sft --sft.epochs=1
  olmolab sft sft.yaml --skip-bad
  torchrun --nproc-per-node 2 -m olmolab sft sft.yaml --trainer.distributed=fsdp

The config has an `sft:` section (paths of JSONL chat data, max_seq_len, reduction, packing, ...)
beside trainer/optim/scheduler; trainer.load_path is the model to fine-tune. Starting the same
command again resumes the run from its latest revision. See configs/official/olmo2-*-sft.yaml."""

DPO_EXAMPLES = """\
examples:
  olmolab dpo dpo.yaml
  olmolab dpo dpo.yaml --load-path runs/sft --run-dir runs/dpo --dpo.beta=5

The config has a `dpo:` section (paths of JSONL {"chosen", "rejected"} rows, loss, beta, ...);
trainer.load_path is the SFT model, which is also the reference. The reference's log-probs are
computed once into RUN_DIR/reference_logps-*.pt and reused on resume."""


CHAT_EXAMPLES = """\
examples:
  olmolab chat runs/dpo
  olmolab chat runs/sft --system "You are a concise assistant." --temperature 0.7 --top-p 0.9 --seed 1

Type a message and press Enter. /reset starts a new conversation (the system message stays);
/quit or Ctrl-D ends."""

RLVR_EXAMPLES = """\
examples:
  olmolab rlvr rlvr.yaml
  olmolab rlvr rlvr.yaml --load-path runs/sft --run-dir runs/rlvr --rlvr.samples_per_prompt=8

The config has an `rlvr:` section (paths of JSONL {"messages", "ground_truth", "dataset"} prompts,
samples_per_prompt, response_length, beta, ...); trainer.global_batch_size is the number of prompts
per step, and trainer.load_path the model to start from, which is also the frozen reference.
Sampled responses go to RUN_DIR/samples.jsonl. See configs/official/olmo2-1b-rlvr.yaml."""


def register(subparsers) -> None:
    for method, summary, examples in (
        ("sft", "supervised fine-tuning on chat data (assistant turns only)", SFT_EXAMPLES),
        ("dpo", "direct preference optimisation on chosen / rejected conversations", DPO_EXAMPLES),
        ("rlvr", "reinforcement learning with verifiable rewards (GRPO) on prompts with checkable answers",
         RLVR_EXAMPLES),
    ):
        p = add_command(subparsers, method, summary, examples=examples)
        p.add_argument("config", help="the run config (YAML)")
        p.add_argument("overrides", nargs=argparse.REMAINDER,
                       help="--section.key=value overrides; also --load-path, --run-dir, --skip-bad")
        p.set_defaults(handler=_post_train, method=method)
    _register_chat(subparsers)


def _post_train(args) -> int:
    from olmolab.cli.train import split_overrides
    from olmolab.posttrain.config import load_post_train_config
    from olmolab.train.trainer import train

    items = [i for i in args.overrides if i != "--skip-bad"]
    overrides = split_overrides(items) + ([f"{args.method}.skip_bad=true"] if len(items) < len(args.overrides) else [])
    config = load_post_train_config(args.method, args.config, overrides)
    final = train(config, trainer_class(args.method))
    if int(os.environ.get("RANK", 0)) == 0:
        shown = {k: round(v, 4) for k, v in final.items() if isinstance(v, float)}
        print(f"done: {config.trainer.run_dir} step {final.get('step')}: {json.dumps(shown)}")
    return 0


def trainer_class(method: str):
    if method == "sft":
        from olmolab.posttrain.sft import SFTTrainer

        return SFTTrainer
    if method == "rlvr":
        from olmolab.posttrain.rlvr import RLVRTrainer

        return RLVRTrainer
    from olmolab.posttrain.dpo import DPOTrainer

    return DPOTrainer


def _register_chat(subparsers) -> None:
    p = add_command(subparsers, "chat", "talk with a model in its chat template (multi-turn, streaming)",
                    examples=CHAT_EXAMPLES)
    p.add_argument("checkpoint", metavar="RUN", help="a run directory, revision, or Hugging Face directory")
    p.add_argument("--system", help="a system message to start every conversation with")
    p.add_argument("--max-new-tokens", type=int, default=256, metavar="N", help="per reply (default: %(default)s)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--top-k", type=int, default=None, metavar="K")
    p.add_argument("--top-p", type=float, default=None, metavar="P")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--device", default="cpu")
    p.set_defaults(handler=_chat)


def _chat(args) -> int:
    from olmolab.cli.models import _device
    from olmolab.generation import GenerationConfig
    from olmolab.model_files import load
    from olmolab.posttrain.chat import ChatSession

    model, tokenizer = load(args.checkpoint, device=_device(args.device))
    if tokenizer is None:
        raise UserError(f"{args.checkpoint}: no tokenizer.json with this checkpoint")
    config = GenerationConfig.from_dict(dict(max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                                             top_k=args.top_k, top_p=args.top_p, seed=args.seed), where="chat")
    session = ChatSession(model, tokenizer, config, system=args.system)
    interactive = sys.stdin.isatty()
    while True:
        if interactive:
            sys.stdout.write("> ")
            sys.stdout.flush()
        line = sys.stdin.readline()
        if not line or line.strip() == "/quit":
            return 0
        text = line.rstrip("\n")
        if text.strip() == "/reset":
            session.reset()
            print("(new conversation)")
            continue
        if not text.strip():
            continue
        try:
            session.reply(text, on_text=lambda piece: (sys.stdout.write(piece), sys.stdout.flush()))
        except UserError as e:
            print(f"\n(error: {e}; /reset starts a new conversation)")
            continue
        sys.stdout.write("\n")
