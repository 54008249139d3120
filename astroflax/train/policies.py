"""Small state machines the loop consults: early stopping and when to save a checkpoint.

Both keep their state in plain JSON-able values, so it is checkpointed with the run and a
resumed run decides exactly as an uninterrupted one would.
"""

from __future__ import annotations

import math
from typing import Any, Callable

from astroflax.config import EarlyStoppingConfig
from astroflax.errors import ConfigError


def require_metric(name: str, metrics: dict[str, Any], key: str) -> float:
    """The value of validation metric ``name``; a config error naming ``key`` if it is not logged."""
    if name not in metrics:
        raise ConfigError(f"config key {key!r} = {name!r}: not a validation metric; choose from {sorted(metrics)}")
    return float(metrics[name])


class EarlyStopping:
    """Stop when ``cfg.metric`` has not improved by ``min_delta`` for ``patience`` evaluations."""

    def __init__(self, cfg: EarlyStoppingConfig, state: dict[str, Any] | None = None):
        self.cfg = cfg
        self.state = dict(state) if state else {"best": None, "best_step": None, "bad_evals": 0}

    def update(self, step: int, val_metrics: dict[str, Any]) -> bool:
        """Record one evaluation; True if it improved on the best so far."""
        value = require_metric(self.cfg.metric, val_metrics, "train.early_stopping.metric")
        best = self.state["best"]
        if not math.isfinite(value):
            improved = False  # a NaN never becomes the best
        elif best is None:
            improved = True
        elif self.cfg.mode == "min":
            improved = value < best - self.cfg.min_delta
        else:
            improved = value > best + self.cfg.min_delta
        if improved:
            self.state = {"best": value, "best_step": step, "bad_evals": 0}
        else:
            self.state = {**self.state, "bad_evals": self.state["bad_evals"] + 1}
        return improved

    @property
    def should_stop(self) -> bool:
        return self.cfg.enabled and self.state["bad_evals"] >= self.cfg.patience

    def describe(self) -> str:
        s = self.state
        return (f"{self.cfg.metric} has not improved for {s['bad_evals']} evaluations "
                f"(best {s['best']:.4f} at step {s['best_step']})")


class SavePolicy:
    """Save when due (every ``every`` steps, or an evaluation that improved), at the end, and
    on a stop; never the same step twice. ``save(step, val_metrics_or_None)`` does the writing."""

    def __init__(self, every: int, save: Callable[[int, dict | None], None], last_saved: int | None = None):
        self.every = every
        self._save = save
        self.last_saved = last_saved

    def due(self, step: int, last: bool) -> bool:
        return last or step % self.every == 0

    def after_eval(self, step: int, val_metrics: dict, improved: bool, last: bool) -> None:
        if self.due(step, last) or improved:
            self._write(step, val_metrics)

    def on_stop(self, step: int) -> None:
        self._write(step, None)

    def _write(self, step: int, val_metrics: dict | None) -> None:
        if self.last_saved != step:
            self._save(step, val_metrics)
            self.last_saved = step
