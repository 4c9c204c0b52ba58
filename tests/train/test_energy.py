"""Energy: RAPL counters read across wraps, unreadable ones ignored, an estimate labelled as one,
and every run leaving its energy in energy.jsonl."""

import json
from pathlib import Path

import pytest
import torch

from olmolab.config import load_run_config
from olmolab.train.energy import (
    MODEL_CARD_CARBON_INTENSITY,
    CpuTimeEstimate,
    Rapl,
    choose_meter,
    counter_delta,
    rapl_zones,
    read_energy,
)
from olmolab.train.trainer import Trainer


def fake_zone(root, name, energy_uj, max_range_uj=1000):
    zone = root / name
    zone.mkdir(parents=True)
    (zone / "energy_uj").write_text(f"{energy_uj}\n")
    (zone / "max_energy_range_uj").write_text(f"{max_range_uj}\n")
    return zone


def test_a_counter_that_wrapped_is_counted_through_the_wrap():
    assert counter_delta(900, 950, max_range=1000) == 50
    assert counter_delta(900, 100, max_range=1000) == 200


def test_rapl_sums_package_zones_across_a_wrap_and_skips_their_sub_zones(tmp_path):
    package = fake_zone(tmp_path, "intel-rapl:0", 900)
    fake_zone(tmp_path, "intel-rapl:0:0", 500)  # the cores, already inside the package's count
    meter = choose_meter(torch.device("cpu"), watts_per_core=4.0, rapl_root=tmp_path)
    assert isinstance(meter, Rapl) and meter.method == "measured"
    (package / "energy_uj").write_text("100\n")  # wrapped past 1000
    meter.sample()
    (package / "energy_uj").write_text("400\n")
    assert meter.joules() == pytest.approx(500 / 1e6)


def test_an_unreadable_counter_falls_back_to_the_labelled_estimate(tmp_path, monkeypatch):
    fake_zone(tmp_path, "intel-rapl:0", 900)
    read_text = Path.read_text

    def as_non_root(path, *args, **kwargs):  # Linux >= 5.10 refuses energy_uj to non-root users
        if path.name == "energy_uj":
            raise PermissionError(13, "Permission denied", str(path))
        return read_text(path, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", as_non_root)
    assert rapl_zones(tmp_path) == []
    meter = choose_meter(torch.device("cpu"), watts_per_core=4.0, rapl_root=tmp_path)
    assert isinstance(meter, CpuTimeEstimate) and "estimate" in meter.source


def test_the_estimate_is_cpu_time_times_the_per_core_power():
    meter = CpuTimeEstimate(watts_per_core=4.0)
    busy = torch.randn(300, 300)
    for _ in range(200):
        busy = torch.tanh(busy @ busy)
    assert meter.method == "estimated"
    assert meter.joules() > 0


def test_a_run_records_positive_energy_labelled_measured_or_estimated(tiny_run, tmp_path):
    path, _ = tiny_run(max_steps=4, save_interval=2)
    config = load_run_config(path)
    Trainer(config).fit()
    rows = [json.loads(line) for line in (tmp_path / "run" / "energy.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [2, 4, 4]  # at each checkpoint, and at the end after the last eval
    energy = read_energy(tmp_path / "run")
    assert energy.kwh > 0 and energy.cpu_s > 0 and energy.sessions == 1
    assert energy.method in ("measured", "estimated")
    assert config.trainer.carbon_intensity == MODEL_CARD_CARBON_INTENSITY


def test_resumed_sessions_add_up_and_a_torn_last_line_is_skipped(tmp_path):
    rows = [{"session": 1.0, "step": 2, "joules": 1.8e6, "wall_s": 10, "cpu_s": 20},
            {"session": 1.0, "step": 4, "joules": 3.6e6, "wall_s": 20, "cpu_s": 40},
            {"session": 2.0, "step": 6, "joules": 3.6e6, "wall_s": 5, "cpu_s": 10}]
    common = {"method": "estimated", "source": "CPU time", "hardware": "CPU", "ranks": 1}
    text = "".join(json.dumps(common | r) + "\n" for r in rows) + '{"session": 2.0, "step"'
    (tmp_path / "energy.jsonl").write_text(text)
    energy = read_energy(tmp_path)
    assert energy.kwh == pytest.approx(2.0) and energy.wall_s == 25 and energy.sessions == 2
    assert energy.emissions_kg(0.5) == pytest.approx(1.0)


@pytest.mark.slow
def test_under_torchrun_the_ranks_energy_is_summed_into_one_row(tiny_run, tmp_path):
    from .test_distributed import torchrun

    path, _ = tiny_run(max_steps=2, save_interval=2, distributed="ddp")
    torchrun(path)
    rows = [json.loads(line) for line in (tmp_path / "run" / "energy.jsonl").read_text().splitlines()]
    assert [r["ranks"] for r in rows] == [2, 2]  # rank 0 alone writes, after the all-reduce
    assert "x 2 processes" in rows[-1]["hardware"] and rows[-1]["joules"] > 0
