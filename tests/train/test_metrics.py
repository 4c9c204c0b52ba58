"""Seeing a run: loss spikes are flagged, MFU follows the FLOP count, metrics.jsonl survives crashes."""

import json
import math

import pytest

from olmolab.config import load_run_config
from olmolab.errors import UserError
from olmolab.train import metrics as metrics_module
from olmolab.train.metrics import MetricSinks, SpikeDetector, Throughput, read_metrics
from olmolab.train.trainer import Trainer


def test_a_loss_far_above_the_recent_ones_is_a_spike():
    detector = SpikeDetector(window=32, sigmas=6.0)
    flagged = [detector.is_spike(3.0 + 0.01 * (i % 5)) for i in range(40)]
    assert not any(flagged)
    assert detector.is_spike(4.0)
    assert not detector.is_spike(3.02)


def test_no_spike_is_called_before_the_window_has_history():
    detector = SpikeDetector(window=128, sigmas=6.0)
    assert not any(detector.is_spike(loss) for loss in (10.0, 2.0, 50.0))


def test_mfu_is_achieved_flops_over_peak_times_devices():
    throughput = Throughput(flops_per_token=1e9, peak=1e12, world_size=2)
    throughput.add(1000)
    throughput.seconds = 1.0  # as if the steps had taken one second
    report = throughput.report()
    assert report["tokens_per_s"] == pytest.approx(1000)
    assert report["mfu"] == pytest.approx(1000 * 1e9 / 2e12)


def test_an_mfu_above_100_percent_remeasures_the_peak_and_keeps_the_higher():
    remeasured = []

    def remeasure():
        remeasured.append(True)
        return 4e12

    throughput = Throughput(flops_per_token=1e9, peak=1e12, world_size=1, remeasure_peak=remeasure)
    throughput.add(2000)
    throughput.seconds = 1.0  # 2e12 FLOP/s against a peak of 1e12 measured in a slow spell
    assert throughput.report()["mfu"] == pytest.approx(0.5)
    assert throughput.peak == 4e12 and len(remeasured) == 1
    throughput.pause()  # the report restarted the clock
    throughput.add(1000)
    throughput.seconds = 1.0  # 25%: the peak is not measured again
    assert throughput.report()["mfu"] == pytest.approx(0.25)
    assert len(remeasured) == 1


def test_a_lower_remeasured_peak_is_not_taken():
    throughput = Throughput(flops_per_token=1e9, peak=1e12, world_size=1, remeasure_peak=lambda: 5e11)
    throughput.add(2000)
    throughput.seconds = 1.0
    assert throughput.report()["mfu"] == pytest.approx(2.0)


# ---------------------------------------------------------------------- metrics.jsonl


def _strict_json(line: str) -> dict:
    def refuse(constant):
        raise ValueError(f"non-standard JSON constant {constant}")

    return json.loads(line, parse_constant=refuse)


def test_non_finite_values_are_strict_json_and_read_back_as_floats(tmp_path):
    sinks = MetricSinks(tmp_path, enabled=True, wandb_project=None, tensorboard=False, config={})
    sinks.log({"step": 1, "loss": math.nan, "grad_norm": math.inf, "z_loss": -math.inf, "lr": 1e-3})
    line = (tmp_path / "metrics.jsonl").read_text().strip()
    assert _strict_json(line) == {"step": 1, "loss": "NaN", "grad_norm": "Infinity", "z_loss": "-Infinity",
                                  "lr": 1e-3}
    [row] = read_metrics(tmp_path)
    assert math.isnan(row["loss"]) and row["grad_norm"] == math.inf and row["z_loss"] == -math.inf


def test_a_torn_last_line_is_dropped_with_a_warning(tmp_path, capsys):
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "loss": 3.5}\n{"step": 2, "lo')
    assert read_metrics(tmp_path) == [{"step": 1, "loss": 3.5}]
    assert "metrics.jsonl:2: dropping a torn last line" in capsys.readouterr().err


def test_a_damaged_line_before_the_last_is_an_error_naming_it(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 1}\n{"st\n{"step": 3}\n')
    with pytest.raises(UserError, match=r"metrics.jsonl:2: not a JSON object"):
        read_metrics(tmp_path)


def test_the_resume_rewrite_leaves_the_old_file_whole_if_it_fails(tmp_path, monkeypatch):
    path = tmp_path / "metrics.jsonl"
    original = "".join(json.dumps({"step": s, "loss": 4.0 - s / 10}) + "\n" for s in range(1, 6))
    path.write_text(original)
    sinks = MetricSinks(tmp_path, enabled=True, wandb_project=None, tensorboard=False, config={})

    def crash(row):
        raise KeyboardInterrupt  # as if killed half-way through the rewrite

    monkeypatch.setattr(metrics_module, "encode_row", crash)
    with pytest.raises(KeyboardInterrupt):
        sinks.truncate_after(3)
    assert path.read_text() == original
    monkeypatch.undo()
    sinks.truncate_after(3)
    assert [row["step"] for row in read_metrics(tmp_path)] == [1, 2, 3]


def test_resume_repairs_a_torn_metrics_file(tiny_run, tmp_path):
    path, _ = tiny_run(max_steps=2)
    Trainer(load_run_config(path)).fit()
    metrics = tmp_path / "run" / "metrics.jsonl"
    metrics.write_text(metrics.read_text() + '{"step": 3, "loss": 6.')  # killed while logging step 3
    Trainer(load_run_config(path, ["trainer.max_steps=4"])).fit()
    rows = [_strict_json(line) for line in metrics.read_text().splitlines()]
    assert [row["step"] for row in rows if "loss" in row] == [1, 2, 3, 4]
def test_plot_gives_each_evaluation_metric_its_own_axis():
    pytest.importorskip("matplotlib")
    from olmolab.train.curves import curves_figure

    rows = [{"step": s, "loss": 8.0 - s, "lr": 1e-3, "grad_norm": 1.0} for s in (1, 2)]
    rows += [{"step": 2, "eval/wiki/Perplexity": 2000.0, "eval/wiki/BitsPerByte": 3.8, "eval/downstream/piqa_acc": None}]
    axes = {ax.get_title(): ax for ax in curves_figure(rows).axes if ax.get_visible()}
    assert set(axes) == {"training loss", "learning rate", "grad norm", "wiki/Perplexity", "wiki/BitsPerByte"}
    assert all(len(ax.get_lines()) == 1 for ax in axes.values())
    low, high = axes["wiki/BitsPerByte"].get_ylim()
    assert low < 3.8 < high < 10  # not flattened by the perplexity's scale
