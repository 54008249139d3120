"""A study of ``astroflax tune``: its directory, its spec, and Optuna's storage, sampler and pruner.

The study directory (default ``runs/studies/<name>``) holds ``study.json`` (what was asked:
task, preset, config values, overrides, search space, metric, budget), the embedded storage
``study.db``, one ordinary run directory per trial under ``trials/``, the report and
``best_config.yaml``. ``--storage URL`` moves only the study's records (e.g. to PostgreSQL
for workers on many machines); everything else stays in the directory.

Embedded storage: SQLite through Optuna's ``RDBStorage``, not the journal file that Optuna
recommends for several processes on one machine, because in Optuna 5.0 only ``RDBStorage``
implements heartbeats (``BaseHeartbeat``): with a journal file a worker killed mid-trial
leaves its trial RUNNING forever, while with SQLite the trial is failed once its heartbeat is
``grace`` seconds old and re-queued by ``RetryHeartbeatStaleTrialCallback``. SQLite's lock
contention (Optuna's reason to prefer the journal) matters for hundreds of fast trials; with
a few workers and trials of seconds to hours, a 60 s busy timeout and WAL mode suffice.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sqlite3
import time
from pathlib import Path
from typing import Any

from astroflax.config import ExperimentConfig, build_config
from astroflax.errors import ConfigError
from astroflax.tune.space import SAMPLERS, SearchSpace

SPEC_FILE = "study.json"
DB_FILE = "study.db"
TRIALS_DIR = "trials"
BEST_CONFIG_FILE = "best_config.yaml"
STORAGE_ENV = "ASTROFLAX_TUNE_STORAGE"  # how workers get a URL with a password (not on their command line)
PRUNERS = ("median", "hyperband", "none")
DEFAULT_HEARTBEAT_S = 20
MAX_RETRY = 2


@dataclasses.dataclass
class StudySpec:
    """What a study searches; saved as ``study.json`` so workers and ``--resume`` need no flags."""

    name: str
    task: str
    preset: str | None
    config_values: dict[str, Any]  # the --config file's contents (not its path: it may move)
    overrides: list[str]
    space: dict[str, Any]
    space_file: str
    metric: str
    direction: str  # minimize | maximize
    trials: int
    sampler: str = "tpe"
    pruner: str = "median"
    seed: int = 0
    storage: str | None = None  # None: sqlite in the study directory; a URL is stored without its password
    heartbeat: int = DEFAULT_HEARTBEAT_S
    baseline: bool = True
    created: str = ""

    def save(self, study_dir: Path) -> None:
        study_dir.mkdir(parents=True, exist_ok=True)
        tmp = study_dir / f".{SPEC_FILE}.tmp"
        tmp.write_text(json.dumps(dataclasses.asdict(self), indent=1))
        os.replace(tmp, study_dir / SPEC_FILE)

    @classmethod
    def load(cls, study_dir: Path) -> StudySpec:
        path = study_dir / SPEC_FILE
        if not path.is_file():
            raise ConfigError(f"{study_dir}: not a study directory (no {SPEC_FILE})")
        try:
            raw = json.loads(path.read_text())
            names = {f.name for f in dataclasses.fields(cls)}
            return cls(**{k: v for k, v in raw.items() if k in names})
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"{path}: not a valid study description ({exc})") from None

    # ----------------------------------------------------------------- derived
    def base_config(self) -> ExperimentConfig:
        """The config every trial starts from (defaults + preset + config values + overrides)."""
        return build_config(self.task, self.preset, None, self.overrides, file_values=self.config_values)

    def search_space(self, cfg: ExperimentConfig | None = None) -> SearchSpace:
        return SearchSpace.from_dict(self.space, cfg or self.base_config(), self.space_file)


def default_study_dir(name: str) -> Path:
    return Path("runs") / "studies" / name


def find_study_dir(target: str) -> Path | None:
    """STUDY_DIR_OR_NAME -> the study directory, if there is one on this machine."""
    path = Path(target)
    if (path / SPEC_FILE).is_file():
        return path
    named = default_study_dir(target)
    if "/" not in target and (named / SPEC_FILE).is_file():
        return named
    return None


# ------------------------------------------------------------------ storage


def storage_url(study_dir: Path, given: str | None) -> str:
    """The URL of the study's records: ``given``, else SQLite in the study directory."""
    if given:
        return _with_driver(given)
    return f"sqlite:///{(study_dir / DB_FILE).absolute()}"


def _with_driver(url: str) -> str:
    """``postgres://`` (Heroku-style) is ``postgresql://`` to SQLAlchemy 2; a URL without a driver
    gets psycopg 3, which astroflax ships (SQLAlchemy's default driver is psycopg2)."""
    if url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://"):]
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://"):]
    return url


def public_url(url: str) -> str:
    """``url`` without its password (for study.json, logs and messages)."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url


def open_storage(url: str, heartbeat: int = DEFAULT_HEARTBEAT_S) -> Any:
    """Optuna's ``RDBStorage`` with heartbeats; a killed trial is failed and retried."""
    import optuna

    engine_kwargs: dict[str, Any] = {}
    if url.startswith("sqlite:///"):
        db = Path(url[len("sqlite:///"):])
        db.parent.mkdir(parents=True, exist_ok=True)
        with sqlite3.connect(db, timeout=60) as con:  # WAL: readers do not block the writer
            con.execute("PRAGMA journal_mode=WAL")
        engine_kwargs = {"connect_args": {"timeout": 60}}
    else:
        engine_kwargs = {"pool_pre_ping": True}
    try:
        return optuna.storages.RDBStorage(
            url, engine_kwargs=engine_kwargs, heartbeat_interval=heartbeat, grace_period=3 * heartbeat,
            heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY),
        )
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ConfigError(f"--storage {public_url(url)}: cannot open the study storage ({first})") from None


# ------------------------------------------------------------- sampler, pruner


def make_sampler(spec: StudySpec, space: SearchSpace, worker: int = 0) -> Any:
    """Optuna's sampler; each worker gets its own seed, so workers do not propose the same point."""
    import optuna

    seed = spec.seed + 1000 * worker
    if spec.sampler == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    if spec.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if spec.sampler == "grid":
        return optuna.samplers.GridSampler(space.grid_space(), seed=seed)
    if spec.sampler == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)
    raise ConfigError(f"--sampler {spec.sampler!r}: choose from {', '.join(SAMPLERS)}")


def make_pruner(spec: StudySpec, cfg: ExperimentConfig) -> Any:
    """Median: stop a trial whose metric is worse than the median of earlier trials at the same
    step, once a quarter of the run is done (the first evaluations mostly measure the warm-up:
    on the photoz quick preset, pruning from the first one stopped 5 of the first 7 trials,
    among them ones that went on to match the best) and a few trials have finished.
    Hyperband: successive halving over the run's steps."""
    import optuna

    total = int(cfg.train.steps or 0) or None
    if spec.pruner == "median":
        warmup = max(cfg.train.eval_every, (total or 0) // 4)
        return optuna.pruners.MedianPruner(n_startup_trials=min(5, max(2, spec.trials // 4)), n_warmup_steps=warmup)
    if spec.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=cfg.train.eval_every,
                                              max_resource=total if total else "auto", reduction_factor=3)
    if spec.pruner == "none":
        return optuna.pruners.NopPruner()
    raise ConfigError(f"--pruner {spec.pruner!r}: choose from {', '.join(PRUNERS)}")


def load_study(spec: StudySpec, url: str, *, sampler: Any = None, pruner: Any = None, create: bool = False) -> Any:
    import optuna

    from astroflax.tune import quiet_optuna

    quiet_optuna()
    storage = open_storage(url, spec.heartbeat)
    if create:
        return optuna.create_study(study_name=spec.name, storage=storage, sampler=sampler, pruner=pruner,
                                   direction=spec.direction, load_if_exists=True)
    try:
        return optuna.load_study(study_name=spec.name, storage=storage, sampler=sampler, pruner=pruner)
    except KeyError:
        raise ConfigError(f"study {spec.name!r} is not in the storage {public_url(url)}") from None


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")
