"""Shared pieces for every classification task: loss, scores, report, prediction rows.

Tasks put integer class indices in ``label`` and optional per-example ``sample_weight``; the
model returns logits. Everything here is task-agnostic, so classifiers differ only in data
and model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from astroflax.evaluate import classification as clf


def weighted_cross_entropy(logits: jax.Array, batch: dict, label_smoothing: float = 0.0) -> tuple[jax.Array, dict]:
    """Softmax cross-entropy weighted by ``sample_weight`` (if any) and the eval pad mask ``_weight``."""
    labels = batch["label"]
    # The train step passes the configured regulariser in the batch (see train/step.py).
    label_smoothing = batch.get("_label_smoothing", label_smoothing)
    if label_smoothing:
        targets = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1]), label_smoothing)
        per_example = optax.softmax_cross_entropy(logits, targets)
    else:
        per_example = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    weight = batch.get("sample_weight", jnp.ones_like(per_example)) * batch.get("_weight", 1.0)
    loss = jnp.sum(per_example * weight) / jnp.maximum(jnp.sum(weight), 1e-9)
    accuracy = jnp.mean((jnp.argmax(logits, -1) == labels).astype(jnp.float32))
    return loss, {"accuracy": accuracy}


def balanced_class_weights(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """N / (K * n_c): every class contributes equally to the loss (zero for absent classes)."""
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    return np.where(counts > 0, counts.sum() / (num_classes * np.maximum(counts, 1)), 0.0)


def score(probs: np.ndarray, arrays: dict, info: dict) -> dict[str, Any]:
    """Validation scores; ``loss`` is the flat-weighted log-loss (every class counts the same)."""
    labels = arrays["label"]
    k = info["num_classes"]
    out = {
        "loss": clf.flat_weighted_log_loss(probs, labels, k),
        "log_loss": clf.log_loss(probs, labels),
        "accuracy": float(np.mean(probs.argmax(-1) == labels)),
    }
    pos = info.get("positive_class")
    if pos is not None:
        j = info["class_names"].index(pos)
        out[info.get("positive_key", "auc_positive")] = clf.roc_auc(probs[:, j], labels == j)
    return out


def report(probs: np.ndarray, arrays: dict, info: dict, out_dir: Path, run: Any = None) -> dict[str, Any]:
    from astroflax.evaluate import plots

    rep = clf.classification_report(
        probs, arrays["label"], info["class_names"], positive_class=info.get("positive_class")
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    cm = np.asarray(rep["confusion_matrix"])
    rep["figures"] = {
        "confusion_matrix": str(plots.plot_confusion_matrix(cm, info["class_names"], out_dir / "confusion_matrix.png")),
        "reliability": str(
            plots.plot_reliability_diagram(clf.reliability_curve(probs, arrays["label"]), out_dir / "reliability.png")
        ),
        "roc": str(plots.plot_roc_curves(probs, arrays["label"], info["class_names"], out_dir / "roc.png")),
    }
    return rep


def format_predictions(probs: np.ndarray, ids: np.ndarray, info: dict, id_name: str = "id") -> list[dict[str, Any]]:
    """One row per example: its id, the most probable class and every class probability."""
    names = info["class_names"]
    rows = []
    for oid, p in zip(ids, probs):
        row: dict[str, Any] = {id_name: oid.item() if hasattr(oid, "item") else oid,
                               "predicted_class": names[int(np.argmax(p))]}
        row.update({f"p_{name}": float(v) for name, v in zip(names, p)})
        rows.append(row)
    return rows
