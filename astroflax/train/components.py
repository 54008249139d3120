"""Build everything a run needs from its config, once: shared by training, ``load_run``,
diagnostics and benchmarks, so all of them see the same model, optimiser and functions."""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import optax
from flax import nnx

from astroflax.config import ExperimentConfig
from astroflax.data.store import load_dataset
from astroflax.tasks import Task, get_task
from astroflax.tasks.base import Dataset, LossFn, PredictFn
from astroflax.train.optim import build_optimizer
from astroflax.train.sharding import check_divisible, make_mesh, param_sharding, shard_state
from astroflax.train.state import TrainState, create_state


@dataclasses.dataclass
class Components:
    """The parts of a run. ``dataset`` is None when built from a checkpoint's saved ``info``."""

    cfg: ExperimentConfig
    task: Task
    info: dict[str, Any]
    dataset: Dataset | None
    mesh: Any
    graphdef: nnx.GraphDef
    state: TrainState
    tx: optax.GradientTransformation
    schedule: optax.Schedule
    total_steps: int
    loss_fn: LossFn
    predict_fn: PredictFn


def total_steps_for(cfg: ExperimentConfig, num_train: int) -> int:
    if cfg.train.steps is not None:
        return cfg.train.steps
    return max(1, math.ceil(cfg.train.epochs * num_train / cfg.train.batch_size))


def num_examples(dataset: Dataset | None, info: dict, split: str = "train") -> int | None:
    if dataset is not None:
        from astroflax.data.store import split_rows

        return split_rows(dataset.split(split))
    size = (info.get("split_sizes") or {}).get(split)
    return int(size) if size is not None else None


def build_components(
    cfg: ExperimentConfig,
    *,
    dataset: Dataset | None = None,
    info: dict[str, Any] | None = None,
    init_params: Callable[[Any], Any] | None = None,
    mesh: Any = None,
) -> Components:
    """Data (unless ``info`` is given: a checkpoint's data facts), model, optimiser, loss and
    predict functions, and the train state placed on the mesh: replicated, or split over the
    ``data`` axis with ``train.param_sharding: fsdp``.

    ``init_params(state) -> state`` (fine-tuning) replaces the freshly initialised parameters
    and batch statistics before the optimiser state is created.
    """
    task = get_task(cfg.task)
    mesh = mesh if mesh is not None else make_mesh()
    if info is None:  # training: the global batch is split over the devices
        check_divisible(cfg.train.batch_size, mesh, "train.batch_size")
        dataset = dataset if dataset is not None else load_dataset(cfg)
        info = dataset.info
    num_train = num_examples(dataset, info) or cfg.train.batch_size
    total_steps = total_steps_for(cfg, num_train)

    model = task.build_model(cfg, info, nnx.Rngs(params=cfg.train.seed))
    if init_params is not None:
        nnx.update(model, init_params(nnx.state(model, nnx.Any(nnx.Param, nnx.BatchStat))))
    tx, schedule = build_optimizer(cfg.optim, cfg.schedule, total_steps)
    graphdef, state = create_state(model, tx, cfg.train.seed)
    return Components(
        cfg=cfg, task=task, info=info, dataset=dataset, mesh=mesh, graphdef=graphdef,
        state=shard_state(state, mesh, param_sharding(cfg)), tx=tx, schedule=schedule, total_steps=total_steps,
        loss_fn=task.make_loss_fn(cfg, info), predict_fn=task.make_predict_fn(cfg, info),
    )
