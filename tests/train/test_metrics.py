"""Seeing a run: loss spikes are flagged, MFU follows the FLOP count, curves are plotted."""

import pytest

from olmolab.train.metrics import SpikeDetector, Throughput


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
