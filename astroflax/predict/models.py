"""The model of a run directory, an ensemble or an export, loaded once per process.

A Dask worker runs many chunks: :func:`get_model` keeps each loaded model in a process-level
cache keyed by what identifies it (path, checkpoint, weights), so a worker pays the load (and
the XLA compile) on its first chunk only. Every call runs the model on batches of one fixed
size (the config's ``train.eval_batch_size``), padding the last one: a row's prediction does
not depend on which chunk, worker or batch position it came in (XLA's single-row kernels
round differently, so a lone row is never run as a batch of one).
"""

from __future__ import annotations

import dataclasses
import threading
from pathlib import Path
from typing import Any

import numpy as np

from astroflax.errors import AstroflaxError

_CACHE: dict[tuple, Model] = {}
_LOCK = threading.Lock()


@dataclasses.dataclass(frozen=True)
class ModelRef:
    """What a worker needs to load the model itself (small and picklable: sent with every chunk)."""

    path: str
    is_export: bool
    checkpoint: str = "best"
    weights: str = "raw"

    @classmethod
    def of(cls, path: Path, checkpoint: str = "best", weights: str = "raw") -> ModelRef:
        from astroflax.export.loader import MANIFEST

        path = Path(path).resolve()
        return cls(str(path), (path / MANIFEST).is_file(), str(checkpoint), str(weights))


@dataclasses.dataclass
class Model:
    """``predict(arrays) -> outputs`` plus the task, config and data facts to read inputs with."""

    ref: ModelRef
    task: Any
    cfg: Any
    info: dict[str, Any]
    step: Any
    batch_size: int
    _run: Any = None  # LoadedRun / EnsembleRun
    _export: Any = None  # ExportedModel
    note: str | None = None

    def predict(self, arrays: dict[str, np.ndarray]) -> np.ndarray:
        """Outputs for every row: calibrated probabilities when the run (or export) has a calibration."""
        n = len(next(iter(arrays.values())))
        bs = self.batch_size
        padded = -(-n // bs) * bs
        if padded != n:  # one compiled shape: pad with copies of the last row
            idx = np.concatenate([np.arange(n), np.full(padded - n, n - 1)])
            arrays = {k: v[idx] for k, v in arrays.items()}
        if self._export is not None:
            from astroflax.export.loader import ExportInputError

            try:
                out = self._export.predict(arrays, batch_size=bs, calibrated=True)
            except ExportInputError as exc:
                raise AstroflaxError(f"{self.ref.path}: {exc}") from None
        else:
            from astroflax.evaluate.uncertainty import predict_outputs

            out, self.note = predict_outputs(_Direct(self._run, bs), arrays, 0, self.ref.weights)
        return np.asarray(out)[:n]

    @property
    def source_text(self) -> str:
        if self._export is not None:
            m = self._export.manifest
            return f"export of {m['task']} checkpoint step {m['source']['checkpoint_step']}"
        return f"checkpoint step {self.step}"


class _Direct:
    """A run whose ``predict`` calls its compiled step on host batches directly: the same compiled
    function, batch size and ``_weight`` as :meth:`astroflax.runs.LoadedRun.predict`, hence the same
    numbers, without placing every batch on a one-device mesh first (that was most of the time of a
    small model). Anything else (an ensemble, several devices) goes through ``run.predict``."""

    def __init__(self, run: Any, batch_size: int):
        self._run, self._bs = run, batch_size

    def __getattr__(self, name: str) -> Any:
        return getattr(self._run, name)

    def predict(self, arrays: dict[str, np.ndarray]) -> np.ndarray:
        run = self._run
        if not hasattr(run, "_compiled_predict") or run.mesh.devices.size != 1:
            return run.predict(arrays)
        arrays = run.task.device_arrays(arrays)
        n, bs = len(next(iter(arrays.values()))), self._bs
        weight = np.ones(bs, np.float32)
        outs = []
        for start in range(0, n, bs):  # n is a multiple of bs (Model.predict pads)
            batch = {k: v[start:start + bs] for k, v in arrays.items()}
            batch["_weight"] = weight
            outs.append(run._compiled_predict(run.state.params, run.state.model_state, batch))
        return np.concatenate([np.asarray(o) for o in outs], axis=0)


def load_model(ref: ModelRef) -> Model:
    if ref.is_export:
        from astroflax.config import finalize_config
        from astroflax.export.loader import ExportFormatError, load_export
        from astroflax.tasks import get_task

        if ref.checkpoint != "best" or ref.weights != "raw":
            raise AstroflaxError(f"{ref.path} is an export (one fixed checkpoint, raw weights, no dropout): "
                                 "--checkpoint, --weights and --mc-dropout apply to run directories only")
        try:
            exported = load_export(ref.path)
        except ExportFormatError as exc:
            raise AstroflaxError(str(exc)) from None
        cfg = finalize_config(exported.manifest.get("config", {}))
        return Model(ref, get_task(cfg.task), cfg, exported.info, exported.manifest["source"]["checkpoint_step"],
                     int(cfg.train.eval_batch_size), _export=exported)
    from astroflax.ensembles import open_run

    run = open_run(ref.path, ref.checkpoint, ref.weights)
    return Model(ref, run.task, run.cfg, run.info, run.step, int(run.cfg.train.eval_batch_size), _run=run)


def get_model(ref: ModelRef) -> Model:
    """The model of ``ref``, loaded on this process's first call and reused afterwards."""
    with _LOCK:
        model = _CACHE.get(_key(ref))
        if model is None:
            model = _CACHE[_key(ref)] = load_model(ref)
        return model


def _key(ref: ModelRef) -> tuple:
    return dataclasses.astuple(ref)
