"""`olmolab report`: every section the issue asks for, with figures read from metrics.jsonl."""

import json

import pytest

from olmolab.cli import main
from olmolab.config import load_run_config
from olmolab.train.metrics import read_metrics
from olmolab.train.trainer import Trainer

from .conftest import SEQ_LEN

SECTIONS = ["Run", "Config", "Data", "Curves", "Evaluations", "Revisions", "Skipped steps and loss spikes",
            "Throughput and MFU", "Time", "Energy and emissions"]


def doctor_metrics(run_dir):
    """Overwrite what the run logged with values it could not have produced, so the report can
    only show them by reading metrics.jsonl: a skipped step (its loss stored as null), a spike,
    a fixed throughput."""
    rows = read_metrics(run_dir)
    for row in (r for r in rows if "loss" in r):
        row |= {"tokens_per_s": 12345.0, "mfu": 0.25, "skipped_steps": int(row["step"] >= 2)}
        if row["step"] == 2:
            row["loss"] = None
        if row["step"] == 3:
            row |= {"loss": 99.5, "loss_spike": True}
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_report_of_a_tiny_run_holds_every_section_with_figures_from_metrics_jsonl(tiny_run, tmp_path):
    pytest.importorskip("matplotlib")
    path, _ = tiny_run(max_steps=4, eval_interval=2)
    Trainer(load_run_config(path)).fit()
    run_dir = tmp_path / "run"
    doctor_metrics(run_dir)
    assert main(["report", str(run_dir)]) == 0

    md = (run_dir / "report.md").read_text()
    assert [line[3:] for line in md.splitlines() if line.startswith("## ")] == SECTIONS
    assert "seq_len: 32" in md  # the resolved config
    assert f"| (paths) | {tmp_path / 'train.npy'} | whole | {64 * SEQ_LEN:,} | 64 | 64 |" in md
    assert "Trained on 512 tokens: 0.25 epochs" in md and "data.seed = 3" in md
    assert "![training curves](report-training.png)" in md and "![evaluation curves](report-evaluation.png)" in md
    assert "| validation/Perplexity | 2 |" in md
    assert "| step2-tokens256 | 2 | 256 | - |" in md  # a skipped step's loss is null
    assert "Skipped steps (a non-finite loss or gradient norm; the optimizer did not step): 1, at steps 2." in md
    assert "| 3 | 99.5 |" in md
    assert "| tokens/s | 12,345 | 12,345 | 12,345 |" in md and "| MFU | 25.0% | 25.0% | 25.0% |" in md
    assert "| in training steps (from metrics.jsonl) | 0:00:00 |" in md
    energy_row = next(line for line in md.splitlines() if line.startswith("| run |"))
    assert "(estimated)" in energy_row or "(measured)" in energy_row
    assert "| 0.656 |" in energy_row and "the OLMo 7B model card's figure" in md

    page = (run_dir / "report.html").read_text()
    assert all(f"<h2>{title}</h2>" in page for title in SECTIONS)
    assert page.count("src='data:image/png;base64,") == 2
    assert (run_dir / "report-training.png").read_bytes()[:4] == b"\x89PNG"


def test_report_of_a_directory_that_is_not_a_run_says_so(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "no config.json" in capsys.readouterr().err
