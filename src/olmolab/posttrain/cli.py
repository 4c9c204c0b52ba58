"""`olmolab sft`, `olmolab dpo`, `olmolab rlvr` and `olmolab chat`."""

from __future__ import annotations

import argparse
import json
import os

from olmolab.cli import add_command

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
    from olmolab.posttrain.chat import register as register_chat

    register_chat(subparsers)


def _post_train(args) -> int:
    from olmolab.posttrain.config import load_post_train_config
    from olmolab.train.cli import split_overrides
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
