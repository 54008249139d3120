"""Checkpoint write speed against an fsync'd single-file write of the same bytes, in the same run.

For two states -- the transients quick preset's real train state (small, many leaves) and a
~105 MB synthetic one -- it times astroflax's ``Checkpointer``: how long ``save`` blocks the
training loop, and how long until the step is committed (``wait``, which includes astroflax's
checksums); and ``loop``: how long each save holds a loop that trains (sleeps) between saves,
which also counts what a save leaves for the next one. The baseline writes the same bytes to one
file and fsyncs it.

    python benchmarks/checkpoint_io.py [--repeats 5] [--dir /path/on/the/disk/to/test]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from astroflax.config import CheckpointConfig, build_config
from astroflax.train.checkpoint import Checkpointer
from astroflax.train.components import build_components


def quick_state():
    cfg = build_config("transients", "quick", overrides=["train.seed=0", "stream=false"])
    return build_components(cfg).state


def large_state(mb: float = 105.0):
    """20 float32 leaves adding up to ``mb`` megabytes (about a 26M-parameter model)."""
    n = int(mb * 1e6 / 4 / 20)
    keys = jax.random.split(jax.random.key(0), 20)
    return {"params": {f"w{i:02d}": jax.random.normal(k, (n,), jnp.float32) for i, k in enumerate(keys)}}


def state_bytes(state) -> int:
    return sum(x.nbytes for x in jax.tree.leaves(state))


def fsync_write(directory: Path, state) -> float:
    """Seconds to write the state's bytes to one file and fsync it (the baseline)."""
    data = b"".join(np.asarray(x).tobytes() for x in jax.tree.leaves(state))
    path = directory / "baseline.bin"
    t = time.perf_counter()
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    dt = time.perf_counter() - t
    path.unlink()
    return dt


def checkpoint_times(directory: Path, state, repeats: int) -> tuple[list[float], list[float]]:
    """(seconds ``save`` blocked, seconds until committed) for each of ``repeats`` saves."""
    ckpt = Checkpointer(directory / "checkpoints", CheckpointConfig(keep_latest=2, keep_best=0))
    blocked, committed = [], []
    try:
        for step in range(repeats + 1):  # the first save also opens Orbax's machinery: not counted
            t = time.perf_counter()
            ckpt.save(step, state, {"position": step}, {"step": step}, {"val_loss": 1.0})
            t_saved = time.perf_counter()
            ckpt.wait()
            if step:
                blocked.append(t_saved - t)
                committed.append(time.perf_counter() - t)
    finally:
        ckpt.close()
    return blocked, committed


def loop_blocking(directory: Path, state, repeats: int, gap: float) -> list[float]:
    """Seconds each ``save`` holds a loop that trains ``gap`` seconds between saves (a sleep
    here): what the loop really loses per save, including any work a save leaves for the next."""
    ckpt = Checkpointer(directory / "loop", CheckpointConfig(keep_latest=2, keep_best=0))
    out = []
    try:
        for step in range(repeats + 1):
            t = time.perf_counter()
            ckpt.save(step, state, {"position": step}, {"step": step}, {"val_loss": 1.0})
            if step:
                out.append(time.perf_counter() - t)
            time.sleep(gap)
    finally:
        ckpt.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--dir", default=None, help="where to write (default: a temporary directory)")
    args = ap.parse_args()
    print(f"{'state':22s} {'MB':>7s} {'leaves':>6s} {'fsync MB/s':>10s} {'ckpt MB/s':>9s} {'ratio':>6s} "
          f"{'commit s':>8s} {'blocks s':>8s} {'loop s':>7s}")
    for name, make in (("transients quick", quick_state), ("synthetic 105 MB", large_state)):
        state = make()
        size = state_bytes(state)
        with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
            base = statistics.median(fsync_write(Path(tmp), state) for _ in range(args.repeats))
            blocked, committed = checkpoint_times(Path(tmp), state, args.repeats)
            commit = statistics.median(committed)
            loop = loop_blocking(Path(tmp), state, args.repeats, gap=2 * commit + 0.5)
        print(f"{name:22s} {size / 1e6:7.2f} {len(jax.tree.leaves(state)):6d} {size / 1e6 / base:10.0f} "
              f"{size / 1e6 / commit:9.1f} {base / commit:6.2f} {commit:8.3f} {statistics.median(blocked):8.3f} {statistics.median(loop):7.3f}")


if __name__ == "__main__":
    main()
