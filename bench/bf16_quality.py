"""Does a bf16 run track an fp32 one? The quickstart config, trained twice from the same seed and
data order, once per `trainer.precision`, for 300 steps.

Prints each run's validation loss at every evaluation, the final losses' relative difference
(the bar: within 1%) and each run's wall time with their ratio (the two run one after the
other, so on a shared machine the time ratio is only indicative; `train_step.py` measures
speed). Runs the CLI as a user would, from the repository root (the quickstart's `prepare:`
tokenizes the Python docs into runs/quickstart on first use, about a minute).

    python bench/bf16_quality.py [--steps 300] [--out /tmp/olmolab-bf16-quality]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from olmolab.kernels.cpu_matmul import cpu_bf16_matmul_unit  # noqa: E402
from olmolab.train.energy import cpu_model_name  # noqa: E402
from olmolab.train.metrics import read_metrics  # noqa: E402

LOSS = "eval/validation/CrossEntropyLoss"


def train(precision: str, steps: int, out: Path) -> tuple[list[tuple[int, float]], float]:
    run_dir = out / precision
    shutil.rmtree(run_dir, ignore_errors=True)
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "olmolab", "train", "configs/quickstart.yaml", f"--trainer.run_dir={run_dir}",
         f"--trainer.precision={precision}", f"--trainer.max_steps={steps}", f"--trainer.save_interval={steps}",
         "--trainer.progress=false"],
        cwd=REPO, check=True, env={**os.environ, "PYTHONPATH": str(REPO / "src")},
    )  # fmt: skip
    seconds = time.perf_counter() - started
    return [(row["step"], row[LOSS]) for row in read_metrics(run_dir) if LOSS in row], seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--out", type=Path, default=Path("/tmp/olmolab-bf16-quality"))
    args = parser.parse_args()
    print(f"CPU: {cpu_model_name()}, bf16 unit: {cpu_bf16_matmul_unit() or 'none'}")
    curves, seconds = {}, {}
    for precision in ("fp32", "bf16"):
        curves[precision], seconds[precision] = train(precision, args.steps, args.out)
    print(f"{'step':>6} {'fp32 val loss':>14} {'bf16 val loss':>14}")
    for (step, fp32), (_, bf16) in zip(curves["fp32"], curves["bf16"], strict=True):
        print(f"{step:>6} {fp32:>14.4f} {bf16:>14.4f}")
    final_fp32, final_bf16 = curves["fp32"][-1][1], curves["bf16"][-1][1]
    difference = (final_bf16 - final_fp32) / final_fp32
    print(f"final validation loss: fp32 {final_fp32:.4f}, bf16 {final_bf16:.4f} ({difference:+.2%}; "
          f"{'within' if abs(difference) < 0.01 else 'NOT within'} 1%)")
    print(f"wall time: fp32 {seconds['fp32']:.0f} s, bf16 {seconds['bf16']:.0f} s "
          f"(fp32 / bf16 = {seconds['fp32'] / seconds['bf16']:.2f}x; sequential runs, indicative only)")


if __name__ == "__main__":
    main()
