"""What a task is: the contract between the model zoo and the general trainer.

A task bundles everything the trainer must not know about: how to load its data, which model
to build, its loss, what it predicts and how its predictions are scored. The trainer only sees
arrays, a Flax NNX module and these functions, so adding a task never changes the trainer.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Protocol

import jax
import numpy as np
from flax import nnx
from pydantic import BaseModel

Batch = dict[str, jax.Array]
Arrays = dict[str, np.ndarray]


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


class LossFn(Protocol):
    def __call__(
        self, model: nnx.Module, batch: Batch, rng: jax.Array, train: bool
    ) -> tuple[jax.Array, dict[str, jax.Array]]: ...


@dataclasses.dataclass(frozen=True)
class Task:
    """A registered task. See ``astroflax/tasks/transients.py`` for a complete example.

    - ``load_data(cfg)`` -> :class:`Dataset` with at least ``train`` and ``val`` splits.
    - ``build_model(cfg, info, rngs)`` -> an NNX module.
    - ``loss_fn(model, batch, rng, train)`` -> (scalar loss, dict of scalar metrics); pure, jitted.
      Arrays in the batch whose name starts with ``_`` are bookkeeping the loss must ignore,
      except ``_weight`` (1 for real examples, 0 for padding added to fill the last eval batch) and
      ``_step`` (the optimiser step, a scalar, present in training only).
    - ``predict_fn(model, batch)`` -> array of per-example outputs (eval mode); pure, jitted.
    - ``score(outputs, split_arrays, info)`` -> JSON-able metrics dict on the host; must contain
      ``loss``. Validation metrics are logged as ``val_<key>`` for every scalar key.
    - ``report(outputs, split_arrays, info, out_dir)`` -> full evaluation dict (+ figures).
    - ``load_inputs(cfg, info, path)`` -> (arrays, ids) for ``predict`` on user data.
    - ``format_predictions(outputs, ids, info)`` -> list of row dicts for the predictions file.
    """

    name: str
    description: str
    data_config: type[BaseModel]
    model_config: type[BaseModel]
    defaults: dict[str, Any]
    presets: dict[str, dict[str, Any]]
    load_data: Callable[..., Dataset]
    build_model: Callable[..., nnx.Module]
    loss_fn: LossFn
    predict_fn: Callable[[nnx.Module, Batch], jax.Array]
    score: Callable[..., dict[str, Any]]
    report: Callable[..., dict[str, Any]]
    load_inputs: Callable[..., tuple[Arrays, np.ndarray]]
    format_predictions: Callable[..., list[dict[str, Any]]]
    host_keys: tuple[str, ...] = ("object_id",)  # arrays kept on the host (ids), never sent to devices
    # Optional ``(model, batch, rng) -> outputs`` like predict_fn but with dropout on (MC-dropout).
    predict_stochastic_fn: Callable[[nnx.Module, Batch, jax.Array], jax.Array] | None = None

    def device_arrays(self, arrays: Arrays) -> Arrays:
        return {k: v for k, v in arrays.items() if k not in self.host_keys}
