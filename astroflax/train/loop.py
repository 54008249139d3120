"""The training loop: ``train(cfg)``, read top to bottom.

Build the components from the config; restore the latest checkpoint if the run directory has
one; then a loop body that steps and hands periodic work (logging, validation, checkpoints)
to hooks registered with an interval. Everything that decides the next step (params,
optimiser state, step, RNG, data-iterator position, early-stopping counters) is checkpointed,
so a resumed run ends bitwise identical to an uninterrupted one. Evaluating the test split,
calibration and reports are separate steps (``astroflax.evaluate``), composed by the CLI.

Several processes (``jax.distributed``, see ``astroflax.train.distributed``) run this same
loop in lockstep: every decision (validation, early stopping, checkpoints, rollbacks) is taken
on values all processes hold identically, process 0 alone writes the run's logs, TensorBoard
and summaries, and a SIGTERM to any process stops all of them at the step JAX's preemption
service agrees on, each saving its part of the same checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec
from rich.console import Console

from astroflax.config import ExperimentConfig, finalize_config, load_yaml_file
from astroflax.data.pipeline import IndexStream, TrainStream, first_rows, num_bytes, read_all
from astroflax.data.store import device_view, split_rows
from astroflax.errors import CheckpointError, ConfigError, TrainingDiverged
from astroflax.runtime import enable_compile_cache, process_age, release_free_memory
from astroflax.train.checkpoint import Checkpointer, abstract_like, json_safe
from astroflax.train.components import Components, build_components
from astroflax.train.hooks import Hooks
from astroflax.train.metrics_log import MetricsWriter
from astroflax.train.policies import EarlyStopping, SavePolicy, require_metric
from astroflax.train.precision import all_finite_jit
from astroflax.train.predict import predict_arrays
from astroflax.train.progress import TrainProgress
from astroflax.train.sharding import (param_sharding, place_indices, place_like, place_resident, process_rows, replicate,
                                      shard_batch)
from astroflax.train.signals import GracefulStop, preemption_service
from astroflax.train.state import TrainState, count_params
from astroflax.train.step import (
    FlatStep,
    init_accumulator,
    make_predict_step,
    make_train_step,
    summarise_accumulator,
)

# How far the host may dispatch train steps ahead of the devices when a step has collectives.
# XLA:CPU runs each device's part of a step on a client pool of max(cores, local devices)
# threads and lets a device queue 32 computations; with the host far ahead, one pool thread sat
# in device 0's gradient all-reduce while the other waited for device 1's full queue, which no
# free thread could drain (gdb, 2 processes x 2 devices on 2 cores: a hang in 4 of 5 quick
# photoz runs this way, at step 1 to 800). Waiting on every 8th step keeps the queue short and costs
# nothing measurable (benchmarks/scaling.py, samples/s bounded vs unbounded: 1 x 4 24,600 and
# 22,800 vs 25,100; 2 x 2 16,300 and 16,300 vs 15,700).
MAX_STEPS_AHEAD = 8

# Keys that may differ between the saved config and the config of a resumed run. The parameter
# placement is like the device count: a resume onto another one is exact to float tolerance.
RESUMABLE_CHANGES = {"train.progress", "train.log_every", "name", "run_dir", "checkpoint.backup_dir",
                     "checkpoint.backup_every", "study", "train.param_sharding",
                     "train.device_data_max_mb"}  # the same batches either way, bitwise (tests/test_store.py)


def _finite_val(meta: dict) -> bool:
    """A checkpoint to roll back to: its validation metrics (if any) are all finite."""
    val = meta.get("val_metrics") or {}
    return all(not isinstance(v, (int, float)) or math.isfinite(v) for v in val.values())


class _NoMetrics:
    """The metrics log of a process other than 0 (process 0 writes the run's files)."""

    def write(self, *args: Any, **kw: Any) -> None: ...

    def event(self, *args: Any, **kw: Any) -> None: ...

    def rewind(self, *args: Any, **kw: Any) -> None: ...

    def close(self) -> None: ...


class RolledBack(Exception):
    """Raised inside the loop body after a rollback: the step's remaining hooks must not run."""


@dataclasses.dataclass
class TrainResult:
    run_dir: Path
    step: int
    total_steps: int
    stopped_by: str | None  # None (completed), "early_stopping", "on_validation" (the callback), or a signal name
    best_step: int | None
    best_value: float | None
    val_metrics: dict[str, Any]
    wall_time: float
    first_step_time: float | None  # seconds from the start of ``train`` to the end of the first step
    first_step_process_age: float | None = None  # ... from the start of the process (one command per process)
    train_data: str = "streamed"  # "on device": the split held on the devices whole (train.device_data_max_mb)


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
    try:  # the primary directory or, with checkpoint.backup_dir, the backup alone
        has_ckpt = bool(Checkpointer(ckpt_dir, cfg.checkpoint, read_only=True).available_steps())
    except CheckpointError:
        has_ckpt = False
    if resume and not has_ckpt:
        raise CheckpointError(f"--resume: no complete checkpoint in {ckpt_dir}")
    if resume is False and has_ckpt:
        raise CheckpointError(
            f"run directory {run_dir} already has checkpoints; pass --resume to continue it or choose another --run-dir"
        )
    saved_cfg = run_dir / "config.yaml"
    if has_ckpt and saved_cfg.exists():
        # Validated first, so keys added to a section since the run started compare as their defaults.
        saved = finalize_config(load_yaml_file(saved_cfg)).model_dump(mode="json")
        diffs = config_differences(saved, cfg.model_dump(mode="json"))
        if diffs:
            raise ConfigError(
                f"cannot resume {run_dir}: the config differs from the saved one in {', '.join(diffs)}; "
                "use the same config or another --run-dir"
            )
    return has_ckpt


class _Run:
    """The parts of one training run the loop body and its hooks share: train state, data
    stream, metric accumulator, checkpointer, early stopping, metrics log, progress bar."""

    def __init__(self, cfg: ExperimentConfig, c: Components, run_dir: Path, console: Console,
                 on_validation: Callable[[int, dict], bool] | None = None):
        self.primary = jax.process_index() == 0
        # Processes other than 0 print warnings and errors (stderr, logging), not progress.
        self.console = console if self.primary else Console(stderr=True, quiet=True)
        self.cfg, self.c, self.run_dir = cfg, c, run_dir
        self.on_validation = on_validation
        self.stop_asked = False  # by on_validation (a pruner's verdict)
        train = c.dataset.split("train")
        self.train_arrays = device_view(c.task, train)  # a converted dataset's split streams from disk
        self.num_train = split_rows(train)
        self.val_arrays = c.dataset.split("val")
        # A small split is held on the devices and batches gathered in the step (same batches,
        # same numbers, same iterator state); a large one, or one split over processes, streams.
        self.resident = None
        if (jax.process_count() == 1
                and num_bytes(self.train_arrays) <= cfg.train.device_data_max_mb * 1e6):
            self.resident = place_resident(read_all(self.train_arrays), c.mesh)
            self.stream = IndexStream(self.num_train, cfg.train.batch_size, cfg.train.seed, c.dataset.version)
            self.next_input = lambda: place_indices(next(self.stream), c.mesh)
        else:
            self.stream = TrainStream(self.train_arrays, cfg.train.batch_size, seed=cfg.train.seed,
                                      version=c.dataset.version, process_index=jax.process_index(),
                                      process_count=jax.process_count())
            self.next_input = lambda: shard_batch(next(self.stream), c.mesh)
        self.ckpt = Checkpointer(run_dir / "checkpoints", cfg.checkpoint)
        self.stopper = EarlyStopping(cfg.train.early_stopping)
        self.flat: FlatStep | None = None  # set by compile(); until then the state is held whole
        self._state, self.step = c.state, 0
        self.saver = SavePolicy(cfg.checkpoint.every, self.save)
        self.train_loss, self.last_val = float("nan"), {}
        self.stopped_by: str | None = None
        self.first_step_time: float | None = None
        self.first_step_process_age: float | None = None
        self.validated = False
        self.bounded_dispatch = len(c.mesh.local_devices) > 1

    # The hot loop holds the state as FlatStep's list of arrays; the TrainState is rebuilt
    # where it is read (logging, evaluation, checkpoints, rollbacks).
    @property
    def state(self) -> TrainState:
        return self.flat.unflatten(self._state) if self.flat is not None else self._state

    @state.setter
    def state(self, state: TrainState) -> None:
        self._state = self.flat.flatten(state) if self.flat is not None else state

    # ------------------------------------------------------------------ start
    def restore_latest(self) -> None:
        """The newest intact checkpoint (damaged ones are moved aside, the backup is tried)."""
        self.step, self.state, data_state, meta = self.ckpt.restore_latest(abstract_like(self.state))
        self.stream.set_state(data_state)
        self.stopper = EarlyStopping(self.cfg.train.early_stopping, meta.get("early_stopping"))
        self.saver.last_saved = self.step
        self.console.print(f"[bold]Resuming[/] {self.run_dir} from checkpoint step {self.step} of {self.c.total_steps}.")

    def start_fresh(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if self.primary:
            (self.run_dir / "config.yaml").write_text(self.cfg.to_yaml())

    def compile(self) -> None:
        """The jitted train and predict steps, the on-device metric accumulator, the metrics log."""
        cfg, c = self.cfg, self.c
        if self.primary:
            (self.run_dir / "data_info.json").write_text(json.dumps(json_safe(c.info), indent=1))
        step = make_train_step(c.graphdef, c.tx, c.loss_fn, c.schedule, cfg.optim, cfg.train.dropout_masks)
        out_shardings = None
        if param_sharding(cfg) == "fsdp":
            # Pinned, so that every step keeps the state split (propagation alone may gather it).
            out_shardings = (jax.tree.map(lambda x: x.sharding, self.state), NamedSharding(c.mesh, PartitionSpec()))
        state = self.state
        self.flat = FlatStep(step, state, out_shardings, resident=self.resident)
        self.state = state
        self.predict = jax.jit(make_predict_step(c.graphdef, c.predict_fn))
        self.score = c.task.scorer(cfg, c.info)
        example = first_rows(self.train_arrays, cfg.train.batch_size)
        if jax.process_count() > 1:  # each process holds its rows of a batch
            example = {k: v[process_rows(cfg.train.batch_size)] for k, v in example.items()}
        example = shard_batch(example, c.mesh)
        self.metric_names = step.metric_names(self.state, example)
        self.acc = self.fresh_acc()
        # A fresh start drops logs of a run killed before its 1st save.
        self.writer = MetricsWriter(self.run_dir, resume_step=self.step) if self.primary else _NoMetrics()
        self.log_checkpoint_events()
        self.console.print(
            f"Training [bold]{c.task.name}[/] ({count_params(self.state.params):,} parameters) for {c.total_steps} "
            f"steps, batch {cfg.train.batch_size} on {c.mesh.devices.size} device(s)"
            + (f" in {jax.process_count()} processes" if jax.process_count() > 1 else "")
            + ("" if self.resident is None else "; training split held on the device")
            + f"; run directory {self.run_dir}"
        )

    def fresh_acc(self) -> dict:
        return replicate(init_accumulator(self.metric_names), self.c.mesh)

    def progress(self) -> TrainProgress:
        per_epoch = max(1, self.num_train // self.cfg.train.batch_size)
        self.bar = TrainProgress(self.c.total_steps, self.step, self.cfg.train.batch_size, per_epoch,
                                 self.cfg.train.progress, self.console)
        return self.bar

    # ---------------------------------------------------------------- a step
    def train_step(self, t_start: float) -> None:
        self._state, self.acc = self.flat(self._state, self.acc, self.next_input())
        self.step += 1
        if self.first_step_time is None:
            jax.block_until_ready(self.acc)
            self.first_step_time = time.perf_counter() - t_start
            self.first_step_process_age = process_age()
            release_free_memory()  # what compiling the step used (~0.5 GB)
        elif self.bounded_dispatch and self.step % MAX_STEPS_AHEAD == 0:
            jax.block_until_ready(self.acc)
        self.bar.advance(self.step)

    # ---------------------------------------------------------- periodic work
    def log_train(self, step: int) -> None:
        # The only host sync between evaluations: the metrics and the guard's streak counter.
        host, streak = jax.device_get((self.acc, self.state.nonfinite_streak))
        logged = summarise_accumulator(host)
        self.acc = self.fresh_acc()
        self.train_loss = logged["loss"]
        self.bar.logged(step, self.train_loss)
        self.writer.write(step, "train", {**logged, "samples_per_s": self.bar.rate})
        if int(streak) >= self.cfg.train.nonfinite.max_consecutive:
            self.diverged(step, f"{int(streak)} consecutive updates had a non-finite loss, gradient or parameter "
                                "and were skipped")

    def validate(self, step: int) -> None:
        cfg, c = self.cfg, self.c
        outputs = predict_arrays(self.predict, self.state.params, self.state.model_state,
                                 device_view(c.task, self.val_arrays), cfg.train.eval_batch_size, c.mesh)
        scores = self.score(outputs, self.val_arrays, c.info)
        self.last_val = {f"val_{k}": v for k, v in scores.items() if isinstance(v, (int, float))}
        self.writer.write(step, "val", self.last_val)
        watched = {cfg.train.early_stopping.metric, cfg.checkpoint.metric, "val_loss"} & set(self.last_val)
        bad = sorted(k for k in watched if not math.isfinite(float(self.last_val[k])))
        if bad:
            self.diverged(step, f"validation {', '.join(f'{k} = {self.last_val[k]}' for k in bad)}")
        improved = self.stopper.update(step, self.last_val)
        if cfg.checkpoint.keep_best:
            require_metric(cfg.checkpoint.metric, self.last_val, "checkpoint.metric")
        loss = f"{self.train_loss:.4f}  " if math.isfinite(self.train_loss) else "(not logged yet)  "
        self.bar.line(f"step {step}/{c.total_steps}  train loss {loss}"
                      + "  ".join(f"{k} {v:.4f}" for k, v in self.last_val.items()))
        self.saver.after_eval(step, self.last_val, improved, step == c.total_steps)
        if not self.validated:
            self.validated = True
            release_free_memory()  # what compiling the predict step used
        if self.on_validation is not None and self.on_validation(step, dict(self.last_val)):
            self.stop_asked = True

    def save(self, step: int, val_metrics: dict | None) -> None:
        """Start an async checkpoint of everything that decides the next step (never non-finite)."""
        if not bool(jax.device_get(all_finite_jit(self.state.params))):  # the step's guard makes this rare
            self.diverged(step, "the parameters are not finite")
        metric = self.cfg.checkpoint.metric
        value = (val_metrics or {}).get(metric)
        ranked = {metric: float(value)} if value is not None and math.isfinite(float(value)) else None
        meta = {"step": step, "task": self.c.task.name, "config": self.cfg.model_dump(mode="json"),
                "info": self.c.info, "dataset_version": self.c.dataset.version, "val_metrics": val_metrics,
                "early_stopping": self.stopper.state}
        self.ckpt.save(step, self.state, self.stream.get_state(), json_safe(meta), ranked)

    # ------------------------------------------------------------- divergence
    def diverged(self, step: int, why: str) -> None:
        """Roll back to the last checkpoint with finite parameters and validation metrics with a
        lower learning rate, or stop with a message naming the step and the likely cause."""
        nf = self.cfg.train.nonfinite
        scale = float(jax.device_get(self.state.lr_scale))
        rollbacks = round(math.log(scale) / math.log(nf.lr_factor))
        lr = float(self.c.schedule(step)) * scale
        target = self.last_good_checkpoint(step) if nf.action == "rollback" and rollbacks < nf.max_rollbacks else None
        self.writer.event(step, "diverged", why=why, lr=lr, action="rollback" if target is not None else "stop",
                          to_step=target)
        if target is None:
            done = [f"after {rollbacks} rollback(s)"] if rollbacks else []
            if nf.action == "rollback" and rollbacks < nf.max_rollbacks:
                done.append("with no checkpoint to roll back to")
            raise TrainingDiverged(
                f"training diverged at step {step}{''.join(' ' + d for d in done)}: {why}. Likely cause: the learning rate ({lr:.3g} at this "
                f"step) is too high for this model and data, or the data hold extreme values; checkpoints up to "
                f"step {self.saver.last_saved} are intact. Lower optim.lr (or check the schedule), or run "
                f"`astroflax check` on the data"
            )
        target, state, data_state, meta = self.ckpt.restore_latest(abstract_like(self.state), at_most=target,
                                                                   accept=_finite_val)
        new_scale = scale * nf.lr_factor
        self.state = state.replace(lr_scale=place_like(jnp.float32(new_scale), state.lr_scale),
                                   nonfinite_streak=place_like(jnp.int32(0), state.nonfinite_streak))
        self.stream.set_state(data_state)
        self.stopper = EarlyStopping(self.cfg.train.early_stopping, meta.get("early_stopping"))
        self.step, self.saver.last_saved, self.acc = target, target, self.fresh_acc()
        self.writer.rewind(target)
        self.writer.event(target, "rollback", from_step=step, lr_scale=new_scale)
        self.bar.line(f"Diverged at step {step} ({why}); rolled back to checkpoint {target} with the learning rate "
                      f"scaled by {new_scale:g}.")
        self.bar.advance(target)
        raise RolledBack(target)

    def last_good_checkpoint(self, before: int) -> int | None:
        """The newest checkpoint at or before ``before`` whose validation metrics (if any) are finite."""
        self.ckpt.wait()
        for step in sorted(self.ckpt.available_steps(), reverse=True):
            if step > before:
                continue
            try:
                if _finite_val(self.ckpt.read_meta(step)):
                    return step
            except CheckpointError:
                continue  # damaged: restore_latest moves it aside when it gets there
        return None

    # ------------------------------------------------------------------- end
    def log_checkpoint_events(self) -> None:
        """What the checkpointer reported (damaged steps moved aside, backups, retries) as events."""
        events, self.ckpt.events = self.ckpt.events, []
        for e in events:
            self.writer.event(e.get("step", self.step), e["event"], **{k: v for k, v in e.items() if k not in ("event", "step")})

    def close(self) -> None:
        self.ckpt.close()
        if hasattr(self, "writer"):
            self.log_checkpoint_events()
            self.writer.close()

    def summary(self, t_start: float) -> TrainResult:
        result = TrainResult(
            run_dir=self.run_dir, step=self.step, total_steps=self.c.total_steps, stopped_by=self.stopped_by,
            best_step=self.stopper.state["best_step"], best_value=self.stopper.state["best"],
            val_metrics=self.last_val, wall_time=time.perf_counter() - t_start, first_step_time=self.first_step_time,
            first_step_process_age=self.first_step_process_age,
            train_data="streamed" if self.resident is None else "on device",
        )
        summary = {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(result).items()}
        if self.primary:
            (self.run_dir / "train_summary.json").write_text(json.dumps(json_safe(summary), indent=1))
        return result


def train(
    cfg: ExperimentConfig,
    *,
    resume: bool | None = None,
    console: Console | None = None,
    init_params: Callable[[Any], Any] | None = None,
    on_validation: Callable[[int, dict], bool] | None = None,
) -> TrainResult:
    """Train ``cfg`` in its run directory. ``resume``: None = resume if checkpoints exist.

    ``init_params(state) -> state`` (fine-tuning) sets the starting parameters of a new run
    (not of a resumed one) before the optimiser state is created. ``on_validation(step,
    val_metrics) -> stop`` sees every validation (a tuner reports it to its trial); True stops
    the run there, checkpointed, with ``stopped_by="on_validation"`` (a pruned trial).
    """
    # ====================================================================== setup
    t_start = time.perf_counter()
    enable_compile_cache()
    run_dir = cfg.resolved_run_dir()
    resuming = will_resume(cfg, run_dir, resume)
    c = build_components(cfg, init_params=None if resuming else init_params)
    # soft_wrap as the CLI's: a message is one line in a log, whatever the width of the terminal.
    run = _Run(cfg, c, run_dir, console or Console(stderr=True, soft_wrap=True), on_validation)
    run.restore_latest() if resuming else run.start_fresh()
    run.compile()
    hooks = Hooks()
    hooks.add(run.log_train, every=cfg.train.log_every)
    hooks.add(run.validate, every=(cfg.train.eval_every, cfg.checkpoint.every))  # a checkpoint needs val metrics

    # ===================================================================== loop
    # Several processes: a stop is where JAX's preemption service has every process agree
    # (reached_preemption is asked at every step, by every process); one process: the signal.
    multi = preemption_service()
    preempted = False
    try:
        with GracefulStop() as stop, run.progress():
            # A run restored from an early stop has nothing left to do: the check comes first.
            while (run.step < c.total_steps and not run.stopper.should_stop and not run.stop_asked
                   and not (preempted if multi else stop.requested)):
                run.train_step(t_start)
                try:
                    hooks.run(run.step, last=run.step == c.total_steps)
                except RolledBack:
                    pass  # the run went back to a checkpoint; carry on from there
                if multi:
                    preempted = run.ckpt.reached_preemption(run.step)
            if run.stopper.should_stop:
                run.stopped_by = "early_stopping"
                run.bar.line(f"Early stopping at step {run.step}: {run.stopper.describe()}.")
            elif preempted or (stop.requested and not multi):
                run.stopped_by = stop.name or "SIGTERM"
            elif run.stop_asked and run.step < c.total_steps:
                run.stopped_by = "on_validation"
            if run.stopped_by:
                run.saver.on_stop(run.step)  # a no-op when this step is saved already
            run.ckpt.wait()  # async saves finish before the process may exit
    finally:
        run.close()
    return run.summary(t_start)
