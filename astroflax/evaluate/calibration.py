"""Post-hoc temperature scaling for classifiers (Guo et al. 2017, "On Calibration of Modern NNs").

A single scalar ``T > 0`` divides the logits: ``p = softmax(z / T)``. It is fitted on the
validation split by minimising the mean negative log-likelihood, so it never changes the
predicted class (accuracy is unchanged) and only fixes over- or under-confidence. Tasks output
probabilities, so the logits are recovered as ``log p`` (softmax is shift invariant, so
``softmax(log p / T) == softmax(z / T)`` exactly).

The fit is saved as ``<run_dir>/calibration.json`` together with the checkpoint step it was
fitted for; ``evaluate`` and ``predict`` apply it only to that same checkpoint.

Temperature scaling cannot fix miscalibration that comes from a class-weighted loss (e.g.
``class_weighting: balanced``, which shifts probability towards rare classes): method
``prior_temperature`` first undoes the weighting (logit offsets ``-log w_c``), then fits ``T``.
A model judged by a class-balanced metric (PLAsTiCC's flat-weighted log-loss) can instead be
calibrated in that space: ``balanced_offsets`` fits ``T`` and one logit offset per class to the
class-balanced NLL. Measured on transients quick runs (README): flat-weighted log-loss 0.823 ->
0.758 and 0.911 -> 0.868 on test against temperature scaling, while the sample-weighted ECE got
worse (0.063 -> 0.092, 0.052 -> 0.065): the two ask for different class priors.

Regressors with a Gaussian-mixture output (photoz) get the analogue for intervals, method
``sigma_scale``: every component sigma is multiplied by one ``s > 0`` fitted on validation so
that the PITs ``F(y)`` are as close to uniform as they can be (Cramer-von Mises distance). A
uniform PIT means every central interval covers its nominal fraction, so one fit serves 68 %
and 95 % alike; the means, hence sigma_NMAD and the outlier rate, are unchanged, and the output
stays a mixture, so ``predict``, exports and ensembles need nothing new. A full PIT remapping
(Kuleshov et al. 2018) would fix shape errors a scale cannot, but its output is no longer a
mixture. Measured on the bundled SDSS data (photoz quick, README): s = 1.064 took test
coverage from 0.672 / 0.946 to 0.699 / 0.957 and the test PIT KS from 0.021 to 0.016, both
within 0.02 of nominal before and after; the 68 % figure moved away from 0.68 while the PIT as
a whole got closer to uniform. A 1,000-galaxy validation split limits how well ``s`` is known.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
from scipy import optimize, special

from astroflax.data.store import load_dataset
from astroflax.errors import ConfigError
from astroflax.evaluate import classification as clf
from astroflax.evaluate import regression as reg

CALIBRATION_FILE = "calibration.json"
N_BINS = 15
LOG_T_BOUNDS = (-4.6, 4.6)  # T in [0.01, 100]
_TINY = np.finfo(np.float64).tiny


# ------------------------------------------------------------------------------ the maths


def probs_to_logits(probs: Any) -> np.ndarray:
    """``log p`` in float64; probabilities that underflowed to 0 become very negative, not -inf."""
    return np.log(np.maximum(np.asarray(probs, np.float64), _TINY))


def softmax_t(logits: Any, temperature: float) -> np.ndarray:
    return special.softmax(np.asarray(logits, np.float64) / float(temperature), axis=-1)


def apply_temperature(probs: Any, temperature: float) -> np.ndarray:
    """Rescale probabilities: ``softmax(log(p) / T)``, in the dtype of ``probs``."""
    p = np.asarray(probs)
    out = softmax_t(probs_to_logits(p), temperature)
    return out.astype(p.dtype if np.issubdtype(p.dtype, np.floating) else np.float64)


def nll(logits: Any, labels: Any, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of ``labels`` under ``softmax(logits / T)``."""
    z = np.asarray(logits, np.float64) / float(temperature)
    y = np.asarray(labels, np.int64)
    return float(np.mean(special.logsumexp(z, axis=-1) - z[np.arange(y.size), y]))


def fit_temperature(logits: Any, labels: Any) -> float:
    """The ``T`` minimising the NLL of ``softmax(logits / T)``; never worse than ``T = 1``.

    The NLL is convex in ``1/T``, hence unimodal in ``log T``: a bounded 1-D Brent search is
    exact enough and needs no gradients.
    """
    z = np.asarray(logits, np.float64)
    y = np.asarray(labels, np.int64)
    if z.ndim != 2 or y.shape != (z.shape[0],) or z.shape[0] == 0:
        raise ValueError(f"need logits (N, K) and labels (N,), got {z.shape} and {y.shape}")
    res = optimize.minimize_scalar(
        lambda log_t: nll(z, y, math.exp(log_t)), bounds=LOG_T_BOUNDS, method="bounded",
        options={"xatol": 1e-6},
    )
    t = float(math.exp(res.x))
    return t if nll(z, y, t) <= nll(z, y, 1.0) else 1.0


OFFSET_PENALTIES = (1e-3, 1e-2, 1e-1, 1.0)  # L2 on the class offsets; one is picked by 5-fold CV on val
CV_FOLDS = 5


def balanced_nll(logits: Any, labels: Any, num_classes: int | None = None) -> float:
    """Mean NLL with each class weighted equally (the flat-weighted log-loss of PLAsTiCC)."""
    z = np.asarray(logits, np.float64)
    y = np.asarray(labels, np.int64)
    k = num_classes or z.shape[1]
    counts = np.bincount(y, minlength=k).astype(np.float64)
    w = 1.0 / counts[y]
    per = special.logsumexp(z, axis=-1) - z[np.arange(y.size), y]
    return float(np.sum(w * per) / np.sum(w))


def _fit_offsets(z: np.ndarray, y: np.ndarray, penalty: float) -> tuple[float, np.ndarray]:
    """``T`` and class offsets ``b`` minimising the balanced NLL of ``softmax(z / T + b)`` + penalty |b|^2."""
    k = z.shape[1]

    def objective(x: np.ndarray) -> float:
        return balanced_nll(z / math.exp(x[0]) + x[1:], y, k) + penalty * float(np.sum(x[1:] ** 2))

    res = optimize.minimize(objective, np.zeros(k + 1), method="L-BFGS-B",
                            bounds=[LOG_T_BOUNDS] + [(-20.0, 20.0)] * k)
    return math.exp(float(res.x[0])), res.x[1:]


def fit_balanced_offsets(logits: Any, labels: Any, seed: int = 0) -> tuple[float, np.ndarray, float]:
    """Temperature plus one logit offset per class, fitted to the class-balanced NLL on validation.

    Why: a classifier judged by a class-balanced metric (PLAsTiCC's flat-weighted log-loss) should
    be calibrated in that space; per-class offsets also fix a class that validation shows to be
    systematically over- or under-predicted, which one temperature cannot. The offsets change
    predicted classes. Their L2 penalty is picked by stratified 5-fold cross-validation on the
    validation split itself (rare classes have few validation examples). Returns (T, b, penalty):
    ``p = softmax(log p_raw / T + b)``.
    """
    z = np.asarray(logits, np.float64)
    y = np.asarray(labels, np.int64)
    rng = np.random.default_rng(seed)
    fold = np.empty(len(y), np.int64)
    for c in np.unique(y):  # stratified folds: every class spread over the folds
        idx = rng.permutation(np.flatnonzero(y == c))
        fold[idx] = np.arange(len(idx)) % CV_FOLDS
    scores = []
    for pen in OFFSET_PENALTIES:
        held = []
        for f in range(CV_FOLDS):
            tr, te = fold != f, fold == f
            if not te.any() or not tr.any():
                continue
            t, b = _fit_offsets(z[tr], y[tr], pen)
            held.append(balanced_nll(z[te] / t + b, y[te], z.shape[1]))
        scores.append(float(np.mean(held)))
    best = OFFSET_PENALTIES[int(np.argmin(scores))]
    t, b = _fit_offsets(z, y, best)
    return t, b, best


def calibration_metrics(probs: Any, labels: Any) -> dict[str, float]:
    """The numbers reported before and after scaling (ECE with 15 equal-width bins)."""
    p = np.asarray(probs, np.float64)
    y = np.asarray(labels, np.int64)
    return {
        "ece": clf.expected_calibration_error(p, y, N_BINS),
        "log_loss": clf.log_loss(p, y),
        "flat_weighted_log_loss": clf.flat_weighted_log_loss(p, y, p.shape[1]),
        "accuracy": float(np.mean(p.argmax(-1) == y)),
    }


def class_probs(outputs: Any, info: dict[str, Any]) -> np.ndarray | None:
    """The first ``len(info["class_names"])`` output columns if they are valid class
    probabilities (finite, non-negative, rows summing to 1), else None.

    Consumers decide *whether* a task is a classifier from its declaration (``Task.kind``);
    this only validates outputs, e.g. of an export or a file a user hands us. Further columns
    (``spectra``: the type scale) are other predictions, which calibration passes through.
    """
    names = info.get("class_names")
    p = np.asarray(outputs)
    if not names or p.ndim != 2 or p.shape[1] < len(names) or p.shape[0] == 0:
        return None
    p = p[:, : len(names)]
    if not np.issubdtype(p.dtype, np.floating) or not np.all(np.isfinite(p)) or np.any(p < 0):
        return None
    return p if np.allclose(p.sum(axis=1), 1.0, atol=1e-3) else None


def is_probability_output(outputs: Any, info: dict[str, Any]) -> bool:
    return class_probs(outputs, info) is not None


# -------------------------------------------------------------- regression: sigma scaling

LOG_S_BOUNDS = (-2.3, 2.3)  # s in [0.1, 10]


def _mixture(outputs: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``[weights | means | sigmas]`` packed ``(N, 3K)`` -> three ``(N, K)`` float64 arrays."""
    out = np.asarray(outputs, np.float64)
    k = out.shape[1] // 3 if out.ndim == 2 else 0
    if k < 1 or out.shape[1] != 3 * k:
        raise ValueError(f"expected (N, 3K) packed mixture outputs, got shape {out.shape}")
    return out[:, :k], out[:, k:2 * k], np.maximum(out[:, 2 * k:], 1e-12)


def scale_sigmas(outputs: Any, scale: float) -> np.ndarray:
    """The packed mixture with every sigma multiplied by ``scale`` (same dtype)."""
    out = np.array(outputs, copy=True)
    k = out.shape[1] // 3
    out[:, 2 * k:] = out[:, 2 * k:] * scale
    return out


def pit_distance(pit: Any) -> float:
    """Cramer-von Mises distance of the PITs from U(0, 1): ``1/(12n) + sum((2i-1)/(2n) - u_(i))^2``, over n."""
    u = np.sort(np.asarray(pit, np.float64))
    n = u.size
    return float((1 / (12 * n) + np.sum(((2 * np.arange(1, n + 1) - 1) / (2 * n) - u) ** 2)) / n)


def fit_sigma_scale(outputs: Any, y: Any) -> float:
    """The ``s`` whose scaled mixture has the most uniform validation PIT; never worse than ``s = 1``.

    The distance is not convex in ``s`` in general: a grid over ``log s`` picks the basin and a
    bounded Brent search refines it.
    """
    w, m, sd = _mixture(outputs)
    y = np.asarray(y, np.float64)
    if y.shape != (w.shape[0],) or y.size == 0:
        raise ValueError(f"need outputs (N, 3K) and targets (N,), got {np.shape(outputs)} and {y.shape}")

    def distance(log_s: float) -> float:
        return pit_distance(reg.pit_values(y, w, m, sd * math.exp(log_s)))

    grid = np.linspace(*LOG_S_BOUNDS, 47)
    values = [distance(g) for g in grid]
    i = int(np.argmin(values))
    lo, hi = grid[max(i - 1, 0)], grid[min(i + 1, len(grid) - 1)]
    res = optimize.minimize_scalar(distance, bounds=(lo, hi), method="bounded", options={"xatol": 1e-5})
    best = float(res.x) if res.fun <= values[i] else float(grid[i])
    return math.exp(best) if distance(best) <= distance(0.0) else 1.0


def interval_metrics(outputs: Any, y: Any) -> dict[str, float]:
    """What ``sigma_scale`` is judged by: coverage at 68 / 95 %, the PIT's distance from uniform
    (what the fit minimises, and KS), NLL and CRPS."""
    w, m, s = _mixture(outputs)
    out = reg.regression_metrics(y, w, m, s, redshift=False)
    return {"pit_cvm": pit_distance(reg.pit_values(y, w, m, s)),
            **{k: float(out[k]) for k in ("coverage_68", "coverage_95", "pit_ks", "nll", "crps", "median_sigma")}}


def fit_regression_calibration(raw_val: np.ndarray, val_y: np.ndarray, step: Any, weights: str = "raw",
                               method: str = "sigma_scale") -> dict[str, Any]:
    """Fit ``sigma_scale`` on validation outputs; returns the record saved as ``calibration.json``."""
    if method not in REGRESSION_METHODS:
        raise ConfigError(f"calibration method {method!r} for a regressor: choose from {', '.join(REGRESSION_METHODS)}")
    scale = fit_sigma_scale(raw_val, val_y)
    record = {
        "method": method,
        "sigma_scale": scale,
        "checkpoint_step": step,
        "weights": weights,
        "fitted_on": "val",
        "n": int(len(val_y)),
        "val_before": interval_metrics(raw_val, val_y),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    record["val_after"] = interval_metrics(scale_sigmas(raw_val, scale), val_y)
    return record


# ------------------------------------------------------------------------ runs and files

METHODS = ("temperature", "prior_temperature", "balanced_offsets")
REGRESSION_METHODS = ("sigma_scale",)


def applies_to(task: Any) -> bool:
    """Whether a task's outputs can be calibrated here: class probabilities or a Gaussian mixture."""
    return bool(task.is_classifier) or (task.kind == "regressor" and task.distribution == "gaussian_mixture")


def target_name(task: Any, info: dict[str, Any]) -> str:
    """The array a calibration is fitted against: ``label``, or a regressor's target."""
    return "label" if task.is_classifier else info.get("target", "y")


def prior_offset(class_weights: Any) -> np.ndarray:
    """Logit offsets ``-log w_c`` that undo a class-weighted loss (weights 0 = absent class: no offset).

    A model trained with loss weights ``w_c`` estimates ``p(c|x) w_c / Z``; adding ``-log w_c``
    to its logits restores the training-set class prior.
    """
    w = np.asarray(class_weights, np.float64)
    return np.where(w > 0, -np.log(np.where(w > 0, w, 1.0)), 0.0)


def apply_calibration(outputs: Any, record: dict[str, Any]) -> np.ndarray:
    """Apply a saved calibration record to the class columns: ``softmax((log p + offset) / T)``.

    Columns after the record's ``num_classes`` (other predictions, e.g. a regression) are kept.
    """
    if record.get("method") in REGRESSION_METHODS:
        return scale_sigmas(outputs, float(record["sigma_scale"]))
    out = np.asarray(outputs)
    k = int(record.get("num_classes") or out.shape[1])
    logits = probs_to_logits(out[:, :k])
    offset = record.get("logit_offset")
    if offset is not None:
        logits = logits + np.asarray(offset, np.float64)
    probs = softmax_t(logits, float(record["temperature"]))
    dtype = out.dtype if np.issubdtype(out.dtype, np.floating) else np.float64
    return np.concatenate([probs, out[:, k:]], axis=1).astype(dtype) if out.shape[1] > k else probs.astype(dtype)


def fit_calibration(raw_val_probs: np.ndarray, val_labels: np.ndarray, step: Any, weights: str = "raw",
                    method: str = "temperature", class_weights: Any = None) -> dict[str, Any]:
    """Fit on validation probabilities; returns the record saved as ``calibration.json``.

    ``temperature``: plain temperature scaling (keeps every predicted class).
    ``prior_temperature``: first undo the class weighting of the training loss (``class_weights``,
    e.g. ``balanced``), then fit ``T``. This calibrates to the training-set class frequencies and
    so changes predicted classes; a balanced-weighted model's flat-weighted log-loss gets worse.
    ``balanced_offsets``: ``T`` and a logit offset per class fitted to the class-balanced NLL
    (:func:`fit_balanced_offsets`); for models judged by a flat-weighted metric. Changes predicted classes.
    """
    if method not in METHODS:
        raise ConfigError(f"calibration method {method!r}: choose from {', '.join(METHODS)}")
    logits = probs_to_logits(raw_val_probs)
    offset = None
    if method == "prior_temperature":
        if class_weights is None:
            raise ConfigError("calibration method 'prior_temperature': the run's info has no class_weights")
        offset = prior_offset(class_weights)
        if offset.shape != (logits.shape[1],):
            raise ConfigError(f"class_weights has {offset.size} entries, expected {logits.shape[1]}")
        logits = logits + offset
    extra: dict[str, Any] = {}
    if method == "balanced_offsets":
        t, b, penalty = fit_balanced_offsets(logits, val_labels)
        offset = b * t  # softmax(z / T + b) == softmax((z + b T) / T): the record's form
        extra = {"offset_penalty": penalty}
    else:
        t = fit_temperature(logits, val_labels)
    record = {
        "method": method,
        "temperature": t,
        "logit_offset": None if offset is None else offset.tolist(),
        **extra,
        "num_classes": int(logits.shape[1]),
        "checkpoint_step": step,
        "weights": weights,
        "fitted_on": "val",
        "n": int(len(val_labels)),
        "n_bins": N_BINS,
        "val_before": calibration_metrics(raw_val_probs, val_labels),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    record["val_after"] = calibration_metrics(apply_calibration(raw_val_probs, record), val_labels)
    return record


def save_calibration(run_dir: str | Path, record: dict[str, Any]) -> Path:
    path = Path(run_dir) / CALIBRATION_FILE
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(record, indent=1))
    tmp.replace(path)
    return path


def load_calibration(run_dir: str | Path) -> dict[str, Any] | None:
    """The saved record, or None if the run has none (or it is unreadable)."""
    path = Path(run_dir) / CALIBRATION_FILE
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
        t = float(record["sigma_scale" if record.get("method") in REGRESSION_METHODS else "temperature"])
    except (ValueError, KeyError, TypeError, AttributeError):
        return None
    return record if math.isfinite(t) and t > 0 else None


def calibration_for(run_dir: str | Path, step: Any, weights: str = "raw") -> tuple[dict[str, Any] | None, str]:
    """The saved record if it was fitted for checkpoint ``step`` (and ``weights``), plus a one-line note."""
    record = load_calibration(run_dir)
    if record is None:
        return None, f"no {CALIBRATION_FILE}: probabilities are not calibrated"
    fitted = (record.get("checkpoint_step"), record.get("weights", "raw"))
    if fitted != (step, weights):
        return None, (
            f"{CALIBRATION_FILE} was fitted for checkpoint {fitted[0]} ({fitted[1]} weights), not {step} "
            f"({weights} weights): probabilities are not calibrated (run `astroflax calibrate`)"
        )
    return record, describe(record, step)


def describe(record: dict[str, Any], step: Any) -> str:
    if record.get("method") in REGRESSION_METHODS:
        return (f"sigma scaling s = {float(record['sigma_scale']):.4g} (fitted on the val PIT for checkpoint {step})")
    prior = {"prior_temperature": " after undoing the class weighting",
             "balanced_offsets": " with class offsets, fitted to the class-balanced log-loss"}.get(record.get("method"), "")
    return f"temperature scaling T = {float(record['temperature']):.4g}{prior} (fitted on val for checkpoint {step})"


def temperature_for(run_dir: str | Path, step: Any, weights: str = "raw") -> tuple[float | None, str]:
    """The saved ``T`` if fitted for checkpoint ``step`` (and ``weights``), plus a one-line note."""
    record, note = calibration_for(run_dir, step, weights)
    if record is not None and "temperature" not in record:
        return None, note
    return (None if record is None else float(record["temperature"])), note


def calibrate_run(run: Any, dataset: Any = None, val_probs: np.ndarray | None = None,
                  weights: str = "raw", method: str = "temperature") -> dict[str, Any] | None:
    """Fit a calibration for a loaded run (or ensemble) on its validation split.

    ``run`` needs ``task``, ``cfg``, ``info``, ``step``, ``run_dir`` and ``predict(arrays)``.
    Classifiers get ``method`` (temperature scaling), Gaussian-mixture regressors ``sigma_scale``.
    Returns the record (save it with :func:`save_calibration`), or None when neither applies or
    the validation split has no labels / targets.
    """
    if not applies_to(run.task):
        return None
    if dataset is None:
        dataset = load_dataset(run.cfg)
    val = dataset.split("val")
    target = target_name(run.task, run.info)
    if target not in val or len(val[target]) == 0:
        return None
    if val_probs is None:
        val_probs = run.predict(val)
    if not run.task.is_classifier:
        method = method if method in REGRESSION_METHODS else "sigma_scale"
        return fit_regression_calibration(val_probs, val[target], run.step, weights, method)
    val_probs = run.task.class_probs(val_probs, run.info)
    return fit_calibration(val_probs, val["label"], run.step, weights, method, run.info.get("class_weights"))
