"""`olmolab train`: pretraining, fine-tuning and annealing from a run config."""

from __future__ import annotations

import argparse
import json
import os

from olmolab.cli.common import add_command
from olmolab.errors import UserError

TRAIN_EPILOG = """\
examples:
  olmolab train configs/quickstart.yaml
  olmolab train configs/quickstart.yaml --optim.lr=3e-4 --trainer.max_steps=50
  torchrun --nproc-per-node 2 -m olmolab train run.yaml --trainer.distributed=fsdp
  olmolab train sft.yaml --load-path runs/base/step1000-tokens4B --reset-trainer-state

Any config key can be overridden as --section.key=value (values are read as YAML).
Starting the same command again resumes the run from its latest checkpoint.
"""


def register(subparsers) -> None:
    train = add_command(
        subparsers, "train", "pretrain or fine-tune a model from a YAML run config",
        "Pretrain (or fine-tune, or anneal) an OLMo / OLMo 2 model from a YAML run config.", TRAIN_EPILOG,
    )
    train.add_argument("config", help="the run config (YAML)")
    train.add_argument("overrides", nargs=argparse.REMAINDER,
                       help="--section.key=value overrides; also --load-path PATH and --reset-trainer-state")
    train.set_defaults(handler=_train)



def split_overrides(items: list[str]) -> list[str]:
    """CLI remainder -> `section.key=value` overrides; the two trainer flags become overrides too."""
    overrides, i = [], 0
    aliases = {"--load-path": "trainer.load_path", "--run-dir": "trainer.run_dir"}
    while i < len(items):
        item = items[i]
        flag, _, value = item.partition("=")
        if flag in aliases:
            if not value:
                if i + 1 >= len(items):
                    raise UserError(f"{flag} needs a value")
                value, i = items[i + 1], i + 1
            overrides.append(f"{aliases[flag]}={value}")
        elif item == "--reset-trainer-state":
            overrides.append("trainer.reset_trainer_state=true")
        elif item.startswith("--") and "." in flag and "=" in item:
            overrides.append(item[2:])
        else:
            raise UserError(f"unexpected argument {item!r}; overrides look like --section.key=value")
        i += 1
    return overrides


def _train(args) -> int:
    from olmolab.config import load_run_config
    from olmolab.train.prepare import run_prepare
    from olmolab.train.trainer import train

    config = load_run_config(args.config, split_overrides(args.overrides))
    if config.prepare is not None:
        from olmolab.train import distributed

        if distributed.rank() == 0:
            run_prepare(config.prepare, progress=config.trainer.progress)
    final = train(config)
    if int(os.environ.get("RANK", 0)) == 0:  # the process group is gone by now; torchrun's env is not
        shown = {k: round(v, 4) for k, v in final.items() if isinstance(v, float)}
        print(f"done: {config.trainer.run_dir} step {final.get('step')}: {json.dumps(shown)}")
    return 0
