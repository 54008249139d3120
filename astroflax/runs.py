"""Open a finished (or interrupted) run: its config, data facts, model and a chosen checkpoint."""

from __future__ import annotations

import dataclasses
import functools
import json
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import nnx

from astroflax.config import ExperimentConfig, finalize_config, load_yaml_file
from astroflax.errors import CheckpointError
from astroflax.runtime import enable_compile_cache
from astroflax.tasks import Task
from astroflax.tasks.base import PredictFn
from astroflax.train.checkpoint import Checkpointer, DamagedCheckpoint, abstract_like
from astroflax.train.components import build_components
from astroflax.train.predict import predict_arrays
from astroflax.train.state import TrainState
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
    predict_fn: PredictFn

    @functools.cached_property
    def _compiled_predict(self):
        return jax.jit(make_predict_step(self.graphdef, self.predict_fn))

    def predict(self, arrays: dict[str, np.ndarray], batch_size: int | None = None) -> np.ndarray:
        """The model's outputs for every row of ``arrays`` (host arrays, as a split holds them)."""
        return predict_arrays(
            self._compiled_predict,
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

    The checkpoint is verified first (see ``Checkpointer.open``): for ``best`` and ``latest`` a
    damaged step is skipped with a warning, moved aside, and the next good one is used (or the
    backup directory's copy); an explicit step that is damaged is an error.

    ``weights``: ``raw`` (the trained parameters), ``ema`` or ``swa`` (averages kept in the
    optimiser state when ``optim.ema`` / ``optim.swa`` were on; see train/averaging.py).
    """
    enable_compile_cache()
    run_dir = Path(run_dir)
    cfg = read_config(run_dir)
    ckpt = Checkpointer(run_dir / "checkpoints", cfg.checkpoint, read_only=True)
    built: dict[str, Any] = {}

    def info_key(meta: dict) -> str:
        return json.dumps(meta.get("info"), sort_keys=True, default=str)

    def target(meta: dict) -> Any:  # the model of the step's own data facts (the same for every step of a run)
        if not isinstance(meta.get("info"), dict):
            raise DamagedCheckpoint(int(meta.get("step", -1)), ckpt.directory, "bad-meta",
                                    "its metadata has no 'info' (data facts) object")
        key = info_key(meta)
        if key not in built:
            built[key] = build_components(cfg, info=meta["info"])
        return abstract_like(built[key].state)

    restored = ckpt.open(which, target, cfg.checkpoint.metric, cfg.checkpoint.mode)
    c, state, step = built[info_key(restored.meta)], restored.state, restored.step
    if weights != "raw":  # parameter averaging: evaluate/predict with the EMA or SWA weights
        from astroflax.train.averaging import select_weights

        state = select_weights(state, weights, c)
    return LoadedRun(run_dir, cfg, c.task, c.info, step, state, c.graphdef, c.mesh, c.predict_fn)


def model_from_export(directory: str | Path) -> tuple[nnx.Module, Task, dict[str, Any], int]:
    """The NNX model of an export (e.g. a shipped pretrained model), for what needs the model's
    own methods rather than its exported prediction function (``astroflax sample``): the task's
    model built from the export's config and data facts, every array taken from its verified
    ``params.npz``. Returns (model, task, info, checkpoint step)."""
    from astroflax.finetune import export_params, match_params

    directory = Path(directory)
    arrays, manifest = export_params(directory)
    info = dict(manifest["preprocessing"]["info"])
    c = build_components(finalize_config(manifest["config"]), info=info)
    params, got = match_params(arrays, c.state.params)
    model_state, got_state = match_params(arrays, c.state.model_state)
    missing = [*got.new, *got_state.new]
    if missing:
        raise CheckpointError(f"{directory}: the export does not fit the model of its own config ({missing[0]})")
    return nnx.merge(c.graphdef, params, model_state), c.task, info, int(manifest["source"]["checkpoint_step"])


def write_predictions(path: Path, rows: list[dict[str, Any]]) -> Path:
    """One CSV row per object, written atomically: never a half-written predictions file, no
    ``<name>.tmp`` left behind when writing fails, and never a NaN/inf prediction (an error
    naming the row instead: the inputs were out of range or the checkpoint is damaged)."""
    with PredictionWriter(path) as out:
        out.write(rows)
    return Path(path)


class PredictionWriter:
    """:func:`write_predictions` in pieces (``predict`` of a folder, batch by batch): rows go to
    ``<name>.tmp``, which becomes ``<name>`` only when the ``with`` block ends without error."""

    def __init__(self, path: Path) -> None:
        from astroflax.errors import DataError

        self.path = Path(path)
        if self.path.is_dir():
            raise DataError(f"--output {self.path}: is a directory; expected the name of a CSV file to write")
        self.tmp = self.path.with_name(self.path.name + ".tmp")
        self.rows = 0
        self._fh = self._writer = None

    def __enter__(self) -> "PredictionWriter":
        return self

    def write(self, rows: list[dict[str, Any]]) -> None:
        import csv
        import math

        from astroflax.errors import DataError

        for i, row in enumerate(rows):
            bad = next((k for k, v in row.items() if isinstance(v, float) and not math.isfinite(v)), None)
            if bad is not None:
                first = next(iter(row))
                raise DataError(f"--output {self.path}: not written: the prediction for {first} {row[first]} (row "
                                f"{self.rows + i}) has {row[bad]} in column {bad!r}; check that object's input values")
        if self._fh is None:
            self._fh = self.tmp.open("w", newline="")
            self._writer = csv.DictWriter(self._fh, fieldnames=list(rows[0]) if rows else ["object_id"])
            self._writer.writeheader()
        self._writer.writerows(rows)
        self.rows += len(rows)

    def __exit__(self, kind, exc, tb) -> None:
        import os

        if self._fh is not None:
            self._fh.close()
        if kind is None:
            if self._fh is None:
                self.write([])
                self._fh.close()
            os.replace(self.tmp, self.path)
        else:
            self.tmp.unlink(missing_ok=True)
