"""What the training loop costs over the bare train step, in the same process.

For each task (quick preset), four per-step times:
- **bare step**: the loop's own jitted step (`FlatStep`) on batches made beforehand, cycled;
- **step + stream**: the same, each batch drawn from the streamed path (`TrainStream`: shuffle,
  a batched read of the converted dataset on disk) and placed on the devices;
- **step + resident**: the path a split under `train.device_data_max_mb` takes, the split held on
  the device and each batch's indices (`IndexStream`) gathered inside the step;
- **loop**: `astroflax.train.loop.train` itself, as the difference between a run of 2N and a
  run of N steps (same config, warm caches), so that start-up, the final validation and the
  final checkpoint cancel. Validation and checkpoints in between are pushed past the end.

The loop figure includes logging (every `train.log_every` steps, the one host sync), the progress
bar and the hooks. Ratios are against the bare step measured in the same run.

    python benchmarks/loop_overhead.py [--steps 300] [--tasks transients,photoz] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import jax

from astroflax.config import build_config
from astroflax.data.pipeline import IndexStream, TrainStream, num_rows, read_all
from astroflax.data.store import device_view
from astroflax.runtime import enable_compile_cache
from astroflax.train.components import build_components
from astroflax.train.loop import train
from astroflax.train.sharding import place_indices, place_resident, replicate, shard_batch
from astroflax.train.step import FlatStep, init_accumulator, make_train_step


def overrides(steps: int) -> list[str]:
    # No validation or checkpoint before the end, no early stop; the progress bar as a user sees it.
    return ["train.seed=0", f"train.steps={steps}", f"train.eval_every={10 * steps}",
            f"checkpoint.every={10 * steps}", "train.early_stopping.enabled=false"]


def step_times(task: str, steps: int) -> tuple[float, float, float]:
    """(bare step, step + stream, step + resident) seconds per step."""
    cfg = build_config(task, "quick", overrides=overrides(steps))
    c = build_components(cfg)
    arrays = device_view(c.task, c.dataset.split("train"))
    step = make_train_step(c.graphdef, c.tx, c.loss_fn, c.schedule, cfg.optim, cfg.train.dropout_masks)
    stream = TrainStream(arrays, cfg.train.batch_size, cfg.train.seed, c.dataset.version)
    example = shard_batch(next(stream), c.mesh)
    names = [k for k in jax.eval_shape(step, c.state, init_accumulator([]), example)[1] if k != "count"]
    flat = FlatStep(step, c.state, None)
    leaves, acc = flat.flatten(c.state), replicate(init_accumulator(names), c.mesh)
    batches = [shard_batch(next(stream), c.mesh) for _ in range(16)]
    for b in batches[:3]:  # compile, warm up
        leaves, acc = flat(leaves, acc, b)
    jax.block_until_ready(acc)

    def timed(get_batch) -> float:
        nonlocal leaves, acc
        t = time.perf_counter()
        for i in range(steps):
            leaves, acc = flat(leaves, acc, get_batch(i))
        jax.block_until_ready(acc)
        return (time.perf_counter() - t) / steps

    bare = timed(lambda i: batches[i % len(batches)])
    with_data = timed(lambda i: shard_batch(next(stream), c.mesh))
    # The same state (`leaves`) carries on, now through the resident step.
    flat = FlatStep(step, c.state, None, resident=place_resident(read_all(arrays), c.mesh))
    indices = IndexStream(num_rows(arrays), cfg.train.batch_size, cfg.train.seed, c.dataset.version)
    for _ in range(3):  # compile, warm up
        leaves, acc = flat(leaves, acc, place_indices(next(indices), c.mesh))
    jax.block_until_ready(acc)
    resident = timed(lambda i: place_indices(next(indices), c.mesh))
    return bare, with_data, resident


def loop_time(task: str, steps: int) -> float:
    """Seconds per step of ``train`` itself: (wall of 2N steps - wall of N steps) / N."""
    walls = []
    for n in (steps, 2 * steps):
        with tempfile.TemporaryDirectory() as run_dir:
            cfg = build_config(task, "quick", overrides=[*overrides(n), f"run_dir={run_dir}", "train.progress=true"])
            t = time.perf_counter()
            train(cfg, resume=False)
            walls.append(time.perf_counter() - t)
    return (walls[1] - walls[0]) / steps


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--tasks", default="transients,photoz")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    enable_compile_cache()
    print(f"{'task':12s} {'bare ms':>8s} {'+stream':>8s} {'+resid.':>8s} {'loop ms':>8s} {'stream/bare':>11s} "
          f"{'resid./bare':>11s} {'loop/bare':>9s}")
    for task in args.tasks.split(","):
        rows = []
        for _ in range(args.rounds):  # interleaved: each round measures all four
            rows.append((*step_times(task, args.steps), loop_time(task, args.steps)))
        bare, streamed, resident, loop = (statistics.median(r[i] for r in rows) for i in range(4))
        ratios = [r[3] / r[0] for r in rows]
        print(f"{task:12s} {bare * 1e3:8.2f} {streamed * 1e3:8.2f} {resident * 1e3:8.2f} {loop * 1e3:8.2f} "
              f"{streamed / bare:11.3f} {resident / bare:11.3f} {loop / bare:9.3f}   "
              f"loop/bare per round: {', '.join(f'{x:.3f}' for x in ratios)}")


if __name__ == "__main__":
    main()
