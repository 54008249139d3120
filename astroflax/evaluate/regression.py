"""Metrics and plots for regression with predictive distributions (pure numpy + scipy).

Predictions are Gaussian mixtures given as weights ``w``, means ``m`` and standard deviations
``s``, each ``(N, K)`` (a Gaussian prediction is K = 1 with ``w = 1``). Point metrics use the
mixture mean. Photo-z conventions: ``dz = (z_phot - z_spec) / (1 + z_spec)``,
sigma_NMAD = 1.4826 median|dz - median(dz)|, outliers |dz| > 0.15.

Central intervals of a mixture are taken between its CDF quantiles; y lies in the central
interval of level c iff its PIT = F(y) lies in [(1-c)/2, (1+c)/2] (F continuous and strictly
increasing), so coverage is computed from the PIT exactly; :func:`mixture_quantile` gives the
interval end points themselves.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy import special, stats

__all__ = [
    "as_mixture", "mixture_mean_std", "mixture_cdf", "mixture_pdf", "mixture_nll", "mixture_quantile",
    "normalized_residuals", "sigma_nmad", "bias", "outlier_fraction",
    "crps_gaussian", "crps_mixture", "pit_values", "pit_histogram", "pit_ks", "coverage",
    "regression_metrics", "plot_pit_histogram", "plot_coverage", "plot_pred_vs_true",
]

NMAD_SCALE = 1.4826
DEFAULT_LEVELS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.68, 0.7, 0.8, 0.9, 0.95, 0.99)


def as_mixture(w, m, s) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Broadcast to float64 ``(N, K)`` arrays; 1-D inputs are single Gaussians."""
    m = np.asarray(m, np.float64)
    if m.ndim == 1:
        m = m[:, None]
    s = np.broadcast_to(np.asarray(s, np.float64).reshape(m.shape[0], -1), m.shape)
    w = np.ones_like(m) if w is None else np.broadcast_to(np.asarray(w, np.float64).reshape(m.shape[0], -1), m.shape)
    if np.any(s <= 0):
        raise ValueError("standard deviations must be > 0")
    return w / w.sum(axis=1, keepdims=True), m, s


def mixture_mean_std(w, m, s) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation of each mixture (law of total variance)."""
    w, m, s = as_mixture(w, m, s)
    mean = np.sum(w * m, axis=1)
    var = np.sum(w * (s**2 + m**2), axis=1) - mean**2
    return mean, np.sqrt(np.maximum(var, 0.0))


def mixture_cdf(y, w, m, s) -> np.ndarray:
    w, m, s = as_mixture(w, m, s)
    return np.sum(w * special.ndtr((np.asarray(y, np.float64)[:, None] - m) / s), axis=1)


def mixture_pdf(y, w, m, s) -> np.ndarray:
    w, m, s = as_mixture(w, m, s)
    u = (np.asarray(y, np.float64)[:, None] - m) / s
    return np.sum(w * np.exp(-0.5 * u**2) / (np.sqrt(2 * np.pi) * s), axis=1)


def mixture_nll(y, w, m, s) -> np.ndarray:
    """Per-example negative log density (log-sum-exp, stable for far-out points)."""
    w, m, s = as_mixture(w, m, s)
    u = (np.asarray(y, np.float64)[:, None] - m) / s
    logp = np.log(np.maximum(w, 1e-300)) - 0.5 * u**2 - np.log(s) - 0.5 * np.log(2 * np.pi)
    return -special.logsumexp(logp, axis=1)


def mixture_quantile(p, w, m, s, tol: float = 1e-10, max_iter: int = 200) -> np.ndarray:
    """Quantile ``F^{-1}(p)`` per mixture by bisection (``p`` scalar or ``(N,)``)."""
    w, m, s = as_mixture(w, m, s)
    p = np.broadcast_to(np.asarray(p, np.float64), (m.shape[0],))
    if np.any((p <= 0) | (p >= 1)):
        raise ValueError("quantile levels must lie in (0, 1)")
    zmax = special.ndtri(np.maximum(p, 1 - p)) + 1.0
    lo = np.min(m - zmax[:, None] * s, axis=1)
    hi = np.max(m + zmax[:, None] * s, axis=1)
    for _ in range(max_iter):
        mid = 0.5 * (lo + hi)
        below = mixture_cdf(mid, w, m, s) < p
        lo, hi = np.where(below, mid, lo), np.where(below, hi, mid)
        if np.max(hi - lo) < tol:
            break
    return 0.5 * (lo + hi)


# ------------------------------------------------------------------------- point metrics


def normalized_residuals(z_phot, z_spec) -> np.ndarray:
    z_phot = np.asarray(z_phot, np.float64)
    z_spec = np.asarray(z_spec, np.float64)
    return (z_phot - z_spec) / (1.0 + z_spec)


def sigma_nmad(z_phot, z_spec) -> float:
    dz = normalized_residuals(z_phot, z_spec)
    return float(NMAD_SCALE * np.median(np.abs(dz - np.median(dz))))


def bias(z_phot, z_spec) -> float:
    return float(np.mean(normalized_residuals(z_phot, z_spec)))


def outlier_fraction(z_phot, z_spec, threshold: float = 0.15) -> float:
    return float(np.mean(np.abs(normalized_residuals(z_phot, z_spec)) > threshold))


# ------------------------------------------------------------------------ probabilistic


def _crps_a(mu: np.ndarray, var: np.ndarray) -> np.ndarray:
    """E|X| for X ~ N(mu, var): the building block of the mixture CRPS (Grimit et al. 2006)."""
    sd = np.sqrt(var)
    u = mu / sd
    return 2 * sd * stats.norm.pdf(u) + mu * (2 * special.ndtr(u) - 1)


def crps_gaussian(y, mu, sigma) -> np.ndarray:
    """Closed form (Gneiting & Raftery 2007): sigma [u(2Phi(u)-1) + 2phi(u) - 1/sqrt(pi)]."""
    y, mu, sigma = (np.asarray(a, np.float64) for a in (y, mu, sigma))
    u = (y - mu) / sigma
    return sigma * (u * (2 * special.ndtr(u) - 1) + 2 * stats.norm.pdf(u) - 1 / np.sqrt(np.pi))


def crps_mixture(y, w, m, s) -> np.ndarray:
    """Closed form: sum_i w_i A(y-m_i, s_i^2) - 1/2 sum_ij w_i w_j A(m_i-m_j, s_i^2+s_j^2)."""
    w, m, s = as_mixture(w, m, s)
    y = np.asarray(y, np.float64)[:, None]
    first = np.sum(w * _crps_a(y - m, s**2), axis=1)
    dm = m[:, :, None] - m[:, None, :]
    var = s[:, :, None] ** 2 + s[:, None, :] ** 2
    second = np.sum(w[:, :, None] * w[:, None, :] * _crps_a(dm, var), axis=(1, 2))
    return first - 0.5 * second


def pit_values(y, w, m, s) -> np.ndarray:
    """Probability integral transform F(y); uniform on [0, 1] for calibrated predictions."""
    return mixture_cdf(y, w, m, s)


def pit_histogram(pit, bins: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """Counts normalised to a density (1 everywhere if uniform) and the bin edges."""
    counts, edges = np.histogram(np.asarray(pit), bins=bins, range=(0.0, 1.0))
    return counts / max(len(pit), 1) * bins, edges


def pit_ks(pit) -> tuple[float, float]:
    """Kolmogorov-Smirnov statistic and p-value of the PIT against U(0, 1)."""
    res = stats.kstest(np.asarray(pit, np.float64), "uniform")
    return float(res.statistic), float(res.pvalue)


def coverage(pit, levels: Sequence[float] = DEFAULT_LEVELS) -> np.ndarray:
    """Fraction of targets inside the central interval of each nominal level."""
    pit = np.asarray(pit, np.float64)[:, None]
    lv = np.asarray(levels, np.float64)[None, :]
    inside = (pit >= (1 - lv) / 2) & (pit <= (1 + lv) / 2)
    return inside.mean(axis=0)


def regression_metrics(y, w, m, s, redshift: bool = True, levels: Sequence[float] = DEFAULT_LEVELS,
                       pit_bins: int = 20) -> dict[str, Any]:
    """Every scalar metric (plus PIT histogram and coverage curve) of mixture predictions."""
    y = np.asarray(y, np.float64)
    w, m, s = as_mixture(w, m, s)
    mean, std = mixture_mean_std(w, m, s)
    pit = pit_values(y, w, m, s)
    cov = coverage(pit, levels)
    ks, ks_p = pit_ks(pit)
    hist, edges = pit_histogram(pit, pit_bins)
    out: dict[str, Any] = {
        "n": int(len(y)),
        "nll": float(np.mean(mixture_nll(y, w, m, s))),
        "crps": float(np.mean(crps_mixture(y, w, m, s))),
        "rmse": float(np.sqrt(np.mean((mean - y) ** 2))),
        "mae": float(np.mean(np.abs(mean - y))),
        "median_sigma": float(np.median(std)),
        "pit_ks": ks,
        "pit_ks_pvalue": ks_p,
        "coverage_68": float(coverage(pit, [0.68])[0]),
        "coverage_95": float(coverage(pit, [0.95])[0]),
        "coverage_curve": {"nominal": [float(v) for v in levels], "empirical": cov.tolist()},
        "pit_histogram": {"density": hist.tolist(), "edges": edges.tolist()},
    }
    if redshift:
        dz = normalized_residuals(mean, y)
        out.update({
            "sigma_nmad": sigma_nmad(mean, y),
            "bias": float(np.mean(dz)),
            "outlier_fraction": outlier_fraction(mean, y),
            "median_sigma_over_1pz": float(np.median(std / (1 + y))),
        })
    return out


# --------------------------------------------------------------------------------- plots


def _figure(figsize=(5.0, 4.0), dpi: int = 100):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, dpi=dpi, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: str | Path) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png")
    return out


def plot_pit_histogram(pit, path: str | Path, bins: int = 20, title: str = "PIT histogram") -> Path:
    """PIT density with the uniform line and its +-2 sigma Poisson band."""
    density, edges = pit_histogram(pit, bins)
    n = max(len(pit), 1)
    fig = _figure()
    ax = fig.add_subplot()
    ax.bar(edges[:-1], density, width=np.diff(edges), align="edge", color="tab:blue", edgecolor="k", zorder=2)
    band = 2 * np.sqrt(n / bins) / (n / bins)
    ax.axhspan(1 - band, 1 + band, color="0.8", alpha=0.6, label="uniform +-2 sigma", zorder=0)
    ax.axhline(1.0, color="k", lw=1, zorder=3)
    ks, _ = pit_ks(pit)
    ax.set(xlabel="PIT", ylabel="density", xlim=(0, 1), title=f"{title} (KS = {ks:.3f})")
    ax.legend(loc="upper center", fontsize=8)
    return _save(fig, path)


def plot_coverage(pit, path: str | Path, levels: Sequence[float] = DEFAULT_LEVELS) -> Path:
    """Empirical vs nominal coverage of central intervals (on the diagonal = calibrated)."""
    cov = coverage(pit, levels)
    fig = _figure()
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], color="k", lw=1, ls="--", label="ideal")
    ax.plot(levels, cov, "o-", color="tab:red", label="model")
    ax.set(xlabel="nominal coverage", ylabel="empirical coverage", xlim=(0, 1), ylim=(0, 1),
           title="Central-interval coverage")
    ax.set_aspect("equal")
    ax.legend(loc="upper left", fontsize=8)
    return _save(fig, path)


def plot_pred_vs_true(y_true, y_pred, path: str | Path, label: str = "z", bins: int = 80,
                      outlier_threshold: float | None = 0.15) -> Path:
    """2-D histogram (log colour scale) of predicted vs true, with the 1:1 and outlier lines."""
    from matplotlib.colors import LogNorm

    y_true = np.asarray(y_true, np.float64)
    y_pred = np.asarray(y_pred, np.float64)
    lo = float(min(y_true.min(), y_pred.min()))
    hi = float(max(y_true.max(), y_pred.max()))
    fig = _figure((5.0, 4.4))
    ax = fig.add_subplot()
    h = ax.hist2d(y_true, y_pred, bins=bins, range=[[lo, hi], [lo, hi]], cmap="viridis", norm=LogNorm(), cmin=1)
    fig.colorbar(h[3], ax=ax, label="count")
    x = np.linspace(lo, hi, 2)
    ax.plot(x, x, color="w", lw=1)
    if outlier_threshold is not None:
        for sign in (-1, 1):
            ax.plot(x, x + sign * outlier_threshold * (1 + x), color="r", lw=0.8, ls="--")
    ax.set(xlabel=f"true {label}", ylabel=f"predicted {label}", xlim=(lo, hi), ylim=(lo, hi),
           title=f"predicted vs true {label}")
    return _save(fig, path)
