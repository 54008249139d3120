"""Commands that inspect before (or without) training: ``tasks``, ``config show``,
``schedule``, ``optimizers compare`` and ``check``."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from astroflax.cli.common import (
    STATUS_STYLE,
    Overrides,
    Preset,
    checkpoint_option,
    config_option,
    err,
    fmt,
    out,
    out_option,
    preset_option,
    require_parent_dir,
    resolve_config,
    resolve_target,
    set_option,
    status,
    wide_out,
)
from astroflax.errors import AstroflaxError, ConfigError

config_app = typer.Typer(no_args_is_help=True, help="Inspect experiment configs.")
optimizers_app = typer.Typer(no_args_is_help=True, help="Compare optimisers.")


# --------------------------------------------------------------------------- tasks


def tasks() -> None:
    """List the available tasks."""
    from astroflax.tasks import all_tasks

    table = Table(title="astroflax tasks")
    table.add_column("task", style="bold")
    table.add_column("presets")
    table.add_column("description")
    for name, task in all_tasks().items():
        table.add_row(name, ", ".join(task.presets), task.description)
    out.print(table)


# --------------------------------------------------------------------- config show


@config_app.command("show")
def config_show(
    task: Annotated[str, typer.Argument(help="task name")],
    preset: preset_option(None) = None,
    config: config_option(None) = None,
    overrides: set_option(None) = [],
) -> None:
    """Print the fully resolved config as YAML."""
    sys.stdout.write(resolve_config(task, preset, config, overrides).to_yaml())


# ------------------------------------------------------------------------ schedule


def schedule(
    config_or_task: Annotated[str, typer.Argument(help="a YAML config file or a task name")],
    steps: Annotated[Optional[int], typer.Option(
        "--steps", "-n", min=1, help="steps to plot (default train.steps)")] = None,
    out_path: out_option("PNG file for the plot") = Path("lr.png"),
    preset: Preset = None,
    overrides: set_option("override, e.g. --set schedule.name=cosine") = [],
) -> None:
    """Plot the learning rate against step and print it at a few steps."""
    import numpy as np

    from astroflax.train.optim import lr_curve

    cfg = resolve_target(config_or_task, preset, overrides).cfg
    total = steps or cfg.train.steps
    if total is None:
        raise ConfigError("train.steps is not set (the run length is given in epochs); pass --steps N")
    require_parent_dir(out_path, "--out")
    lrs = lr_curve(cfg.optim, cfg.schedule, total)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(np.arange(total), lrs)
    ax.set_xlabel("step")
    ax.set_ylabel("learning rate")
    ax.set_title(f"{cfg.task}: {cfg.schedule.name}, peak {cfg.optim.lr:g}, warm-up {cfg.schedule.warmup_steps}")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_path, dpi=110)
    plt.close(fig)
    marks = sorted({0, cfg.schedule.warmup_steps if cfg.schedule.warmup_steps < total else 0,
                    total // 4, total // 2, (3 * total) // 4, total - 1})
    table = Table(title=f"learning rate ({cfg.schedule.name}, {total} steps)")
    table.add_column("step", justify="right")
    table.add_column("lr", justify="right")
    for s in marks:
        table.add_row(str(s), f"{lrs[s]:.6g}")
    out.print(table)
    err.print(f"Wrote {out_path}")


# -------------------------------------------------------------- optimizers compare


@optimizers_app.command("compare")
def compare(
    steps: Annotated[int, typer.Option("--steps", "-n", min=1, help="optimisation steps per optimiser")] = 500,
    out_path: out_option("PNG file for the trajectory plot") = Path("traj.png"),
    names: Annotated[list[str], typer.Option("--optimizer", help="only these optimisers (repeatable)")] = [],
    start: Annotated[tuple[float, float], typer.Option("--start", help="start point x y")] = (-1.5, 2.0),
) -> None:
    """Run each optimiser on the Rosenbrock function from the same start; table + trajectory plot."""
    from astroflax.optim_compare import DEFAULT_LRS, compare_optimizers, plot_trajectories

    require_parent_dir(out_path, "--out")
    chosen = list(names) or list(DEFAULT_LRS)
    unknown = [n for n in chosen if n not in DEFAULT_LRS]
    if unknown:
        raise ConfigError(f"--optimizer {unknown[0]!r}: choose from {', '.join(DEFAULT_LRS)}")
    results = compare_optimizers(chosen, steps, start)
    table = Table(title=f"Rosenbrock from ({start[0]:g}, {start[1]:g}), {steps} steps (minimum 0 at (1, 1))")
    for col in ("optimiser", "lr", "final loss", "x", "y"):
        table.add_column(col, justify="left" if col == "optimiser" else "right")
    for r in results:
        table.add_row(r.name, f"{r.lr:g}", f"{r.final_loss:.3e}", f"{r.final[0]:.4f}", f"{r.final[1]:.4f}")
    out.print(table)
    plot_trajectories(results, out_path, start)
    err.print(f"Wrote {out_path}")


# --------------------------------------------------------------------------- check


def _print_results(results, checklist, console) -> None:
    for r in results:
        console.print(f"\n[bold]{r.name}[/] ({status(r.status)}): {r.summary}", highlight=False)
        table = Table(header_style="bold")
        for col in r.columns:
            table.add_column(col, overflow="fold")
        for row in r.rows:
            table.add_row(*[status(c) if c in STATUS_STYLE else str(c) for c in row])
        console.print(table)
        for note in r.notes:
            console.print(f"  {status(r.status)}: {note}")
    console.print("\n[bold]astroflax check: summary[/]")
    summary = Table(header_style="bold")
    summary.add_column("check")
    summary.add_column("status")
    summary.add_column("result", overflow="fold")
    for r in results:
        summary.add_row(r.name, status(r.status), r.summary)
    console.print(summary)
    if checklist is not None:
        console.print("\n[bold]Deployment checklist[/]")
        table = Table(header_style="bold")
        for col in ("item", "status", "value", "detail"):
            table.add_column(col, overflow="fold")
        for item in checklist:
            table.add_row(item["name"], status(item["status"]), fmt(item["value"]), item["detail"])
        console.print(table)


def _save_checklist(run_dir: Path, items: list, step: int) -> None:
    from astroflax.diagnostics.checklist import save_checklist
    from astroflax.report import write_report

    try:
        save_checklist(run_dir, items, step)
        err.print(f"Wrote {write_report(run_dir)}")
    except OSError as exc:  # a read-only run directory: the check itself still counts
        err.print(f"checklist not saved in {run_dir}: {exc}", highlight=False, markup=False)


def check(
    target: Annotated[str, typer.Argument(help="a task name, a YAML config file or a run directory")],
    preset: Preset = None,
    overrides: Overrides = [],
    batch_size: Annotated[int, typer.Option(
        "--batch-size", min=1, help="examples in the small batch the model checks use")] = 16,
    overfit_steps: Annotated[int, typer.Option(
        "--overfit-steps", min=1, help="steps allowed to cut the loss 10x")] = 200,
    grad_samples: Annotated[int, typer.Option(
        "--grad-samples", min=1, help="parameters compared with finite differences")] = 16,
    checkpoint: checkpoint_option("checkpoint for the deployment checklist (run dirs)") = "best",
    checklist: Annotated[bool, typer.Option(
        "--checklist/--no-checklist", help="run the deployment checklist (run dirs)")] = True,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="also write all results to this JSON file")] = None,
) -> None:
    """Diagnose a model + data before training (and a run's deployment checklist); exit 1 if a check fails.

    Model checks run on a freshly initialised model from the config (for a run directory:
    its saved config) on one small training batch: parameter summary, float64 gradient
    check, per-layer gradient health, overfitting one batch; then data checks on every split.
    """
    from astroflax.diagnostics.checks import run_diagnostics

    console = wide_out()
    if json_out is not None:
        require_parent_dir(json_out, "--json")
    target_run = resolve_target(target, preset, overrides)
    cfg, run_dir = target_run.cfg, target_run.run_dir
    if target_run.ensemble and checklist:
        raise AstroflaxError(f"{run_dir} is an ensemble: the deployment checklist is per run; check a member "
                             f"directory instead, or pass --no-checklist")
    results = run_diagnostics(cfg, batch_size=batch_size, overfit_steps=overfit_steps, grad_samples=grad_samples)
    items = None
    if run_dir is not None and checklist:
        from astroflax.diagnostics.checklist import run_checklist
        from astroflax.runs import load_run

        run = load_run(run_dir, checkpoint)
        items = run_checklist(run_dir, checkpoint, run=run)
    _print_results(results, items, console)
    if items is not None and checkpoint == "best":  # the run's report shows the best checkpoint's checklist
        _save_checklist(run_dir, items, run.step)
    failed = [r.name for r in results if r.status == "fail"] + [i["name"] for i in items or [] if i["status"] == "fail"]
    if json_out is not None:
        payload = {"task": cfg.task, "checks": [r.to_dict() for r in results], "checklist": items, "failed": failed}
        json_out.write_text(json.dumps(payload, indent=1, default=str))
    if failed:
        console.print(f"[bold red]FAILED[/]: {', '.join(failed)}")
        raise typer.Exit(1)
    console.print("[green]All checks passed.[/]")
