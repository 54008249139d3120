"""Classification metrics computed on the host with plain numpy.

Why numpy and not JAX: evaluation runs once per epoch on gathered predictions,
needs exact sklearn-compatible semantics (tie handling, zero-division rules) and
must produce JSON-serialisable reports. Every function validates its inputs and
raises ``ValueError`` naming the offending argument, because silent broadcasting
of a mis-shaped label vector is the classic way to report a wrong metric.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = [
    "PROB_CLIP",
    "confusion_matrix",
    "precision_recall_f1",
    "log_loss",
    "flat_weighted_log_loss",
    "roc_curve_ovr",
    "roc_auc",
    "expected_calibration_error",
    "reliability_curve",
    "classification_report",
]

#: Probabilities are clipped to ``[PROB_CLIP, 1 - PROB_CLIP]`` before taking logs (PLAsTiCC convention).
PROB_CLIP: float = 1e-15


# --------------------------------------------------------------------------- validation


def _as_labels(labels: Any, num_classes: int | None = None, name: str = "labels") -> np.ndarray:
    """Return ``labels`` as a 1-D int64 array, rejecting non-integer or out-of-range values."""
    arr = np.asarray(labels)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name} is empty; need at least one sample")
    if arr.dtype == bool:
        arr = arr.astype(np.int64)
    elif np.issubdtype(arr.dtype, np.floating):
        if not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
            raise ValueError(f"{name} must contain integer class indices, got non-integer values")
        arr = arr.astype(np.int64)
    elif not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{name} must contain integer class indices, got dtype {arr.dtype}")
    arr = arr.astype(np.int64, copy=False)
    if num_classes is not None:
        bad = (arr < 0) | (arr >= num_classes)
        if np.any(bad):
            raise ValueError(
                f"{name} out of range [0, {num_classes}): found {int(arr[bad][0])} "
                f"({int(bad.sum())} bad value(s))"
            )
    return arr


def _check_num_classes(num_classes: Any) -> int:
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    return int(num_classes)


def _as_probs(probs: Any, n: int | None = None, num_classes: int | None = None) -> np.ndarray:
    """Return ``probs`` as a finite, non-negative float64 ``(n, K)`` array."""
    arr = np.asarray(probs, dtype=np.float64)
    if arr.ndim != 2:
        raise ValueError(f"probs must be 2-D (n_samples, n_classes), got shape {arr.shape}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"probs is empty, got shape {arr.shape}")
    if n is not None and arr.shape[0] != n:
        raise ValueError(f"shape mismatch: probs has {arr.shape[0]} rows but labels has {n} entries")
    if num_classes is not None and arr.shape[1] != num_classes:
        raise ValueError(f"shape mismatch: probs has {arr.shape[1]} columns but num_classes={num_classes}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"probs contains non-finite values ({int((~np.isfinite(arr)).sum())} NaN/inf entries)")
    if np.any(arr < 0):
        raise ValueError(f"probs contains negative values (min {arr.min():.3g}); pass probabilities, not logits")
    return arr


def _probs_and_labels(probs: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    lab = np.asarray(labels)
    if lab.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {lab.shape}")
    p = _as_probs(probs, n=lab.shape[0])
    return p, _as_labels(lab, p.shape[1])


def _clip_normalise(probs: np.ndarray) -> np.ndarray:
    """Clip to [eps, 1-eps] and renormalise rows, so a single confident miss costs ~34.5 nats, not inf."""
    p = np.clip(probs, PROB_CLIP, 1.0 - PROB_CLIP)
    return p / p.sum(axis=1, keepdims=True)


def _scores_and_targets(scores: Any, is_positive: Any) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(is_positive)
    if s.ndim != 1 or y.ndim != 1:
        raise ValueError(f"scores and is_positive must be 1-D, got shapes {s.shape} and {y.shape}")
    if s.shape != y.shape:
        raise ValueError(f"shape mismatch: scores has {s.shape[0]} entries but is_positive has {y.shape[0]}")
    if s.size == 0:
        raise ValueError("scores is empty; need at least one sample")
    if not np.all(np.isfinite(s)):
        raise ValueError("scores contains non-finite values")
    if y.dtype != bool:
        if not np.all(np.isin(y, (0, 1))):
            raise ValueError("is_positive must be boolean or 0/1")
        y = y.astype(bool)
    return s, y


# --------------------------------------------------------------------------- confusion / PRF


def confusion_matrix(labels: Any, preds: Any, num_classes: int) -> np.ndarray:
    """Integer ``(K, K)`` confusion matrix; rows = true class, columns = predicted class.

    ``num_classes`` is explicit so absent classes still get a row/column (sklearn would drop them).
    """
    k = _check_num_classes(num_classes)
    y = _as_labels(labels, k, "labels")
    p = _as_labels(preds, k, "preds")
    if y.shape != p.shape:
        raise ValueError(f"shape mismatch: labels has {y.shape[0]} entries but preds has {p.shape[0]}")
    return np.bincount(y * k + p, minlength=k * k).reshape(k, k).astype(np.int64)


def precision_recall_f1(cm: Any) -> dict[str, Any]:
    """Per-class precision/recall/F1/support from a confusion matrix (rows = true).

    Undefined ratios (no predictions, no true samples) are 0.0, like sklearn's
    ``zero_division=0``; macro averages are over *all* K classes, like sklearn
    with ``labels=range(K), average="macro"``.

    Returns ``{"precision", "recall", "f1": float64 (K,), "support": int64 (K,),
    "macro": {"precision", "recall", "f1": float}}``.
    """
    m = np.asarray(cm)
    if m.ndim != 2 or m.shape[0] != m.shape[1] or m.shape[0] == 0:
        raise ValueError(f"cm must be a square (K, K) matrix, got shape {m.shape}")
    if not np.all(np.isfinite(m)) or np.any(m < 0):
        raise ValueError("cm must contain finite non-negative counts")
    m = m.astype(np.float64)
    tp = np.diag(m)
    pred_pos = m.sum(axis=0)
    support = m.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(pred_pos > 0, tp / pred_pos, 0.0)
        recall = np.where(support > 0, tp / support, 0.0)
        denom = 2 * tp + (pred_pos - tp) + (support - tp)
        f1 = np.where(denom > 0, 2 * tp / denom, 0.0)
    return {
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "support": support.astype(np.int64),
        "macro": {
            "precision": float(precision.mean()),
            "recall": float(recall.mean()),
            "f1": float(f1.mean()),
        },
    }


# --------------------------------------------------------------------------- log losses


def log_loss(probs: Any, labels: Any) -> float:
    """Plain mean negative log-likelihood of the true class (probs clipped to 1e-15 and renormalised)."""
    p, y = _probs_and_labels(probs, labels)
    p = _clip_normalise(p)
    return float(-np.mean(np.log(p[np.arange(y.size), y])))


def flat_weighted_log_loss(probs: Any, labels: Any, num_classes: int) -> float:
    """PLAsTiCC's weighted log-loss with equal class weights.

    Each class contributes the mean ``-log p`` over *its own* objects, then classes
    are averaged with equal weight (absent classes get weight 0). So rare classes
    count as much as common ones, unlike :func:`log_loss` which is dominated by
    the majority class.
    """
    k = _check_num_classes(num_classes)
    lab = np.asarray(labels)
    if lab.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {lab.shape}")
    p = _as_probs(probs, n=lab.shape[0], num_classes=k)
    y = _as_labels(lab, k)
    nll = -np.log(_clip_normalise(p)[np.arange(y.size), y])
    counts = np.bincount(y, minlength=k)
    sums = np.bincount(y, weights=nll, minlength=k)
    present = counts > 0
    return float(np.mean(sums[present] / counts[present]))


# --------------------------------------------------------------------------- ROC / AUC


def roc_curve_ovr(
    scores: Any, is_positive: Any, drop_intermediate: bool = True
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One-vs-rest ROC curve ``(fpr, tpr, thresholds)``, identical to ``sklearn.metrics.roc_curve``.

    Use ``scores = probs[:, j]`` and ``is_positive = labels == j``. Tied scores
    form a single point; the first threshold is ``inf`` so the curve starts at
    (0, 0). ``drop_intermediate`` removes collinear points (sklearn default).
    If one class is absent, the corresponding rate is all-NaN (as in sklearn).
    """
    s, y = _scores_and_targets(scores, is_positive)
    order = np.argsort(-s, kind="mergesort")
    s_sorted = s[order]
    y_sorted = y[order].astype(np.float64)
    # last index of each run of equal scores
    distinct = np.where(np.diff(s_sorted))[0]
    idx = np.r_[distinct, s_sorted.size - 1]
    tps = np.cumsum(y_sorted)[idx]
    fps = (idx + 1) - tps
    thresholds = s_sorted[idx]
    if drop_intermediate and fps.shape[0] > 2:
        keep = np.where(np.r_[True, np.logical_or(np.diff(fps, 2), np.diff(tps, 2)), True])[0]
        fps, tps, thresholds = fps[keep], tps[keep], thresholds[keep]
    tps = np.r_[0.0, tps]
    fps = np.r_[0.0, fps]
    thresholds = np.r_[np.inf, thresholds]
    fpr = fps / fps[-1] if fps[-1] > 0 else np.full(fps.shape, np.nan)
    tpr = tps / tps[-1] if tps[-1] > 0 else np.full(tps.shape, np.nan)
    return fpr, tpr, thresholds


def _average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks with ties given their average rank (scipy's ``rankdata(method='average')``)."""
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    starts = np.r_[0, np.where(np.diff(xs))[0] + 1]
    ends = np.r_[starts[1:], xs.size]  # exclusive
    avg = (starts + ends + 1) / 2.0  # mean of 1-based ranks starts+1 .. ends
    ranks = np.empty(x.size, dtype=np.float64)
    ranks[order] = np.repeat(avg, ends - starts)
    return ranks


def roc_auc(scores: Any, is_positive: Any) -> float:
    """Area under the ROC curve via the Mann-Whitney U statistic with average ranks.

    Ties count as half a correct ordering, which equals sklearn's trapezoidal
    ``roc_auc_score``. Returns NaN if only one class is present (sklearn raises).
    """
    s, y = _scores_and_targets(scores, is_positive)
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = _average_ranks(s)
    u = ranks[y].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


# --------------------------------------------------------------------------- calibration


def _bin_confidences(probs: Any, labels: Any, n_bins: int) -> dict[str, np.ndarray]:
    if isinstance(n_bins, bool) or not isinstance(n_bins, (int, np.integer)) or n_bins < 1:
        raise ValueError(f"n_bins must be a positive integer, got {n_bins!r}")
    p, y = _probs_and_labels(probs, labels)
    conf = p.max(axis=1)
    correct = (p.argmax(axis=1) == y).astype(np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # bins are (lo, hi]; confidence 0 falls in the first bin, >1 (unnormalised) in the last
    idx = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, n_bins - 1)
    counts = np.bincount(idx, minlength=n_bins)
    acc_sum = np.bincount(idx, weights=correct, minlength=n_bins)
    conf_sum = np.bincount(idx, weights=conf, minlength=n_bins)
    return {"edges": edges, "counts": counts, "acc_sum": acc_sum, "conf_sum": conf_sum, "n": np.array(y.size)}


def expected_calibration_error(probs: Any, labels: Any, n_bins: int = 15) -> float:
    """Top-label ECE: sum over equal-width bins on [0, 1] (intervals (lo, hi]) of
    ``count/n * |accuracy - mean confidence|``, using the max probability as confidence.
    """
    b = _bin_confidences(probs, labels, n_bins)
    return float(np.abs(b["acc_sum"] - b["conf_sum"]).sum() / float(b["n"]))


def reliability_curve(probs: Any, labels: Any, n_bins: int = 15) -> dict[str, Any]:
    """Per-bin data for a reliability diagram.

    Returns numpy arrays ``bin_edges`` (n_bins+1), ``bin_centers``, ``accuracy``,
    ``confidence`` (NaN for empty bins), ``counts`` (int), plus float ``ece``.
    """
    b = _bin_confidences(probs, labels, n_bins)
    counts = b["counts"]
    with np.errstate(divide="ignore", invalid="ignore"):
        acc = np.where(counts > 0, b["acc_sum"] / counts, np.nan)
        conf = np.where(counts > 0, b["conf_sum"] / counts, np.nan)
    edges = b["edges"]
    return {
        "bin_edges": edges,
        "bin_centers": 0.5 * (edges[:-1] + edges[1:]),
        "accuracy": acc,
        "confidence": conf,
        "counts": counts.astype(np.int64),
        "ece": float(np.abs(b["acc_sum"] - b["conf_sum"]).sum() / float(b["n"])),
    }


# --------------------------------------------------------------------------- report


def _json_float(x: float) -> float | None:
    """Plain float, with NaN mapped to None so the report is strict JSON."""
    x = float(x)
    return None if math.isnan(x) else x


def classification_report(
    probs: Any,
    labels: Any,
    class_names: Sequence[str],
    positive_class: str | None = None,
    n_bins: int = 15,
) -> dict[str, Any]:
    """All headline metrics in one JSON-serialisable dict (plain floats/ints/lists/None).

    Keys: ``n``, ``num_classes``, ``class_names``, ``accuracy``, ``log_loss``,
    ``flat_weighted_log_loss``, ``ece``, ``per_class`` ({name: {precision, recall,
    f1, support}}), ``macro`` ({precision, recall, f1}), ``confusion_matrix``
    (list of lists, rows = true), ``auc_ovr`` ({name: one-vs-rest AUC, or None
    if that class is absent/all-present}), ``macro_auc_ovr`` (mean over non-None).
    If ``positive_class`` is given, also ``positive_class`` (the name),
    ``auc_positive`` and the same value under ``f"auc_{positive_class}"``
    (e.g. ``"auc_SN Ia"``).
    """
    names = [str(c) for c in class_names]
    lab = np.asarray(labels)
    if lab.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {lab.shape}")
    p = _as_probs(probs, n=lab.shape[0])
    k = p.shape[1]
    if len(names) != k:
        raise ValueError(f"shape mismatch: {len(names)} class_names but probs has {k} columns")
    if len(set(names)) != k:
        raise ValueError(f"class_names must be unique, got {names}")
    if positive_class is not None and positive_class not in names:
        raise ValueError(f"positive_class {positive_class!r} is not one of class_names {names}")
    y = _as_labels(lab, k)

    preds = p.argmax(axis=1)
    cm = confusion_matrix(y, preds, k)
    prf = precision_recall_f1(cm)
    auc_ovr = {name: _json_float(roc_auc(p[:, j], y == j)) for j, name in enumerate(names)}
    finite_aucs = [v for v in auc_ovr.values() if v is not None]

    report: dict[str, Any] = {
        "n": int(y.size),
        "num_classes": int(k),
        "class_names": names,
        "accuracy": float(np.mean(preds == y)),
        "log_loss": log_loss(p, y),
        "flat_weighted_log_loss": flat_weighted_log_loss(p, y, k),
        "ece": expected_calibration_error(p, y, n_bins),
        "per_class": {
            name: {
                "precision": float(prf["precision"][j]),
                "recall": float(prf["recall"][j]),
                "f1": float(prf["f1"][j]),
                "support": int(prf["support"][j]),
            }
            for j, name in enumerate(names)
        },
        "macro": {key: float(v) for key, v in prf["macro"].items()},
        "confusion_matrix": cm.tolist(),
        "auc_ovr": auc_ovr,
        "macro_auc_ovr": float(np.mean(finite_aucs)) if finite_aucs else None,
    }
    if positive_class is not None:
        report["positive_class"] = positive_class
        report["auc_positive"] = auc_ovr[positive_class]
        report[f"auc_{positive_class}"] = auc_ovr[positive_class]
    return report
