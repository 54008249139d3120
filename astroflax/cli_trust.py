"""Trust commands: ``ensemble`` (deep ensembles) and ``calibrate`` (temperature scaling).

Registered through ``EXTRA_COMMAND_MODULES`` in :mod:`astroflax.cli`; heavy imports happen
inside the commands so ``astroflax --help`` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.table import Table

from astroflax.errors import AstroflaxError


def _fmt(v: Any) -> str:
    return "n/a" if v is None else (f"{v:.4f}" if isinstance(v, float) else str(v))


def calibration_table(before: dict, after: dict, title: str) -> Table:
    table = Table(title=title, header_style="bold")
    for col in ("metric", "before", "after"):
        table.add_column(col, justify="left" if col == "metric" else "right")
    for key in ("accuracy", "log_loss", "flat_weighted_log_loss", "ece"):
        if key in before:
            table.add_row(key, _fmt(before.get(key)), _fmt(after.get(key)))
    return table


def print_trust_summary(report: dict, console: Console) -> None:
    """Calibration before/after, uncertainty comparison and the report path of an evaluation."""
    cal = report.get("calibration")
    if cal:
        console.print(calibration_table(cal["before"], cal["after"],
                                        f"calibration on {report.get('split')}: {cal['note']}"))
    methods = (report.get("uncertainty") or {}).get("methods") or {}
    if len(methods) > 1:
        first = next(iter(methods.values()))
        cols = [k for k in ("accuracy", "log_loss", "ece") if k in first] or [k for k in first if k != "loss"][:7]
        cols.append("loss")
        table = Table(title=f"uncertainty methods on {report.get('split')}", header_style="bold")
        table.add_column("method")
        for c in cols:
            table.add_column(c, justify="right")
        for name, m in methods.items():
            table.add_row(name, *[_fmt(m.get(c)) for c in cols])
        console.print(table)
    if report.get("report_path"):
        console.print(f"Wrote {report['report_path']}")


def register(app: typer.Typer) -> None:
    @app.command()
    def ensemble(
        task: str = typer.Argument(..., help="task name (see `astroflax tasks`)"),
        members: int = typer.Option(5, "--members", "-n", help="number of members (seeds seed, seed+1, ...)"),
        preset: Optional[str] = typer.Option(None, "--preset", "-p", help="preset: quick or full"),
        config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML config file"),
        overrides: list[str] = typer.Option([], "--set", "-s", help="override, e.g. --set optim.lr=3e-4 (repeatable)"),
        run_dir: Optional[Path] = typer.Option(None, "--run-dir", help="ensemble directory (default runs/<task>-<preset>-ensemble)"),
        evaluate_after: bool = typer.Option(True, "--evaluate/--no-evaluate", help="evaluate the ensemble on the test split"),
    ) -> None:
        """Train a deep ensemble: N runs of TASK with different seeds in RUN_DIR/member-<i>; re-running resumes."""
        from astroflax.cli import _evaluate, err
        from astroflax.evaluate.uncertainty import train_ensemble

        if config is not None and not config.is_file():
            raise AstroflaxError(f"--config {config}: no such file")
        run_dir = run_dir or Path("runs") / f"{task}-{preset or 'quick'}-ensemble"
        spec = train_ensemble(task, members, run_dir, preset, config, overrides, console=err)
        if "interrupted" in spec:
            err.print(f"[yellow]Stopped by {spec['interrupted']['signal']} in {spec['interrupted']['member']}.[/] "
                      f"Re-run the same command to resume.")
            raise typer.Exit(130 if spec["interrupted"]["signal"] == "SIGINT" else 143)
        err.print(f"Trained {members} members in {run_dir}")
        if evaluate_after:
            _evaluate(run_dir, "test", "best")
        else:
            from astroflax.report import write_report

            err.print(f"Wrote {write_report(run_dir)}")

    @app.command()
    def calibrate(
        run_dir: Path = typer.Argument(..., help="run or ensemble directory"),
        checkpoint: str = typer.Option("best", "--checkpoint", help="best, latest or a step number"),
        method: str = typer.Option(
            "temperature", "--method",
            help="temperature (keeps predicted classes) or prior_temperature (first undo the loss's class "
                 "weighting: calibrated to training-set class frequencies; changes predicted classes)",
        ),
    ) -> None:
        """Fit temperature scaling on the validation split; saves RUN_DIR/calibration.json for that checkpoint."""
        from astroflax.cli import out
        from astroflax.evaluate.calibration import METHODS, calibrate_run
        from astroflax.evaluate.uncertainty import open_run
        from astroflax.report import write_report

        if method not in METHODS:
            raise AstroflaxError(f"--method {method!r}: choose from {', '.join(METHODS)}")
        run = open_run(run_dir, checkpoint)
        record = calibrate_run(run, save=True, method=method)
        if record is None:
            raise AstroflaxError(f"{run_dir}: task {run.task.name!r} does not output class probabilities; "
                                 "temperature scaling applies to classifiers only")
        out.print(calibration_table(record["val_before"], record["val_after"],
                                    f"{record['method']}: T = {record['temperature']:.4g} on val, "
                                    f"checkpoint {record['checkpoint_step']}"))
        out.print(f"Wrote {record['path']}")
        out.print(f"Wrote {write_report(run.run_dir)}")
