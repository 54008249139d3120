"""Streamed ``astroflax predict`` on photoz catalogues of 1M and 10M rows: throughput, peak RSS, Dask.

A photoz model (the quick preset's MLP, trained for a few steps on a generated user catalogue:
the weights do not matter for speed) predicts generated Parquet catalogues (bundled SDSS
photometry resampled with its errors, 1% of rows with a -99 band). Printed:

* rows/s of ``astroflax predict RUN --input CAT.parquet --output OUT.parquet`` (the rate in
  its summary: reading, validating, predicting and writing, after the model is loaded) against
  a bare jitted predict loop over the same rows held in memory as model arrays (the same
  compiled step and batch size; no reading, no checks, no writing) — target >= 0.8x;
* peak RSS (``os.wait4``) of the streamed run for 1M and 10M rows, and their ratio — target flat;
* ``--dask local:2`` (a LocalCluster of 2 single-threaded worker processes) against one process
  on the 1M catalogue, as a ratio of rows/s (and of wall time, which includes starting workers).

    python benchmarks/predict_scale.py [--rows 1000000,10000000] [--dir /tmp/predict_scale] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
BLOCK = 1_000_000  # rows generated and written at a time (the generator's memory stays small)


def write_catalogue(path: Path, n: int, seed: int = 0, with_z: bool = False) -> None:
    """Generated photoz rows written block by block (row groups of 128k rows)."""
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    from astroflax.data import photometry as phot

    raw = phot.load_bundled()
    rng = np.random.default_rng(seed)
    writer = None
    for start in range(0, n, BLOCK):
        m = min(BLOCK, n - start)
        pick = rng.integers(0, len(raw["z"]), m)
        mag = raw["mag"][pick].astype(np.float64) + rng.normal(size=(m, 5)) * np.minimum(raw["mag_err"][pick], 0.3)
        df = pd.DataFrame({"object_id": np.arange(start, start + m, dtype=np.int64)})
        for j, b in enumerate(phot.BANDS):
            df[f"mag_{b}"] = mag[:, j]
            df[f"magerr_{b}"] = raw["mag_err"][pick, j].astype(np.float64)
        holes = rng.random(m) < 0.01
        band = rng.integers(0, 5, m)
        for j, b in enumerate(phot.BANDS):
            df.loc[holes & (band == j), f"mag_{b}"] = -99.0
        df["ra"] = rng.uniform(0, 360, m)
        df["dec"] = np.degrees(np.arcsin(rng.uniform(-1, 1, m)))
        if with_z:
            df["zspec"] = raw["z"][pick].astype(np.float64)
        table = pa.Table.from_pandas(df, preserve_index=False)
        if writer is None:
            writer = pq.ParquetWriter(path, table.schema)
        writer.write_table(table, row_group_size=128 * 1024)
    writer.close()


def cli_rss(*args: str) -> tuple[float, float, str]:
    """Run ``astroflax ARGS`` in a fresh process, reaped with ``os.wait4`` for its peak RSS:
    (wall seconds, peak RSS in MB, stderr)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "astroflax", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"astroflax {' '.join(args)} failed ({proc.returncode}):\n{err}")
    return wall, usage.ru_maxrss / 1024, err


def summary_rate(stderr: str) -> float:
    m = re.search(r"; ([\d,]+) rows/s\)", stderr)
    if not m:
        raise SystemExit(f"no rows/s in the summary:\n{stderr}")
    return float(m.group(1).replace(",", ""))


def bare_loop(run_dir: Path, catalogue: Path) -> dict:
    """Rows/s of the jitted predict step over the rows as model arrays in memory (this process)."""
    import jax

    from astroflax.runs import load_run
    from astroflax.train.step import make_predict_step

    run = load_run(run_dir)
    arrays, _ = run.task.load_inputs(run.cfg, run.info, catalogue)
    arrays = run.task.device_arrays(arrays)
    n = len(next(iter(arrays.values())))
    bs = int(run.cfg.train.eval_batch_size)
    step = jax.jit(make_predict_step(run.graphdef, run.predict_fn))
    params, state = run.state.params, run.state.model_state
    first = {k: v[:bs] for k, v in arrays.items()}
    jax.block_until_ready(step(params, state, first))  # compiled before the clock starts
    t0 = time.perf_counter()
    outs = []
    for start in range(0, n, bs):
        batch = {k: v[start:start + bs] for k, v in arrays.items()}
        real = len(next(iter(batch.values())))
        if real < bs:
            batch = {k: np.concatenate([v, np.repeat(v[-1:], bs - real, axis=0)]) for k, v in batch.items()}
        outs.append((step(params, state, batch), real))
    host = [np.asarray(o)[:r] for o, r in outs]
    dt = time.perf_counter() - t0
    return {"rows": n, "seconds": dt, "rows_per_s": n / dt, "batch_size": bs, "outputs": int(sum(len(h) for h in host))}


def bare_in_child(run_dir: Path, catalogue: Path) -> dict:
    got = subprocess.run([sys.executable, __file__, "--bare", str(run_dir), str(catalogue)], check=True,
                         capture_output=True, text=True)
    return json.loads(got.stdout.strip().splitlines()[-1])


def main() -> None:
    if sys.argv[1:2] == ["--bare"]:
        print(json.dumps(bare_loop(Path(sys.argv[2]), Path(sys.argv[3]))))
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", default="1000000,10000000", help="catalogue sizes (comma-separated)")
    ap.add_argument("--dir", type=Path, default=Path("/tmp/predict_scale"))
    ap.add_argument("--steps", type=int, default=8, help="training steps of the (throwaway) model")
    ap.add_argument("--no-dask", action="store_true")
    ap.add_argument("--keep", action="store_true", help="keep the generated catalogues")
    ap.add_argument("--json", type=Path, help="also write the figures as JSON")
    args = ap.parse_args()
    sizes = [int(s) for s in args.rows.split(",")]
    d = args.dir
    d.mkdir(parents=True, exist_ok=True)
    run = d / "run"
    if not (run / "config.yaml").is_file():
        write_catalogue(d / "train.parquet", 5000, seed=1, with_z=True)
        sets = [f"data.path={d / 'train.parquet'}", f"train.steps={args.steps}", f"train.eval_every={args.steps}",
                f"checkpoint.every={args.steps}", "train.progress=false"]
        subprocess.run([sys.executable, "-m", "astroflax", "train", "photoz", "--preset", "quick", "--run-dir",
                        str(run), *[a for s in sets for a in ("--set", s)]], check=True, stdout=subprocess.DEVNULL)
    results: dict = {"sizes": {}}
    n0 = sizes[0]
    cat0 = d / f"cat_{n0}.parquet"
    if not cat0.is_file():
        write_catalogue(cat0, n0)
    # Before and after the streamed runs (this machine's speed drifts by 10%), each in its own
    # process: a child forked from a parent holding the rows would count them in its peak RSS.
    bare = bare_in_child(run, cat0)
    for n in sizes:
        cat = d / f"cat_{n}.parquet"
        if not cat.is_file():
            t0 = time.perf_counter()
            write_catalogue(cat, n)
            print(f"generated {cat} ({cat.stat().st_size / 1e6:.0f} MB) in {time.perf_counter() - t0:.0f} s", flush=True)
        out = d / f"pred_{n}.parquet"
        wall, rss, err = cli_rss("predict", str(run), "--input", str(cat), "--output", str(out))
        rate = summary_rate(err)
        results["sizes"][n] = {"wall_s": wall, "peak_rss_mb": rss, "rows_per_s": rate}
        print(f"{n:>11,} rows: streamed {rate:,.0f} rows/s, wall {wall:.1f} s, peak RSS {rss:,.0f} MB", flush=True)
        out.unlink(missing_ok=True)
    bare2 = bare_in_child(run, cat0)
    bare_rate = (bare["rows_per_s"] + bare2["rows_per_s"]) / 2
    results["bare_loop"] = bare | {"rows_per_s_runs": [bare["rows_per_s"], bare2["rows_per_s"]], "rows_per_s": bare_rate}
    print(f"bare jitted loop over {n0:,} rows in memory: {bare['rows_per_s']:,.0f} and {bare2['rows_per_s']:,.0f} "
          f"rows/s (batch {bare['batch_size']}; compiled before the clock starts)", flush=True)
    results["streamed_over_bare"] = {}
    for n in sizes:
        # The streamed rate includes the compile of the first chunk (~0.5 s): it weighs on 1M rows,
        # not on 10M; the bare loop's rows/s does not depend on the row count.
        ratio = results["sizes"][n]["rows_per_s"] / bare_rate
        results["streamed_over_bare"][n] = ratio
        print(f"streamed / bare at {n:,} rows = {ratio:.2f}x (target >= 0.8x)", flush=True)
    if len(sizes) > 1:
        r = results["sizes"][sizes[-1]]["peak_rss_mb"] / results["sizes"][n0]["peak_rss_mb"]
        results["rss_ratio"] = r
        print(f"peak RSS {sizes[-1]:,} / {n0:,} rows = {r:.2f}x (target: flat)", flush=True)
    if not args.no_dask:
        out = d / "pred_dask.parquet"
        wall, rss, err = cli_rss("predict", str(run), "--input", str(cat0), "--output", str(out), "--dask", "local:2")
        rate = summary_rate(err)
        one = results["sizes"][n0]
        results["dask_local2"] = {"wall_s": wall, "rows_per_s": rate, "driver_peak_rss_mb": rss,
                                  "rate_ratio": rate / one["rows_per_s"], "wall_ratio": one["wall_s"] / wall}
        print(f"--dask local:2 on {n0:,} rows: {rate:,.0f} rows/s = {rate / one['rows_per_s']:.2f}x one process "
              f"(wall {wall:.1f} s vs {one['wall_s']:.1f} s: {one['wall_s'] / wall:.2f}x)", flush=True)
        out.unlink(missing_ok=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    if not args.keep:
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main()
