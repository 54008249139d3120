"""Running a study: one trial is one ordinary training run; workers run trials until the budget
is met; ``--workers K`` starts K worker processes on this machine against the same storage.

Optuna does the searching (``study.optimize`` asks the sampler, runs the heartbeat, fails stale
trials and re-queues them); this module adds what a training run needs around it:

* the trial's run directory ``trials/<number>`` and config (base config + sampled values),
  its trainer output in ``trials/<number>/train.log``;
* every validation reported to the trial (``trial.report``), the run stopped and checkpointed
  when the pruner says so;
* a budget shared by all workers: a worker starts a trial only while complete + pruned +
  running trials are fewer than ``--trials``; the count and Optuna's ``ask`` happen under a
  file lock in the study directory, so two workers on this machine never overshoot it
  (workers on other machines, sharing only a PostgreSQL storage, can overshoot by one trial
  each, as Optuna's own ``MaxTrialsCallback`` does);
* a retried trial (its worker was killed: Optuna's heartbeat failed it and re-queued it with
  the same parameters) continues from the killed trial's last checkpoint, exactly.
"""

from __future__ import annotations

import fcntl
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console

from astroflax.errors import (
    AstroflaxError,
    CheckpointError,
    ConfigError,
    TrainingDiverged,
)
from astroflax.tune.study import (
    MAX_RETRY,
    STORAGE_ENV,
    TRIALS_DIR,
    StudySpec,
    load_study,
    make_pruner,
    make_sampler,
    storage_url,
)


class TrialFailed(AstroflaxError):
    """One trial cannot run (its combination of values is refused by the config)."""


#: Errors that fail one trial (a sampled learning rate that diverges) but not the study.
TRIAL_ERRORS = (TrialFailed, TrainingDiverged, CheckpointError)


class TrialInterrupted(Exception):
    """A signal stopped the trial's training (checkpointed); the worker stops too."""

    def __init__(self, signal_name: str):
        super().__init__(f"stopped by {signal_name}")
        self.signal_name = signal_name


class _AskLock:
    """An exclusive ``flock`` on a file in the study directory, held from the budget check
    until the new trial exists in the storage."""

    def __init__(self, path: Path):
        self.path, self._fh = path, None

    def acquire(self) -> None:
        self._fh = open(self.path, "a")
        fcntl.flock(self._fh, fcntl.LOCK_EX)

    def release(self) -> None:
        if self._fh is not None:
            fcntl.flock(self._fh, fcntl.LOCK_UN)
            self._fh.close()
            self._fh = None


def trial_dir(study_dir: Path, number: int) -> Path:
    return study_dir / TRIALS_DIR / f"{number:04d}"


def trial_counts(study: Any) -> dict[str, int]:
    from optuna.trial import TrialState

    counts = {s.name.lower(): 0 for s in TrialState}
    for t in study.get_trials(deepcopy=False):
        counts[t.state.name.lower()] += 1
    return counts


def best_metric(run_dir: Path, metric: str, direction: str) -> tuple[float, int] | None:
    """The best validation value of ``metric`` in a run's ``metrics.jsonl`` and its step."""
    from astroflax.train.metrics_log import read_metrics

    values = [(float(r[metric]), int(r["step"])) for r in read_metrics(run_dir)
              if r.get("split") == "val" and metric in r and math.isfinite(float(r[metric]))]
    if not values:
        return None
    pick = min if direction == "minimize" else max
    return pick(values, key=lambda v: v[0])


class StudyRunner:
    """One worker's view of a study: spec, base config, space, Optuna study, budget."""

    def __init__(self, study_dir: Path, url: str | None = None, worker: int = 0,
                 console: Console | None = None):
        self.study_dir = study_dir
        self.spec = StudySpec.load(study_dir)
        self.url = url or storage_url(study_dir, None)
        self.worker = worker
        self.console = console or Console(stderr=True, soft_wrap=True)
        self.base = self.spec.base_config()
        self.space = self.spec.search_space(self.base)
        self.budget = self.spec.trials
        if self.spec.sampler == "grid":
            self.budget = min(self.budget, math.prod(len(v) for v in self.space.grid_space().values()))
        self.study = load_study(self.spec, self.url, sampler=make_sampler(self.spec, self.space, worker),
                                pruner=make_pruner(self.spec, self.base))
        self.lock = _AskLock(study_dir / ".ask.lock")

    # ------------------------------------------------------------------ a trial
    def trial_config(self, trial: Any) -> Any:
        """The base config with the trial's values, in the trial's run directory."""
        from astroflax.tune.space import config_with

        values = self.space.suggest(trial, self.base, grid=self.spec.sampler == "grid")
        run_dir = trial_dir(self.study_dir, trial.number)
        extra = {"run_dir": str(run_dir), "name": f"{self.spec.name}-trial-{trial.number}",
                 "study": f"{self.study_dir.absolute()}#{trial.number}", "train": {"progress": False}}
        return config_with(self.base, values, extra)

    def objective(self, trial: Any) -> float:
        """Train one trial; its value is the best validation ``metric`` of the run."""
        import optuna

        from astroflax.train.loop import train
        from astroflax.train.policies import require_metric

        self.lock.release()  # the trial exists now: other workers may ask
        try:
            cfg = self.trial_config(trial)
        except ConfigError as exc:  # a combination of values the config refuses: this trial fails
            trial.set_user_attr("error", str(exc))
            raise TrialFailed(str(exc)) from None  # caught: the study goes on
        run_dir = cfg.resolved_run_dir()
        trial.set_user_attr("run_dir", str(run_dir.relative_to(self.study_dir)))
        trial.set_user_attr("worker", self.worker)
        trial.set_user_attr("pid", os.getpid())
        self._continue_retried(trial, run_dir)
        metric = self.spec.metric

        def report(step: int, val: dict) -> bool:
            value = require_metric(metric, val, "--metric")
            if math.isfinite(value):
                trial.report(value, step)
            return trial.should_prune()

        run_dir.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        with open(run_dir / "train.log", "a") as log:
            console = Console(file=log, width=120, soft_wrap=True, force_terminal=False)
            try:
                result = train(cfg, resume=None, console=console, on_validation=report)  # None: resume if checkpointed
            except TRIAL_ERRORS as exc:
                trial.set_user_attr("error", str(exc))
                console.print(f"error: {exc}", markup=False, highlight=False)
                raise
        trial.set_user_attr("steps", result.step)
        trial.set_user_attr("wall_time_s", round(time.perf_counter() - t0, 2))
        self._write_report(run_dir)
        if result.stopped_by and result.stopped_by.startswith("SIG"):
            trial.set_user_attr("interrupted", result.stopped_by)
            raise TrialInterrupted(result.stopped_by)
        if result.stopped_by == "on_validation":
            raise optuna.TrialPruned(f"pruned at step {result.step}")
        best = best_metric(run_dir, metric, self.spec.direction)
        if best is None:
            trial.set_user_attr("error", f"no finite validation {metric} in {run_dir}/metrics.jsonl")
            raise TrialFailed(f"no finite validation {metric} in {run_dir}/metrics.jsonl")
        trial.set_user_attr("best_step", best[1])
        return best[0]

    def _continue_retried(self, trial: Any, run_dir: Path) -> None:
        """A retry of a killed or interrupted trial gets a copy of that trial's run directory,
        so its training resumes from the last checkpoint (the trainer verifies it)."""
        from optuna.storages import RetryHeartbeatStaleTrialCallback as Retry

        frozen = next(t for t in self.study.get_trials(deepcopy=False) if t.number == trial.number)
        history = Retry.retry_history(frozen)
        source = trial_dir(self.study_dir, history[-1]) if history else None
        if source is None or (run_dir / "checkpoints").exists() or not (source / "checkpoints").is_dir():
            return
        shutil.copytree(source, run_dir, dirs_exist_ok=True, ignore=shutil.ignore_patterns("train.log", "report"))
        trial.set_user_attr("continued_from", history[-1])

    @staticmethod
    def _write_report(run_dir: Path) -> None:
        from astroflax.report import write_report

        try:
            write_report(run_dir)
        except Exception as exc:  # noqa: BLE001 - a report problem never fails the trial
            try:
                with open(run_dir / "train.log", "a") as log:
                    log.write(f"report not written: {type(exc).__name__}: {exc}\n")
            except OSError:
                pass

    # --------------------------------------------------------------- the loop
    def work(self, on_trial: Callable[[Any], None] | None = None, poll_s: float | None = None,
             should_stop: Callable[[], bool] = lambda: False) -> int:
        """Run trials until the study's budget is met (or ``should_stop()``); returns how many ran."""
        import optuna

        poll = poll_s if poll_s is not None else min(1.0, self.spec.heartbeat / 2)  # counting trials is cheap
        ran = 0
        callbacks = [lambda study, frozen: on_trial(frozen)] if on_trial else []
        while not should_stop():
            self.lock.acquire()
            try:
                optuna.storages.fail_stale_trials(self.study)  # a killed worker's trial: failed, re-queued
                c = trial_counts(self.study)
                finished = c["complete"] + c["pruned"]
                if finished >= self.budget:
                    return ran
                start = finished + c["running"] < self.budget
                if start:
                    # The lock is released by the objective once ``ask`` has created the trial.
                    self.study.optimize(self.objective, n_trials=1, catch=TRIAL_ERRORS, callbacks=callbacks,
                                        gc_after_trial=True)
                    ran += 1
            finally:
                self.lock.release()
            if not start:
                time.sleep(poll)  # the others' last trials are running; one of them may die and need a retry
        return ran


def retry_interrupted(study: Any) -> list[int]:
    """Re-queue trials a signal stopped (``--resume``), once each, with their parameters."""
    from optuna.storages import RetryHeartbeatStaleTrialCallback as Retry
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    retried = {n for t in trials for n in Retry.retry_history(t)} if trials else set()
    queued = []
    for t in trials:
        if t.state == TrialState.FAIL and t.user_attrs.get("interrupted") and t.number not in retried:
            Retry(max_retry=MAX_RETRY)(study, t)
            queued.append(t.number)
    return queued


def enqueue_baseline(runner: StudyRunner) -> bool:
    """Trial 0 is the config as given (where its values lie in the space): the tuned result is
    then compared with the untuned one inside the study."""
    params = runner.space.baseline_params(runner.base, grid=runner.spec.sampler == "grid")
    if params is None:
        return False
    runner.study.enqueue_trial(params, user_attrs={"baseline": True}, skip_if_exists=True)
    return True


# ------------------------------------------------------------- worker processes


def start_workers(study_dir: Path, url: str, count: int) -> list[subprocess.Popen]:
    """K worker processes (``astroflax tune worker``), logs in ``workers/worker-<i>.log``;
    the storage URL goes through the environment, never a command line."""
    logs = study_dir / "workers"
    logs.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, STORAGE_ENV: url}
    procs = []
    for i in range(count):
        log = open(logs / f"worker-{i}.log", "ab")
        cmd = [sys.executable, "-m", "astroflax", "tune", "worker", str(study_dir), "--worker-id", str(i)]
        procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True))
        log.close()
    return procs


def watch_workers(procs: list[subprocess.Popen], study: Any, on_trial: Callable[[Any], None],
                  stop_requested: Callable[[], str | None], console: Console, poll_s: float = 1.0) -> dict[int, int]:
    """Wait for the workers, printing each trial as it finishes; a signal to ``tune`` is passed
    on to them (SIGTERM: each checkpoints its trial and exits). Returns {worker: exit code}."""
    from optuna.trial import TrialState

    seen: set[int] = set()
    forwarded = False
    codes: dict[int, int] = {}

    def report_finished() -> None:
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)):
            if t.number not in seen:
                seen.add(t.number)
                on_trial(t)

    while len(codes) < len(procs):
        for i, p in enumerate(procs):
            if i not in codes and p.poll() is not None:
                codes[i] = p.returncode
                if p.returncode < 0 and not forwarded:
                    console.print(f"[yellow]worker {i} ended by {signal.Signals(-p.returncode).name}[/]; its trial is "
                                  "failed by the heartbeat and retried by the other workers")
                elif p.returncode not in (0, 130, 143):
                    console.print(f"[red]worker {i} failed (exit {p.returncode})[/]; see its log")
        if stop_requested() and not forwarded:
            forwarded = True
            for i, p in enumerate(procs):
                if i not in codes:
                    p.send_signal(signal.SIGTERM)
        try:
            report_finished()
        except Exception:
            pass
        time.sleep(poll_s)
    report_finished()
    return codes


