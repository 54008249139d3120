"""Train-step throughput of the transients model, as ratios against a baseline in the same run.

Baseline: the quick preset's model with full self-attention. Variants: induced attention,
the full preset's sizes. Also reports time to first step with a cold and a warm compile cache
(each in a fresh process, so the persistent cache is what differs).

    python benchmarks/train_step.py [--steps 50]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import jax

from astroflax.config import build_config
from astroflax.data.pipeline import TrainStream
from astroflax.train.components import build_components
from astroflax.train.sharding import replicate, shard_batch
from astroflax.train.step import init_accumulator, make_train_step


def steps_per_second(preset: str, overrides: list[str], steps: int) -> tuple[float, int]:
    cfg = build_config("transients", preset, overrides=overrides + ["train.seed=0", "train.steps=10000"])
    c = build_components(cfg)
    arrays = c.task.device_arrays(c.dataset.split("train"))
    mesh, state = c.mesh, c.state
    step = make_train_step(c.graphdef, c.tx, c.loss_fn, c.schedule)
    stream = TrainStream(arrays, cfg.train.batch_size, 0, c.dataset.version)
    example = shard_batch(next(stream), mesh)
    acc = jax.eval_shape(step, state, init_accumulator([]), example)[1]
    acc = replicate(init_accumulator([k for k in acc if k != "count"]), mesh)
    jstep = jax.jit(step, donate_argnums=(0, 1))
    for _ in range(3):  # compile + warm up
        state, acc = jstep(state, acc, shard_batch(next(stream), mesh))
    jax.block_until_ready(acc)
    t = time.perf_counter()
    for _ in range(steps):
        state, acc = jstep(state, acc, shard_batch(next(stream), mesh))
    jax.block_until_ready(acc)
    return steps / (time.perf_counter() - t), cfg.train.batch_size


def first_step_time(cache_dir: str) -> float:
    with tempfile.TemporaryDirectory() as run_dir:
        env = {**os.environ, "ASTROFLAX_CACHE_DIR": cache_dir}
        subprocess.run(
            [sys.executable, "-m", "astroflax", "train", "transients", "--preset", "quick", "--run-dir", run_dir,
             "--no-evaluate", "--set", "train.steps=2", "--set", "train.eval_every=1000"],
            check=True, capture_output=True, env=env,
        )
        return json.load(open(os.path.join(run_dir, "train_summary.json")))["first_step_time"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=50)
    args = ap.parse_args()
    variants = {
        "quick, full attention (baseline)": ("quick", ["model.attention=full"]),
        "quick, induced attention": ("quick", ["model.attention=induced"]),
        "full preset, full attention": ("full", ["model.attention=full"]),
        "full preset, induced attention": ("full", ["model.attention=induced"]),
    }
    results = {}
    for name, (preset, overrides) in variants.items():
        results[name] = steps_per_second(preset, overrides, args.steps)
    base = results["quick, full attention (baseline)"][0]
    print(f"{'variant':40s} {'steps/s':>8s} {'samples/s':>10s} {'ratio':>6s}")
    for name, (sps, bs) in results.items():
        print(f"{name:40s} {sps:8.1f} {sps * bs:10.0f} {sps / base:6.2f}")
    with tempfile.TemporaryDirectory() as cache:
        cold = first_step_time(cache)
        warm = first_step_time(cache)
    print(f"time to first step (process start excluded): cold cache {cold:.2f} s, warm cache {warm:.2f} s, "
          f"ratio {warm / cold:.2f}")


if __name__ == "__main__":
    main()
