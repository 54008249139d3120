"""Orbax checkpoints: one step = train state + data-iterator state + metadata (config, metrics).

Retention uses Orbax's preservation policies: the latest N plus the best K by a validation
metric. Orbax writes each step to a temporary directory and renames it when complete, so a
checkpoint interrupted by a crash is never listed (and its leftovers are cleaned up).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint.checkpoint_managers import preservation_policy as pp

from astroflax.config import CheckpointConfig
from astroflax.errors import CheckpointError


def _policy(cfg: CheckpointConfig) -> pp.PreservationPolicy:
    policies: list[pp.PreservationPolicy] = [pp.LatestN(n=cfg.keep_latest)]
    if cfg.keep_best:
        metric = cfg.metric
        policies.append(
            pp.BestN(
                get_metric_fn=lambda metrics: metrics[metric],
                # BestN keeps the top of an ascending sort; reverse it when smaller is better.
                reverse=cfg.mode == "min",
                n=cfg.keep_best,
                keep_checkpoints_without_metrics=False,
            )
        )
    return pp.AnyPreservationPolicy(policies)


class Checkpointer:
    """A thin, typed wrapper over ``ocp.CheckpointManager`` with astroflax's layout."""

    def __init__(self, directory: str | Path, cfg: CheckpointConfig | None = None, read_only: bool = False):
        self.directory = Path(directory).absolute()
        cfg = cfg or CheckpointConfig()
        if read_only and not self.directory.is_dir():
            raise CheckpointError(f"no checkpoints directory at {self.directory}")
        options = ocp.CheckpointManagerOptions(
            enable_async_checkpointing=cfg.async_save and not read_only,
            preservation_policy=None if read_only else _policy(cfg),
            cleanup_tmp_directories=not read_only,
            create=not read_only,
            read_only=read_only,
        )
        self._mgr = ocp.CheckpointManager(self.directory, options=options)

    # ------------------------------------------------------------------ save
    def save(self, step: int, state: Any, data_state: dict, meta: dict, metrics: dict | None) -> None:
        """Start an (async) save. ``metrics`` rank the checkpoint; None = ranked by recency only."""
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            data=ocp.args.JsonSave(data_state),
            meta=ocp.args.JsonSave(meta),
        )
        self._mgr.save(step, args=args, metrics=metrics, force=True)

    def wait(self) -> None:
        self._mgr.wait_until_finished()

    def close(self) -> None:
        self._mgr.wait_until_finished()
        self._mgr.close()

    # --------------------------------------------------------------- restore
    def steps(self) -> list[int]:
        self._mgr.reload()
        return sorted(self._mgr.all_steps())

    def latest_step(self) -> int | None:
        steps = self.steps()
        return steps[-1] if steps else None

    def read_meta(self, step: int) -> dict:
        return self._mgr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

    def best_step(self, metric: str, mode: str) -> int | None:
        """The kept step with the best validation metric (from each step's own metadata)."""
        scored = []
        for step in self.steps():
            value = (self.read_meta(step).get("val_metrics") or {}).get(metric)
            if value is not None:
                scored.append((value if mode == "min" else -value, step))
        return min(scored)[1] if scored else None

    def resolve_step(self, which: str | int, metric: str = "val_loss", mode: str = "min") -> int:
        steps = self.steps()
        if not steps:
            raise CheckpointError(f"no complete checkpoint in {self.directory}")
        if which == "latest":
            return steps[-1]
        if which == "best":
            best = self.best_step(metric, mode)
            return best if best is not None else steps[-1]
        try:
            step = int(which)
        except (TypeError, ValueError):
            raise CheckpointError(f"--checkpoint {which!r}: expected best, latest or a step number") from None
        if step not in steps:
            raise CheckpointError(f"--checkpoint {step}: no such checkpoint; available steps: {steps}")
        return step

    def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict, dict]:
        """Restore onto ``abstract_state`` (shapes, dtypes and shardings of the live state)."""
        try:
            out = self._mgr.restore(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract_state),
                    data=ocp.args.JsonRestore(),
                    meta=ocp.args.JsonRestore(),
                ),
            )
        except (ValueError, KeyError, FileNotFoundError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise CheckpointError(
                f"checkpoint step {step} in {self.directory} does not match this model/config: {first[:300]}"
            ) from exc
        return out["state"], out["data"], out["meta"]


def abstract_like(state: Any) -> Any:
    """Shape/dtype/sharding skeleton of a live pytree, the restore target Orbax needs."""
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, state)


def json_safe(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=float))
