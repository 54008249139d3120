"""Uncertainty for any model: MC-dropout and deep ensembles, judged by the same metrics.

Both produce several predictions of the same inputs (stochastic forward passes, or members
trained from different seeds) that are combined into one predictive distribution:

- classifiers (class probabilities, recognised by :func:`calibration.is_probability_output`):
  the mean of the probabilities;
- regression tasks built on :mod:`astroflax.tasks.regress` (packed Gaussian mixtures
  ``[weights | means | sigmas]``): the equal-weight mixture of all predictions, i.e. their
  components concatenated with weights divided by the number of predictions. Its mean is the
  mean of the means and its variance is mean(var + mean^2) - mean^2 (law of total variance),
  and PIT / CRPS / coverage are computed on the exact mixture;
- any other output: register a combiner with :func:`register_combiner` (task name ->
  ``fn(list_of_outputs, info) -> outputs``) from the task's module.

MC-dropout needs ``Task.predict_stochastic_fn(model, batch, rng)`` (dropout active, otherwise
like ``predict_fn``); tasks without it cannot use ``--mc-dropout``.

A deep ensemble lives in one directory: ``member-<i>/`` are ordinary runs trained with seeds
``seed + i`` and ``ensemble.json`` lists them. ``evaluate`` and ``predict`` accept it in place
of a run directory (see :func:`open_run`).
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from astroflax.errors import CheckpointError, ConfigError
from astroflax.evaluate.calibration import calibration_metrics, class_probs, is_probability_output

ENSEMBLE_FILE = "ensemble.json"
Combiner = Callable[[list[np.ndarray], dict], np.ndarray]
_COMBINERS: dict[str, Combiner] = {}


# ---------------------------------------------------------------------------- combining


def register_combiner(task_name: str, fn: Combiner) -> None:
    """Tell ensembles / MC-dropout how to combine several outputs of ``task_name``."""
    _COMBINERS[task_name] = fn


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
    if task.name in _COMBINERS:
        return _COMBINERS[task.name](outputs, info)
    if all(is_probability_output(o, info) for o in outputs):
        return mean_probabilities(outputs)
    if getattr(task.score, "__module__", "") == "astroflax.tasks.regress":
        return concat_packed_mixtures(outputs)
    raise ConfigError(
        f"task {task.name!r}: don't know how to combine its outputs for ensembles / MC-dropout; "
        "register a combiner with astroflax.evaluate.uncertainty.register_combiner"
    )


def judge(task: Any, info: dict, outputs: np.ndarray, arrays: dict) -> dict[str, Any]:
    """The task's validation scores plus, for classifiers, ECE / log-loss / accuracy."""
    scores = task.score(outputs, arrays, info)
    out = {k: float(v) for k, v in scores.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    probs = class_probs(outputs, info)
    if "label" in arrays and probs is not None:
        out.update(calibration_metrics(probs, arrays["label"]))
    return out


# ---------------------------------------------------------------------------- MC-dropout


def mc_dropout_outputs(run: Any, arrays: dict, passes: int, seed: int = 0,
                       batch_size: int | None = None) -> np.ndarray:
    """``passes`` stochastic predictions (dropout on) of every row: shape ``(passes, N, ...)``."""
    import jax
    from flax import nnx

    from astroflax.data.pipeline import eval_batches
    from astroflax.train.predict import round_up
    from astroflax.train.sharding import shard_batch

    if isinstance(run, EnsembleRun):
        raise ConfigError("--mc-dropout works on a single run, not on an ensemble directory")
    fn = getattr(run.task, "predict_stochastic_fn", None)
    if fn is None:
        raise ConfigError(f"--mc-dropout: task {run.task.name!r} has no stochastic prediction (predict_stochastic_fn)")
    if passes < 1:
        raise ConfigError(f"--mc-dropout {passes}: must be >= 1")
    graphdef = run.graphdef

    @jax.jit
    def step(params, model_state, batch, base_key, pass_idx, batch_idx):
        model = nnx.merge(graphdef, params, model_state)
        key = jax.random.fold_in(jax.random.fold_in(jax.random.wrap_key_data(base_key), pass_idx), batch_idx)
        return fn(model, batch, key)

    device_arrays = run.task.device_arrays(arrays)
    n = len(next(iter(device_arrays.values())))
    ndev = run.mesh.devices.size
    bs = round_up(min(batch_size or run.cfg.train.eval_batch_size, round_up(n, ndev)), ndev)
    base_key = jax.random.key_data(jax.random.key(seed))
    per_pass: list[list[Any]] = [[] for _ in range(passes)]
    for b, batch in enumerate(eval_batches(device_arrays, bs)):
        real = int(batch["_weight"].sum())
        sharded = shard_batch(batch, run.mesh)
        for i in range(passes):
            per_pass[i].append((step(run.state.params, run.state.model_state, sharded, base_key, i, b), real))
    return np.stack([np.concatenate([np.asarray(o)[:r] for o, r in chunks]) for chunks in per_pass])


def mc_dropout_predict(run: Any, arrays: dict, passes: int, seed: int = 0) -> np.ndarray:
    """The combined MC-dropout predictive distribution (see :func:`combine_outputs`)."""
    outs = mc_dropout_outputs(run, arrays, passes, seed)
    return combine_outputs(run.task, run.info, list(outs))


# ---------------------------------------------------------------------------- ensembles


@dataclasses.dataclass
class EnsembleRun:
    """Members of a deep ensemble, loaded; quacks like :class:`astroflax.runs.LoadedRun` for prediction."""

    run_dir: Path
    names: list[str]
    members: list[Any]

    @property
    def task(self):
        return self.members[0].task

    @property
    def cfg(self):
        return self.members[0].cfg

    @property
    def info(self) -> dict:
        return self.members[0].info

    @property
    def step(self) -> list[int]:
        """The checkpoint step of every member (what a calibration was fitted for)."""
        return [int(m.step) for m in self.members]

    def member_outputs(self, arrays: dict) -> list[np.ndarray]:
        return [m.predict(arrays) for m in self.members]

    def combine(self, outputs: list[np.ndarray]) -> np.ndarray:
        return combine_outputs(self.task, self.info, outputs)

    def predict(self, arrays: dict) -> np.ndarray:
        return self.combine(self.member_outputs(arrays))


def is_ensemble_dir(run_dir: str | Path) -> bool:
    return (Path(run_dir) / ENSEMBLE_FILE).is_file()


def read_ensemble(run_dir: str | Path) -> dict[str, Any]:
    path = Path(run_dir) / ENSEMBLE_FILE
    try:
        spec = json.loads(path.read_text())
        members = [str(m) for m in spec["members"]]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{path}: not a valid ensemble description ({exc})") from None
    if not members:
        raise CheckpointError(f"{path}: 'members' is empty")
    for m in members:
        if Path(m).is_absolute() or ".." in Path(m).parts:
            raise CheckpointError(f"{path}: member {m!r} must be a sub-directory name of the ensemble")
    return {**spec, "members": members}


def _load_single(run_dir: Path, which: str | int, weights: str) -> Any:
    from astroflax.runs import load_run

    return load_run(run_dir, which, weights)


def load_ensemble(run_dir: str | Path, which: str | int = "best", weights: str = "raw") -> EnsembleRun:
    run_dir = Path(run_dir)
    spec = read_ensemble(run_dir)
    members = [_load_single(run_dir / m, which, weights) for m in spec["members"]]
    names0 = members[0].info.get("class_names")
    for name, m in zip(spec["members"], members):
        if m.task.name != members[0].task.name or m.info.get("class_names") != names0:
            raise CheckpointError(f"ensemble {run_dir}: member {name} is for another task or other classes")
    return EnsembleRun(run_dir, spec["members"], members)


def open_run(run_dir: str | Path, which: str | int = "best", weights: str = "raw") -> Any:
    """A run directory or an ensemble directory, loaded for prediction.

    ``weights`` (raw, or averaged weights such as ema) is passed on to ``load_run``.
    """
    if is_ensemble_dir(run_dir):
        return load_ensemble(run_dir, which, weights)
    return _load_single(Path(run_dir), which, weights)


def train_ensemble(
    task: str,
    members: int,
    run_dir: Path,
    preset: str | None = None,
    config_file: Path | None = None,
    overrides: list[str] | None = None,
    console: Any = None,
) -> dict[str, Any]:
    """Train ``members`` runs with seeds ``seed + i`` under ``run_dir/member-i``; re-running resumes.

    Returns the ensemble description (also written to ``run_dir/ensemble.json``).
    """
    from astroflax.config import build_config
    from astroflax.train.loop import train_and_evaluate

    if members < 1:
        raise ConfigError(f"--members {members}: must be >= 1")
    run_dir = Path(run_dir)
    if (run_dir / "config.yaml").exists():
        raise ConfigError(f"--run-dir {run_dir} is a single run directory; choose another directory for an ensemble")
    overrides = list(overrides or [])
    base_cfg = build_config(task, preset, config_file, overrides)
    seed = int(base_cfg.train.seed)
    names = [f"member-{i}" for i in range(members)]
    spec = {
        "task": base_cfg.task,
        "preset": base_cfg.preset,
        "members": names,
        "seeds": [seed + i for i in range(members)],
        "overrides": overrides,
        "config_file": str(config_file) if config_file else None,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    if is_ensemble_dir(run_dir):
        old = read_ensemble(run_dir)
        if old.get("task") != spec["task"] or (old.get("seeds") or [seed])[0] != seed:
            raise ConfigError(f"--run-dir {run_dir} holds another ensemble (task or seeds differ); choose another directory")
        spec["created"] = old.get("created", spec["created"])
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / ENSEMBLE_FILE).write_text(json.dumps(spec, indent=1))
    results = []
    for i, name in enumerate(names):
        cfg = build_config(task, preset, config_file, [*overrides, f"train.seed={seed + i}"],
                           extra={"run_dir": str(run_dir / name)})
        if console is not None:
            console.print(f"[bold]Ensemble member {i + 1}/{members}[/] (seed {seed + i}) -> {run_dir / name}")
        result = train_and_evaluate(cfg, resume=None, console=console)
        if result.stopped_by and result.stopped_by.startswith("SIG"):
            spec["interrupted"] = {"member": name, "signal": result.stopped_by}
            return spec
        results.append({"member": name, "step": result.step, "best_step": result.best_step,
                        "best_value": result.best_value, "wall_time": result.wall_time})
    spec["members_trained"] = results
    (run_dir / ENSEMBLE_FILE).write_text(json.dumps(spec, indent=1, default=float))
    return spec


# ---------------------------------------------------------------------------- prediction


def predict_outputs(run: Any, arrays: dict, mc_dropout: int = 0, weights: str = "raw",
                    calibrate: bool = True) -> tuple[np.ndarray, str | None]:
    """What ``predict`` writes: temperature-scaled probabilities when the run has a matching
    ``calibration.json``, or the MC-dropout average (never rescaled: ``T`` was fitted for the
    deterministic model). Returns the outputs and a one-line note for the user (or None).
    """
    from astroflax.evaluate.calibration import apply_calibration, calibration_for

    if mc_dropout:
        outputs = mc_dropout_predict(run, arrays, mc_dropout)
        return outputs, f"MC-dropout: average of {mc_dropout} stochastic passes (not temperature-scaled)"
    outputs = run.predict(arrays)
    if not calibrate or not is_probability_output(outputs, run.info):
        return outputs, None
    record, note = calibration_for(run.run_dir, run.step, weights)
    if record is not None:
        outputs = apply_calibration(outputs, record)
    return outputs, note
