"""Deep ensembles: the directory format, loading all members, and training them.

An ensemble lives in one directory: ``member-<i>/`` are ordinary runs trained with seeds
``seed + i`` and ``ensemble.json`` lists them. ``evaluate`` and ``predict`` accept it in place
of a run directory (see :func:`open_run`); members' outputs are combined as the task's kind
says (:func:`astroflax.evaluate.uncertainty.combine_outputs`).
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from astroflax.errors import CheckpointError, ConfigError
from astroflax.evaluate.uncertainty import combine_outputs
from astroflax.runfiles import ENSEMBLE_FILE
from astroflax.runs import LoadedRun, load_run


@dataclasses.dataclass
class EnsembleRun:
    """Members of a deep ensemble, loaded; quacks like :class:`astroflax.runs.LoadedRun` for prediction."""

    run_dir: Path
    names: list[str]
    members: list[LoadedRun]

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


def load_ensemble(run_dir: str | Path, which: str | int = "best", weights: str = "raw") -> EnsembleRun:
    run_dir = Path(run_dir)
    spec = read_ensemble(run_dir)
    members = [load_run(run_dir / m, which, weights) for m in spec["members"]]
    names0 = members[0].info.get("class_names")
    for name, m in zip(spec["members"], members):
        if m.task.name != members[0].task.name or m.info.get("class_names") != names0:
            raise CheckpointError(f"ensemble {run_dir}: member {name} is for another task or other classes")
    return EnsembleRun(run_dir, spec["members"], members)


def open_run(run_dir: str | Path, which: str | int = "best", weights: str = "raw") -> LoadedRun | EnsembleRun:
    """A run directory or an ensemble directory, loaded for prediction.

    ``weights`` (raw, or averaged weights such as ema) is passed on to ``load_run``.
    """
    if is_ensemble_dir(run_dir):
        return load_ensemble(run_dir, which, weights)
    return load_run(Path(run_dir), which, weights)


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
    from astroflax.train.loop import train

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
        result = train(cfg, resume=None, console=console)
        if result.stopped_by and result.stopped_by.startswith("SIG"):
            spec["interrupted"] = {"member": name, "signal": result.stopped_by}
            return spec
        results.append({"member": name, "step": result.step, "best_step": result.best_step,
                        "best_value": result.best_value, "wall_time": result.wall_time})
    spec["members_trained"] = results
    (run_dir / ENSEMBLE_FILE).write_text(json.dumps(spec, indent=1, default=float))
    return spec
