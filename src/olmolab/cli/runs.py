"""`olmolab checkpoints`, `olmolab plot`, `olmolab report`: looking at a run directory."""

from __future__ import annotations

import json
from pathlib import Path

from olmolab.cli.common import add_command
from olmolab.errors import UserError


def register(subparsers) -> None:
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
        "Plot metrics.jsonl of a run: training loss, learning rate, grad norm, and each validation or\n"
        "downstream metric on its own axis.",
        "example:\n  olmolab plot runs/quickstart --out curves.png",
    )
    plot.add_argument("run_dir")
    plot.add_argument("--out", help="PNG path (default RUN_DIR/curves.png)")
    plot.set_defaults(handler=_plot)

    report = add_command(
        subparsers, "report", "write a run's report: config, data, curves, evals, energy and CO2",
        "Write RUN_DIR/report.md and RUN_DIR/report.html (figures embedded): the resolved config, the data\n"
        "(sources, tokens, epochs, order), curves and evaluations, revisions, skipped steps and loss spikes,\n"
        "throughput and MFU, time, and energy and emissions in the model card's columns.",
        "example:\n  olmolab report runs/quickstart",
    )
    report.add_argument("run_dir")
    report.set_defaults(handler=_report)


def _checkpoints(args) -> int:
    from olmolab.revisions import list_revisions
    from olmolab.train.checkpoint import check_revision, read_train_state
    from olmolab.train.metrics import read_metrics

    run_dir = Path(args.run_dir)
    if not run_dir.is_dir():
        raise UserError(f"{run_dir}: no such run directory")
    losses = {row["step"]: row["loss"] for row in read_metrics(run_dir) if "loss" in row}
    rows = []
    for revision in list_revisions(run_dir):
        problems = check_revision(revision.path)
        state = {} if problems else read_train_state(revision.path)
        size = sum(f.stat().st_size for f in revision.path.rglob("*") if f.is_file())
        rows.append({"revision": revision.path.name, "step": state.get("step", revision.step),
                     "tokens": state.get("tokens"), "loss": losses.get(revision.step),
                     "size_mb": round(size / 2**20, 1), "path": str(revision.path), "damaged": problems or None})
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print(f"{run_dir}: no checkpoints yet")
        return 0
    print(f"{'revision':32s} {'step':>8s} {'tokens':>14s} {'loss':>8s} {'size':>9s}")
    for r in rows:
        loss = f"{r['loss']:.4f}" if r["loss"] is not None else "-"
        tokens = f"{r['tokens']:14,d}" if r["tokens"] is not None else f"{'-':>14s}"
        damaged = f"  DAMAGED: {'; '.join(r['damaged'])}" if r["damaged"] else ""
        print(f"{r['revision']:32s} {r['step']:8d} {tokens} {loss:>8s} {r['size_mb']:7.1f}MB{damaged}")
    return 0


def _plot(args) -> int:
    from olmolab.train.metrics import read_metrics

    rows = read_metrics(args.run_dir)
    if not rows:
        raise UserError(f"{args.run_dir}: no metrics.jsonl to plot (has the run logged a step yet?)")
    try:
        from olmolab.train.curves import curves_figure

        fig = curves_figure(rows)
    except ImportError as e:
        raise UserError("plotting needs matplotlib: pip install 'olmolab[plot]'") from e
    out = Path(args.out or Path(args.run_dir) / "curves.png")
    fig.savefig(out, dpi=100)
    print(f"wrote {out}")
    return 0


def _report(args) -> int:
    try:
        from olmolab.train.report import write_report

        md, page = write_report(args.run_dir)
    except ImportError as e:
        raise UserError("the report's figures need matplotlib: pip install 'olmolab[plot]'") from e
    print(f"wrote {md} and {page}")
    return 0
