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


def ensemble_from_study(task: str, study_target: str, members: int, run_dir: Path,
                        storage: str | None = None) -> dict[str, Any]:
    """An ensemble of the ``members`` best complete trials of a study (by the study's metric on
    the validation split). Each trial's run directory is copied in as ``member-<i>`` (not
    linked: the ensemble stays valid when the study directory is moved or deleted)."""
    import shutil

    from astroflax.tune.study import StudySpec, find_study_dir, load_study, storage_url

    study_dir = find_study_dir(study_target)
    if study_dir is None:
        raise ConfigError(f"--from-study {study_target}: no such study directory (nor runs/studies/{study_target})")
    spec = StudySpec.load(study_dir)
    if spec.task != task:
        raise ConfigError(f"--from-study {study_dir}: the study is for task {spec.task!r}, not {task!r}")
    if members < 1:
        raise ConfigError(f"--members {members}: must be >= 1")
    study = load_study(spec, storage_url(study_dir, storage or spec.storage))
    sign = 1.0 if spec.direction == "minimize" else -1.0
    done = sorted((t for t in study.get_trials(deepcopy=False)
                   if t.state.name == "COMPLETE" and t.value is not None and t.user_attrs.get("run_dir")),
                  key=lambda t: (sign * t.value, t.number))
    if len(done) < members:
        raise ConfigError(f"--members {members}: study {study_dir} has only {len(done)} complete trial(s)")
    run_dir = Path(run_dir)
    if (run_dir / "config.yaml").exists() or is_ensemble_dir(run_dir):
        raise ConfigError(f"--run-dir {run_dir} already holds a run or an ensemble; choose another directory")
    names = [f"member-{i}" for i in range(members)]
    run_dir.mkdir(parents=True, exist_ok=True)
    for name, t in zip(names, done[:members]):
        shutil.copytree(study_dir / t.user_attrs["run_dir"], run_dir / name, ignore=shutil.ignore_patterns("report"))
    spec_out = {
        "task": task, "preset": spec.preset, "members": names,
        "from_study": {"study_dir": str(study_dir.absolute()), "metric": spec.metric,
                       "trials": [t.number for t in done[:members]], "values": [t.value for t in done[:members]]},
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    (run_dir / ENSEMBLE_FILE).write_text(json.dumps(spec_out, indent=1))
    return spec_out
