"""Multi-process overhead: samples/s of 1 process x 4 devices vs 2 processes x 2 devices.

Both runs train the same config with the same global batch on the same 4 (fake CPU) devices
of this machine; only the split into processes differs. The 2-process run joins with
``jax.distributed`` on localhost, so each step's gradient all-reduce crosses processes (gloo
over TCP on CPU) instead of staying in one process, every batch is assembled from per-process
rows with ``jax.make_array_from_process_local_data``, and each process runs its own Python
loop, Grain pipeline and dispatch. The ratio (2 x 2 / 1 x 4) is what that costs; on a real
cluster the processes sit on different hosts with their own cores, which this machine
cannot show (both layouts share its cores).

Throughput is the median of the logged ``samples_per_s`` after the first quarter of the run
(compilation and warm-up excluded), from process 0's ``metrics.jsonl``.

    python benchmarks/scaling.py [--task photoz] [--steps 400] [--batch 1024] [--set KEY=VALUE ...]

Measured (2-core machine, ``--repeats 1 --steps 300``, two runs): 1 x 4 24,600 / 22,800
samples/s, 2 x 2 16,300 / 16,300 samples/s, ratio 0.66 / 0.71.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DEFAULTS = {
    "photoz": ["model.hidden=[256,256]", "model.head=gaussian"],
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def launch(task: str, run_dir: Path, processes: int, devices: int, overrides: list[str]) -> float:
    """Train once; returns the wall time. Raises if a process fails."""
    port = free_port()
    sets = [a for o in overrides for a in ("--set", o)]
    procs = []
    t0 = time.perf_counter()
    for pid in range(processes):
        dist = [] if processes == 1 else ["--coordinator", f"localhost:{port}", "--num-processes", str(processes),
                                          "--process-id", str(pid)]
        env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
        procs.append(subprocess.Popen([sys.executable, "-m", "astroflax", "train", task, "--run-dir", str(run_dir),
                                       "--no-evaluate", *sets, *dist],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env))
    for p in procs:
        _, err = p.communicate()
        if p.returncode:
            raise SystemExit(f"{processes} x {devices}: exit {p.returncode}\n{err[-3000:]}")
    return time.perf_counter() - t0


def steady_rate(run_dir: Path, steps: int) -> float:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    rates = [r["samples_per_s"] for r in rows if r["split"] == "train" and r["step"] > steps // 4 and r.get("samples_per_s")]
    return statistics.median(rates)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--task", default="photoz")
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--batch", type=int, default=1024, help="global batch size (both layouts)")
    ap.add_argument("--repeats", type=int, default=2, help="runs per layout (the best is kept)")
    ap.add_argument("--set", dest="sets", action="append", default=[], help="extra config override")
    args = ap.parse_args()
    log_every = max(1, args.steps // 40)
    overrides = [*DEFAULTS.get(args.task, []), f"train.batch_size={args.batch}", f"train.steps={args.steps}",
                 f"train.log_every={log_every}", f"train.eval_every={args.steps}", "train.progress=false",
                 "checkpoint.async_save=true", *args.sets]
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        # Warm the dataset cache and the compile cache first, so neither layout pays for them.
        launch(args.task, Path(tmp) / "warm", 1, 4, [*overrides, "train.steps=2", "train.log_every=1", "train.eval_every=2"])
        for name, (processes, devices) in {"1x4": (1, 4), "2x2": (2, 2)}.items():
            best = None
            for r in range(args.repeats):
                run_dir = Path(tmp) / f"{name}-{r}"
                wall = launch(args.task, run_dir, processes, devices, overrides)
                rate = steady_rate(run_dir, args.steps)
                print(f"{name} run {r}: {rate:,.0f} samples/s (wall {wall:.1f} s)", flush=True)
                best = max(best or 0.0, rate)
            results[name] = best
    ratio = results["2x2"] / results["1x4"]
    print(json.dumps({"task": args.task, "global_batch": args.batch, "steps": args.steps,
                      "samples_per_s": results, "ratio_2x2_over_1x4": round(ratio, 3)}, indent=1))


if __name__ == "__main__":
    main()
