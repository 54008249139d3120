"""CLI commands for optimisation recipes: ``schedule``, ``optimizers compare`` and ``finetune``."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from astroflax.errors import ConfigError

out = Console()
err = Console(stderr=True, soft_wrap=True)


def _config_from(config_or_task: str, preset: Optional[str], overrides: list[str]):
    """CONFIG_OR_TASK: a YAML file (with a ``task`` key) or a task name."""
    from astroflax.config import build_config, load_yaml_file

    path = Path(config_or_task)
    if path.suffix in (".yaml", ".yml") or path.is_file():
        values = load_yaml_file(path)
        task = values.get("task")
        if not isinstance(task, str):
            raise ConfigError(f"config file {path}: needs a 'task' key naming the task, e.g. task: transients")
        return build_config(task, preset, path, overrides)
    return build_config(config_or_task, preset, None, overrides)


def register(app: typer.Typer) -> None:
    optimizers_app = typer.Typer(no_args_is_help=True, help="Compare optimisers.")
    app.add_typer(optimizers_app, name="optimizers")

    @app.command()
    def schedule(
        config_or_task: str = typer.Argument(..., help="a YAML config file or a task name"),
        steps: Optional[int] = typer.Option(None, "--steps", "-n", min=1, help="steps to plot (default train.steps)"),
        out_path: Path = typer.Option(Path("lr.png"), "--out", "-o", help="PNG file for the plot"),
        preset: Optional[str] = typer.Option(None, "--preset", "-p", help="preset: quick or full"),
        overrides: list[str] = typer.Option([], "--set", "-s", help="override, e.g. --set schedule.name=cosine"),
    ) -> None:
        """Plot the learning rate against step and print it at a few steps."""
        import numpy as np

        from astroflax.train.optim import lr_curve

        cfg = _config_from(config_or_task, preset, overrides)
        total = steps or cfg.train.steps
        if total is None:
            raise ConfigError("train.steps is not set (the run length is given in epochs); pass --steps N")
        if not out_path.parent.exists() and str(out_path.parent) != "":
            raise ConfigError(f"--out {out_path}: directory {out_path.parent} does not exist")
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

    @optimizers_app.command("compare")
    def compare(
        steps: int = typer.Option(500, "--steps", "-n", min=1, help="optimisation steps per optimiser"),
        out_path: Path = typer.Option(Path("traj.png"), "--out", "-o", help="PNG file for the trajectory plot"),
        names: list[str] = typer.Option([], "--optimizer", help="only these optimisers (repeatable)"),
        start: tuple[float, float] = typer.Option((-1.5, 2.0), "--start", help="start point x y"),
    ) -> None:
        """Run each optimiser on the Rosenbrock function from the same start; table + trajectory plot."""
        from astroflax.optim_compare import DEFAULT_LRS, compare_optimizers, plot_trajectories

        if not out_path.parent.exists() and str(out_path.parent) != "":
            raise ConfigError(f"--out {out_path}: directory {out_path.parent} does not exist")
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

    @app.command()
    def finetune(
        source: Path = typer.Argument(..., help="run directory to take the parameters from"),
        task: str = typer.Option(..., "--task", "-t", help="task to fine-tune on"),
        data: Optional[str] = typer.Option(None, "--data", help="data.path for the new task (user data)"),
        freeze: list[str] = typer.Option([], "--freeze", help="regex of parameter paths to freeze (repeatable)"),
        head_only: bool = typer.Option(False, "--head-only", help="train only parameters matching --head"),
        head: str = typer.Option("head", "--head", help="regex of the head's parameter paths (with --head-only)"),
        checkpoint: str = typer.Option("best", "--checkpoint", help="checkpoint of SOURCE: best, latest or a step"),
        preset: Optional[str] = typer.Option(None, "--preset", "-p", help="preset of the new run"),
        overrides: list[str] = typer.Option([], "--set", "-s", help="override, e.g. --set optim.lr=3e-4"),
        run_dir: Optional[Path] = typer.Option(None, "--run-dir", help="new run directory (default SOURCE-ft-TASK)"),
        evaluate_after: bool = typer.Option(True, "--evaluate/--no-evaluate", help="evaluate on the test split"),
    ) -> None:
        """Fine-tune: restore matching parameters of SOURCE, re-initialise the rest, train a new run."""
        from astroflax.finetune import finetune as run_finetune

        result, match = run_finetune(
            source, task, data=data, freeze=list(freeze), head_only=head_only, head=head, checkpoint=checkpoint,
            preset=preset, overrides=list(overrides), run_dir=run_dir, console=err,
        )
        err.print(f"Finished fine-tuning at step {result.step} in {result.wall_time:.1f} s; run directory {result.run_dir}")
        if evaluate_after:
            from astroflax.cli import _evaluate

            _evaluate(result.run_dir, "test", "best")
