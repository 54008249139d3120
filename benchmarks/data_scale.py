"""Training streamed from converted datasets of 1, 4 and 16 GB: peak RSS and throughput.

For an image task (morphology) and a light-curve task (transients), datasets of each size are
generated from the task's bundled training split (rows tiled, float inputs perturbed by 1%
noise so that no two rows are equal) and written with the same writer as ``astroflax data
convert``. Each is trained for ``--steps`` steps with the quick preset in a fresh process
(``astroflax train TASK --data DIR``); the same model on the bundled in-memory arrays is the
baseline, measured in the same run. Printed per task:

* peak RSS of each training process (``wait4``; it includes touched pages of the memory-mapped
  shards) and peak anonymous RSS, and their ratios to the first size (target: flat, 16 GB
  within 1.10x of 1 GB);
* steady-state samples/s (median of the logged rates after the first quarter of the run) and
  its ratio to in-memory training, measured before and after the streamed runs (target: >= 0.95x).

Validation and test splits are fixed at 2,000 rows each: the figures are about streaming the
training split. The datasets are written under ``--dir`` and deleted after each task.

    python benchmarks/data_scale.py [--tasks morphology,transients] [--sizes 1,4,16] [--steps 400]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from astroflax.config import build_config
from astroflax.data.store import SPLITS, DatasetWriter
from astroflax.tasks import get_task

EVAL_ROWS = 2000
CHUNK = 4096


def generate(task: str, size_gb: float, out: Path) -> dict:
    """A converted dataset of about ``size_gb`` GB from the task's bundled training split."""
    cfg = build_config(task, "quick")
    dataset = get_task(task).load_data(cfg)  # the task's arrays, in memory
    train = dataset.split("train")
    n_src = len(next(iter(train.values())))
    row_bytes = sum(v[0].nbytes for v in train.values())
    rows = int(size_gb * 1e9 // row_bytes)
    rng = np.random.default_rng(0)
    writer = DatasetWriter(out, task)
    t0 = time.perf_counter()
    counts = {"train": rows, "val": EVAL_ROWS, "test": EVAL_ROWS}
    offset = 0
    for split in SPLITS:
        done = 0
        while done < counts[split]:
            n = min(CHUNK, counts[split] - done)
            idx = (offset + np.arange(n)) % n_src
            chunk = {}
            for k, v in train.items():
                a = v[idx]
                if a.dtype.kind == "f" and k not in ("sample_weight",):
                    noise = rng.normal(0.0, 0.01, size=a.shape).astype(np.float32)
                    a = (a.astype(np.float32) * (1.0 + noise)).astype(v.dtype)
                if k == "object_id":
                    a = offset + np.arange(n, dtype=v.dtype)  # unique ids
                chunk[k] = a
            writer.add(split, chunk)
            done += n
            offset += n
    info = {**dataset.info, "split_sizes": counts}
    writer.close(info, {"input": f"generated from the bundled {task} data", "data": cfg.data.model_dump(mode="json"),
                        "task_version": dataset.version})
    return {"rows": rows, "row_bytes": row_bytes, "write_s": time.perf_counter() - t0,
            "bytes": sum(p.stat().st_size for p in out.iterdir())}


def train(task: str, steps: int, data: Path | None) -> dict:
    """One training process: its peak RSS and steady-state samples/s."""
    with tempfile.TemporaryDirectory() as run_dir:
        cmd = [sys.executable, "-m", "astroflax", "train", task, "--preset", "quick", "--run-dir", run_dir,
               "--no-evaluate", "--set", f"train.steps={steps}", "--set", f"train.eval_every={steps}",
               "--set", "train.log_every=25", "--set", "train.progress=false",
               "--set", "train.early_stopping.enabled=false", "--set", "train.device_data_max_mb=0"]
        # stream=false: the baseline holds the bundled arrays in memory (by default they too are
        # converted into the dataset cache and streamed). device_data_max_mb=0: both read each
        # batch on the host (a small split would otherwise be held on the device whole).
        cmd += ["--data", str(data)] if data is not None else ["--set", "stream=false"]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        anon = _poll_anon_rss(proc.pid)
        _, status, usage = os.wait4(proc.pid, 0)
        stderr = proc.stderr.read().decode()
        if os.waitstatus_to_exitcode(status) != 0:
            raise SystemExit(f"training failed:\n{stderr[-2000:]}")
        rates = [json.loads(line)["samples_per_s"] for line in Path(run_dir, "metrics.jsonl").read_text().splitlines()
                 if json.loads(line).get("split") == "train" and json.loads(line).get("samples_per_s")]
    steady = rates[len(rates) // 4:] or rates
    return {"peak_rss_mb": usage.ru_maxrss / 1024, "peak_anon_mb": anon(), "samples_per_s": float(np.median(steady))}


def _poll_anon_rss(pid: int):
    """Peak anonymous RSS (``RssAnon`` of /proc/PID/status, sampled every 50 ms in a thread).

    ``ru_maxrss`` also counts file pages the process has mapped and touched: a streamed run that
    reads its shards through mmap shows them as resident although the kernel can drop them at
    any time. The anonymous part is the memory the process really holds."""
    import threading

    peak = [0]

    def watch() -> None:
        path = Path(f"/proc/{pid}/status")
        while True:
            try:
                text = path.read_text()
            except OSError:
                return
            for line in text.splitlines():
                if line.startswith("RssAnon:"):
                    peak[0] = max(peak[0], int(line.split()[1]))
            if "State:\tZ" in text:
                return
            time.sleep(0.05)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()

    def result() -> float:
        thread.join(timeout=1)
        return peak[0] / 1024

    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tasks", default="morphology,transients")
    ap.add_argument("--sizes", default="1,4,16", help="dataset sizes in GB")
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--dir", default=None, help="where to write the datasets (default: a temporary directory)")
    args = ap.parse_args()
    root = Path(args.dir or tempfile.mkdtemp(prefix="astroflax-scale-"))
    sizes = [float(s) for s in args.sizes.split(",")]
    for task in args.tasks.split(","):
        print(f"\n== {task}: quick preset, {args.steps} steps")
        # In memory before and after the streamed runs: the ratio is against their mean, so a
        # change in the machine's load during the run shows up as a spread, not as a bias.
        base = train(task, args.steps, None)
        print(f"in memory (bundled arrays): peak RSS {base['peak_rss_mb']:.0f} MB (anonymous {base['peak_anon_mb']:.0f} MB), "
              f"{base['samples_per_s']:.0f} samples/s", flush=True)
        first_rss = first_anon = None
        results = []
        for size in sizes:
            out = root / f"{task}-{size:g}gb"
            shutil.rmtree(out, ignore_errors=True)
            g = generate(task, size, out)
            r = train(task, args.steps, out)
            results.append((size, g, r))
            first_rss, first_anon = first_rss or r["peak_rss_mb"], first_anon or r["peak_anon_mb"]
            print(f"{size:>4g} GB ({g['rows']:,} rows of {g['row_bytes']:,} B, {g['bytes'] / 1e9:.2f} GB on disk, "
                  f"written in {g['write_s']:.0f} s): peak RSS {r['peak_rss_mb']:.0f} MB "
                  f"({r['peak_rss_mb'] / first_rss:.2f}x the first size), anonymous {r['peak_anon_mb']:.0f} MB "
                  f"({r['peak_anon_mb'] / first_anon:.2f}x), {r['samples_per_s']:.0f} samples/s", flush=True)
            shutil.rmtree(out, ignore_errors=True)
        after = train(task, args.steps, None)
        mean = (base["samples_per_s"] + after["samples_per_s"]) / 2
        print(f"in memory again: {after['samples_per_s']:.0f} samples/s; streamed / in memory (mean "
              f"{mean:.0f}): " + ", ".join(f"{size:g} GB {r['samples_per_s'] / mean:.2f}x" for size, _, r in results),
              flush=True)


if __name__ == "__main__":
    main()
