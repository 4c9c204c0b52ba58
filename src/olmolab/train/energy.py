"""The energy a run used and the carbon it emitted, in the model card's columns.

OLMo's model card reports, per model: the hardware, the power consumed (MWh), the carbon
intensity of the grid (kg CO2e/kWh) and the emissions (t CO2e = energy x intensity). A run
records its energy here, measured where the machine lets us and estimated where it does not,
and says which:

- CUDA: NVML's energy counter of each rank's GPU (`nvmlDeviceGetTotalEnergyConsumption`,
  millijoules since the driver loaded) when `pynvml` (nvidia-ml-py) is installed. Like the
  model card, only the GPUs are counted.
- CPU, where Linux exposes RAPL through powercap (`/sys/class/powercap/intel-rapl:N/energy_uj`,
  AMD's CPUs included): the package counters, sampled every step so that a counter wrapping
  past `max_energy_range_uj` is counted once per wrap. Since Linux 5.10 the counters are
  readable by root only (CVE-2020-8694); an unreadable counter is treated as absent.
- Otherwise an estimate: the process's CPU time x a per-core power figure
  (`trainer.watts_per_core`), labelled as an estimate wherever it is shown.

Under torchrun each rank measures its own share and the shares are summed. RAPL counters are
the whole machine's, so only the first process of each machine (LOCAL_RANK 0) reads them.
Each process (a run started, or resumed) appends its running total to `RUN_DIR/energy.jsonl`
at every checkpoint and at the end; the run's energy is the sum of each process's last row.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from olmolab.kernels.cpu_matmul import cpuinfo
from olmolab.train import distributed as dist_utils

# The OLMo 7B model card's carbon intensity for its A100 cluster (MosaicML): 75.05 t CO2e from
# 104 MWh (../shared/seeds/001_*, "Environmental Impact"). A default only; set the intensity of
# the grid the run actually used (trainer.carbon_intensity).
MODEL_CARD_CARBON_INTENSITY = 0.656
"""kg CO2e per kWh."""

# AMD's datasheet for the EPYC 9654 (Zen 4 "Genoa", the family these machines report: CPU family
# 25, model 17): 360 W TDP over 96 cores. TDP per core is the estimate Green Algorithms
# (Lannelongue et al., 2021) uses; it leaves out memory, disks and cooling.
EPYC_9654_WATTS_PER_CORE = 360 / 96

RAPL_ROOT = Path("/sys/class/powercap")
JOULES_PER_KWH = 3.6e6


def counter_delta(before: int, after: int, max_range: int) -> int:
    """Energy between two readings of a counter that wraps to zero past `max_range`."""
    return after - before if after >= before else after + max_range - before


@dataclass
class RaplZone:
    """One package-level powercap zone (`intel-rapl:N`) and what it has counted so far."""

    path: Path
    max_range_uj: int
    last_uj: int
    total_uj: int = 0

    def read_uj(self) -> int:
        return int((self.path / "energy_uj").read_text())

    def sample(self) -> None:
        now = self.read_uj()
        self.total_uj += counter_delta(self.last_uj, now, self.max_range_uj)
        self.last_uj = now


def rapl_zones(root: Path = RAPL_ROOT) -> list[RaplZone]:
    """The readable package zones. Their sub-zones (`intel-rapl:N:M`: cores, DRAM) are left out,
    since a package's counter already holds its cores'."""
    zones = []
    for path in sorted(root.glob("intel-rapl:*")):
        if path.name.count(":") != 1:
            continue
        try:
            energy = int((path / "energy_uj").read_text())
            max_range = int((path / "max_energy_range_uj").read_text())
        except (OSError, ValueError):  # PermissionError for non-root users; a zone without counters
            continue
        zones.append(RaplZone(path, max_range, energy))
    return zones


class Rapl:
    method = "measured"

    def __init__(self, zones: list[RaplZone]):
        self.zones = zones
        self.source = f"RAPL package counters ({len(zones)} zone{'s' * (len(zones) > 1)}, powercap)"

    def sample(self) -> None:
        for zone in self.zones:
            zone.sample()

    def joules(self) -> float:
        self.sample()
        return sum(zone.total_uj for zone in self.zones) / 1e6


class Nvml:
    method = "measured"
    source = "NVML GPU energy counters"

    def __init__(self, pynvml, device_index: int):
        self.nvml = pynvml
        self.handle = pynvml.nvmlDeviceGetHandleByIndex(device_index)
        self.start_mj = pynvml.nvmlDeviceGetTotalEnergyConsumption(self.handle)

    def sample(self) -> None:
        """The counter is 64-bit millijoules: it does not wrap in a run's lifetime."""

    def joules(self) -> float:
        return (self.nvml.nvmlDeviceGetTotalEnergyConsumption(self.handle) - self.start_mj) / 1e3


class CpuTimeEstimate:
    method = "estimated"

    def __init__(self, watts_per_core: float):
        self.watts_per_core = watts_per_core
        self.source = f"CPU time x {watts_per_core:.3g} W per core (an estimate, not a measurement)"
        self.start = time.process_time()

    def sample(self) -> None:
        """CPU time needs no sampling."""

    def joules(self) -> float:
        return (time.process_time() - self.start) * self.watts_per_core


def nvml_meter(device: torch.device) -> Nvml | None:
    try:
        import pynvml

        pynvml.nvmlInit()
        return Nvml(pynvml, device.index or 0)
    except Exception:  # not installed, no driver, or a GPU without an energy counter (pre-Volta)
        return None


def choose_meter(device: torch.device, watts_per_core: float, rapl_root: Path = RAPL_ROOT):
    """The best meter this process has: NVML on CUDA, RAPL on CPU, else the CPU-time estimate.
    On CPU, processes other than each machine's first share its RAPL counters but add nothing."""
    if device.type == "cuda":
        return nvml_meter(device) or CpuTimeEstimate(watts_per_core)
    zones = rapl_zones(rapl_root)
    if zones:
        return Rapl(zones if int(os.environ.get("LOCAL_RANK", 0)) == 0 else [])
    return CpuTimeEstimate(watts_per_core)


def hardware_name(device: torch.device, world_size: int) -> str:
    if device.type == "cuda":
        return f"{world_size} x {torch.cuda.get_device_name(device)}"
    return f"{cpu_model_name()} ({os.cpu_count()} cores) x {world_size} process{'es' * (world_size > 1)}"


def cpu_model_name() -> str:
    return cpuinfo("model name") or "CPU"


class EnergyMeter:
    """The trainer's view: `sample()` every step, `record(step)` at checkpoints and the end."""

    def __init__(self, run_dir: Path, device: torch.device, watts_per_core: float):
        self.path = Path(run_dir) / "energy.jsonl"
        self.device = device
        self.meter = choose_meter(device, watts_per_core)
        self.started, self.wall_start, self.cpu_start = time.time(), time.perf_counter(), time.process_time()

    def sample(self) -> None:
        self.meter.sample()

    def record(self, step: int) -> None:
        """Sum this process's energy and CPU time over the ranks (a collective: every rank calls it)
        and have rank 0 append the running totals."""
        own = torch.tensor([self.meter.joules(), time.process_time() - self.cpu_start], dtype=torch.float64)
        joules, cpu_s = dist_utils.all_reduce_sum(own.to(self.device)).tolist()
        if dist_utils.rank() != 0:
            return
        row = {"session": self.started, "step": step, "method": self.meter.method, "source": self.meter.source,
               "hardware": hardware_name(self.device, dist_utils.world_size()), "joules": joules,
               "wall_s": time.perf_counter() - self.wall_start, "cpu_s": cpu_s, "ranks": dist_utils.world_size()}
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")


@dataclass
class EnergySummary:
    kwh: float
    method: str
    """measured, estimated, or 'measured and estimated' when resumed sessions differed."""
    sources: list[str]
    hardware: list[str]
    wall_s: float
    cpu_s: float
    sessions: int

    def emissions_kg(self, carbon_intensity: float) -> float:
        return self.kwh * carbon_intensity


def read_energy(run_dir: str | Path) -> EnergySummary | None:
    """The run's energy: the last row of each session, summed; None if nothing was recorded.
    A torn last line (a process killed while writing) is skipped."""
    path = Path(run_dir) / "energy.jsonl"
    if not path.exists():
        return None
    last: dict[float, dict] = {}
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        last[row["session"]] = row
    if not last:
        return None
    rows = list(last.values())
    methods = sorted({r["method"] for r in rows})
    return EnergySummary(
        kwh=sum(r["joules"] for r in rows) / JOULES_PER_KWH,
        method=" and ".join(methods),
        sources=sorted({r["source"] for r in rows}),
        hardware=sorted({r["hardware"] for r in rows}),
        wall_s=sum(r["wall_s"] for r in rows),
        cpu_s=sum(r["cpu_s"] for r in rows),
        sessions=len(rows),
    )
