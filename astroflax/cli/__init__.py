"""The ``astroflax`` command line (typer + rich).

User mistakes (bad paths, config keys, data) end in one line on stderr and exit code 2;
``--debug`` shows the traceback instead.

The commands live in one module per group: :mod:`~astroflax.cli.train` (train, ensemble,
finetune), :mod:`~astroflax.cli.evaluate` (evaluate, calibrate, predict, sample),
:mod:`~astroflax.cli.inspect` (tasks, config show, schedule, optimizers compare, check) and
:mod:`~astroflax.cli.export`; :mod:`~astroflax.cli.common` holds what they share. Command
modules import JAX, Flax and the trainer inside their commands, so ``astroflax --help``
stays fast, and never import this module (it imports them).
"""

from __future__ import annotations

import sys

import typer
from typer._click import exceptions as click_exc  # typer >= 0.29 vendors click

from astroflax.cli import evaluate as _evaluate_cmds
from astroflax.cli import export as _export_cmds
from astroflax.cli import inspect as _inspect_cmds
from astroflax.cli import train as _train_cmds
from astroflax.cli.common import Debug, err, out
from astroflax.errors import AstroflaxError

__all__ = ["app", "main"]

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Train, evaluate, checkpoint and report neural networks for astronomy (JAX/Flax/Optax/Orbax/Grain).",
)

_STATE = {"debug": False}

EXIT_USAGE = 2


@app.callback()
def _root(debug: Debug = False) -> None:
    _STATE["debug"] = debug


# The order here is the order of `astroflax --help` (command groups are listed after commands).
for _command in (
    _train_cmds.train,
    _evaluate_cmds.evaluate,
    _evaluate_cmds.predict,
    _inspect_cmds.tasks,
    _evaluate_cmds.sample,
    _inspect_cmds.schedule,
    _train_cmds.finetune,
    _train_cmds.ensemble,
    _evaluate_cmds.calibrate,
    _inspect_cmds.check,
    _export_cmds.export,
):
    app.command()(_command)
app.add_typer(_inspect_cmds.config_app, name="config")
app.add_typer(_inspect_cmds.optimizers_app, name="optimizers")
del _command


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
