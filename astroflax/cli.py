"""The ``astroflax`` command line (typer + rich).

User mistakes (bad paths, config keys, data) end in one line on stderr and exit code 2;
``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer
import yaml
from typer._click import exceptions as click_exc  # typer >= 0.29 vendors click
from rich.console import Console
from rich.table import Table

from astroflax.errors import AstroflaxError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Train, evaluate, checkpoint and report neural networks for astronomy (JAX/Flax/Optax/Orbax/Grain).",
)
config_app = typer.Typer(no_args_is_help=True, help="Inspect experiment configs.")
app.add_typer(config_app, name="config")

out = Console()
err = Console(stderr=True, soft_wrap=True)
_STATE = {"debug": False}

EXIT_USAGE = 2


@app.callback()
def _root(debug: bool = typer.Option(False, "--debug", help="show full tracebacks on errors")) -> None:
    _STATE["debug"] = debug


def _require_file(path: Optional[Path], what: str) -> None:
    if path is not None and not path.is_file():
        raise AstroflaxError(f"{what} {path}: no such file")


# --------------------------------------------------------------------------- train


@app.command()
def train(
    task: str = typer.Argument(..., help="task name (see `astroflax tasks`)"),
    preset: Optional[str] = typer.Option(None, "--preset", "-p", help="preset: quick or full"),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML config file"),
    overrides: list[str] = typer.Option([], "--set", "-s", help="override, e.g. --set optim.lr=3e-4 (repeatable)"),
    run_dir: Optional[Path] = typer.Option(None, "--run-dir", help="run directory (default runs/<task>-<preset>)"),
    resume: Optional[bool] = typer.Option(
        None, "--resume/--no-resume", help="continue from the latest checkpoint (default: automatic if one exists)"
    ),
    evaluate_after: bool = typer.Option(True, "--evaluate/--no-evaluate", help="evaluate the best checkpoint on the test split"),
) -> None:
    """Train TASK; checkpoints, metrics and the evaluation land in the run directory."""
    from astroflax.config import build_config
    from astroflax.train.loop import train_and_evaluate

    _require_file(config, "--config")
    saved = run_dir / "config.yaml" if run_dir else None
    base = yaml.safe_load(saved.read_text()) if saved and saved.is_file() and resume is not False else None
    extra = {"run_dir": str(run_dir)} if run_dir else None
    cfg = build_config(task, preset, config, overrides, extra=extra, base=base)
    result = train_and_evaluate(cfg, resume=resume, console=err)
    resume_cmd = f"astroflax train {cfg.task} --run-dir {result.run_dir} --resume"
    if result.stopped_by and result.stopped_by.startswith("SIG"):
        err.print(
            f"[yellow]Stopped by {result.stopped_by} at step {result.step}/{result.total_steps}; "
            f"checkpoint saved.[/] Resume with:\n  {resume_cmd}"
        )
        raise typer.Exit(130 if result.stopped_by == "SIGINT" else 143)
    err.print(
        f"Finished at step {result.step} in {result.wall_time:.1f} s"
        + (f" (early stopping; best step {result.best_step})" if result.stopped_by == "early_stopping" else "")
    )
    if evaluate_after:
        _evaluate(result.run_dir, "test", "best")
    else:
        from astroflax.report import write_report

        err.print(f"Wrote {write_report(result.run_dir)}")


# ------------------------------------------------------------------------ evaluate


def _evaluate(run_dir: Path, split: str, checkpoint: str, mc_dropout: int = 0, weights: str = "raw") -> dict:
    from astroflax.cli_trust import print_trust_summary
    from astroflax.evaluate.runner import evaluate_run
    from astroflax.evaluate.tables import evaluation_table

    report = evaluate_run(run_dir, split, checkpoint, mc_dropout=mc_dropout, weights=weights)
    out.print(evaluation_table(report, f"{report['task']} — {split} split, checkpoint step {report['checkpoint_step']}"))
    out.print(f"Wrote {report['json_path']}")
    print_trust_summary(report, out)
    return report


@app.command()
def evaluate(
    run_dir: Path = typer.Argument(..., help="run directory"),
    split: str = typer.Option("test", "--split", help="train, val or test"),
    checkpoint: str = typer.Option("best", "--checkpoint", help="best, latest or a step number"),
    mc_dropout: int = typer.Option(0, "--mc-dropout", help="also judge MC-dropout with N stochastic passes"),
    weights: str = typer.Option("raw", "--weights", help="raw, ema or swa (averaged weights; see docs/optimisation.md)"),
) -> None:
    """Evaluate a checkpoint of RUN_DIR (a run or an ensemble) on a split: JSON, figures and report/index.html."""
    _evaluate(run_dir, split, checkpoint, mc_dropout, weights)


# ------------------------------------------------------------------------- predict


@app.command()
def predict(
    run_dir: Path = typer.Argument(..., help="run directory"),
    input: Path = typer.Option(..., "--input", "-i", help="input data (the task's layout, e.g. a directory of tables)"),
    output: Path = typer.Option(Path("predictions.csv"), "--output", "-o", help="CSV file to write"),
    checkpoint: str = typer.Option("best", "--checkpoint", help="best, latest or a step number"),
    weights: str = typer.Option("raw", "--weights", help="raw, ema or swa (averaged weights; see docs/optimisation.md)"),
    mc_dropout: int = typer.Option(0, "--mc-dropout", help="average N stochastic (dropout) passes instead"),
) -> None:
    """Predict with a trained run (or ensemble) on new data; writes one row per object.

    Classifier probabilities are temperature-scaled when the run's calibration.json matches the checkpoint.
    """
    from astroflax.evaluate.uncertainty import open_run, predict_outputs
    from astroflax.runs import write_predictions

    if not input.exists():
        raise AstroflaxError(f"--input {input}: no such file or directory")
    if not output.parent.exists() and str(output.parent) != "":
        raise AstroflaxError(f"--output {output}: directory {output.parent} does not exist")
    if (run_dir / "manifest.json").is_file():  # an `astroflax export` directory (docs/export_format.md)
        from astroflax.export.writer import predict_export_csv

        err.print(predict_export_csv(run_dir, input, output, checkpoint, weights, mc_dropout), markup=False)
        return
    run = open_run(run_dir, checkpoint, weights)
    arrays, ids = run.task.load_inputs(run.cfg, run.info, input)
    outputs, note = predict_outputs(run, arrays, mc_dropout, weights)
    if note:
        err.print(note, highlight=False, markup=False)
    rows = run.task.format_predictions(outputs, ids, run.info)
    write_predictions(output, rows)
    err.print(f"Wrote {len(rows)} predictions to {output} (checkpoint step {run.step})")


# --------------------------------------------------------------------------- tasks


@app.command()
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


@config_app.command("show")
def config_show(
    task: str = typer.Argument(..., help="task name"),
    preset: Optional[str] = typer.Option(None, "--preset", "-p"),
    config: Optional[Path] = typer.Option(None, "--config", "-c"),
    overrides: list[str] = typer.Option([], "--set", "-s"),
) -> None:
    """Print the fully resolved config as YAML."""
    from astroflax.config import build_config

    _require_file(config, "--config")
    sys.stdout.write(build_config(task, preset, config, overrides).to_yaml())


# ------------------------------------------------------------- more command modules

# Each module defines ``register(app: typer.Typer) -> None`` and imports heavy libraries
# inside its commands, so that ``astroflax --help`` stays fast.
EXTRA_COMMAND_MODULES: list[str] = ["astroflax.cli_sample", "astroflax.cli_optim", "astroflax.cli_trust", "astroflax.cli_check"]


def _register_extra_commands() -> None:
    import importlib

    for name in EXTRA_COMMAND_MODULES:
        importlib.import_module(name).register(app)


_register_extra_commands()


# ---------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> None:
    """Entry point: map user errors to one line and exit code 2."""
    try:
        rc = app(args=argv, standalone_mode=False)
        if isinstance(rc, int) and rc:
            sys.exit(rc)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        err.print("aborted")
        sys.exit(130)
    except click_exc.NoArgsIsHelpError as exc:
        out.print(exc.ctx.get_help() if exc.ctx else "astroflax --help")
        sys.exit(EXIT_USAGE)
    except click_exc.UsageError as exc:
        if _STATE["debug"]:
            raise
        msg = exc.format_message().replace("\n", " ")
        where = exc.ctx.command_path if exc.ctx else "astroflax"
        err.print(f"error: {msg} (see `{where} --help`)", highlight=False, markup=False)
        sys.exit(EXIT_USAGE)
    except (AstroflaxError, FileNotFoundError, NotADirectoryError, PermissionError) as exc:
        if _STATE["debug"] or "--debug" in (argv or sys.argv):
            raise
        err.print(f"error: {exc}", highlight=False, markup=False)
        sys.exit(EXIT_USAGE)
