"""Training-curve figures from ``metrics.jsonl``: loss, validation metrics, learning rate.

Uses an explicit Agg canvas (no pyplot state), like :mod:`astroflax.evaluate.plots`.
Several runs (ensemble members) are drawn on the same axes, one colour each.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

MAX_METRIC_PANELS = 9
_SKIP_TRAIN = {"step", "split", "nonfinite", "samples_per_s", "loss", "lr", "grad_norm"}


def _series(records: list[dict[str, Any]], split: str, key: str) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for r in records:
        v = r.get(key)
        if r.get("split") == split and isinstance(v, (int, float)) and math.isfinite(v):
            xs.append(float(r["step"]))
            ys.append(float(v))
    return xs, ys


def _val_metric_names(runs: dict[str, list[dict[str, Any]]]) -> list[str]:
    names: list[str] = []
    for records in runs.values():
        for r in records:
            if r.get("split") == "val":
                names += [k for k in r if k.startswith("val_") and k != "val_loss" and k not in names]
    return names[:MAX_METRIC_PANELS]


def plot_training_curves(runs: dict[str, list[dict[str, Any]]], path: str | Path, dpi: int = 90) -> Path | None:
    """One figure: loss (train and val), learning rate, then one panel per validation metric.

    ``runs`` maps a label (run or member name) to its ``metrics.jsonl`` records. Returns None
    when there is nothing to plot (no logged steps yet).
    """
    if not any(runs.values()):
        return None
    metrics = _val_metric_names(runs)
    panels = ["loss", "lr", *metrics]
    ncols = 3
    nrows = -(-len(panels) // ncols)
    fig = Figure(figsize=(4.2 * ncols, 3.0 * nrows), dpi=dpi, layout="constrained")
    FigureCanvasAgg(fig)
    colours = [f"C{i % 10}" for i in range(len(runs))]
    many = len(runs) > 1
    for p, panel in enumerate(panels):
        ax = fig.add_subplot(nrows, ncols, p + 1)
        drawn = False
        for (label, records), colour in zip(runs.items(), colours):
            prefix = f"{label} " if many else ""
            if panel == "loss":
                for split, key, style in (("train", "loss", "-"), ("val", "val_loss", "o--")):
                    xs, ys = _series(records, split, key)
                    if xs:
                        ax.plot(xs, ys, style, color=colour, ms=3, lw=1.2, label=f"{prefix}{split}")
                        drawn = True
                ax.set_title("loss")
            elif panel == "lr":
                xs, ys = _series(records, "train", "lr")
                if xs:
                    ax.plot(xs, ys, "-", color=colour, lw=1.2, label=label if many else None)
                    drawn = True
                ax.set_title("learning rate")
            else:
                xs, ys = _series(records, "val", panel)
                if xs:
                    ax.plot(xs, ys, "o-", color=colour, ms=3, lw=1.2, label=f"{prefix}val")
                    drawn = True
                train_key = panel[len("val_"):]
                if train_key not in _SKIP_TRAIN:
                    xs, ys = _series(records, "train", train_key)
                    if xs:
                        ax.plot(xs, ys, "-", color=colour, alpha=0.5, lw=1.0, label=f"{prefix}train")
                ax.set_title(panel)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if drawn and (panel != "lr" or many):
            ax.legend(fontsize=7)
        if not drawn:
            ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes, color="grey")
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=dpi, format="png")
    return out
