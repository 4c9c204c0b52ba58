"""A run's curves from its metrics.jsonl: one axis per metric.

Each metric gets its own axis because their scales have nothing in common: a perplexity of
2,000 on the axis of a bits-per-byte of 3.8 turns the latter into a flat line at zero.
`olmolab plot` saves the figure as a PNG; `olmolab report` embeds the same figures.
"""

from __future__ import annotations

import math

TRAINING_PANELS = {
    "loss": "training loss",
    "lr": "learning rate",
    "grad_norm": "grad norm",
    # RL runs (olmolab rlvr) also log what they are rewarded for and how far they drift from the reference
    "reward/mean": "reward (mean)",
    "accuracy": "verifier accuracy",
    "kl": "KL(policy || reference)",
    "response_length": "response length",
}
THROUGHPUT_PANELS = {
    "tokens_per_s": "tokens/s",
    "mfu": "MFU",
}


def points(rows: list[dict], key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of `key`, leaving out rows without it and values that are null or not
    finite (a skipped step's loss is stored as null)."""
    pairs = [(r["step"], r[key]) for r in rows if _is_finite(r.get(key)) and "step" in r]
    return [s for s, _ in pairs], [float(v) for _, v in pairs]


def _is_finite(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def eval_panels(rows: list[dict]) -> dict[str, str]:
    """Every evaluation metric the run logged (`eval/...`) with a finite value, titled without
    the prefix."""
    keys = sorted({k for r in rows for k in r if k.startswith("eval/")})
    return present(rows, {key: key.removeprefix("eval/") for key in keys})


def present(rows: list[dict], panels: dict[str, str]) -> dict[str, str]:
    """The panels with at least one finite value in `rows`."""
    return {key: title for key, title in panels.items() if points(rows, key)[0]}


def draw(rows: list[dict], panels: dict[str, str], columns: int = 3):
    """A matplotlib figure with one axis per panel (key -> title), `columns` axes a row. A bare
    `Figure`, not pyplot's: nothing global to close, and no display backend is involved."""
    from matplotlib.figure import Figure

    n_rows = max(1, math.ceil(len(panels) / columns))
    fig = Figure(figsize=(4.5 * columns, 3.2 * n_rows))
    axes = fig.subplots(n_rows, columns, squeeze=False)
    flat = list(axes.flat)
    for ax, (key, title) in zip(flat, panels.items(), strict=False):
        steps, values = points(rows, key)
        ax.plot(steps, values, marker="o" if len(steps) < 30 else None, markersize=3)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("step")
    for ax in flat[len(panels):]:
        ax.set_visible(False)
    fig.tight_layout()
    return fig


def curves_figure(rows: list[dict]):
    """What `olmolab plot` draws: the training curves, then each evaluation metric alone."""
    return draw(rows, present(rows, TRAINING_PANELS) | eval_panels(rows))
