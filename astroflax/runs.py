"""Open a finished (or interrupted) run: its config, data facts, model and a chosen checkpoint."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import nnx

from astroflax.config import ExperimentConfig, finalize_config, load_yaml_file
from astroflax.errors import CheckpointError
from astroflax.runtime import enable_compile_cache
from astroflax.tasks import Task, get_task
from astroflax.train.checkpoint import Checkpointer, abstract_like
from astroflax.train.loop import total_steps_for
from astroflax.train.optim import build_optimizer
from astroflax.train.predict import predict_arrays
from astroflax.train.sharding import make_mesh, replicate
from astroflax.train.state import TrainState, create_state
from astroflax.train.step import make_predict_step


@dataclasses.dataclass
class LoadedRun:
    run_dir: Path
    cfg: ExperimentConfig
    task: Task
    info: dict[str, Any]
    step: int
    state: TrainState
    graphdef: nnx.GraphDef
    mesh: Any

    def predict(self, arrays: dict[str, np.ndarray], batch_size: int | None = None) -> np.ndarray:
        fn = jax.jit(make_predict_step(self.graphdef, self.task.predict_fn))
        return predict_arrays(
            fn,
            self.state.params,
            self.state.model_state,
            self.task.device_arrays(arrays),
            batch_size or self.cfg.train.eval_batch_size,
            self.mesh,
        )


def read_config(run_dir: Path) -> ExperimentConfig:
    path = run_dir / "config.yaml"
    if not run_dir.is_dir():
        raise CheckpointError(f"run directory {run_dir} does not exist")
    if not path.is_file():
        raise CheckpointError(f"{run_dir} is not an astroflax run directory (no config.yaml)")
    return finalize_config(load_yaml_file(path))


def load_run(run_dir: str | Path, which: str | int = "best", weights: str = "raw") -> LoadedRun:
    """Rebuild the model of ``run_dir`` and restore checkpoint ``which`` (best, latest or a step).

    ``weights``: ``raw`` (the trained parameters), ``ema`` or ``swa`` (averages kept in the
    optimiser state when ``optim.ema`` / ``optim.swa`` were on; see train/averaging.py).
    """
    enable_compile_cache()
    run_dir = Path(run_dir)
    cfg = read_config(run_dir)
    task = get_task(cfg.task)
    ckpt = Checkpointer(run_dir / "checkpoints", read_only=True)
    step = ckpt.resolve_step(which, cfg.checkpoint.metric, cfg.checkpoint.mode)
    meta = ckpt.read_meta(step)
    info = meta["info"]
    model = task.build_model(cfg, info, nnx.Rngs(params=cfg.train.seed))
    num_train = int(info.get("split_sizes", {}).get("train", cfg.train.batch_size))
    tx, _ = build_optimizer(cfg.optim, cfg.schedule, total_steps_for(cfg, num_train))
    graphdef, state = create_state(model, tx, cfg.train.seed)
    mesh = make_mesh()
    state = replicate(state, mesh)
    state, _, _ = ckpt.restore(step, abstract_like(state))
    if weights != "raw":  # parameter averaging: evaluate/predict with the EMA or SWA weights
        from astroflax.train.averaging import select_weights

        state = select_weights(state, weights, cfg, task, graphdef, mesh)
    return LoadedRun(run_dir, cfg, task, info, step, state, graphdef, mesh)


def write_predictions(path: Path, rows: list[dict[str, Any]]) -> Path:
    """One CSV row per object, written atomically: never a half-written predictions file."""
    import csv
    import os

    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]) if rows else ["object_id"])
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)
    return path


def write_json(path: Path, obj: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=1, default=float))
    return path
