"""Time to the first train step of `astroflax train transients --preset quick`, from process start.

Each run is a fresh process (the real console entry point, with its re-execution). Cold: an
empty cache directory (compiled executables and converted datasets); warm: the same directory
again. The baseline, measured in the same run, is the smallest JAX program (import jax, run one
op) in a fresh process: the part of start-up no change here can remove.

    python benchmarks/startup.py [--warm 3] [--task transients] [--preset quick]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def first_step(cache_dir: str, task: str, preset: str) -> tuple[float, float]:
    """(seconds from process start to the end of the first step, of which before ``train`` began)."""
    with tempfile.TemporaryDirectory() as run_dir:
        subprocess.run(
            [sys.executable, "-m", "astroflax", "train", task, "--preset", preset, "--run-dir", run_dir,
             "--no-evaluate", "--set", "train.steps=1"],
            check=True, capture_output=True, env={**os.environ, "ASTROFLAX_CACHE_DIR": cache_dir},
        )
        summary = json.loads((Path(run_dir) / "train_summary.json").read_text())
    age, in_train = summary["first_step_process_age"], summary["first_step_time"]
    return age, age - in_train


def baseline() -> float:
    t = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import jax.numpy as jnp; jnp.zeros(3).block_until_ready()"], check=True)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--warm", type=int, default=3, help="warm runs (the median is reported)")
    ap.add_argument("--task", default="transients")
    ap.add_argument("--preset", default="quick")
    args = ap.parse_args()
    base = statistics.median(baseline() for _ in range(3))
    with tempfile.TemporaryDirectory() as cache:
        cold, cold_pre = first_step(cache, args.task, args.preset)
        warm_runs = [first_step(cache, args.task, args.preset) for _ in range(args.warm)]
    warm = statistics.median(a for a, _ in warm_runs)
    warm_pre = statistics.median(p for _, p in warm_runs)
    print(f"{'':34s} {'seconds':>8s} {'before train()':>14s} {'x baseline':>10s}")
    print(f"{'baseline: import jax, one op':34s} {base:8.2f} {'':>14s} {1.0:10.2f}")
    print(f"{'first step, cold cache':34s} {cold:8.2f} {cold_pre:14.2f} {cold / base:10.2f}")
    print(f"{'first step, warm cache (median)':34s} {warm:8.2f} {warm_pre:14.2f} {warm / base:10.2f}")
    print("warm runs: " + ", ".join(f"{a:.2f}" for a, _ in warm_runs))


if __name__ == "__main__":
    main()
