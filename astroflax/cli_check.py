"""``astroflax check`` (diagnostics + deployment checklist) and ``astroflax export``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import typer

from astroflax.errors import AstroflaxError

_STYLE = {"pass": "green", "warn": "yellow", "fail": "bold red", "n/a": "dim"}


def _status(s: str) -> str:
    return f"[{_STYLE.get(s, '')}]{s}[/]"


def _resolve_config(target: str, preset: Optional[str], overrides: list[str]):
    """A run directory, a YAML config file or a task name -> (config, run_dir or None)."""
    from astroflax.config import build_config, load_yaml_file

    path = Path(target)
    if path.is_dir():
        saved = path / "config.yaml"
        if not saved.is_file():
            raise AstroflaxError(f"{path} is a directory but not an astroflax run directory (no config.yaml)")
        base = load_yaml_file(saved)
        if not isinstance(base, dict) or "task" not in base:
            raise AstroflaxError(f"{saved}: expected a mapping with a 'task' key")
        return build_config(base["task"], preset, None, overrides, base=base), path
    if path.is_file() or path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise AstroflaxError(f"config file {path}: no such file")
        values = load_yaml_file(path)
        if "task" not in values:
            raise AstroflaxError(f"config file {path}: no 'task' key saying which task it configures")
        return build_config(str(values["task"]), preset, path, overrides), None
    if "/" in target:
        raise AstroflaxError(f"{target}: no such run directory or config file")
    return build_config(target, preset, None, overrides), None


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict):
        return ", ".join(f"{k} {_fmt(v)}" for k, v in value.items())
    return "—" if value is None else str(value)


def _print_results(results, checklist, out) -> None:
    from rich.table import Table

    for r in results:
        out.print(f"\n[bold]{r.name}[/] ({_status(r.status)}): {r.summary}", highlight=False)
        table = Table(header_style="bold")
        for col in r.columns:
            table.add_column(col, overflow="fold")
        for row in r.rows:
            table.add_row(*[_status(c) if c in _STYLE else str(c) for c in row])
        out.print(table)
        for note in r.notes:
            out.print(f"  [{_STYLE.get(r.status, '')}]{r.status}[/]: {note}")
    out.print("\n[bold]astroflax check: summary[/]")
    summary = Table(header_style="bold")
    summary.add_column("check")
    summary.add_column("status")
    summary.add_column("result", overflow="fold")
    for r in results:
        summary.add_row(r.name, _status(r.status), r.summary)
    out.print(summary)
    if checklist is not None:
        out.print("\n[bold]Deployment checklist[/]")
        table = Table(header_style="bold")
        for col in ("item", "status", "value", "detail"):
            table.add_column(col, overflow="fold")
        for item in checklist:
            table.add_row(item["name"], _status(item["status"]), _fmt(item["value"]), item["detail"])
        out.print(table)


def _console():
    """stdout console; 120 columns when not a terminal so piped tables stay readable."""
    import sys

    from rich.console import Console

    return Console(width=None if sys.stdout.isatty() else 120)


def register(app: typer.Typer) -> None:
    @app.command()
    def check(
        target: str = typer.Argument(..., help="a task name, a YAML config file or a run directory"),
        preset: Optional[str] = typer.Option(None, "--preset", "-p", help="preset: quick or full"),
        overrides: list[str] = typer.Option([], "--set", "-s", help="override, e.g. --set optim.lr=3e-4 (repeatable)"),
        batch_size: int = typer.Option(16, "--batch-size", min=1, help="examples in the small batch the model checks use"),
        overfit_steps: int = typer.Option(200, "--overfit-steps", min=1, help="steps allowed to cut the loss 10x"),
        grad_samples: int = typer.Option(16, "--grad-samples", min=1, help="parameters compared with finite differences"),
        checkpoint: str = typer.Option("best", "--checkpoint", help="checkpoint for the deployment checklist (run dirs)"),
        checklist: bool = typer.Option(True, "--checklist/--no-checklist", help="run the deployment checklist (run dirs)"),
        json_out: Optional[Path] = typer.Option(None, "--json", help="also write all results to this JSON file"),
    ) -> None:
        """Diagnose a model + data before training (and a run's deployment checklist); exit 1 if a check fails.

        Model checks run on a freshly initialised model from the config (for a run directory:
        its saved config) on one small training batch: parameter summary, float64 gradient
        check, per-layer gradient health, overfitting one batch; then data checks on every split.
        """
        from astroflax.diagnostics.checks import run_diagnostics

        out = _console()
        if json_out is not None and not json_out.parent.is_dir():
            raise AstroflaxError(f"--json {json_out}: directory {json_out.parent} does not exist")
        cfg, run_dir = _resolve_config(target, preset, overrides)
        results = run_diagnostics(cfg, batch_size=batch_size, overfit_steps=overfit_steps, grad_samples=grad_samples)
        items = None
        if run_dir is not None and checklist:
            from astroflax.diagnostics.checklist import run_checklist

            items = run_checklist(run_dir, checkpoint)
        _print_results(results, items, out)
        failed = [r.name for r in results if r.status == "fail"] + [i["name"] for i in items or [] if i["status"] == "fail"]
        if json_out is not None:
            payload = {"task": cfg.task, "checks": [r.to_dict() for r in results], "checklist": items, "failed": failed}
            json_out.write_text(json.dumps(payload, indent=1, default=str))
        if failed:
            out.print(f"[bold red]FAILED[/]: {', '.join(failed)}")
            raise typer.Exit(1)
        out.print("[green]All checks passed.[/]")

    @app.command()
    def export(
        run_dir: Path = typer.Argument(..., help="run directory"),
        out_dir: Optional[Path] = typer.Option(None, "--out", "-o", help="export directory (default RUN_DIR/export)"),
        checkpoint: str = typer.Option("best", "--checkpoint", help="best, latest or a step number"),
    ) -> None:
        """Export a checkpoint for serving: StableHLO (jax.export, symbolic batch) + params.npz + manifest.json."""
        from rich.table import Table

        from astroflax.export.writer import export_run

        out = _console()
        target = out_dir or run_dir / "export"
        manifest = export_run(run_dir, target, checkpoint)
        table = Table(title=f"Exported {manifest['task']} step {manifest['source']['checkpoint_step']} to {target}",
                      title_justify="left", header_style="bold")
        table.add_column("file")
        table.add_column("bytes", justify="right")
        table.add_column("sha256")
        for name, entry in manifest["files"].items():
            table.add_row(name, f"{entry['bytes']:,}", entry["sha256"][:16] + "…")
        out.print(table)
        inputs = ", ".join(f"{s['name']} {s['dtype']}{s['shape']}" for s in manifest["inputs"])
        out.print(f"inputs: {inputs}\noutput: {manifest['output']['dtype']}{manifest['output']['shape']} "
                  f"({manifest['output']['kind']}); {manifest['params']['count']:,} parameters")
