"""Shared pieces for every regression-with-uncertainty task: losses, output packing, scores, report.

Models return a Gaussian mixture over the target, ``(logits, means, log_sigmas)`` each
``(B, K)`` (K = 1 for a Gaussian head), e.g. :class:`astroflax.models.mlp.MLPRegressor`.
Prediction returns :func:`pack` of that, an ``(B, 3K)`` array ``[weights | means | sigmas]``,
which :func:`score`, :func:`report` and :func:`format_predictions` read back with :func:`unpack`.

``info`` keys used here: ``target`` (name, e.g. ``"z"``; also the batch/array key of the
target), ``redshift`` (bool: add photo-z metrics), ``num_components``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from astroflax.evaluate import regression as reg

LOG_SQRT_2PI = 0.5 * float(np.log(2 * np.pi))


# ---------------------------------------------------------------------------------- losses


def mixture_nll(logits: jax.Array, means: jax.Array, log_sigmas: jax.Array, y: jax.Array) -> jax.Array:
    """Per-example negative log-likelihood of ``y`` (B,) under a Gaussian mixture (B, K)."""
    u = (y[:, None] - means) * jnp.exp(-log_sigmas)
    log_w = jax.nn.log_softmax(logits, axis=-1)
    return -jax.nn.logsumexp(log_w - 0.5 * u**2 - log_sigmas - LOG_SQRT_2PI, axis=-1)


def gaussian_nll(mean: jax.Array, log_sigma: jax.Array, y: jax.Array) -> jax.Array:
    """Per-example Gaussian NLL: log sigma + (y - mean)^2 / (2 sigma^2) + log sqrt(2 pi)."""
    return log_sigma + 0.5 * ((y - mean) * jnp.exp(-log_sigma)) ** 2 + LOG_SQRT_2PI


def huber(residual: jax.Array, delta: float) -> jax.Array:
    """Huber penalty of a residual (optax's): quadratic below ``delta``, linear above."""
    return optax.losses.huber_loss(residual, delta=delta)


def weighted_mean(values: jax.Array, batch: dict) -> jax.Array:
    """Mean weighted by ``sample_weight`` (if any) and the eval pad mask ``_weight``."""
    weight = batch.get("sample_weight", jnp.ones_like(values)) * batch.get("_weight", 1.0)
    return jnp.sum(values * weight) / jnp.maximum(jnp.sum(weight), 1e-9)


def distribution_loss(outputs: tuple, y: jax.Array, batch: dict, *, loss: str = "nll",
                      huber_weight: float = 1.0, huber_delta: float = 1.0,
                      scale: float = 1.0) -> tuple[jax.Array, dict]:
    """Mixture NLL (``loss="nll"``) or NLL + ``huber_weight`` * Huber(mixture mean - y).

    Huber alone would leave sigma untrained, so the NLL always trains the spread and the
    Huber term only adds a robust pull on the point estimate. Residuals for Huber are divided
    by ``scale`` (e.g. the target std) so ``huber_delta`` is in standardised units.
    """
    logits, means, log_sigmas = outputs
    nll = mixture_nll(logits, means, log_sigmas, y)
    w = jax.nn.softmax(logits, axis=-1)
    mean = jnp.sum(w * means, axis=-1)
    total = nll
    aux = {"nll": weighted_mean(nll, batch), "abs_err": weighted_mean(jnp.abs(mean - y), batch)}
    if loss == "huber":
        h = huber((mean - y) / scale, huber_delta)
        total = nll + huber_weight * h
        aux["huber"] = weighted_mean(h, batch)
    elif loss != "nll":
        raise ValueError(f"loss must be 'nll' or 'huber', got {loss!r}")
    return weighted_mean(total, batch), aux


# ----------------------------------------------------------------------------- outputs


def pack(outputs: tuple) -> jax.Array:
    """``(logits, means, log_sigmas)`` -> ``(B, 3K)`` = [weights | means | sigmas]."""
    logits, means, log_sigmas = outputs
    return jnp.concatenate([jax.nn.softmax(logits, axis=-1), means, jnp.exp(log_sigmas)], axis=-1)


def packed_columns(target: str, k: int) -> list[str]:
    """Names of the :func:`pack` columns: ``weight_j``, ``<target>_mean_j``, ``<target>_sigma_j``."""
    return [f"weight_{j}" for j in range(k)] + [f"{target}_mean_{j}" for j in range(k)] + \
        [f"{target}_sigma_{j}" for j in range(k)]


def unpack(packed: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Inverse of :func:`pack` on the host: weights, means, sigmas, each ``(N, K)`` float64."""
    packed = np.asarray(packed, np.float64)
    k = packed.shape[1] // 3
    if packed.ndim != 2 or packed.shape[1] != 3 * k or k < 1:
        raise ValueError(f"expected (N, 3K) packed mixture outputs, got shape {packed.shape}")
    return packed[:, :k], packed[:, k:2 * k], np.maximum(packed[:, 2 * k:], 1e-12)


# ------------------------------------------------------------------------ score / report


def score(outputs: np.ndarray, arrays: dict, info: dict, target: str | None = None) -> dict[str, Any]:
    """Validation scores; ``loss`` is the mean mixture (or Gaussian) NLL in target units.

    ``target`` names the array of true values (default ``info["target"]``, else ``"y"``)."""
    y = arrays[target or info.get("target", "y")]
    m = reg.regression_metrics(y, *unpack(outputs), redshift=bool(info.get("redshift", False)))
    keys = ["nll", "crps", "rmse", "coverage_68", "coverage_95", "pit_ks"]
    if info.get("redshift"):
        keys += ["sigma_nmad", "bias", "outlier_fraction"]
    return {"loss": m["nll"], **{k: m[k] for k in keys}}


def report(outputs: np.ndarray, arrays: dict, info: dict, out_dir: Path, run: Any = None,
           target: str | None = None) -> dict[str, Any]:
    """All metrics plus PIT, coverage and predicted-vs-true figures under ``out_dir``."""
    name = target or info.get("target", "y")
    y = np.asarray(arrays[name], np.float64)
    w, m, s = unpack(outputs)
    redshift = bool(info.get("redshift", False))
    rep = reg.regression_metrics(y, w, m, s, redshift=redshift)
    rep["loss"] = rep["nll"]
    mean, _ = reg.mixture_mean_std(w, m, s)
    pit = reg.pit_values(y, w, m, s)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rep["figures"] = {
        "pit_histogram": str(reg.plot_pit_histogram(pit, out_dir / "pit_histogram.png")),
        "coverage": str(reg.plot_coverage(pit, out_dir / "coverage.png")),
        "pred_vs_true": str(reg.plot_pred_vs_true(y, mean, out_dir / "pred_vs_true.png", label=name,
                                                  outlier_threshold=0.15 if redshift else None)),
    }
    return rep


def format_predictions(outputs: np.ndarray, ids: np.ndarray, info: dict, id_name: str = "id",
                       target: str | None = None) -> list[dict[str, Any]]:
    """One row per example: id, ``<target>_mean``, ``<target>_sigma`` (+ per-component columns if K > 1)."""
    name = target or info.get("target", "y")
    w, m, s = unpack(outputs)
    mean, std = reg.mixture_mean_std(w, m, s)
    k = w.shape[1]
    rows = []
    for i, oid in enumerate(ids):
        row: dict[str, Any] = {id_name: oid.item() if hasattr(oid, "item") else oid,
                               f"{name}_mean": float(mean[i]), f"{name}_sigma": float(std[i])}
        if k > 1:
            for j in range(k):
                row[f"weight_{j}"] = float(w[i, j])
                row[f"{name}_mean_{j}"] = float(m[i, j])
                row[f"{name}_sigma_{j}"] = float(s[i, j])
        rows.append(row)
    return rows
