"""The ``astroflax`` command line (typer + rich).

User mistakes (bad paths, config keys, data) end in one line on stderr and exit code 2;
``--debug`` shows the traceback instead.

The commands live in one module per group: :mod:`~astroflax.cli.train` (train, ensemble,
finetune), :mod:`~astroflax.cli.evaluate` (evaluate, calibrate, predict, sample),
:mod:`~astroflax.cli.inspect` (tasks, config show, schedule, optimizers compare, check),
:mod:`~astroflax.cli.tune` (tune, tune show), :mod:`~astroflax.cli.data` (data convert, data info),
:mod:`~astroflax.cli.export` and :mod:`~astroflax.cli.benchmark` (train, then compare with published
figures); :mod:`~astroflax.cli.common` holds what they share. Command
modules import JAX, Flax and the trainer inside their commands, so ``astroflax --help``
stays fast, and never import this module (it imports them).
"""

from __future__ import annotations

import errno
import signal
import sys
import threading
import warnings

from astroflax.launch import interrupted_at_start as _interrupted_while_importing
from astroflax.launch import interrupted_during_start_up

# Until main() runs (the imports below take a moment), a Ctrl-C must not print a traceback.
if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
    signal.signal(signal.SIGINT, _interrupted_while_importing)

import typer  # noqa: E402
from typer._click import exceptions as click_exc  # noqa: E402 - typer >= 0.29 vendors click

from astroflax.cli import benchmark as _benchmark_cmds  # noqa: E402
from astroflax.cli import data as _data_cmds  # noqa: E402
from astroflax.cli import evaluate as _evaluate_cmds  # noqa: E402
from astroflax.cli import export as _export_cmds  # noqa: E402
from astroflax.cli import inspect as _inspect_cmds  # noqa: E402
from astroflax.cli import train as _train_cmds  # noqa: E402
from astroflax.cli import tune as _tune_cmds  # noqa: E402
from astroflax.cli.common import Debug, err, out  # noqa: E402
from astroflax.errors import AstroflaxError  # noqa: E402
from astroflax.train.signals import cancel_deferred, defer_while_importing  # noqa: E402

__all__ = ["app", "main"]

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Train, evaluate, checkpoint and report neural networks for astronomy (JAX/Flax/Optax/Orbax/Grain).",
)

_STATE = {"debug": False, "interrupted": False, "reported": False}

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
    _benchmark_cmds.benchmark,
):
    app.command()(_command)
app.add_typer(_inspect_cmds.config_app, name="config")
app.add_typer(_inspect_cmds.optimizers_app, name="optimizers")
app.add_typer(_tune_cmds.tune_app, name="tune")
app.add_typer(_data_cmds.data_app, name="data")
del _command


def _interrupt_command(signum, frame) -> None:
    """SIGINT in a command (training commands install their own handler): KeyboardInterrupt,
    which typer turns into a silent exit code 130 (main() then says "interrupted"); never in the
    middle of an import, where it can break a native extension (it is delivered again after)."""
    if _STATE["reported"]:
        return  # main() is already saying "interrupted" and exiting
    _STATE["interrupted"] = True
    if not defer_while_importing(frame):
        raise KeyboardInterrupt


def _report_interrupted() -> None:
    _STATE["reported"] = True  # a re-delivered interrupt must not break the message or the exit
    cancel_deferred()
    err.print("interrupted", highlight=False, markup=False)
    sys.exit(130)


def _format_warning(message, category, filename, lineno, line=None) -> str:
    """Our warnings (UserWarning: e.g. unsorted times, NaN pixels replaced) as one line each."""
    if issubclass(category, UserWarning):
        return f"warning: {message}\n"
    return _DEFAULT_FORMAT(message, category, filename, lineno, line)


_DEFAULT_FORMAT = warnings.formatwarning


def main(argv: list[str] | None = None) -> None:
    """Entry point: map user errors to one line and exit code 2."""
    previous_format, warnings.formatwarning = warnings.formatwarning, _format_warning
    try:
        _run(argv)
    finally:
        warnings.formatwarning = previous_format


def _run(argv: list[str] | None) -> None:
    _STATE["interrupted"] = _STATE["reported"] = False
    if interrupted_during_start_up():  # its SystemExit was swallowed; "interrupted" is printed
        _STATE["reported"] = True
        sys.exit(130)
    previous = signal.getsignal(signal.SIGINT)
    in_main_thread = threading.current_thread() is threading.main_thread()
    if in_main_thread and previous in (_interrupted_while_importing, signal.default_int_handler):
        signal.signal(signal.SIGINT, _interrupt_command)
    try:
        _main(argv)
        if _STATE["interrupted"]:  # a Ctrl-C that waited for imports to finish: never report success
            _report_interrupted()
    finally:
        cancel_deferred()
        if in_main_thread and not _STATE["reported"] and signal.getsignal(signal.SIGINT) is _interrupt_command:
            signal.signal(signal.SIGINT, signal.default_int_handler)


def _main(argv: list[str] | None) -> None:
    try:
        rc = app(args=argv, standalone_mode=False)
        if rc == 130 and _STATE["interrupted"]:  # typer's silent exit code for a KeyboardInterrupt
            _report_interrupted()
        if isinstance(rc, int) and rc:
            sys.exit(rc)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort as exc:
        cause = exc.__cause__
        if isinstance(cause, EOFError) and not _debug(argv):  # typer's name for an EOFError: a truncated file
            err.print(f"error: unexpected end of a file, it is truncated ({cause or 'EOFError'})",
                      highlight=False, markup=False)
            sys.exit(EXIT_USAGE)
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
    except (AstroflaxError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError) as exc:
        if _debug(argv):
            raise
        err.print(f"error: {_one_line(exc)}", highlight=False, markup=False)
        sys.exit(EXIT_USAGE)
    except OSError as exc:
        if _debug(argv) or exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        where = f"{exc.filename}: " if exc.filename else ""
        err.print(f"error: {where}no space left on device; free some space and run the command again",
                  highlight=False, markup=False)
        sys.exit(EXIT_USAGE)
    except KeyboardInterrupt:  # Ctrl-C outside training (which handles its own signals): no traceback
        if _debug(argv):
            raise
        _report_interrupted()


def _debug(argv: list[str] | None) -> bool:
    return bool(_STATE["debug"] or "--debug" in (argv if argv is not None else sys.argv))


def _one_line(exc: BaseException) -> str:
    """The message of a user error on one line (a message should not span lines, but never print two)."""
    return " ".join(str(exc).split("\n")).strip() or type(exc).__name__
