"""What a task is: the contract between the model zoo and the general trainer.

A task *declares* what it is (its ``kind``: a classifier, a regressor with a named output
distribution, or a generative model) and the columns of its outputs. Everything downstream
(calibration, ensembles, MC-dropout, the deployment checklist, export, reports) reads that
declaration instead of guessing from the shape of the outputs.

The trainer only sees arrays, a Flax NNX module and the functions a task builds *from the
config*: ``make_loss_fn(cfg, info)`` and ``make_predict_fn(cfg, info)`` bind every setting
once (closures / ``functools.partial``, as levanter binds its loss), so no setting travels on
the model object or in ``info``. The builders in :mod:`astroflax.tasks.builders` fill in the
common parts; ``docs/adding_a_task.md`` shows a complete task in three small files.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Literal, Protocol

import jax
import numpy as np
from flax import nnx
from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:  # type hints only: the config module imports the task registry
    from astroflax.config import ExperimentConfig

Batch = dict[str, jax.Array]
Arrays = dict[str, np.ndarray]
Kind = Literal["classifier", "regressor", "generative"]
KINDS: tuple[str, ...] = ("classifier", "regressor", "generative")
# Output distributions a regressor may declare; each has a combiner for ensembles / MC-dropout.
DISTRIBUTIONS: tuple[str, ...] = ("gaussian_mixture",)


@dataclasses.dataclass
class Dataset:
    """All splits of a task's data as host arrays (first axis = example), plus facts about them.

    ``info`` is JSON-serialisable and saved with every checkpoint, so a run can be evaluated
    or used for prediction later without reloading the training data (class names, input
    sizes, normalisation constants). ``version`` changes whenever the content changes; the
    data-iterator state in a checkpoint is only valid for the same version.
    """

    splits: dict[str, Arrays]
    info: dict[str, Any]
    version: str

    def split(self, name: str) -> Arrays:
        if name not in self.splits:
            from astroflax.errors import ConfigError

            raise ConfigError(f"split {name!r} does not exist; choose from {sorted(self.splits)}")
        return self.splits[name]


class Section(BaseModel):
    """Base of a task's ``data`` / ``model`` config sections: strict, and readable like a mapping."""

    model_config = ConfigDict(extra="forbid")

    def __getitem__(self, key: str) -> Any:
        if key not in type(self).model_fields:
            raise KeyError(key)
        return getattr(self, key)


class LossFn(Protocol):
    def __call__(
        self, model: nnx.Module, batch: Batch, rng: jax.Array, train: bool
    ) -> tuple[jax.Array, dict[str, jax.Array]]: ...


PredictFn = Callable[[nnx.Module, Batch], jax.Array]
StochasticPredictFn = Callable[[nnx.Module, Batch, jax.Array], jax.Array]
Combiner = Callable[[list[np.ndarray], dict], np.ndarray]
ScoreFn = Callable[[np.ndarray, Arrays, dict], dict[str, Any]]


@dataclasses.dataclass(frozen=True)
class Task:
    """A task. Build one with :func:`astroflax.tasks.builders.classification_task`,
    :func:`~astroflax.tasks.builders.regression_task` or :func:`~astroflax.tasks.builders.task`.

    Declaration:

    - ``kind``: ``classifier`` (the first ``num_classes`` output columns are class
      probabilities, ``info["class_names"]`` names them), ``regressor`` (``distribution`` names
      the output distribution, e.g. ``gaussian_mixture``: packed ``[weights | means | sigmas]``),
      or ``generative``.
    - ``output_columns(cfg, info)``: the name of every output column, in order.
    - ``normalisation_keys``: the ``info`` keys holding preprocessing constants (for exports).
    - ``targets``: what the test-split figures should reach; the HTML report opens with them.

    Functions (``cfg`` is the resolved :class:`~astroflax.config.ExperimentConfig`; its ``data``
    and ``model`` are instances of ``data_config`` / ``model_config``):

    - ``load_data(cfg)`` -> :class:`Dataset` with at least ``train`` and ``val`` splits.
    - ``build_model(cfg, info, rngs)`` -> an NNX module (no settings attached to it).
    - ``make_loss_fn(cfg, info)`` -> ``loss_fn(model, batch, rng, train)`` -> (scalar loss,
      dict of scalar metrics); pure, jitted. Arrays in the batch whose name starts with ``_``
      are bookkeeping: ``_weight`` (1 for real examples, 0 for eval padding), ``_step`` (the
      optimiser step, training only) and ``_label_smoothing`` (when configured).
    - ``make_predict_fn(cfg, info)`` -> ``predict_fn(model, batch)`` -> per-example outputs.
    - ``make_predict_stochastic_fn(cfg, info)`` -> ``(model, batch, rng) -> outputs`` with
      dropout on (MC-dropout), or None for a config without dropout; the field itself is None
      for models where MC-dropout never applies (e.g. batch norm).
    - ``score(outputs, split_arrays, info)`` -> JSON-able metrics; must contain ``loss``.
      Validation metrics are logged as ``val_<key>``. A score that depends on config settings
      (e.g. a loss weight) is built instead by ``make_score_fn(cfg, info)``; consumers call
      :meth:`Task.scorer`.
    - ``report(outputs, split_arrays, info, out_dir, run)`` -> the full evaluation dict (+
      figures under ``out_dir``); ``run`` is the :class:`~astroflax.runs.LoadedRun` (or
      :class:`~astroflax.ensembles.EnsembleRun`) being evaluated, or None, for reports that run
      the model on more inputs (``run.predict(arrays)``) or read its config (``run.cfg``).
    - ``load_inputs(cfg, info, path)`` -> (arrays, ids) for ``predict`` on user files.
    - ``input_batches(cfg, info, path, size)`` (optional) -> an iterator of (arrays, ids) over
      at most ``size`` inputs at a time, exactly as ``load_inputs`` would give them, or None when
      this input is read whole; ``predict`` then holds one batch of a folder in memory.
    - ``format_predictions(outputs, ids, info)`` -> one dict per row of the predictions file.
    - ``combine(outputs_list, info)`` (generative tasks only): one output from several
      predictions of the same rows (ensembles, MC-dropout).
    """

    name: str
    description: str
    kind: Kind
    data_config: type[BaseModel]
    model_config: type[BaseModel]
    presets: dict[str, dict[str, Any]]
    load_data: Callable[["ExperimentConfig"], Dataset]
    build_model: Callable[..., nnx.Module]
    make_loss_fn: Callable[["ExperimentConfig", dict], LossFn]
    make_predict_fn: Callable[["ExperimentConfig", dict], PredictFn]
    report: Callable[..., dict[str, Any]]
    load_inputs: Callable[..., tuple[Arrays, np.ndarray]]
    format_predictions: Callable[..., list[dict[str, Any]]]
    output_columns: Callable[["ExperimentConfig", dict], list[str]]
    distribution: str | None = None
    score: ScoreFn | None = None
    make_score_fn: Callable[["ExperimentConfig", dict], ScoreFn] | None = None
    make_predict_stochastic_fn: Callable[["ExperimentConfig", dict], StochasticPredictFn] | None = None
    combine: Combiner | None = None
    input_batches: Callable[..., Iterator[tuple[Arrays, np.ndarray]] | None] | None = None
    host_keys: tuple[str, ...] = ("object_id",)  # arrays kept on the host (ids), never sent to devices
    # ``info`` keys of the preprocessing constants (normalisation means, scales...) an export lists.
    normalisation_keys: tuple[str, ...] = ()
    # Test-split targets the report checks: evaluation key -> (">=" | "<=", value) or
    # ("between", (lo, hi)), e.g. {"sigma_nmad": ("<=", 0.02)}. Keys are those of ``report``'s
    # output (dotted for nested dicts).
    targets: dict[str, tuple[str, Any]] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"task {self.name!r}: kind must be one of {KINDS}, got {self.kind!r}")
        if self.kind == "regressor" and self.distribution not in DISTRIBUTIONS:
            raise ValueError(f"task {self.name!r}: a regressor declares distribution in {DISTRIBUTIONS}")
        if self.kind != "regressor" and self.distribution is not None:
            raise ValueError(f"task {self.name!r}: only regressors declare an output distribution")
        if (self.score is None) == (self.make_score_fn is None):
            raise ValueError(f"task {self.name!r}: give exactly one of score and make_score_fn")
        for key, (op, _) in self.targets.items():
            if op not in (">=", "<=", "between"):
                raise ValueError(f"task {self.name!r}: target {key!r} needs '>=', '<=' or 'between', got {op!r}")

    @property
    def is_classifier(self) -> bool:
        return self.kind == "classifier"

    def scorer(self, cfg: "ExperimentConfig", info: dict) -> ScoreFn:
        """``(outputs, split_arrays, info) -> metrics`` for this config."""
        return self.make_score_fn(cfg, info) if self.make_score_fn is not None else self.score

    def target_met(self, key: str, value: float) -> bool | None:
        """Whether ``value`` of evaluation key ``key`` meets the task's target (None: no target)."""
        if key not in self.targets:
            return None
        op, goal = self.targets[key]
        if op == "between":
            return goal[0] <= value <= goal[1]
        return value >= goal if op == ">=" else value <= goal

    def device_arrays(self, arrays: Arrays) -> Arrays:
        return {k: v for k, v in arrays.items() if k not in self.host_keys}

    def class_probs(self, outputs: np.ndarray, info: dict) -> np.ndarray | None:
        """A classifier's class-probability columns (the first ``num_classes``); None otherwise."""
        if not self.is_classifier:
            return None
        return np.asarray(outputs)[:, : len(info["class_names"])]


def load_presets(path: str | Path) -> dict[str, dict[str, Any]]:
    """Presets from a YAML file mapping preset name -> config diff against the defaults."""
    import yaml

    path = Path(path)
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise ValueError(f"{path}: expected a mapping of preset name -> config mapping")
    return data
