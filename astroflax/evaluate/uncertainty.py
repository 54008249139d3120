"""Uncertainty for any model: MC-dropout and deep ensembles, judged by the same metrics.

Both produce several predictions of the same inputs (stochastic forward passes, or members
trained from different seeds), combined into one predictive distribution as the task's
declared kind says:

- ``classifier``: the mean of the outputs (class probabilities, and any extra columns);
- ``regressor`` with a ``gaussian_mixture`` output (packed ``[weights | means | sigmas]``):
  the equal-weight mixture of all predictions, i.e. their components concatenated with
  weights divided by the number of predictions. Its mean is the mean of the means and its
  variance is mean(var + mean^2) - mean^2 (law of total variance); PIT / CRPS / coverage are
  computed on the exact mixture;
- ``generative``: the task's own ``combine``.

MC-dropout needs ``Task.make_predict_stochastic_fn`` (dropout active, otherwise like predict).
Ensembles themselves (directory format, loading, training) live in :mod:`astroflax.ensembles`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from astroflax.errors import ConfigError
from astroflax.evaluate.calibration import calibration_metrics


# ---------------------------------------------------------------------------- combining


def mean_probabilities(outputs: list[np.ndarray]) -> np.ndarray:
    """Average class probabilities (the ensemble's predictive distribution)."""
    stacked = np.stack([np.asarray(o, np.float64) for o in outputs])
    return stacked.mean(axis=0).astype(np.asarray(outputs[0]).dtype)


def gaussian_mixture_moments(means: np.ndarray, variances: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and variance of an equal-weight mixture of Gaussians along axis 0 (members)."""
    means = np.asarray(means, np.float64)
    mean = means.mean(axis=0)
    var = (np.asarray(variances, np.float64) + means**2).mean(axis=0) - mean**2
    return mean, np.maximum(var, 0.0)


def concat_packed_mixtures(outputs: list[np.ndarray]) -> np.ndarray:
    """Equal-weight mixture of packed mixtures ``(N, 3K_i)`` -> ``(N, 3 sum K_i)``."""
    ws, ms, ss = [], [], []
    for o in outputs:
        o = np.asarray(o)
        k = o.shape[1] // 3
        if o.ndim != 2 or o.shape[1] != 3 * k or k < 1:
            raise ValueError(f"expected (N, 3K) packed mixture outputs, got shape {o.shape}")
        ws.append(o[:, :k] / len(outputs))
        ms.append(o[:, k:2 * k])
        ss.append(o[:, 2 * k:])
    return np.concatenate(ws + ms + ss, axis=1)


def combine_outputs(task: Any, info: dict, outputs: list[np.ndarray]) -> np.ndarray:
    """One predictive distribution from several predictions of the same examples."""
    if not outputs:
        raise ValueError("nothing to combine")
    if task.kind == "classifier":
        return mean_probabilities(outputs)
    if task.kind == "regressor" and task.distribution == "gaussian_mixture":
        return concat_packed_mixtures(outputs)
    if task.combine is not None:
        return task.combine(outputs, info)
    raise ConfigError(f"task {task.name!r} ({task.kind}) declares no way to combine several predictions "
                      "(Task.combine), so ensembles and MC-dropout do not apply to it")


def judge(run: Any, outputs: np.ndarray, arrays: dict) -> dict[str, Any]:
    """The task's scores of ``outputs`` of a loaded run plus, for classifiers, ECE / log-loss / accuracy."""
    task, info = run.task, run.info
    scores = task.scorer(run.cfg, info)(outputs, arrays, info)
    out = {k: float(v) for k, v in scores.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    probs = task.class_probs(outputs, info)
    if "label" in arrays and probs is not None:
        out.update(calibration_metrics(probs, arrays["label"]))
    return out


# ---------------------------------------------------------------------------- MC-dropout


def mc_dropout_outputs(run: Any, arrays: dict, passes: int, seed: int = 0,
                       batch_size: int | None = None) -> np.ndarray:
    """``passes`` stochastic predictions (dropout on) of every row: shape ``(passes, N, ...)``.

    Pass ``i`` of batch ``b`` uses the key ``fold_in(fold_in(key(seed), i), b)``: reproducible.
    """
    import jax
    from flax import nnx

    from astroflax.runs import LoadedRun
    from astroflax.train.predict import predict_arrays

    if not isinstance(run, LoadedRun):
        raise ConfigError("--mc-dropout works on a single run, not on an ensemble directory")
    make = run.task.make_predict_stochastic_fn
    fn = make(run.cfg, run.info) if make is not None else None
    if fn is None:
        raise ConfigError(f"--mc-dropout: task {run.task.name!r} has no stochastic prediction for this run "
                          "(its model has no dropout, or batch norm would make passes depend on the batch)")
    if passes < 1:
        raise ConfigError(f"--mc-dropout {passes}: must be >= 1")
    graphdef = run.graphdef

    @jax.jit
    def step(params, model_state, batch, base_key, pass_idx, batch_idx):
        model = nnx.merge(graphdef, params, model_state)
        key = jax.random.fold_in(jax.random.fold_in(jax.random.wrap_key_data(base_key), pass_idx), batch_idx)
        return fn(model, batch, key)

    device_arrays = run.task.device_arrays(arrays)
    base_key = jax.random.key_data(jax.random.key(seed))
    bs = batch_size or run.cfg.train.eval_batch_size
    return np.stack([predict_arrays(step, run.state.params, run.state.model_state, device_arrays, bs, run.mesh,
                                    base_key, i) for i in range(passes)])


def mc_dropout_predict(run: Any, arrays: dict, passes: int, seed: int = 0) -> np.ndarray:
    """The combined MC-dropout predictive distribution (see :func:`combine_outputs`)."""
    outs = mc_dropout_outputs(run, arrays, passes, seed)
    return combine_outputs(run.task, run.info, list(outs))


# ---------------------------------------------------------------------------- prediction


def predict_outputs(run: Any, arrays: dict, mc_dropout: int = 0, weights: str = "raw",
                    calibrate: bool = True) -> tuple[np.ndarray, str | None]:
    """What ``predict`` writes: temperature-scaled probabilities (or sigma-scaled mixtures) when
    the run has a matching ``calibration.json``, or the MC-dropout average (never rescaled: ``T`` was fitted for the
    deterministic model). Returns the outputs and a one-line note for the user (or None).
    """
    from astroflax.evaluate.calibration import applies_to, apply_calibration, calibration_for

    if mc_dropout:
        outputs = mc_dropout_predict(run, arrays, mc_dropout)
        return outputs, f"MC-dropout: average of {mc_dropout} stochastic passes (not temperature-scaled)"
    outputs = run.predict(arrays)
    if not calibrate or not applies_to(run.task):
        return outputs, None
    record, note = calibration_for(run.run_dir, run.step, weights)
    if record is not None:
        outputs = apply_calibration(outputs, record)
    return outputs, note
