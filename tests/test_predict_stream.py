"""Predict at survey scale: a generated 1M-row photoz catalogue streamed in chunks equals the
in-memory prediction exactly; bad rows are flagged and counted; a SIGKILLed run resumes to the
same output; a 2-worker Dask LocalCluster on a HATS catalogue (made with lsdb) gives the same
predictions and a catalogue LSDB opens again."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from conftest import run_main

from astroflax.data import photometry as phot

ROWS = 1_000_000  # the size: exact equality with the in-memory predict at 1M rows
TINY = ["model.hidden=[16]", "train.steps=8", "train.eval_every=8", "train.log_every=4", "checkpoint.every=8",
        "train.batch_size=32", "schedule.warmup_steps=2", "train.progress=false"]


def make_catalogue(n: int, seed: int = 0, with_z: bool = False) -> pd.DataFrame:
    """Bundled SDSS photometry resampled with its own errors, a sky position per row, and 1% of
    rows with one band given as the survey code -99 (masked, not bad)."""
    raw = phot.load_bundled()
    rng = np.random.default_rng(seed)
    pick = rng.integers(0, len(raw["z"]), n)
    mag = raw["mag"][pick].astype(np.float64) + rng.normal(size=(n, 5)) * np.minimum(raw["mag_err"][pick], 0.3)
    df = pd.DataFrame({"object_id": np.arange(n, dtype=np.int64) * 7 + 10**9})
    for j, b in enumerate(phot.BANDS):
        df[f"mag_{b}"] = mag[:, j]
        df[f"magerr_{b}"] = raw["mag_err"][pick, j].astype(np.float64)
    holes = rng.random(n) < 0.01
    band = rng.integers(0, 5, n)
    for j, b in enumerate(phot.BANDS):
        df.loc[holes & (band == j), f"mag_{b}"] = -99.0
    df["ra"] = rng.uniform(0, 360, n)
    df["dec"] = np.degrees(np.arcsin(rng.uniform(-1, 1, n)))
    if with_z:
        df["zspec"] = raw["z"][pick].astype(np.float64)
    return df


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny photoz run trained on a user catalogue with masked bands (8 steps), and its export.

    Trained through the Python API: the CLI's test-split evaluation and checklist are not needed here."""
    from astroflax.config import build_config
    from astroflax.export.writer import export_run
    from astroflax.train.loop import train

    base = tmp_path_factory.mktemp("stream")
    make_catalogue(3000, seed=1, with_z=True).to_parquet(base / "train.parquet")
    train(build_config("photoz", None, None, [f"data.path={base / 'train.parquet'}", f"run_dir={base / 'run'}", *TINY]))
    export_run(base / "run", base / "export")
    cat = base / "cat.parquet"
    make_catalogue(ROWS).to_parquet(cat, row_group_size=30_000)
    return {"run": base / "run", "export": base / "export", "cat": cat, "base": base}


def _in_memory(run_dir: Path, path: Path) -> pd.DataFrame:
    """What an in-memory predict of the whole file gives (the task's load_inputs, one model pass)."""
    from astroflax.runs import load_run

    run = load_run(run_dir)
    arrays, ids = run.task.load_inputs(run.cfg, run.info, path)
    rows = run.task.format_predictions(run.predict(arrays), ids, run.info)
    return pd.DataFrame.from_records(rows)


def test_streamed_equals_in_memory_for_any_chunk_size(trained, tmp_path):
    from astroflax.predict.models import ModelRef
    from astroflax.predict.stream import stream_predict

    ref = ModelRef.of(trained["run"])
    a = stream_predict(ref, trained["cat"], tmp_path / "a.parquet", chunk_rows=65_536, keep=("ra",))
    assert a.rows == ROWS and a.bad == 0 and a.chunks == -(-ROWS // 65_536)
    got = pd.read_parquet(tmp_path / "a.parquet")
    cols = list(got.columns)
    assert cols[:3] == ["id", "z_mean", "z_sigma"] and cols[-3:] == ["flag", "problem", "ra"]
    assert not (tmp_path / "a.parquet.partial").exists()
    want = _in_memory(trained["run"], trained["cat"])
    assert got["id"].tolist() == want["id"].tolist()
    for col in ("z_mean", "z_sigma"):
        np.testing.assert_array_equal(got[col].to_numpy(), want[col].to_numpy())
    np.testing.assert_array_equal(got["ra"].to_numpy(), pd.read_parquet(trained["cat"], columns=["ra"])["ra"])
    # another chunk size (not a multiple of the batch), as a directory of parts: the same rows
    b = stream_predict(ref, trained["cat"], tmp_path / "b", chunk_rows=77_777)
    assert b.chunks == -(-ROWS // 77_777)
    assert max(p.name for p in (tmp_path / "b").iterdir()) == f"part-{b.chunks - 1:08d}.parquet"
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "b"), got.drop(columns=["ra"]))


@pytest.mark.parametrize("suffix", [".fits", ".csv"])
def test_fits_slices_and_csv_chunks_equal_in_memory(trained, tmp_path, suffix):
    from astropy.table import Table

    from astroflax.predict.models import ModelRef
    from astroflax.predict.stream import stream_predict

    path = tmp_path / f"cat{suffix}"
    df = make_catalogue(2000, seed=5)
    if suffix == ".fits":
        Table.from_pandas(df).write(path)
    else:
        df.to_csv(path, index=False)
    s = stream_predict(ModelRef.of(trained["run"]), path, tmp_path / "p.parquet", chunk_rows=300)
    assert s.rows == 2000 and s.bad == 0 and s.chunks == 7
    got, want = pd.read_parquet(tmp_path / "p.parquet"), _in_memory(trained["run"], path)
    assert got["id"].tolist() == want["id"].tolist()
    np.testing.assert_array_equal(got["z_mean"].to_numpy(), want["z_mean"].to_numpy())


def test_bad_rows_are_flagged_counted_and_named(trained, tmp_path, capsys):
    df = make_catalogue(1000, seed=3)
    df.loc[10, "mag_g"] = 55.0  # outside the magnitude range
    df.loc[500, "magerr_r"] = -1.0  # a negative error
    df.loc[700, "object_id"] = df.loc[699, "object_id"]  # a repeated id
    df.to_csv(tmp_path / "bad.csv", index=False)
    out = tmp_path / "pred.csv"
    code, _, err = run_main(["predict", str(trained["export"]), "--input", str(tmp_path / "bad.csv"),
                             "--output", str(out), "--chunk-rows", "300"], capsys)
    assert code == 0, err
    assert "Wrote 1000 predictions" in err and "3 bad input rows were not predicted" in err
    got = pd.read_csv(out)
    bad = got[got["flag"] == 1]
    assert bad.index.tolist() == [10, 500, 700] and bad["z_mean"].isna().all() and got["z_mean"].notna().sum() == 997
    assert "bad.csv: column 'mag_g', line 12" in bad["problem"].iloc[0] and "55.0" in bad["problem"].iloc[0]
    assert "column 'magerr_r', line 502" in bad["problem"].iloc[1] and "-1.0" in bad["problem"].iloc[1]
    assert "line 702: duplicate object id 1000004893 (also at line 701)" in bad["problem"].iloc[2]
    # the good rows are predicted exactly as the in-memory reader predicts them
    good = df.drop(index=[10, 500, 700])
    good.to_csv(tmp_path / "good.csv", index=False)
    want = _in_memory(trained["run"], tmp_path / "good.csv")
    kept = got[got["flag"] == 0].reset_index(drop=True)
    assert kept["id"].tolist() == want["id"].tolist()
    np.testing.assert_allclose(kept["z_mean"], want["z_mean"], rtol=1e-6)  # the CSV holds 17 digits
    # --bad-rows error: the first bad row is the run's one-line error, and nothing is left behind
    strict = tmp_path / "strict.csv"
    code, _, err = run_main(["predict", str(trained["export"]), "--input", str(tmp_path / "bad.csv"),
                             "--output", str(strict), "--chunk-rows", "300", "--bad-rows", "error"], capsys)
    assert code == 2, err
    lines = [ln for ln in err.splitlines() if ln.startswith("error")]
    assert len(lines) == 1 and "bad.csv: column 'mag_g', line 12" in lines[0] and "55.0" in lines[0], err
    assert not strict.exists() and not (tmp_path / "strict.csv.partial").exists()


def test_sigkill_then_resume_equals_an_uninterrupted_run(trained, tmp_path, capsys):
    out = tmp_path / "p.parquet"
    progress = tmp_path / "p.parquet.partial" / "_progress.jsonl"
    cmd = [sys.executable, "-m", "astroflax", "predict", str(trained["run"]), "--input", str(trained["cat"]),
           "--output", str(out), "--chunk-rows", "10000"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if progress.is_file() and len(progress.read_text().splitlines()) >= 1:
            break
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not out.exists(), "killed after the first chunk, yet the output exists"
    done = len(progress.read_text().splitlines())
    assert 1 <= done < ROWS // 10_000
    code, _, err = run_main(cmd[3:], capsys)  # without --resume: refuses to mix with the unfinished run
    assert code == 2 and "p.parquet.partial holds an unfinished prediction; pass --resume" in err
    resumed = subprocess.run([*cmd, "--resume"], capture_output=True, text=True, check=False, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert "from the interrupted run" in resumed.stderr and not progress.parent.exists()
    from astroflax.predict.models import ModelRef
    from astroflax.predict.stream import stream_predict

    stream_predict(ModelRef.of(trained["run"]), trained["cat"], tmp_path / "ref.parquet", chunk_rows=10_000)
    assert pq.read_table(out).equals(pq.read_table(tmp_path / "ref.parquet"))


@pytest.mark.slow
def test_dask_local_cluster_on_a_hats_catalogue(trained, tmp_path):
    import lsdb

    from astroflax.predict.dask import chunk_runner, dask_client, predict_hats
    from astroflax.predict.models import ModelRef
    from astroflax.predict.stream import stream_predict

    rows = pd.read_parquet(trained["cat"])
    hats_in = tmp_path / "cat_hats"
    lsdb.from_dataframe(rows, catalog_name="cat_hats", ra_column="ra", dec_column="dec",
                        partition_rows=40_000, margin_threshold=None).write_catalog(str(hats_in))
    ref = ModelRef.of(trained["export"])
    stream_predict(ref, trained["cat"], tmp_path / "single.parquet", chunk_rows=50_000)
    want = pd.read_parquet(tmp_path / "single.parquet").set_index("id")
    with dask_client("local:2") as client:
        assert len(client.scheduler_info()["workers"]) == 2
        s = predict_hats(ref, hats_in, tmp_path / "out_hats", client=client, progress=False)
        on_files = stream_predict(ref, trained["cat"], tmp_path / "dask.parquet", chunk_rows=50_000,
                                  runner=chunk_runner(client))
        pids = set(client.run(os.getpid).values())
    assert s["rows"] == ROWS and s["bad"] == 0 and s["partitions"] > 1 and on_files.rows == ROWS
    assert len(pids) == 2 and os.getpid() not in pids
    assert pq.read_table(tmp_path / "dask.parquet").equals(pq.read_table(tmp_path / "single.parquet"))
    cat = lsdb.open_catalog(str(tmp_path / "out_hats"))
    got = cat.compute()
    assert {"ra", "dec", "z_mean", "z_sigma", "flag", "problem"} <= set(got.columns)
    got = got.set_index("id").loc[want.index]
    for col in ("z_mean", "z_sigma"):
        np.testing.assert_array_equal(got[col].to_numpy(np.float64), want[col].to_numpy())
    props = (tmp_path / "out_hats" / "hats.properties").read_text()
    assert f"hats_nrows={ROWS}" in props.replace(" ", "")
    assert json.loads(json.dumps(s))["partitions"] == len(cat.get_healpix_pixels())
