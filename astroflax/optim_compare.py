"""Optimisers side by side on the Rosenbrock function (a curved, badly conditioned valley).

Every optimiser comes from the same factory as training (``build_optimizer``), with a
constant learning rate, no clipping and no weight decay, from the same start point.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from astroflax.config import OptimConfig, ScheduleConfig

# Learning rates chosen so that each optimiser makes progress from (-1.5, 2) without diverging.
DEFAULT_LRS = {
    "sgd": 1e-3,
    "adam": 0.1,
    "adamw": 0.1,
    "rmsprop": 0.03,
    "lamb": 0.05,
    "lion": 0.003,
    "adafactor": 0.3,
    "adam+lookahead": 0.2,
}


def rosenbrock(p: jax.Array) -> jax.Array:
    return (1.0 - p[0]) ** 2 + 100.0 * (p[1] - p[0] ** 2) ** 2


@dataclasses.dataclass
class Trajectory:
    name: str
    lr: float
    path: np.ndarray  # (steps + 1, 2)
    losses: np.ndarray  # (steps + 1,)

    @property
    def final(self) -> np.ndarray:
        return self.path[-1]

    @property
    def final_loss(self) -> float:
        return float(self.losses[-1])


def optimizer_config(name: str, lr: float) -> OptimConfig:
    base, _, wrapper = name.partition("+")
    return OptimConfig(
        name=base, lr=lr, clip_norm=None, weight_decay=0.0, momentum=0.9 if base == "sgd" else 0.0,
        lookahead={"enabled": wrapper == "lookahead"},
    )


def run_optimizer(name: str, steps: int, start: tuple[float, float], lr: float | None = None) -> Trajectory:
    from astroflax.train.optim import build_optimizer

    lr = DEFAULT_LRS[name] if lr is None else lr
    tx, _ = build_optimizer(optimizer_config(name, lr), ScheduleConfig(name="constant"), steps)
    p0 = jnp.asarray(start, jnp.float32)

    @jax.jit
    def run(p0):
        def body(carry, _):
            p, s = carry
            g = jax.grad(rosenbrock)(p)
            u, s = tx.update(g, s, p)
            p = p + u
            return (p, s), p

        _, path = jax.lax.scan(body, (p0, tx.init(p0)), None, length=steps)
        return jnp.concatenate([p0[None], path])

    path = np.asarray(run(p0))
    losses = np.asarray(jax.vmap(rosenbrock)(jnp.asarray(path)))
    return Trajectory(name, lr, path, losses)


def compare_optimizers(names: list[str], steps: int, start: tuple[float, float] = (-1.5, 2.0)) -> list[Trajectory]:
    return [run_optimizer(n, steps, start) for n in names]


def plot_trajectories(results: list[Trajectory], out: Path, start: tuple[float, float]) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = np.linspace(-2.0, 2.0, 300)
    y = np.linspace(-1.0, 3.0, 300)
    X, Y = np.meshgrid(x, y)
    Z = (1 - X) ** 2 + 100 * (Y - X**2) ** 2
    fig, ax = plt.subplots(figsize=(7, 6))
    ax.contour(X, Y, np.log10(Z + 1e-3), levels=25, cmap="Greys", linewidths=0.6)
    for r in results:
        finite = np.all(np.isfinite(r.path), axis=1)
        p = np.clip(r.path[finite], [-2.0, -1.0], [2.0, 3.0])
        ax.plot(p[:, 0], p[:, 1], lw=1.3, label=f"{r.name} (lr {r.lr:g}): {r.final_loss:.2e}")
    ax.plot([start[0]], [start[1]], "ko", ms=5)
    ax.plot([1.0], [1.0], "r*", ms=12, label="minimum (1, 1)")
    ax.set_xlim(-2, 2)
    ax.set_ylim(-1, 3)
    ax.set_xlabel("x")
    ax.set_ylabel("y")
    ax.set_title(f"Rosenbrock, {len(results[0].path) - 1} steps from ({start[0]:g}, {start[1]:g})")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return Path(out)
