"""The training loop: ``train_and_evaluate(cfg)``.

One readable loop: build data, model and optimiser from the config; restore the latest
checkpoint if the run directory has one; then step, log at intervals, evaluate, checkpoint,
stop early or on a signal. Everything that decides the next step (params, optimiser state,
step, RNG, data-iterator position, early-stopping counters) is checkpointed, so a resumed run
ends bitwise identical to an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np
import yaml
from flax import nnx
from rich.console import Console

from astroflax.config import ExperimentConfig
from astroflax.errors import CheckpointError, ConfigError, TrainingDiverged
from astroflax.data.pipeline import TrainStream
from astroflax.runtime import enable_compile_cache
from astroflax.tasks import get_task
from astroflax.train.checkpoint import Checkpointer, abstract_like, json_safe
from astroflax.train.metrics_log import MetricsWriter
from astroflax.train.optim import build_optimizer
from astroflax.train.predict import predict_arrays
from astroflax.train.progress import TrainProgress
from astroflax.train.sharding import check_divisible, make_mesh, replicate, shard_batch
from astroflax.train.signals import GracefulStop
from astroflax.train.state import count_params, create_state
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


def total_steps_for(cfg: ExperimentConfig, num_train: int) -> int:
    if cfg.train.steps is not None:
        return cfg.train.steps
    return max(1, math.ceil(cfg.train.epochs * num_train / cfg.train.batch_size))


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def config_differences(old: dict, new: dict) -> list[str]:
    a, b = _flatten(old), _flatten(new)
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k) and k not in RESUMABLE_CHANGES)


def _is_better(value: float, best: float | None, mode: str, min_delta: float) -> bool:
    if best is None:
        return True
    return value < best - min_delta if mode == "min" else value > best + min_delta


def evaluate_split(task, predict, state, arrays, info, batch_size, mesh) -> dict[str, Any]:
    outputs = predict_arrays(predict, state.params, state.model_state, task.device_arrays(arrays), batch_size, mesh)
    return task.score(outputs, arrays, info)


def train_and_evaluate(
    cfg: ExperimentConfig,
    *,
    resume: bool | None = None,
    console: Console | None = None,
    init_params: Any = None,
) -> TrainResult:
    """Train ``cfg`` in its run directory. ``resume``: None = resume if checkpoints exist.

    ``init_params(state) -> state`` (fine-tuning) replaces the freshly initialised parameters
    and batch statistics of a new run (not of a resumed one) before the optimiser state is created.
    """
    console = console or Console(stderr=True)
    t_start = time.perf_counter()
    enable_compile_cache()
    run_dir = cfg.resolved_run_dir()
    task = get_task(cfg.task)
    mesh = make_mesh()
    check_divisible(cfg.train.batch_size, mesh, "train.batch_size")

    # ---------------------------------------------------------------- resume or start
    ckpt_dir = run_dir / "checkpoints"
    saved_cfg_path = run_dir / "config.yaml"
    has_ckpt = ckpt_dir.is_dir() and Checkpointer(ckpt_dir, read_only=True).latest_step() is not None
    if resume and not has_ckpt:
        raise CheckpointError(f"--resume: no complete checkpoint in {ckpt_dir}")
    if resume is False and has_ckpt:
        raise CheckpointError(
            f"run directory {run_dir} already has checkpoints; pass --resume to continue it or choose another --run-dir"
        )
    resuming = has_ckpt
    if resuming and saved_cfg_path.exists():
        saved = yaml.safe_load(saved_cfg_path.read_text())
        diffs = config_differences(saved, cfg.model_dump(mode="json"))
        if diffs:
            raise ConfigError(
                f"cannot resume {run_dir}: the config differs from the saved one in {', '.join(diffs)}; "
                "use the same config or another --run-dir"
            )

    # ------------------------------------------------------------------ build
    dataset = task.load_data(cfg)
    train_arrays = task.device_arrays(dataset.split("train"))
    val_arrays = task.device_arrays(dataset.split("val"))
    num_train = len(next(iter(train_arrays.values())))
    total_steps = total_steps_for(cfg, num_train)
    steps_per_epoch = max(1, num_train // cfg.train.batch_size)

    model = task.build_model(cfg, dataset.info, nnx.Rngs(params=cfg.train.seed))
    if init_params is not None and not resuming:  # fine-tuning hook (astroflax/finetune.py)
        nnx.update(model, init_params(nnx.state(model, nnx.Any(nnx.Param, nnx.BatchStat))))
    tx, schedule = build_optimizer(cfg.optim, cfg.schedule, total_steps)
    graphdef, state = create_state(model, tx, cfg.train.seed)
    del model
    state = replicate(state, mesh)
    stream = TrainStream(train_arrays, cfg.train.batch_size, seed=cfg.train.seed, version=dataset.version)

    ckpt = Checkpointer(ckpt_dir, cfg.checkpoint)
    es = {"best": None, "best_step": None, "bad_evals": 0}
    start_step = 0
    if resuming:
        start_step = ckpt.latest_step()
        state, data_state, meta = ckpt.restore(start_step, abstract_like(state))
        stream.set_state(data_state)
        es = meta.get("early_stopping", es)
        console.print(f"[bold]Resuming[/] {run_dir} from checkpoint step {start_step} of {total_steps}.")
    else:
        run_dir.mkdir(parents=True, exist_ok=True)
        saved_cfg_path.write_text(cfg.to_yaml())
    (run_dir / "data_info.json").write_text(json.dumps(json_safe(dataset.info), indent=1))

    train_step = make_train_step(graphdef, tx, task.loss_fn, schedule, cfg.optim)  # cfg.optim: precision/penalties
    jit_step = jax.jit(train_step, donate_argnums=(0, 1))
    predict = jax.jit(make_predict_step(graphdef, task.predict_fn))
    example = shard_batch({k: v[: cfg.train.batch_size] for k, v in train_arrays.items()}, mesh)
    acc_shape = jax.eval_shape(train_step, state, init_accumulator([]), example)[1]
    metric_names = [k for k in acc_shape if k != "count"]
    fresh_acc = lambda: replicate(init_accumulator(metric_names), mesh)  # noqa: E731
    acc = fresh_acc()

    # A fresh start in a directory left by a run killed before its first checkpoint drops its logs.
    writer = MetricsWriter(run_dir, resume_step=start_step)
    console.print(
        f"Training [bold]{task.name}[/] ({count_params(state.params):,} parameters) for {total_steps} steps, "
        f"batch {cfg.train.batch_size} on {mesh.devices.size} device(s); run directory {run_dir}"
    )

    def meta_for(step: int, val_metrics: dict | None) -> dict:
        return json_safe({
            "step": step,
            "task": task.name,
            "config": cfg.model_dump(mode="json"),
            "info": dataset.info,
            "dataset_version": dataset.version,
            "val_metrics": val_metrics,
            "early_stopping": es,
        })

    def save(step: int, val_metrics: dict | None) -> None:
        ranked = None
        if val_metrics is not None and cfg.checkpoint.metric in val_metrics:
            ranked = {cfg.checkpoint.metric: float(val_metrics[cfg.checkpoint.metric])}
        ckpt.save(step, state, stream.get_state(), meta_for(step, val_metrics), ranked)

    step = start_step
    stopped_by: str | None = None
    last_val: dict[str, Any] = {}
    last_saved = start_step if resuming else None
    first_step_time = None
    train_loss = float("nan")
    try:
        with GracefulStop() as stop, TrainProgress(
            total_steps, start_step, cfg.train.batch_size, steps_per_epoch, cfg.train.progress, console
        ) as bar:
            while step < total_steps:
                batch = shard_batch(next(stream), mesh)
                state, acc = jit_step(state, acc, batch)
                step += 1
                if first_step_time is None:
                    jax.block_until_ready(acc)
                    first_step_time = time.perf_counter() - t_start
                bar.advance(step)
                last = step == total_steps

                if step % cfg.train.log_every == 0 or last:
                    host = jax.device_get(acc)  # the only host sync between evaluations
                    acc = fresh_acc()
                    logged = summarise_accumulator(host)
                    train_loss = logged["loss"]
                    bar.logged(step, train_loss)
                    logged["samples_per_s"] = bar.rate
                    writer.write(step, "train", logged)
                    if not math.isfinite(logged["loss"]):
                        raise TrainingDiverged(
                            f"training loss is {logged['loss']} at step {step} (checkpoints up to step {last_saved} are "
                            "intact); lower optim.lr or check the data"
                        )

                do_ckpt = step % cfg.checkpoint.every == 0 or last
                if step % cfg.train.eval_every == 0 or do_ckpt:
                    scores = evaluate_split(
                        task, predict, state, val_arrays, dataset.info, cfg.train.eval_batch_size, mesh
                    )
                    last_val = {f"val_{k}": v for k, v in scores.items() if isinstance(v, (int, float))}
                    writer.write(step, "val", last_val)
                    es_cfg = cfg.train.early_stopping
                    if es_cfg.metric not in last_val:
                        raise ConfigError(
                            f"config key 'train.early_stopping.metric' = {es_cfg.metric!r}: not a validation metric; "
                            f"choose from {sorted(last_val)}"
                        )
                    if cfg.checkpoint.keep_best and cfg.checkpoint.metric not in last_val:
                        raise ConfigError(
                            f"config key 'checkpoint.metric' = {cfg.checkpoint.metric!r}: not a validation metric; "
                            f"choose from {sorted(last_val)}"
                        )
                    value = float(last_val[es_cfg.metric])
                    improved = _is_better(value, es["best"], es_cfg.mode, es_cfg.min_delta)
                    if improved:
                        es = {"best": value, "best_step": step, "bad_evals": 0}
                    else:
                        es = {**es, "bad_evals": es["bad_evals"] + 1}
                    bar.line(
                        f"step {step}/{total_steps}  train loss "
                        + (f"{train_loss:.4f}  " if math.isfinite(train_loss) else "(not logged yet)  ")
                        + "  ".join(f"{k} {v:.4f}" for k, v in last_val.items())
                    )
                    if do_ckpt or improved:
                        save(step, last_val)
                        last_saved = step
                    if es_cfg.enabled and es["bad_evals"] >= es_cfg.patience:
                        stopped_by = "early_stopping"
                        bar.line(
                            f"Early stopping at step {step}: {es_cfg.metric} has not improved for "
                            f"{es['bad_evals']} evaluations (best {es['best']:.4f} at step {es['best_step']})."
                        )
                        if last_saved != step:
                            save(step, None)
                            last_saved = step
                        break

                if stop.requested:
                    stopped_by = stop.name
                    if last_saved != step:
                        save(step, None)
                        last_saved = step
                    break
            if stop.requested and stopped_by is None:
                stopped_by = stop.name
            ckpt.wait()
    finally:
        ckpt.close()
        writer.close()

    result = TrainResult(
        run_dir=run_dir,
        step=step,
        total_steps=total_steps,
        stopped_by=stopped_by,
        best_step=es["best_step"],
        best_value=es["best"],
        val_metrics=last_val,
        wall_time=time.perf_counter() - t_start,
        first_step_time=first_step_time,
    )
    summary = json_safe({k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(result).items()})
    (run_dir / "train_summary.json").write_text(json.dumps(summary, indent=1))
    return result
