"""Seeing a run: throughput and MFU, loss-spike detection, and where metrics go.

`metrics.jsonl` in the run directory gets one JSON object per logged step; W&B and
TensorBoard get the same numbers when they are installed and asked for.

The file is strict JSON, one object a line: a non-finite value (a diverged loss) is written as
the string "NaN", "Infinity" or "-Infinity", which `read_metrics` turns back into a float. A crash
mid-write can only tear the last line; readers drop it with a warning, and the trainer's resume
rewrites the file atomically (a new file renamed over the old), so the history is never lost.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import sys
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

import torch

from olmolab.errors import UserError
from olmolab.kernels.cpu_matmul import onednn_linear, onednn_linear_works

# Dense bf16 datasheet peaks per GPU, FLOP/s (MFU's denominator on CUDA).
GPU_PEAK_FLOPS = {"H100": 989.5e12, "H200": 989.5e12, "A100": 312e12}


def peak_flops(device: torch.device, override: float | None, dtype: torch.dtype = torch.float32) -> float:
    """Per-device peak: the config's, a GPU's datasheet bf16 figure, or this CPU's measured peak in
    `dtype` (the run's compute precision: MFU is against the peak of the format in use)."""
    if override:
        return override
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        return next((v for k, v in GPU_PEAK_FLOPS.items() if k in name), 989.5e12)
    return measure_matmul_flops(dtype=dtype)


def peak_is_measured(device: torch.device, override: float | None) -> bool:
    """Whether `peak_flops` measures this device's peak (a CPU with no configured one), rather than
    taking a figure that a slow spell cannot understate."""
    return not override and device.type != "cuda"


def measure_matmul_flops(n: int = 1024, repeats: int = 10, dtype: torch.dtype = torch.float32) -> float:
    """This CPU's matmul peak in `dtype`, FLOP/s: an (n x n) product's best time, by MKL (`@`) or by
    oneDNN (what the model's projections run on, on AMD CPUs), whichever is faster. The best of
    several tries, since a busy machine only ever makes a try slower."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    best = _best_seconds(lambda: a @ b, repeats)
    if onednn_linear_works(dtype):
        best = min(best, _best_seconds(lambda: onednn_linear(a, b), repeats))
    return 2 * n**3 / best


def _best_seconds(fn, repeats: int) -> float:
    fn()  # warm-up
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


class Throughput:
    """Tokens/s and MFU over the steps since the last report (compute only: checkpoint and eval
    time are excluded by `pause`/`resume`).

    A peak measured on this CPU at the start is understated if a slow spell of a shared machine
    fell on the measurement, and MFU then comes out above 100% (630% was seen). Given
    `remeasure_peak`, a report that would exceed 100% measures the peak again, outside the timed
    steps, and keeps the higher of the two."""

    def __init__(self, flops_per_token: float, peak: float, world_size: int,
                 remeasure_peak: Callable[[], float] | None = None):
        self.flops_per_token, self.peak, self.world_size = flops_per_token, peak, world_size
        self.remeasure_peak = remeasure_peak
        self.tokens, self.seconds, self._t0 = 0, 0.0, None

    def resume(self) -> None:
        self._t0 = time.perf_counter()

    def pause(self) -> None:
        if self._t0 is not None:
            self.seconds += time.perf_counter() - self._t0
            self._t0 = None

    def add(self, tokens: int) -> None:
        self.tokens += tokens

    def report(self) -> dict[str, float]:
        self.pause()
        tps = self.tokens / self.seconds if self.seconds else 0.0
        mfu = tps * self.flops_per_token / (self.peak * self.world_size)
        if mfu > 1.0 and self.remeasure_peak is not None:
            self.peak = max(self.peak, self.remeasure_peak())
            mfu = tps * self.flops_per_token / (self.peak * self.world_size)
        self.tokens, self.seconds = 0, 0.0
        self.resume()
        return {"tokens_per_s": tps, "mfu": mfu}


class SpikeDetector:
    """Flags a loss far above the recent ones (OLMo-core's rule: > mean + k sigma of a window)."""

    def __init__(self, window: int, sigmas: float):
        self.recent: deque[float] = deque(maxlen=window)
        self.sigmas = sigmas

    def is_spike(self, loss: float) -> bool:
        spike = False
        if len(self.recent) >= max(8, self.recent.maxlen // 4):
            mean, std = statistics.fmean(self.recent), statistics.pstdev(self.recent)
            spike = loss > mean + self.sigmas * max(std, 1e-6)
        self.recent.append(loss)
        return spike


class MetricSinks:
    """metrics.jsonl always; W&B and TensorBoard when configured and installed (rank 0 only)."""

    def __init__(self, run_dir: Path, *, enabled: bool, wandb_project: str | None, tensorboard: bool, config: dict):
        self.enabled = enabled
        self.path = run_dir / "metrics.jsonl"
        self.wandb = self.tensorboard = None
        if not enabled:
            return
        if wandb_project:
            try:
                import wandb

                self.wandb = wandb.init(project=wandb_project, dir=str(run_dir), config=config, resume="allow")
            except ImportError:
                print("olmolab: trainer.wandb_project is set but wandb is not installed; logging to metrics.jsonl only")
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tensorboard = SummaryWriter(str(run_dir / "tensorboard"))
            except ImportError:
                print("olmolab: trainer.tensorboard is set but tensorboard is not installed; skipping it")

    def truncate_after(self, step: int) -> None:
        """On resume: drop rows of steps past the checkpoint, which will be trained again."""
        if not self.enabled or not self.path.exists():
            return
        kept = [row for row in read_metrics(self.path.parent) if row.get("step", 0) <= step]
        tmp = self.path.with_name(self.path.name + ".tmp")
        with tmp.open("w") as f:
            f.writelines(encode_row(row) + "\n" for row in kept)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)

    def log(self, row: dict) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as f:
            f.write(encode_row(row) + "\n")
        if self.wandb is not None:
            self.wandb.log(row, step=row["step"])
        if self.tensorboard is not None:
            for key, value in row.items():
                if isinstance(value, int | float) and key != "step":
                    self.tensorboard.add_scalar(key, value, row["step"])

    def close(self) -> None:
        if self.wandb is not None:
            self.wandb.finish()
        if self.tensorboard is not None:
            self.tensorboard.close()


NON_FINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


def encode_row(row: dict) -> str:
    """One metrics row as strict JSON: non-finite floats become "NaN", "Infinity", "-Infinity"."""
    def strict(value):
        if isinstance(value, float) and not math.isfinite(value):
            return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
        return value

    return json.dumps({key: strict(value) for key, value in row.items()}, allow_nan=False)


def read_metrics(run_dir: str | Path) -> list[dict]:
    """The rows of RUN_DIR/metrics.jsonl. A torn last line (a crash mid-write) is dropped with a
    warning; a damaged line anywhere else is an error naming it."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    lines = path.read_text(errors="replace").splitlines()
    rows = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            if not isinstance(row, dict):
                raise ValueError(f"a {type(row).__name__}, not an object")
        except ValueError as e:
            if number == len(lines):
                print(f"olmolab: {path}:{number}: dropping a torn last line (a crash while it was written)",
                      file=sys.stderr)
                break
            raise UserError(f"{path}:{number}: not a JSON object ({e}); the metrics file is damaged") from e
        rows.append({key: NON_FINITE.get(value, value) if isinstance(value, str) else value
                     for key, value in row.items()})
    return rows
