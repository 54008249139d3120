"""Evaluation plots written straight to PNG.

Uses ``matplotlib.figure.Figure`` with an explicitly attached Agg canvas instead
of ``pyplot``: no global figure registry, no backend switching, no GUI windows,
and safe to call from worker threads or headless training jobs. Image size is
exactly ``figsize * dpi`` pixels (no ``bbox_inches="tight"``), so callers and
tests can rely on it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from astroflax.evaluate.classification import _probs_and_labels, roc_auc, roc_curve_ovr

__all__ = ["plot_confusion_matrix", "plot_reliability_diagram", "plot_roc_curves"]


def _new_figure(figsize: tuple[float, float], dpi: int, layout: str = "constrained") -> Figure:
    fig = Figure(figsize=figsize, dpi=dpi, layout=layout)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: str | Path, dpi: int) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=dpi, format="png")
    return out


def plot_confusion_matrix(
    cm: Any,
    class_names: Sequence[str],
    path: str | Path,
    normalize: bool = True,
    title: str | None = None,
    figsize: tuple[float, float] | None = None,
    dpi: int = 100,
) -> Path:
    """Heat-map of a confusion matrix (rows = true) with every cell annotated.

    ``normalize=True`` divides each row by its support (rows with no samples stay 0),
    so colour shows recall per class regardless of class imbalance. Default size
    grows with the number of classes so 14 PLAsTiCC classes stay legible.
    """
    m = np.asarray(cm, dtype=np.float64)
    k = len(class_names)
    if m.ndim != 2 or m.shape != (k, k):
        raise ValueError(f"cm must have shape ({k}, {k}) to match class_names, got {m.shape}")
    if normalize:
        row = m.sum(axis=1, keepdims=True)
        values = np.divide(m, row, out=np.zeros_like(m), where=row > 0)
        vmax = 1.0
    else:
        values = m
        vmax = max(float(m.max()), 1.0)
    if figsize is None:
        side = max(5.0, 0.6 * k + 3.0)
        figsize = (side + 1.0, side)
    # "tight": constrained layout pushes the y label off-canvas with equal-aspect image + colorbar
    fig = _new_figure(figsize, dpi, layout="tight")
    ax = fig.add_subplot()
    im = ax.imshow(values, cmap="Blues", vmin=0.0, vmax=vmax, interpolation="nearest")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    ticks = np.arange(k)
    ax.set_xticks(ticks, labels=[str(c) for c in class_names], rotation=45, ha="right", rotation_mode="anchor")
    ax.set_yticks(ticks, labels=[str(c) for c in class_names])
    ax.set_xlabel("Predicted class")
    ax.set_ylabel("True class")
    ax.set_title(title if title is not None else ("Confusion matrix (row-normalised)" if normalize else "Confusion matrix"))
    fontsize = 9 if k <= 8 else (7 if k <= 15 else 5)
    for i in range(k):
        for j in range(k):
            v = values[i, j]
            text = f"{v:.2f}" if normalize else f"{int(round(v))}"
            colour = "white" if v > 0.5 * vmax else "black"
            ax.text(j, i, text, ha="center", va="center", fontsize=fontsize, color=colour)
    return _save(fig, path, dpi)


def plot_reliability_diagram(
    curve_dict: dict[str, Any],
    path: str | Path,
    title: str | None = None,
    figsize: tuple[float, float] = (6.0, 6.5),
    dpi: int = 100,
) -> Path:
    """Reliability diagram from :func:`~astroflax.evaluate.classification.reliability_curve`.

    Top: per-bin accuracy bars against the diagonal (perfect calibration), with the
    gap to mean confidence shaded; bottom: how many samples fall in each bin, since
    a large gap in an almost-empty bin matters little.
    """
    for key in ("bin_centers", "accuracy", "confidence", "counts"):
        if key not in curve_dict:
            raise ValueError(f"curve_dict is missing key {key!r}; pass the output of reliability_curve()")
    centers = np.asarray(curve_dict["bin_centers"], dtype=np.float64)
    acc = np.asarray(curve_dict["accuracy"], dtype=np.float64)
    conf = np.asarray(curve_dict["confidence"], dtype=np.float64)
    counts = np.asarray(curve_dict["counts"], dtype=np.float64)
    if not (centers.shape == acc.shape == conf.shape == counts.shape) or centers.ndim != 1:
        raise ValueError("curve_dict arrays bin_centers/accuracy/confidence/counts must be 1-D and equal length")
    if "bin_edges" in curve_dict:
        width = np.diff(np.asarray(curve_dict["bin_edges"], dtype=np.float64))
    else:
        width = np.full(centers.shape, 1.0 / max(len(centers), 1))
    filled = counts > 0

    fig = _new_figure(figsize, dpi)
    ax, ax_hist = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    ax.bar(centers[filled], acc[filled], width=width[filled], color="tab:blue", alpha=0.7,
           edgecolor="black", lw=0.5, label="Accuracy")
    ax.bar(centers[filled], conf[filled] - acc[filled], bottom=acc[filled], width=width[filled],
           facecolor="none", edgecolor="tab:red", lw=0.8, hatch="///", label="Gap to mean confidence")
    ax.plot(centers[filled], conf[filled], ls="none", marker="o", ms=4, color="tab:red", label="Mean confidence")
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="Perfect calibration")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_ylabel("Accuracy")
    ece = curve_dict.get("ece")
    default_title = "Reliability diagram" + (f" (ECE = {float(ece):.3f})" if ece is not None else "")
    ax.set_title(title if title is not None else default_title)
    ax.legend(loc="upper left", fontsize=8)
    ax_hist.bar(centers, counts, width=width, color="grey", edgecolor="black", lw=0.5)
    ax_hist.set_xlabel("Confidence (max probability)")
    ax_hist.set_ylabel("Count")
    return _save(fig, path, dpi)


def plot_roc_curves(
    probs: Any,
    labels: Any,
    class_names: Sequence[str],
    path: str | Path,
    title: str | None = None,
    figsize: tuple[float, float] = (7.0, 6.0),
    dpi: int = 100,
) -> Path:
    """One-vs-rest ROC curve per class with its AUC in the legend.

    Classes absent from ``labels`` (AUC undefined) are listed as "n/a" without a curve.
    """
    p, y = _probs_and_labels(probs, labels)
    k = p.shape[1]
    if len(class_names) != k:
        raise ValueError(f"shape mismatch: {len(class_names)} class_names but probs has {k} columns")
    fig = _new_figure(figsize, dpi)
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1)
    cmap = matplotlib.colormaps["tab20" if k > 10 else "tab10"]
    for j, name in enumerate(class_names):
        positive = y == j
        auc = roc_auc(p[:, j], positive)
        colour = cmap(j % cmap.N)
        if np.isnan(auc):
            ax.plot([], [], color=colour, label=f"{name} (AUC n/a)")
            continue
        fpr, tpr, _ = roc_curve_ovr(p[:, j], positive)
        ax.plot(fpr, tpr, color=colour, lw=1.5, label=f"{name} (AUC {auc:.3f})")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("False positive rate")
    ax.set_ylabel("True positive rate")
    ax.set_title(title if title is not None else "One-vs-rest ROC curves")
    ax.legend(loc="lower right", fontsize=7 if k > 8 else 9, ncol=2 if k > 8 else 1)
    return _save(fig, path, dpi)


def plot_type_scale(true: Any, pred: Any, snr: Any, class_names: Sequence[str], path: str | Path,
                    dpi: int = 100) -> Path:
    """Predicted against true spectral-type scale (class index + subtype/10), coloured by log S/N."""
    true, pred = np.asarray(true, np.float64), np.asarray(pred, np.float64)
    fig = _new_figure((6, 5), dpi)
    ax = fig.add_subplot()
    jitter = np.random.default_rng(0).normal(0, 0.02, len(true))  # separates the discrete true types
    sc = ax.scatter(true + jitter, pred, c=np.log10(np.asarray(snr, np.float64)), s=3, alpha=0.4)
    k = len(class_names)
    ax.plot([0, k], [0, k], color="grey", lw=1, ls="--")
    ax.set_xticks(np.arange(k) + 0.5, list(class_names), minor=False)
    ax.set_xlabel("true type (class + subtype/10)")
    ax.set_ylabel("predicted type")
    fig.colorbar(sc, label="log10 S/N")
    return _save(fig, path, dpi)
