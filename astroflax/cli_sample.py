"""``astroflax sample``: draw digits from a trained class-conditional generative run (task ``vae``)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

import typer

from astroflax.errors import AstroflaxError, ConfigError


def sample_grid_rows(model, num_classes: int, digit_class: int | None, n: int, seed: int) -> list:
    """Rows of generated digits: ``n`` of ``digit_class`` in a near-square grid, or, with no
    class, one row of ``n`` per class. Every sample uses its own slice of one seeded draw."""
    import numpy as np

    from astroflax.tasks.vae import sample_digits

    if digit_class is None:
        labels = np.repeat(np.arange(num_classes), n)
        images = sample_digits(model, labels, seed)
        return [images[c * n:(c + 1) * n] for c in range(num_classes)]
    images = sample_digits(model, np.full(n, digit_class), seed)
    cols = math.ceil(math.sqrt(n))
    return [images[i:i + cols] for i in range(0, n, cols)]


def register(app: typer.Typer) -> None:
    @app.command()
    def sample(
        run_dir: Path = typer.Argument(..., help="run directory of a trained `vae` run"),
        digit_class: Optional[int] = typer.Option(
            None, "--class", help="class to generate; omit for one row per class"
        ),
        n: int = typer.Option(8, "--n", help="samples (with --class) or samples per class row (without)"),
        out: Path = typer.Option(Path("samples.png"), "--out", "-o", help="PNG file to write"),
        seed: int = typer.Option(0, "--seed", help="seed of the latent draws"),
        checkpoint: str = typer.Option("best", "--checkpoint", help="best, latest or a step number"),
        scale: int = typer.Option(2, "--scale", help="pixels per image pixel (tile = 28*scale)"),
    ) -> None:
        """Write a PNG grid of generated samples (tile 28*scale px, 2 px gaps) from RUN_DIR."""
        if n < 1:
            raise ConfigError(f"--n {n}: expected at least 1 sample")
        if scale < 1:
            raise ConfigError(f"--scale {scale}: expected an integer >= 1")
        if digit_class is not None and digit_class < 0:
            raise ConfigError(f"--class {digit_class}: expected a class index >= 0")
        if out.suffix.lower() != ".png":
            raise ConfigError(f"--out {out}: expected a .png file name")
        parent = out.parent if str(out.parent) else Path(".")
        if not parent.is_dir():
            raise AstroflaxError(f"--out {out}: directory {parent} does not exist")

        from flax import nnx
        from rich.console import Console

        from astroflax.runs import load_run
        from astroflax.tasks.vae import write_digit_grid

        run = load_run(run_dir, checkpoint)
        model = nnx.merge(run.graphdef, run.state.params, run.state.model_state)
        if not hasattr(model, "generate") or "num_classes" not in run.info:
            raise ConfigError(f"{run_dir}: task {run.task.name!r} is not a class-conditional generator; train `vae`")
        k = int(run.info["num_classes"])
        if digit_class is not None and digit_class >= k:
            raise ConfigError(f"--class {digit_class}: out of range; this run has classes 0-{k - 1}")
        rows = sample_grid_rows(model, k, digit_class, n, seed)
        path = write_digit_grid(rows, out, scale=scale)
        what = f"{n} samples of class {digit_class}" if digit_class is not None else f"{n} samples per class x {k}"
        Console(stderr=True).print(f"Wrote {what} to {path} (checkpoint step {run.step})", highlight=False)
