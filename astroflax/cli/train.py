"""Commands that train: ``train``, ``ensemble`` and ``finetune``."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from astroflax.cli.common import (
    ConfigFile,
    Overrides,
    Preset,
    TaskName,
    checkpoint_option,
    err,
    evaluate_option,
    preset_option,
    require_file,
    resolve_config,
    run_dir_option,
    set_option,
)
from astroflax.cli.evaluate import show_evaluation, write_run_report
from astroflax.train.signals import GracefulStop, InterruptedTwice


def _signal_exit_code(signal: str) -> int:
    return 130 if signal == "SIGINT" else 143


def _latest_step_on_disk(run_dir: Path | None) -> int | None:
    """The newest committed step directory of a run (Orbax names committed steps by their number)."""
    ckpt_dir = run_dir / "checkpoints" if run_dir is not None else None
    try:
        steps = [int(p.name) for p in ckpt_dir.iterdir() if p.is_dir() and p.name.isdigit()] if ckpt_dir else []
    except OSError:
        steps = []
    return max(steps) if steps else None


def _interrupted_twice(run_dir: Path | None, kept: str | None = None) -> typer.Exit:
    """Say which checkpoints survive a double Ctrl-C, then leave at once with exit code 130.

    ``os._exit``: the second signal can land in the middle of an asynchronous save, and letting
    the interpreter shut down around Orbax's still-running threads can crash it (SIGSEGV).
    Committed checkpoints are complete on disk; a partial step is never listed.
    """
    import os
    import sys

    if kept is None:
        step = _latest_step_on_disk(run_dir)
        kept = f"checkpoints up to step {step} are intact" if step is not None else "no checkpoint had been written yet"
    err.print(f"interrupted twice: stopped without saving; {kept}", highlight=False, markup=False)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(130)


def _stopped_after_training(signum_name: str, run_dir: Path, step: int) -> typer.Exit:
    err.print(f"Stopped by {signum_name} after training finished at step {step}; checkpoints are saved, the "
              f"evaluation was skipped. Run it with:\n  astroflax evaluate {run_dir}", highlight=False, markup=False)
    return typer.Exit(_signal_exit_code(signum_name))


def _finish(run_dir: Path, evaluate_after: bool) -> None:
    """Evaluate the best checkpoint on the test split, or only write the checklist and HTML report."""
    if evaluate_after:
        show_evaluation(run_dir, "test", "best")
    else:
        err.print(f"Wrote {write_run_report(run_dir)}")


# --------------------------------------------------------------------------- train


def train(
    task: TaskName,
    preset: Preset = None,
    config: ConfigFile = None,
    overrides: Overrides = [],
    run_dir: run_dir_option("run directory (default runs/<task>-<preset>)") = None,
    resume: Annotated[Optional[bool], typer.Option(
        "--resume/--no-resume", help="continue from the latest checkpoint (default: automatic if one exists)"
    )] = None,
    evaluate_after: evaluate_option("evaluate the best checkpoint on the test split") = True,
    data: Annotated[Optional[str], typer.Option(
        "--data", help="a converted dataset directory (astroflax data convert, streamed from disk) or the "
        "task's user data (data.path)")] = None,
    distributed: Annotated[Optional[bool], typer.Option(
        "--distributed/--no-distributed", help="join a multi-process run with jax.distributed (SLURM, Open MPI, "
        "TPU, Kubernetes detected; default: automatic inside a multi-task SLURM/Open MPI job); see "
        "docs/distributed.md")] = None,
    coordinator: Annotated[Optional[str], typer.Option(
        "--coordinator", help="HOST:PORT of process 0 (with --num-processes and --process-id; env "
        "ASTROFLAX_COORDINATOR)")] = None,
    num_processes: Annotated[Optional[int], typer.Option(
        "--num-processes", help="processes in the run (env ASTROFLAX_NUM_PROCESSES)", min=1)] = None,
    process_id: Annotated[Optional[int], typer.Option(
        "--process-id", help="this process, 0..N-1 (env ASTROFLAX_PROCESS_ID)", min=0)] = None,
    heartbeat_timeout: Annotated[Optional[int], typer.Option(
        "--heartbeat-timeout", help="seconds without a heartbeat after which a process counts as dead and the "
        "others stop (default 60; env ASTROFLAX_HEARTBEAT_TIMEOUT)", min=1)] = None,
) -> None:
    """Train TASK; checkpoints, metrics and the evaluation land in the run directory."""
    from astroflax.train.distributed import DistributedOptions, initialize

    # Before anything starts a JAX backend; a single process does not join (plain run).
    joined = initialize(DistributedOptions.from_env(
        enabled=distributed, coordinator=coordinator, num_processes=num_processes, process_id=process_id,
        heartbeat_timeout=heartbeat_timeout))
    multi, primary = False, True
    if joined:
        import jax

        multi, primary = jax.process_count() > 1, jax.process_index() == 0
    cfg = None
    if data is not None:
        from astroflax.cli.data import data_path_override
        from astroflax.data.store import is_store

        overrides = [*overrides, f"dataset={Path(data).absolute()}" if is_store(data) else data_path_override(task, data)]
    # Signals are recorded from here on (a Ctrl-C during start-up stops the run after its first step).
    with GracefulStop(startup=True) as guard:
        try:
            from astroflax.train.loop import train as run_training

            cfg = resolve_config(task, preset, config, overrides, run_dir=run_dir, resume=resume)
            result = run_training(cfg, resume=resume, console=err)
        except InterruptedTwice:
            raise _interrupted_twice(cfg.resolved_run_dir() if cfg is not None else run_dir) from None
        except Exception as exc:
            from astroflax.train.distributed import exit_lost_peer, is_lost_peer

            if multi and is_lost_peer(exc) and "--debug" not in sys.argv:  # a dead process, not a bug
                exit_lost_peer(exc, cfg.resolved_run_dir() if cfg is not None else run_dir)
            raise
    resume_cmd = f"astroflax train {cfg.task} --run-dir {result.run_dir} --resume"
    if multi:
        resume_cmd += "  (on every process, with the same launch and distributed options)"
    if result.stopped_by and result.stopped_by.startswith("SIG"):
        err.print(
            f"[yellow]Stopped by {result.stopped_by} at step {result.step}/{result.total_steps}; "
            f"checkpoint saved.[/] Resume with:\n  {resume_cmd}"
        )
        raise typer.Exit(_signal_exit_code(result.stopped_by))
    if guard.requested:  # a signal after the loop had finished: do not start the evaluation
        raise _stopped_after_training(guard.name, result.run_dir, result.step)
    if primary:  # the other processes of a multi-process run report only warnings, errors and stops
        err.print(
            f"Finished at step {result.step} in {result.wall_time:.1f} s"
            + (f" (early stopping; best step {result.best_step})" if result.stopped_by == "early_stopping" else "")
        )
    if multi:
        # The evaluation commands run on one process; the checkpoint opens on any device count.
        if primary and evaluate_after:
            err.print(f"Evaluation is not run inside a multi-process job; run it on one process with:\n"
                      f"  astroflax evaluate {result.run_dir}", highlight=False, markup=False)
        return
    _finish(result.run_dir, evaluate_after)


# ------------------------------------------------------------------------ ensemble


def ensemble(
    task: TaskName,
    members: Annotated[int, typer.Option("--members", "-n", help="number of members (seeds seed, seed+1, ...)")] = 5,
    preset: Preset = None,
    config: ConfigFile = None,
    overrides: Overrides = [],
    run_dir: run_dir_option("ensemble directory (default runs/<task>-<preset>-ensemble)") = None,
    evaluate_after: evaluate_option("evaluate the ensemble on the test split") = True,
    from_study: Annotated[Optional[str], typer.Option(
        "--from-study", help="take the N best trials of this study (directory or name) instead of training")] = None,
    storage: Annotated[Optional[str], typer.Option("--storage", help="the study's storage URL (with --from-study)")] = None,
) -> None:
    """Train a deep ensemble: N runs of TASK with different seeds in RUN_DIR/member-<i>; re-running resumes.
    With --from-study, the N best trials of a study become the members."""
    require_file(config, "--config")
    run_dir = run_dir or Path("runs") / f"{task}-{preset or 'quick'}-ensemble"
    if from_study is not None:
        from astroflax.ensembles import ensemble_from_study

        spec = ensemble_from_study(task, from_study, members, run_dir, storage)
        err.print(f"Ensemble of trials {', '.join(map(str, spec['from_study']['trials']))} of study "
                  f"{spec['from_study']['study_dir']} in {run_dir}")
        _finish(run_dir, evaluate_after)
        return
    with GracefulStop(startup=True) as guard:
        try:
            from astroflax.ensembles import train_ensemble

            spec = train_ensemble(task, members, run_dir, preset, config, overrides, console=err)
        except InterruptedTwice:
            _interrupted_twice(run_dir, f"the members' earlier checkpoints in {run_dir} are intact; re-run the "
                                        "same command to resume")
    if "interrupted" in spec:
        err.print(f"[yellow]Stopped by {spec['interrupted']['signal']} in {spec['interrupted']['member']}.[/] "
                  f"Re-run the same command to resume.")
        raise typer.Exit(_signal_exit_code(spec["interrupted"]["signal"]))
    if guard.requested:
        err.print(f"Stopped by {guard.name} after the last member finished; the evaluation was skipped. "
                  f"Run it with:\n  astroflax evaluate {run_dir}", highlight=False, markup=False)
        raise typer.Exit(_signal_exit_code(guard.name))
    err.print(f"Trained {members} members in {run_dir}")
    _finish(run_dir, evaluate_after)


# ------------------------------------------------------------------------ finetune


def finetune(
    source: Annotated[Path, typer.Argument(help="run directory (or export directory) to take the parameters "
                                           "from; 'pretrained': the model shipped for --task")],
    task: Annotated[str, typer.Option("--task", "-t", help="task to fine-tune on")],
    data: Annotated[Optional[str], typer.Option("--data", help="data.path for the new task (user data)")] = None,
    freeze: Annotated[list[str], typer.Option(
        "--freeze", help="regex of parameter paths to freeze (repeatable)")] = [],
    head_only: Annotated[bool, typer.Option("--head-only", help="train only parameters matching --head")] = False,
    head: Annotated[str, typer.Option("--head", help="regex of the head's parameter paths (with --head-only)")] = "head",
    checkpoint: checkpoint_option("checkpoint of SOURCE: best, latest or a step") = "best",
    preset: preset_option("preset of the new run") = None,
    overrides: set_option("override, e.g. --set optim.lr=3e-4") = [],
    run_dir: run_dir_option("new run directory (default SOURCE-ft-TASK)") = None,
    evaluate_after: evaluate_option("evaluate on the test split") = True,
) -> None:
    """Fine-tune: restore matching parameters of SOURCE, re-initialise the rest, train a new run."""
    with GracefulStop(startup=True) as guard:
        try:
            from astroflax.finetune import finetune as run_finetune

            result, match = run_finetune(
                source, task, data=data, freeze=list(freeze), head_only=head_only, head=head, checkpoint=checkpoint,
                preset=preset, overrides=list(overrides), run_dir=run_dir, console=err,
            )
        except InterruptedTwice:
            raise _interrupted_twice(run_dir or source.with_name(f"{source.name}-ft-{task}")) from None
    if result.stopped_by and result.stopped_by.startswith("SIG"):
        err.print(f"[yellow]Stopped by {result.stopped_by} at step {result.step}/{result.total_steps}; "
                  f"checkpoint saved in {result.run_dir}.[/]")
        raise typer.Exit(_signal_exit_code(result.stopped_by))
    if guard.requested:
        raise _stopped_after_training(guard.name, result.run_dir, result.step)
    err.print(f"Finished fine-tuning at step {result.step} in {result.wall_time:.1f} s; run directory {result.run_dir}")
    if evaluate_after:
        show_evaluation(result.run_dir, "test", "best")
