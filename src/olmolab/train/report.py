"""`olmolab report RUN_DIR`: what a run did, on one page a reader can set beside a model card.

Writes RUN_DIR/report.md (its figures as PNGs beside it) and RUN_DIR/report.html (the same
page, figures embedded, one file to pass around). Every number comes from what the run left
in its directory: config.json (the resolved config), metrics.jsonl (curves, evaluations,
skipped steps, spikes, throughput), the revisions, the token files the config names, and
energy.jsonl (train/energy.py).

A page is a list of sections of typed blocks (text, table, code, figure); one renderer writes
them as Markdown, another as HTML, so the two files cannot drift apart.
"""

from __future__ import annotations

import base64
import html
import io
import json
import re
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from olmolab.errors import UserError
from olmolab.revisions import list_revisions
from olmolab.train.curves import THROUGHPUT_PANELS, TRAINING_PANELS, draw, eval_panels, points, present
from olmolab.train.energy import MODEL_CARD_CARBON_INTENSITY, EnergySummary, read_energy
from olmolab.train.metrics import read_metrics

# ---------------------------------------------------------------------- blocks


@dataclass
class Text:
    text: str


@dataclass
class Table:
    header: list[str]
    rows: list[list[str]]


@dataclass
class Code:
    text: str


@dataclass
class Figure:
    name: str
    """File name of the PNG beside report.md."""
    png: bytes
    alt: str


Block = Text | Table | Code | Figure


@dataclass
class Section:
    title: str
    blocks: list[Block]


# ---------------------------------------------------------------------- the run's facts


@dataclass
class Run:
    dir: Path
    config: dict
    rows: list[dict]
    energy: EnergySummary | None

    @property
    def train_rows(self) -> list[dict]:
        return [r for r in self.rows if "loss" in r]

    @property
    def last(self) -> dict:
        return self.train_rows[-1] if self.train_rows else {}


def load_run(run_dir: str | Path) -> Run:
    run_dir = Path(run_dir)
    config_path = run_dir / "config.json"
    if not config_path.exists():
        raise UserError(f"{run_dir}: no config.json; is this a run directory (has `olmolab train` started it)?")
    rows = read_metrics(run_dir)
    if not rows:
        raise UserError(f"{run_dir}: metrics.jsonl is missing or empty; the run has not logged a step yet")
    return Run(run_dir, json.loads(config_path.read_text()), rows, read_energy(run_dir))


# ---------------------------------------------------------------------- sections


def overview(run: Run) -> Section:
    from olmolab.model import ModelConfig

    model = ModelConfig.from_dict(run.config["model"])
    return Section("Run", [Text(
        f"`{run.dir}`: an {model.family} model of {model.num_params():,} parameters, "
        f"{run.last.get('step', 0):,} steps, {run.last.get('tokens', 0):,} tokens. From config.json, "
        f"metrics.jsonl ({len(run.rows)} rows), the revisions and energy.jsonl; "
        f"written {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}."
    )])


def config_section(run: Run) -> Section:
    return Section("Config", [
        Text("The resolved config (file and overrides), as saved with the run; the run is reproducible from it."),
        Code(yaml.safe_dump(run.config, sort_keys=False)),
    ])


def data_section(run: Run) -> Section:
    from olmolab.data.config import DataConfig
    from olmolab.data.order import mixture_counts

    data, trainer = run.config["data"], run.config["trainer"]
    config = DataConfig.from_dict(data)
    sources = config.sources or []
    names = [s.name for s in sources] or ["(paths)"]
    weights = [s.weight for s in sources] if sources and sources[0].weight is not None else None
    shown_weights = [_fmt(w) for w in weights] if weights else ["whole"] * len(names)
    paths = [s.paths for s in sources] or [config.paths]
    blocks: list[Block] = []
    try:
        dataset = config.build_dataset()
    except (UserError, OSError) as e:
        blocks.append(Text(f"The token files could not be opened here ({e}); their sizes are unknown."))
        dataset = None
    tokens_trained = run.last.get("tokens", 0)
    if dataset is not None:
        sizes = dataset.source_sizes
        epoch = mixture_counts(sizes, weights)
        blocks.append(Table(
            ["source", "paths", "weight", "tokens in whole instances", f"instances of {config.seq_len}", "instances an epoch"],
            [[n, ", ".join(p), w, f"{s * config.seq_len:,}", f"{s:,}", f"{e:,}"]
             for n, p, w, s, e in zip(names, paths, shown_weights, sizes, epoch, strict=True)],
        ))
        epochs = tokens_trained / (sum(epoch) * config.seq_len)
        blocks.append(Text(f"Trained on {tokens_trained:,} tokens: {epochs:.2f} epochs of this mixture"
                           + (" (its first stage; data.stages changes it later)." if config.stages else ".")))
    blocks.append(Text(
        f"Order: a pure function of data.seed = {config.seed} and the global batch size "
        f"({trainer['global_batch_size']} instances): epoch e is shuffled by PCG64(seed + e), OLMo's rule, and "
        f"a weighted mixture's per-epoch samples come from the same generator (olmolab/data/order.py). "
        f"`olmolab data inspect` lists the documents of any step's batch."
        + (f" The run started from the weights of `{trainer['load_path']}` with fresh optimizer and data "
           f"order." if trainer.get("load_path") and trainer.get("reset_trainer_state") else "")
    ))
    if config.validation_paths:
        blocks.append(Text(f"Validation: {', '.join(config.validation_paths)}."))
    return Section("Data", blocks)


def curves_section(run: Run) -> Section:
    blocks: list[Block] = [Text(
        f"Each metric on its own axis, drawn from metrics.jsonl: {len(run.train_rows)} training rows, "
        f"{sum(any(k.startswith('eval/') for k in r) for r in run.rows)} evaluation rows.")]
    training = present(run.rows, TRAINING_PANELS | THROUGHPUT_PANELS)
    if training:
        blocks.append(Figure("report-training.png", _png(draw(run.rows, training)), "training curves"))
    evaluation = eval_panels(run.rows)
    if evaluation:
        blocks.append(Figure("report-evaluation.png", _png(draw(run.rows, evaluation)), "evaluation curves"))
    return Section("Curves", blocks)


def evaluation_section(run: Run) -> Section:
    table = []
    for key, title in eval_panels(run.rows).items():
        steps, values = points(run.rows, key)
        table.append([title, str(len(steps)), f"{_fmt(values[0])} (step {steps[0]})",
                      f"{_fmt(values[-1])} (step {steps[-1]})"])
    if not table:
        return Section("Evaluations", [Text("No validation or downstream evaluation was logged.")])
    return Section("Evaluations", [Table(["metric", "evaluations", "first", "last"], table)])


def revisions_section(run: Run) -> Section:
    losses = {r["step"]: r.get("loss") for r in run.train_rows}
    table = []
    for revision in list_revisions(run.dir):
        state = json.loads((revision.path / "train_state.json").read_text())
        table.append([revision.path.name, f"{state['step']:,}", f"{state['tokens']:,}", _fmt(losses.get(state["step"]))])
    if not table:
        return Section("Revisions", [Text("No revision is left in the run directory.")])
    return Section("Revisions", [Table(["revision", "step", "tokens", "training loss"], table)])


def stability_section(run: Run) -> Section:
    trainer = run.config["trainer"]
    skipped = [r["step"] for prev, r in zip([{}, *run.train_rows], run.train_rows, strict=False)
               if (r.get("skipped_steps") or 0) > (prev.get("skipped_steps") or 0)]
    spikes = [r for r in run.train_rows if r.get("loss_spike")]
    blocks: list[Block] = [Text(
        f"Skipped steps (a non-finite loss or gradient norm; the optimizer did not step): "
        f"{run.last.get('skipped_steps') or 0}" + (f", at steps {_steps(skipped)}." if skipped else ".")
    ), Text(
        f"Loss spikes (a loss above the mean + {trainer['spike_sigmas']:g} standard deviations of the last "
        f"{trainer['spike_window']} steps): {len(spikes)}" + ("." if not spikes else ":")
    )]
    if spikes:
        blocks.append(Table(["step", "loss", "grad norm", "lr"],
                            [[str(r["step"]), _fmt(r.get("loss")), _fmt(r.get("grad_norm")), _fmt(r.get("lr"))]
                             for r in spikes]))
    return Section("Skipped steps and loss spikes", blocks)


def throughput_section(run: Run) -> Section:
    table = []
    for key, title in THROUGHPUT_PANELS.items():
        _, values = points(run.train_rows, key)
        if values:
            show = _percent if key == "mfu" else _fmt
            table.append([title, show(statistics.median(values)), show(min(values)), show(max(values))])
    peak = run.config["trainer"].get("peak_flops")
    where = f"trainer.peak_flops = {peak:g} FLOP/s" if peak else "measured at the start (CPU) or the GPU's datasheet"
    return Section("Throughput and MFU", [
        Table(["", "median", "min", "max"], table),
        Text(f"Over the logged intervals of training steps (evaluation and checkpoints excluded). MFU's peak: {where}."),
    ])


def training_seconds(rows: list[dict]) -> float:
    """Time in training steps: each logged interval's tokens over its tokens/s."""
    seconds, tokens = 0.0, 0
    for row in rows:
        if row.get("tokens_per_s"):
            seconds += (row["tokens"] - tokens) / row["tokens_per_s"]
        tokens = row.get("tokens", tokens)
    return seconds


def time_section(run: Run) -> Section:
    table = [["in training steps (from metrics.jsonl)", _hours(training_seconds(run.train_rows))]]
    energy = run.energy
    if energy is not None:
        table.insert(0, [f"wall clock of the training loop ({energy.sessions} process"
                         f"{'es' * (energy.sessions > 1)}: the start and each resume)", _hours(energy.wall_s)])
        table.append(["CPU time, all processes", _hours(energy.cpu_s)])
    text = "" if energy else " energy.jsonl is missing (a run from before it was recorded): no wall-clock time."
    return Section("Time", [Table(["", "hours"], table), Text("Hours as h:mm:ss." + text)])


def energy_section(run: Run) -> Section:
    intensity = run.config["trainer"].get("carbon_intensity", MODEL_CARD_CARBON_INTENSITY)
    energy = run.energy
    if energy is None:
        return Section("Energy and emissions", [Text("energy.jsonl is missing: this run recorded no energy.")])
    table = Table(
        ["", "Hardware", "Power consumption (kWh)", "Carbon intensity (kg CO₂e/kWh)", "Carbon emissions (kg CO₂e)"],
        [[run.dir.name, "; ".join(energy.hardware), f"{energy.kwh:.4g} ({energy.method})", f"{intensity:g}",
          f"{energy.emissions_kg(intensity):.4g}"]],
    )
    notes = [f"Power consumption: **{energy.method}**, from {'; '.join(energy.sources)}."]
    if "estimated" in energy.method:
        notes.append("No energy counter was readable, so this is CPU time x trainer.watts_per_core (default: the "
                     "AMD EPYC 9654's TDP per core, 360 W over 96 cores); memory, storage and cooling are left out.")
    if intensity == MODEL_CARD_CARBON_INTENSITY:
        notes.append(f"Carbon intensity: the default, {MODEL_CARD_CARBON_INTENSITY} kg CO₂e/kWh, the OLMo 7B model "
                     f"card's figure for its A100 cluster; set trainer.carbon_intensity to your grid's.")
    else:
        notes.append("Carbon intensity: trainer.carbon_intensity of the run's config.")
    return Section("Energy and emissions", [table, Text(" ".join(notes))])


SECTIONS = (overview, config_section, data_section, curves_section, evaluation_section, revisions_section,
            stability_section, throughput_section, time_section, energy_section)


def build_report(run_dir: str | Path) -> list[Section]:
    run = load_run(run_dir)
    return [section(run) for section in SECTIONS]


# ---------------------------------------------------------------------- rendering


def to_markdown(sections: list[Section], title: str) -> str:
    parts = [f"# {title}"]
    for section in sections:
        parts.append(f"## {section.title}")
        parts += [_markdown_block(block) for block in section.blocks]
    return "\n\n".join(parts) + "\n"


def _markdown_block(block: Block) -> str:
    if isinstance(block, Text):
        return block.text
    if isinstance(block, Code):
        return f"```yaml\n{block.text.rstrip()}\n```"
    if isinstance(block, Figure):
        return f"![{block.alt}]({block.name})"
    lines = ["| " + " | ".join(map(_cell, block.header)) + " |", "|" + "---|" * len(block.header)]
    lines += ["| " + " | ".join(map(_cell, row)) + " |" for row in block.rows]
    return "\n".join(lines)


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def to_html(sections: list[Section], title: str) -> str:
    body = [f"<h1>{html.escape(title)}</h1>"]
    for section in sections:
        body.append(f"<h2>{html.escape(section.title)}</h2>")
        body += [_html_block(block) for block in section.blocks]
    style = ("body{font-family:sans-serif;max-width:70em;margin:2em auto}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:.2em .5em;text-align:right}pre{background:#f6f6f6;padding:1em;"
             "overflow:auto;max-height:30em}img{max-width:100%}")
    return (f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


def _html_block(block: Block) -> str:
    if isinstance(block, Text):
        return f"<p>{_inline_html(block.text)}</p>"
    if isinstance(block, Code):
        return f"<pre>{html.escape(block.text)}</pre>"
    if isinstance(block, Figure):
        data = base64.b64encode(block.png).decode()
        return f"<img alt='{html.escape(block.alt)}' src='data:image/png;base64,{data}'>"
    head = "".join(f"<th>{html.escape(h)}</th>" for h in block.header)
    rows = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in block.rows)
    return f"<table><tr>{head}</tr>{rows}</table>"


def _inline_html(text: str) -> str:
    """The two Markdown marks the texts use: `code` and **bold**."""
    text = re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(text))
    return re.sub(r"\*\*([^*]+)\*\*", r"<b>\1</b>", text)


def write_report(run_dir: str | Path) -> tuple[Path, Path]:
    """report.md (with its PNGs) and report.html in the run directory."""
    run_dir = Path(run_dir)
    sections = build_report(run_dir)
    title = f"Run report: {run_dir.resolve().name}"
    for block in (b for s in sections for b in s.blocks if isinstance(b, Figure)):
        (run_dir / block.name).write_bytes(block.png)
    md, page = run_dir / "report.md", run_dir / "report.html"
    md.write_text(to_markdown(sections, title))
    page.write_text(to_html(sections, title))
    return md, page


# ---------------------------------------------------------------------- formatting


def _png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90)
    return buffer.getvalue()


def _fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.4g}"


def _percent(value: float) -> str:
    return f"{value:.1%}"


def _hours(seconds: float) -> str:
    seconds = round(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def _steps(steps: list[int], shown: int = 20) -> str:
    listed = ", ".join(map(str, steps[:shown]))
    return listed + (f" and {len(steps) - shown} more" if len(steps) > shown else "")
