"""What the command modules share: option types, the run resolver, formatting, the consoles.

Nothing here imports JAX, Flax or the trainer at module level (``astroflax --help`` stays
fast); the resolver imports :mod:`astroflax.config` when it is called.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional, Sequence

import typer
from rich.console import Console

from astroflax.errors import AstroflaxError, ConfigError

if TYPE_CHECKING:
    from astroflax.config import ExperimentConfig

# ---------------------------------------------------------------------------- consoles

#: Tables and results (stdout).
out = Console()
#: Progress, "Wrote ..." lines and one-line errors (stderr; long paths are not wrapped).
err = Console(stderr=True, soft_wrap=True)


def wide_out() -> Console:
    """A stdout console 120 columns wide when stdout is not a terminal, so that piped
    tables (``check``, ``export``) stay readable."""
    return Console(width=None if sys.stdout.isatty() else 120)


# ------------------------------------------------------------------------ option types
# ``Annotated`` aliases for the options several commands share; the factories give the
# same option with a command-specific help text. Defaults are given in the signatures,
# e.g. ``preset: Preset = None``, ``overrides: Overrides = []``.

DEFAULT_SET_HELP = "override, e.g. --set optim.lr=3e-4 (repeatable)"
CHECKPOINT_HELP = "best, latest or a step number"


def preset_option(help: str | None = "preset: quick or full") -> Any:
    return Annotated[Optional[str], typer.Option("--preset", "-p", help=help)]


def config_option(help: str | None = "YAML config file") -> Any:
    return Annotated[Optional[Path], typer.Option("--config", "-c", help=help)]


def set_option(help: str | None = DEFAULT_SET_HELP) -> Any:
    return Annotated[list[str], typer.Option("--set", "-s", help=help)]


def run_dir_option(help: str) -> Any:
    return Annotated[Optional[Path], typer.Option("--run-dir", help=help)]


def checkpoint_option(help: str = CHECKPOINT_HELP) -> Any:
    return Annotated[str, typer.Option("--checkpoint", help=help)]


def weights_option(help: str = "raw, ema or swa (averaged weights; see docs/optimisation.md)") -> Any:
    return Annotated[str, typer.Option("--weights", help=help)]


def mc_dropout_option(help: str) -> Any:
    return Annotated[int, typer.Option("--mc-dropout", help=help)]


def evaluate_option(help: str) -> Any:
    return Annotated[bool, typer.Option("--evaluate/--no-evaluate", help=help)]


def out_option(help: str, optional: bool = False) -> Any:
    return Annotated[Optional[Path] if optional else Path, typer.Option("--out", "-o", help=help)]


def run_dir_argument(help: str = "run directory") -> Any:
    return Annotated[Path, typer.Argument(help=help)]


Preset = preset_option()
ConfigFile = config_option()
Overrides = set_option()
Checkpoint = checkpoint_option()
Weights = weights_option()
RunDir = run_dir_argument()
TaskName = Annotated[str, typer.Argument(help="task name (see `astroflax tasks`)")]
Debug = Annotated[bool, typer.Option("--debug", help="show full tracebacks on errors")]


# ------------------------------------------------------------------- argument checks


def require_file(path: Optional[Path], what: str) -> None:
    """``what`` names the option, e.g. ``--config``."""
    if path is not None and path.is_dir():
        raise AstroflaxError(f"{what} {path}: is a directory; expected a file")
    if path is not None and not path.is_file():
        raise AstroflaxError(f"{what} {path}: no such file")


def require_parent_dir(path: Path, what: str) -> None:
    """An output file (option ``what``): its directory must exist and it must not name a directory."""
    if path.is_dir():
        raise ConfigError(f"{what} {path}: is a directory; expected the name of a file to write")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise ConfigError(f"{what} {path}: directory {parent} does not exist")


# ------------------------------------------------------------------------ run resolver


@dataclass(frozen=True)
class ResolvedRun:
    """A command's target turned into a validated config.

    ``run_dir`` is the run (or ensemble) directory the target named, if it named one;
    for an ensemble (``ensemble=True``) the config is that of its first member.
    """

    cfg: ExperimentConfig
    run_dir: Optional[Path] = None
    ensemble: bool = False


def resolve_config(
    task: str,
    preset: Optional[str] = None,
    config_file: Optional[Path] = None,
    overrides: Sequence[str] = (),
    *,
    run_dir: Optional[Path] = None,
    resume: Optional[bool] = None,
) -> ExperimentConfig:
    """TASK + ``--preset`` + ``--config`` + ``--set`` (+ ``--run-dir``) -> the validated config.

    When ``run_dir`` holds a run (``config.yaml``), its saved config replaces the task
    defaults and preset (unless ``resume`` is False), so that resuming needs no other flags.
    """
    from astroflax.config import build_config, load_yaml_file

    require_file(config_file, "--config")
    saved = run_dir / "config.yaml" if run_dir else None
    base = (load_yaml_file(saved) or None) if saved and saved.is_file() and resume is not False else None
    extra = {"run_dir": str(run_dir)} if run_dir else None
    return build_config(task, preset, config_file, list(overrides), extra=extra, base=base)


def _saved_config(directory: Path) -> tuple[Path, bool]:
    """(the config.yaml describing ``directory``, whether it is an ensemble directory)."""
    saved = directory / "config.yaml"
    if saved.is_file():
        return saved, False
    from astroflax.ensembles import is_ensemble_dir, read_ensemble

    if is_ensemble_dir(directory):
        first = read_ensemble(directory)["members"][0]
        saved = directory / first / "config.yaml"
        if not saved.is_file():
            raise AstroflaxError(f"ensemble {directory}: member {first} is not a run directory (no config.yaml)")
        return saved, True
    raise AstroflaxError(f"{directory} is a directory but not an astroflax run directory (no config.yaml)")


def resolve_target(target: str, preset: Optional[str] = None, overrides: Sequence[str] = ()) -> ResolvedRun:
    """TARGET: a run directory, an ensemble directory, a YAML config file (with a ``task``
    key) or a task name; ``--preset`` and ``--set`` apply on top."""
    from astroflax.config import build_config, load_yaml_file

    path = Path(target)
    if path.is_dir():
        saved, ensemble = _saved_config(path)
        base = load_yaml_file(saved)
        if not isinstance(base.get("task"), str):
            raise AstroflaxError(f"{saved}: expected a mapping with a 'task' key")
        return ResolvedRun(build_config(base["task"], preset, None, list(overrides), base=base), path, ensemble)
    if path.is_file() or path.suffix in (".yaml", ".yml"):
        values = load_yaml_file(path)  # "config file ...: not found" when it does not exist
        task = values.get("task")
        if not isinstance(task, str):
            raise ConfigError(f"config file {path}: needs a 'task' key naming the task, e.g. task: transients")
        return ResolvedRun(build_config(task, preset, path, list(overrides)))
    if "/" in target:
        raise AstroflaxError(f"{target}: no such run directory or config file")
    return ResolvedRun(resolve_config(target, preset, None, overrides))


# -------------------------------------------------------------------------- formatting

STATUS_STYLE = {"pass": "green", "warn": "yellow", "fail": "bold red", "n/a": "dim"}


def fmt(value: Any, float_format: str = ".4g", missing: str = "—") -> str:
    """A value for a table cell: floats with ``float_format``, ``None`` as ``missing``,
    a dict as ``key value, ...``."""
    if value is None:
        return missing
    if isinstance(value, float):
        return format(value, float_format)
    if isinstance(value, dict):
        return ", ".join(f"{k} {fmt(v, float_format, missing)}" for k, v in value.items())
    return str(value)


def status(value: str) -> str:
    """A check status (pass, warn, fail, n/a) in its colour (rich markup)."""
    return f"[{STATUS_STYLE.get(value, '')}]{value}[/]"
