"""``astroflax tune``: hyperparameter search on Optuna (``tune TASK``, ``tune show``, ``tune worker``)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from typer.core import TyperGroup

from astroflax.cli.common import (
    ConfigFile,
    Overrides,
    Preset,
    TaskName,
    err,
    evaluate_option,
    require_file,
)
from astroflax.errors import ConfigError


class _DefaultToRun(TyperGroup):
    """``astroflax tune TASK ...`` means ``astroflax tune run TASK ...``; ``show`` and
    ``worker`` are the other subcommands."""

    def parse_args(self, ctx, args):
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h"):
            args = ["run", *args]
        return super().parse_args(ctx, args)


tune_app = typer.Typer(cls=_DefaultToRun, no_args_is_help=True,
                       help="Hyperparameter search on Optuna: `astroflax tune TASK --space SPACE.yaml --trials N`.")

MAXIMIZE_HINTS = ("accuracy", "auc", "f1", "r2", "coverage", "elbo", "precision", "recall")


def _direction(metric: str, cfg: Any, given: Optional[str]) -> str:
    if given:
        if given not in ("minimize", "maximize"):
            raise ConfigError(f"--direction {given!r}: expected minimize or maximize")
        return given
    if metric == cfg.checkpoint.metric:
        return "minimize" if cfg.checkpoint.mode == "min" else "maximize"
    return "maximize" if any(h in metric for h in MAXIMIZE_HINTS) else "minimize"


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _trial_line(frozen: Any, spec: Any, space: Any) -> str:
    state = frozen.state.name.lower()
    params = space.decode_params(frozen.params)
    shown = "  ".join(f"{k}={_short(v)}" for k, v in params.items())
    attrs = frozen.user_attrs
    if state == "complete":
        what = f"{spec.metric} {frozen.value:.5g}"
    elif state == "pruned":
        step = max(frozen.intermediate_values) if frozen.intermediate_values else "?"
        what = f"pruned at step {step}"
    else:
        why = attrs.get("error") or (f"stopped by {attrs['interrupted']}" if attrs.get("interrupted") else
                                     "no heartbeat (its worker died); re-queued for another worker")
        what = f"failed: {why}"
    extra = f"  ({attrs.get('steps', '?')} steps, {attrs.get('wall_time_s', '?')} s)" if "steps" in attrs else ""
    return f"trial {frozen.number} {what}  {shown}{extra}"


def _study_url(study_dir: Path, spec: Any, given: Optional[str]) -> str:
    from astroflax.tune.study import storage_url

    if given:
        return storage_url(study_dir, given)
    if spec.storage and "***" in spec.storage:
        raise ConfigError(f"study {study_dir} keeps its records in {spec.storage}; give the URL with its password "
                          "again with --storage")
    return storage_url(study_dir, spec.storage)


# ----------------------------------------------------------------------------- run


@tune_app.command("run")
def run(
    task: TaskName,
    space_file: Annotated[Optional[Path], typer.Option("--space", help="search space YAML (config keys -> distributions)")] = None,
    trials: Annotated[Optional[int], typer.Option("--trials", "-n", help="number of trials (complete + pruned)")] = None,
    preset: Preset = None,
    config: ConfigFile = None,
    overrides: Overrides = [],
    workers: Annotated[int, typer.Option("--workers", "-w", help="worker processes on this machine")] = 1,
    study: Annotated[Optional[str], typer.Option("--study", help="study name (default <task>-<preset>)")] = None,
    study_dir: Annotated[Optional[Path], typer.Option("--study-dir", help="study directory (default runs/studies/<name>)")] = None,
    storage: Annotated[Optional[str], typer.Option(
        "--storage", help="Optuna RDB URL for the study's records, e.g. postgresql://user:pw@host/db "
        "(default: SQLite in the study directory)")] = None,
    sampler: Annotated[str, typer.Option("--sampler", help="tpe, random, grid or cmaes")] = "tpe",
    pruner: Annotated[str, typer.Option("--pruner", help="median, hyperband or none")] = "median",
    metric: Annotated[Optional[str], typer.Option("--metric", help="validation metric (default checkpoint.metric)")] = None,
    direction: Annotated[Optional[str], typer.Option(
        "--direction", help="minimize or maximize (default: the checkpoint metric's mode, else by name)")] = None,
    seed: Annotated[int, typer.Option("--seed", help="sampler seed")] = 0,
    heartbeat: Annotated[int, typer.Option(
        "--heartbeat", min=1, help="seconds between trial heartbeats; a trial silent for 3x this is failed and retried")] = 20,
    baseline: Annotated[bool, typer.Option(
        "--baseline/--no-baseline", help="run the config as given as trial 0 (when its values lie in the space)")] = True,
    resume: Annotated[bool, typer.Option("--resume", help="continue the study in the study directory")] = False,
    evaluate_after: evaluate_option("evaluate the best trial (and the baseline) on the test split") = True,
) -> None:
    """Search hyperparameters of TASK: each trial an ordinary run directory in the study directory."""
    from astroflax.tune.runner import StudyRunner, enqueue_baseline, retry_interrupted
    from astroflax.tune.study import StudySpec, default_study_dir, public_url

    if workers < 1:
        raise ConfigError(f"--workers {workers}: must be >= 1")
    if trials is not None and trials < 1:
        raise ConfigError(f"--trials {trials}: must be >= 1")
    name = study or f"{task}-{preset or 'quick'}"
    study_dir = study_dir or default_study_dir(name)
    if resume:
        spec = StudySpec.load(study_dir)
        if spec.task != task:
            raise ConfigError(f"--resume: study {study_dir} is for task {spec.task!r}, not {task!r}")
        if trials is not None and trials != spec.trials:
            spec.trials = trials
            spec.save(study_dir)
        url = _study_url(study_dir, spec, storage)
    else:
        spec, url = _create_study(
            study_dir, name, task, space_file, config, preset, list(overrides), storage,
            dict(trials=trials or 20, sampler=sampler, pruner=pruner, seed=seed, heartbeat=heartbeat,
                 baseline=baseline), metric, direction)

    runner = StudyRunner(study_dir, url, worker=0, console=err)
    if resume:
        queued = retry_interrupted(runner.study)
        if queued:
            err.print(f"Re-queued interrupted trial(s) {', '.join(map(str, queued))}; they continue from their checkpoints.")
    elif spec.baseline and spec.sampler != "grid" and not enqueue_baseline(runner):
        err.print("[yellow]The config as given lies outside the search space; no baseline trial.[/]")
    err.print(f"Study [bold]{spec.name}[/] ({spec.task}): {runner.budget} trials, sampler {spec.sampler}, pruner "
              f"{spec.pruner}, metric {spec.metric} ({spec.direction}); {workers} worker(s); directory {study_dir}; "
              f"storage {public_url(url)}")
    _search(runner, study_dir, url, workers, task)
    _finish(study_dir, runner, evaluate_after)


def _create_study(study_dir: Path, name: str, task: str, space_file: Optional[Path], config: Optional[Path],
                  preset: Optional[str], overrides: list[str], storage: Optional[str], options: dict,
                  metric: Optional[str], direction: Optional[str]) -> tuple[Any, str]:
    """Validate everything a new study needs (config, space, sampler, pruner, metric), create its
    records, then write ``study.json``; returns the spec and the storage URL."""
    from astroflax.config import build_config, load_yaml_file
    from astroflax.tune.space import SAMPLERS, SearchSpace
    from astroflax.tune.study import (
        PRUNERS,
        SPEC_FILE,
        StudySpec,
        load_study,
        now,
        public_url,
        storage_url,
    )

    if (study_dir / SPEC_FILE).exists():
        raise ConfigError(f"study directory {study_dir} already holds a study; continue it with --resume or "
                          "choose another --study / --study-dir")
    if space_file is None:
        raise ConfigError("--space: a search space YAML is required, e.g. --space space.yaml")
    require_file(space_file, "--space")
    require_file(config, "--config")
    if options["sampler"] not in SAMPLERS:
        raise ConfigError(f"--sampler {options['sampler']!r}: choose from {', '.join(SAMPLERS)}")
    if options["pruner"] not in PRUNERS:
        raise ConfigError(f"--pruner {options['pruner']!r}: choose from {', '.join(PRUNERS)}")
    config_values = load_yaml_file(config) if config else {}
    base = build_config(task, preset, None, overrides, file_values=config_values)
    space = SearchSpace.from_file(space_file, base)
    if options["sampler"] == "grid":
        space.grid_space()  # a continuous or conditional key is an error now, not in a worker
    metric = metric or base.checkpoint.metric
    if not metric.startswith("val_"):
        raise ConfigError(f"--metric {metric!r}: studies are tuned on the validation split; expected a "
                          "val_* metric such as val_loss")
    spec = StudySpec(name=name, task=base.task, preset=base.preset, config_values=config_values, overrides=overrides,
                     space=load_yaml_file(space_file), space_file=str(space_file), metric=metric,
                     direction=_direction(metric, base, direction),
                     storage=public_url(storage) if storage else None, created=now(), **options)
    url = storage_url(study_dir, storage)
    load_study(spec, url, create=True)  # the records first: study.json appears only for a study that exists
    spec.save(study_dir)
    return spec, url


def _stopped(signal_name: str, what: str, task: str, study_dir: Path) -> typer.Exit:
    err.print(f"[yellow]Study stopped by {signal_name}[/]{what}. Continue with:\n"
              f"  astroflax tune {task} --study-dir {study_dir} --resume")
    return typer.Exit(130 if signal_name == "SIGINT" else 143)


def _search(runner: Any, study_dir: Path, url: str, workers: int, task: str) -> None:
    """Run the trials: in this process (one worker) or in ``workers`` worker processes."""
    from astroflax.train.signals import GracefulStop
    from astroflax.tune.runner import TrialInterrupted, start_workers, watch_workers

    line = lambda frozen: err.print(_trial_line(frozen, runner.spec, runner.space), markup=False, highlight=False)
    with GracefulStop() as stop:
        if workers == 1:
            try:
                runner.work(on_trial=line, should_stop=lambda: stop.requested)
            except TrialInterrupted as exc:
                raise _stopped(exc.signal_name, "; the trial's checkpoint is saved", task, study_dir) from None
            if stop.requested:
                raise _stopped(stop.name, " between trials", task, study_dir)
            return
        procs = start_workers(study_dir, url, workers)
        codes = watch_workers(procs, runner.study, line, lambda: stop.name if stop.requested else None, err)
        if stop.requested:
            raise _stopped(stop.name, "; the workers checkpointed their trials", task, study_dir)
        failed = [i for i, c in codes.items() if c > 0]
        if failed:
            err.print(f"[red]worker(s) {', '.join(map(str, failed))} failed[/]; logs in {study_dir / 'workers'}")


def _finish(study_dir: Path, runner: Any, evaluate_after: bool) -> None:
    """Table of the best trials, best_config.yaml, test figures of the best and baseline trials, report."""
    from astroflax.tune.report import best_trial, write_best_config, write_study_report
    from astroflax.tune.runner import trial_counts

    counts = trial_counts(runner.study)
    err.print("Trials: " + ", ".join(f"{n} {s}" for s, n in counts.items() if n))
    best = best_trial(runner.study)
    if best is None:
        report = write_study_report(study_dir, runner.study, runner.spec, runner.space)
        err.print(f"No trial completed. Wrote {report}")
        raise typer.Exit(1)
    _print_best(runner, 5)
    path = write_best_config(study_dir, best)
    if evaluate_after:
        baseline = next((t for t in runner.study.get_trials(deepcopy=False) if t.user_attrs.get("baseline")
                         and t.state.name == "COMPLETE"), None)
        for label, t in (("best", best), ("baseline", baseline)):
            if t is not None and (label == "best" or t.number != best.number):
                _evaluate_trial(study_dir, t, label, runner.spec)
    report = write_study_report(study_dir, runner.study, runner.spec, runner.space)
    if path is not None:
        err.print(f"Best config: {path}  (astroflax train {runner.spec.task} --config {path})")
    err.print(f"Wrote {report}")


def _evaluate_trial(study_dir: Path, trial: Any, label: str, spec: Any) -> None:
    """Test-split figures of a trial's best checkpoint (the study chose it on validation only)."""
    from astroflax.cli.evaluate import write_run_report
    from astroflax.evaluate.runner import evaluate_run, save_evaluation
    from astroflax.runs import load_run

    run_dir = study_dir / trial.user_attrs["run_dir"]
    run = load_run(run_dir, "best")
    ev = evaluate_run(run, "test")
    save_evaluation(ev)
    write_run_report(run_dir, run, ev.dataset)
    shown = {k: v for k, v in ev.report.items() if isinstance(v, float)}
    top = "  ".join(f"{k} {v:.4g}" for k, v in list(shown.items())[:6])
    err.print(f"test split, {label} trial {trial.number}: {top}", markup=False, highlight=False)


def _print_best(runner: Any, top: int) -> None:
    from rich.table import Table

    from astroflax.cli.common import wide_out
    from astroflax.tune.report import trial_rows

    rows = [r for r in trial_rows(runner.study, runner.spec, runner.space) if r["state"] == "complete"][:top]
    keys = list(runner.space.params)
    table = Table(title=f"best trials of {runner.spec.name} ({runner.spec.metric}, {runner.spec.direction})")
    for h in ["trial", runner.spec.metric, *keys, "steps", "time (s)"]:
        table.add_column(h)
    for r in rows:
        table.add_row(str(r["number"]) + (" (baseline)" if r["baseline"] else ""), f"{r['value']:.5g}",
                      *[_short(r["params"].get(k, "—")) for k in keys], str(r["steps"]), str(r["wall_time_s"]))
    wide_out().print(table)


# ---------------------------------------------------------------------------- show


@tune_app.command("show")
def show(
    target: Annotated[str, typer.Argument(help="study directory or name")],
    storage: Annotated[Optional[str], typer.Option("--storage", help="the study's storage URL (if not the default)")] = None,
    top: Annotated[int, typer.Option("--top", help="how many of the best trials to list")] = 10,
    html: Annotated[bool, typer.Option("--html/--no-html", help="rewrite the study's HTML report")] = False,
) -> None:
    """Print the best trials of a study (and rewrite its report with --html)."""
    from astroflax.tune.runner import StudyRunner
    from astroflax.tune.study import find_study_dir

    study_dir = find_study_dir(target)
    if study_dir is None and storage and "/" not in target:
        _show_from_storage(target, storage, top)  # a study run on other machines: its records only
        return
    if study_dir is None:
        raise ConfigError(f"{target}: no such study directory (nor runs/studies/{target})"
                          + ("" if storage else "; give --storage URL for a study whose directory is elsewhere"))
    from astroflax.tune.study import StudySpec

    runner = StudyRunner(study_dir, _study_url(study_dir, StudySpec.load(study_dir), storage), console=err)
    from astroflax.tune.runner import trial_counts

    err.print("Trials: " + ", ".join(f"{n} {s}" for s, n in trial_counts(runner.study).items() if n))
    _print_best(runner, top)
    if html:
        from astroflax.tune.report import write_study_report

        err.print(f"Wrote {write_study_report(study_dir, runner.study, runner.spec, runner.space)}")


def _show_from_storage(name: str, storage: str, top: int) -> None:
    """The best trials of study NAME read from its storage alone (no study directory here)."""
    import optuna
    from rich.table import Table

    from astroflax.cli.common import wide_out
    from astroflax.tune import quiet_optuna
    from astroflax.tune.study import open_storage, public_url, storage_url

    quiet_optuna()
    url = storage_url(Path("."), storage)
    try:
        study = optuna.load_study(study_name=name, storage=open_storage(url))
    except KeyError:
        raise ConfigError(f"study {name!r} is not in the storage {public_url(url)}") from None
    sign = 1.0 if study.direction == optuna.study.StudyDirection.MINIMIZE else -1.0
    done = sorted((t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"),
                  key=lambda t: (sign * t.value, t.number))[:top]
    keys = sorted({k for t in done for k in t.params})
    table = Table(title=f"best trials of {name} ({study.direction.name.lower()})")
    for h in ["trial", "value", *keys]:
        table.add_column(h)
    for t in done:
        table.add_row(str(t.number), f"{t.value:.5g}", *[_short(t.params.get(k, "—")) for k in keys])
    wide_out().print(table)


# -------------------------------------------------------------------------- worker


@tune_app.command("worker", hidden=True)
def worker(
    study_dir: Annotated[Path, typer.Argument(help="study directory")],
    worker_id: Annotated[int, typer.Option("--worker-id")] = 0,
) -> None:
    """Run trials of a study until its budget is met (started by ``tune --workers K``)."""
    from astroflax.train.signals import GracefulStop
    from astroflax.tune.runner import StudyRunner, TrialInterrupted
    from astroflax.tune.study import STORAGE_ENV, StudySpec

    url = _study_url(study_dir, StudySpec.load(study_dir), os.environ.get(STORAGE_ENV))
    runner = StudyRunner(study_dir, url, worker=worker_id, console=err)
    with GracefulStop() as stop:
        try:
            ran = runner.work(on_trial=lambda t: err.print(_trial_line(t, runner.spec, runner.space), markup=False),
                              should_stop=lambda: stop.requested)
        except TrialInterrupted as exc:
            raise typer.Exit(130 if exc.signal_name == "SIGINT" else 143) from None
    err.print(f"worker {worker_id}: ran {ran} trial(s)")
