"""`olmolab train`, `olmolab checkpoints`, `olmolab plot`."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from olmolab.cli import add_command
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

    checkpoints = add_command(
        subparsers, "checkpoints", "list a run's revisions (stepN-tokensM)",
        "List the checkpoints (revisions) of a run directory, with the loss at each.",
        "example:\n  olmolab checkpoints runs/quickstart",
    )
    checkpoints.add_argument("run_dir")
    checkpoints.add_argument("--json", action="store_true", help="print JSON instead of a table")
    checkpoints.set_defaults(handler=_checkpoints)

    plot = add_command(
        subparsers, "plot", "draw a run's loss, LR and validation curves to a PNG",
        "Plot metrics.jsonl of a run: training loss, learning rate, grad norm, validation metrics.",
        "example:\n  olmolab plot runs/quickstart --out curves.png",
    )
    plot.add_argument("run_dir")
    plot.add_argument("--out", help="PNG path (default RUN_DIR/curves.png)")
    plot.set_defaults(handler=_plot)


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


def _checkpoints(args) -> int:
    from olmolab.train.checkpoint import list_revisions
    from olmolab.train.metrics import read_metrics

    run_dir = Path(args.run_dir)
    if not run_dir.is_dir():
        raise UserError(f"{run_dir}: no such run directory")
    revisions = list_revisions(run_dir)
    losses = {row["step"]: row["loss"] for row in read_metrics(run_dir) if "loss" in row}
    rows = []
    for revision in revisions:
        state = json.loads((revision.path / "train_state.json").read_text())
        size = sum(f.stat().st_size for f in revision.path.rglob("*") if f.is_file())
        rows.append({"revision": revision.path.name, "step": state["step"], "tokens": state["tokens"],
                     "loss": losses.get(state["step"]), "size_mb": round(size / 2**20, 1), "path": str(revision.path)})
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print(f"{run_dir}: no checkpoints yet")
        return 0
    print(f"{'revision':32s} {'step':>8s} {'tokens':>14s} {'loss':>8s} {'size':>9s}")
    for r in rows:
        loss = f"{r['loss']:.4f}" if r["loss"] is not None else "-"
        print(f"{r['revision']:32s} {r['step']:8d} {r['tokens']:14,d} {loss:>8s} {r['size_mb']:7.1f}MB")
    return 0


def _plot(args) -> int:
    from olmolab.train.metrics import read_metrics

    rows = read_metrics(args.run_dir)
    if not rows:
        raise UserError(f"{args.run_dir}: no metrics.jsonl to plot (has the run logged a step yet?)")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise UserError("plotting needs matplotlib: pip install 'olmolab[plot]'") from e
    train_rows = [r for r in rows if "loss" in r]
    eval_keys = sorted({k for r in rows for k in r if k.startswith("eval/")})
    panels = [("loss", "training loss"), ("lr", "learning rate"), ("grad_norm", "grad norm")]
    # RL runs (olmolab rlvr) also log what they are rewarded for and how far they drift from the reference
    panels += [(key, title) for key, title in (("reward/mean", "reward (mean)"), ("accuracy", "verifier accuracy"),
                                               ("kl", "KL(policy || reference)"), ("response_length", "response length"))
               if train_rows and key in train_rows[0]]
    fig, axes = plt.subplots(1, len(panels) + bool(eval_keys), figsize=(5 * (len(panels) + bool(eval_keys)), 4))
    for ax, (key, title) in zip(axes, panels, strict=False):
        ax.plot([r["step"] for r in train_rows], [r[key] for r in train_rows])
        ax.set_title(title)
        ax.set_xlabel("step")
    if eval_keys:
        ax = axes[-1]
        for key in eval_keys:
            points = [(r["step"], r[key]) for r in rows if key in r]
            ax.plot(*zip(*points, strict=True), marker="o", label=key.removeprefix("eval/"))
        ax.set_title("evaluation")
        ax.set_xlabel("step")
        ax.legend(fontsize=7)
    fig.tight_layout()
    out = Path(args.out or Path(args.run_dir) / "curves.png")
    fig.savefig(out, dpi=100)
    print(f"wrote {out}")
    return 0
