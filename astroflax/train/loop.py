"""The training loop: ``train(cfg)``, read top to bottom.

Build the components from the config; restore the latest checkpoint if the run directory has
one; then a loop body that steps and hands periodic work (logging, validation, checkpoints)
to hooks registered with an interval. Everything that decides the next step (params,
optimiser state, step, RNG, data-iterator position, early-stopping counters) is checkpointed,
so a resumed run ends bitwise identical to an uninterrupted one. Evaluating the test split,
calibration and reports are separate steps (``astroflax.evaluate``), composed by the CLI.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Any, Callable

import jax
import yaml
from rich.console import Console

from astroflax.config import ExperimentConfig
from astroflax.data.pipeline import TrainStream
from astroflax.errors import CheckpointError, ConfigError, TrainingDiverged
from astroflax.runtime import enable_compile_cache
from astroflax.train.checkpoint import Checkpointer, abstract_like, json_safe
from astroflax.train.components import Components, build_components
from astroflax.train.hooks import Hooks
from astroflax.train.metrics_log import MetricsWriter
from astroflax.train.policies import EarlyStopping, SavePolicy, require_metric
from astroflax.train.predict import predict_arrays
from astroflax.train.progress import TrainProgress
from astroflax.train.sharding import replicate, shard_batch
from astroflax.train.signals import GracefulStop
from astroflax.train.state import count_params
from astroflax.train.step import init_accumulator, make_predict_step, make_train_step, summarise_accumulator

# Keys that may differ between the saved config and the config of a resumed run.
RESUMABLE_CHANGES = {"train.progress", "train.log_every", "name", "run_dir"}


@dataclasses.dataclass
class TrainResult:
    run_dir: Path
    step: int
    total_steps: int
    stopped_by: str | None  # None (completed), "early_stopping", or a signal name
    best_step: int | None
    best_value: float | None
    val_metrics: dict[str, Any]
    wall_time: float
    first_step_time: float | None


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def config_differences(old: dict, new: dict) -> list[str]:
    a, b = _flatten(old), _flatten(new)
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k) and k not in RESUMABLE_CHANGES)


def will_resume(cfg: ExperimentConfig, run_dir: Path, resume: bool | None) -> bool:
    """Whether this run continues from a checkpoint; refuses a resume that cannot be exact."""
    ckpt_dir = run_dir / "checkpoints"
    has_ckpt = ckpt_dir.is_dir() and Checkpointer(ckpt_dir, read_only=True).latest_step() is not None
    if resume and not has_ckpt:
        raise CheckpointError(f"--resume: no complete checkpoint in {ckpt_dir}")
    if resume is False and has_ckpt:
        raise CheckpointError(
            f"run directory {run_dir} already has checkpoints; pass --resume to continue it or choose another --run-dir"
        )
    saved_cfg = run_dir / "config.yaml"
    if has_ckpt and saved_cfg.exists():
        diffs = config_differences(yaml.safe_load(saved_cfg.read_text()), cfg.model_dump(mode="json"))
        if diffs:
            raise ConfigError(
                f"cannot resume {run_dir}: the config differs from the saved one in {', '.join(diffs)}; "
                "use the same config or another --run-dir"
            )
    return has_ckpt


class _Run:
    """The parts of one training run the loop body and its hooks share: train state, data
    stream, metric accumulator, checkpointer, early stopping, metrics log, progress bar."""

    def __init__(self, cfg: ExperimentConfig, c: Components, run_dir: Path, console: Console):
        self.cfg, self.c, self.run_dir, self.console = cfg, c, run_dir, console
        self.train_arrays = c.task.device_arrays(c.dataset.split("train"))
        self.val_arrays = c.dataset.split("val")
        self.stream = TrainStream(self.train_arrays, cfg.train.batch_size, seed=cfg.train.seed, version=c.dataset.version)
        self.ckpt = Checkpointer(run_dir / "checkpoints", cfg.checkpoint)
        self.stopper = EarlyStopping(cfg.train.early_stopping)
        self.state, self.step = c.state, 0
        self.saver = SavePolicy(cfg.checkpoint.every, self.save)
        self.train_loss, self.last_val = float("nan"), {}
        self.stopped_by: str | None = None
        self.first_step_time: float | None = None

    # ------------------------------------------------------------------ start
    def restore_latest(self) -> None:
        self.step = self.ckpt.latest_step()
        self.state, data_state, meta = self.ckpt.restore(self.step, abstract_like(self.state))
        self.stream.set_state(data_state)
        self.stopper = EarlyStopping(self.cfg.train.early_stopping, meta.get("early_stopping"))
        self.saver.last_saved = self.step
        self.console.print(f"[bold]Resuming[/] {self.run_dir} from checkpoint step {self.step} of {self.c.total_steps}.")

    def start_fresh(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "config.yaml").write_text(self.cfg.to_yaml())

    def compile(self) -> None:
        """The jitted train and predict steps, the on-device metric accumulator, the metrics log."""
        cfg, c = self.cfg, self.c
        (self.run_dir / "data_info.json").write_text(json.dumps(json_safe(c.info), indent=1))
        step = make_train_step(c.graphdef, c.tx, c.loss_fn, c.schedule, cfg.optim)
        self.jit_step = jax.jit(step, donate_argnums=(0, 1))
        self.predict = jax.jit(make_predict_step(c.graphdef, c.predict_fn))
        self.score = c.task.scorer(cfg, c.info)
        example = shard_batch({k: v[: cfg.train.batch_size] for k, v in self.train_arrays.items()}, c.mesh)
        acc = jax.eval_shape(step, self.state, init_accumulator([]), example)[1]
        self.metric_names = [k for k in acc if k != "count"]
        self.acc = self.fresh_acc()
        self.writer = MetricsWriter(self.run_dir, resume_step=self.step)  # a fresh start drops logs of a run killed before its 1st save
        self.console.print(
            f"Training [bold]{c.task.name}[/] ({count_params(self.state.params):,} parameters) for {c.total_steps} "
            f"steps, batch {cfg.train.batch_size} on {c.mesh.devices.size} device(s); run directory {self.run_dir}"
        )

    def fresh_acc(self) -> dict:
        return replicate(init_accumulator(self.metric_names), self.c.mesh)

    def progress(self) -> TrainProgress:
        per_epoch = max(1, len(next(iter(self.train_arrays.values()))) // self.cfg.train.batch_size)
        self.bar = TrainProgress(self.c.total_steps, self.step, self.cfg.train.batch_size, per_epoch,
                                 self.cfg.train.progress, self.console)
        return self.bar

    # ---------------------------------------------------------------- a step
    def train_step(self, t_start: float) -> None:
        self.state, self.acc = self.jit_step(self.state, self.acc, shard_batch(next(self.stream), self.c.mesh))
        self.step += 1
        if self.first_step_time is None:
            jax.block_until_ready(self.acc)
            self.first_step_time = time.perf_counter() - t_start
        self.bar.advance(self.step)

    # ---------------------------------------------------------- periodic work
    def log_train(self, step: int) -> None:
        logged = summarise_accumulator(jax.device_get(self.acc))  # the only host sync between evaluations
        self.acc = self.fresh_acc()
        self.train_loss = logged["loss"]
        self.bar.logged(step, self.train_loss)
        self.writer.write(step, "train", {**logged, "samples_per_s": self.bar.rate})
        if not math.isfinite(self.train_loss):
            raise TrainingDiverged(
                f"training loss is {self.train_loss} at step {step} (checkpoints up to step {self.saver.last_saved} "
                "are intact); lower optim.lr or check the data"
            )

    def validate(self, step: int) -> None:
        cfg, c = self.cfg, self.c
        outputs = predict_arrays(self.predict, self.state.params, self.state.model_state,
                                 c.task.device_arrays(self.val_arrays), cfg.train.eval_batch_size, c.mesh)
        scores = self.score(outputs, self.val_arrays, c.info)
        self.last_val = {f"val_{k}": v for k, v in scores.items() if isinstance(v, (int, float))}
        self.writer.write(step, "val", self.last_val)
        improved = self.stopper.update(step, self.last_val)
        if cfg.checkpoint.keep_best:
            require_metric(cfg.checkpoint.metric, self.last_val, "checkpoint.metric")
        loss = f"{self.train_loss:.4f}  " if math.isfinite(self.train_loss) else "(not logged yet)  "
        self.bar.line(f"step {step}/{c.total_steps}  train loss {loss}"
                      + "  ".join(f"{k} {v:.4f}" for k, v in self.last_val.items()))
        self.saver.after_eval(step, self.last_val, improved, step == c.total_steps)

    def save(self, step: int, val_metrics: dict | None) -> None:
        """Start an async checkpoint of everything that decides the next step."""
        metric = self.cfg.checkpoint.metric
        ranked = {metric: float(val_metrics[metric])} if val_metrics and metric in val_metrics else None
        meta = {"step": step, "task": self.c.task.name, "config": self.cfg.model_dump(mode="json"),
                "info": self.c.info, "dataset_version": self.c.dataset.version, "val_metrics": val_metrics,
                "early_stopping": self.stopper.state}
        self.ckpt.save(step, self.state, self.stream.get_state(), json_safe(meta), ranked)

    # ------------------------------------------------------------------- end
    def close(self) -> None:
        self.ckpt.close()
        if hasattr(self, "writer"):
            self.writer.close()

    def summary(self, t_start: float) -> TrainResult:
        result = TrainResult(
            run_dir=self.run_dir, step=self.step, total_steps=self.c.total_steps, stopped_by=self.stopped_by,
            best_step=self.stopper.state["best_step"], best_value=self.stopper.state["best"],
            val_metrics=self.last_val, wall_time=time.perf_counter() - t_start, first_step_time=self.first_step_time,
        )
        summary = {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(result).items()}
        (self.run_dir / "train_summary.json").write_text(json.dumps(json_safe(summary), indent=1))
        return result


def train(
    cfg: ExperimentConfig,
    *,
    resume: bool | None = None,
    console: Console | None = None,
    init_params: Callable[[Any], Any] | None = None,
) -> TrainResult:
    """Train ``cfg`` in its run directory. ``resume``: None = resume if checkpoints exist.

    ``init_params(state) -> state`` (fine-tuning) sets the starting parameters of a new run
    (not of a resumed one) before the optimiser state is created.
    """
    # ====================================================================== setup
    t_start = time.perf_counter()
    enable_compile_cache()
    run_dir = cfg.resolved_run_dir()
    resuming = will_resume(cfg, run_dir, resume)
    c = build_components(cfg, init_params=None if resuming else init_params)
    run = _Run(cfg, c, run_dir, console or Console(stderr=True))
    run.restore_latest() if resuming else run.start_fresh()
    run.compile()
    hooks = Hooks()
    hooks.add(run.log_train, every=cfg.train.log_every)
    hooks.add(run.validate, every=(cfg.train.eval_every, cfg.checkpoint.every))  # a checkpoint needs val metrics

    # ===================================================================== loop
    try:
        with GracefulStop() as stop, run.progress():
            while run.step < c.total_steps:
                run.train_step(t_start)
                hooks.run(run.step, last=run.step == c.total_steps)
                if run.stopper.should_stop:
                    run.stopped_by = "early_stopping"
                    run.bar.line(f"Early stopping at step {run.step}: {run.stopper.describe()}.")
                if run.stopped_by or stop.requested:
                    run.saver.on_stop(run.step)
                    break
            run.stopped_by = run.stopped_by or (stop.name if stop.requested else None)
            run.ckpt.wait()  # async saves finish before the process may exit
    finally:
        run.close()
    return run.summary(t_start)
