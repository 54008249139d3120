"""Converted datasets (ArrayRecord shards + manifest) streamed by Grain: round trip, damage
reported, training on them equal to training in memory, and exact resume after SIGKILL."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from conftest import run_main, set_args

from astroflax.data.store import DatasetWriter, StoredSplit, is_store, read_manifest, split_rows
from astroflax.errors import DataError

PHOTOZ = ["model.hidden=[16]", "model.head=gaussian", "train.batch_size=64", "train.steps=120",
          "train.eval_every=20", "train.log_every=1", "checkpoint.keep_latest=3", "schedule.warmup_steps=1",
          "train.progress=false"]


def write(directory: Path, arrays: dict, shard_bytes: int = 1000) -> dict:
    w = DatasetWriter(directory, "photoz", shard_bytes=shard_bytes)
    w.add("train", {k: v[:80] for k, v in arrays.items()})
    w.add("train", {k: v[80:100] for k, v in arrays.items()})  # a second chunk continues the split
    w.add("val", {k: v[100:] for k, v in arrays.items()})
    w.close({"class_names": ["a"]}, {"input": "generated"})
    return read_manifest(directory)


def example_arrays(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"x": rng.normal(size=(120, 3, 2)).astype(np.float32), "label": rng.integers(0, 5, 120).astype(np.int32),
            "flag": rng.random(120) > 0.5}


def test_round_trip_shards_statistics_and_version(tmp_path):
    arrays = example_arrays()
    m = write(tmp_path / "ds", arrays)
    assert m["splits"]["train"]["rows"] == 100 and m["splits"]["val"]["rows"] == 20
    shards = m["splits"]["train"]["shards"]
    record = 3 * 2 * 4 + 4 + 1  # bytes per example: a shard closes once it holds >= 1000 bytes
    assert [s["rows"] for s in shards][:-1] == [-(-1000 // record)] * (len(shards) - 1) and len(shards) == 3
    assert [s["file"] for s in shards] == [f"train-{i:05d}-of-{len(shards):05d}.arrayrecord" for i in range(len(shards))]
    assert sum(s["rows"] for s in shards) == 100
    split = StoredSplit(tmp_path / "ds", "train", m)
    assert split_rows(split) == 100
    for key in arrays:
        assert np.array_equal(split[key], arrays[key][:100]) and split[key].dtype == arrays[key].dtype
    src = split.source(["x"])
    assert list(src[57]) == ["x"] and np.array_equal(src[57]["x"], arrays["x"][57])
    stats = m["normalisation"]["x"]
    assert stats["mean"] == pytest.approx(float(arrays["x"][:100].mean()), abs=1e-6)
    assert stats["min"] == pytest.approx(float(arrays["x"][:100].min()))
    assert "label" not in m["normalisation"]  # statistics of float fields only
    # The version depends on the content only: the same rows give the same hash, one changed value another.
    assert write(tmp_path / "again", arrays)["content_hash"] == m["content_hash"]
    changed = {**arrays, "x": arrays["x"].copy()}
    changed["x"][3, 0, 0] += 1.0
    assert write(tmp_path / "changed", changed)["content_hash"] != m["content_hash"]


def test_a_damaged_or_incomplete_dataset_is_one_clear_error(tmp_path):
    m = write(tmp_path / "ds", example_arrays())
    first = tmp_path / "ds" / m["splits"]["train"]["shards"][0]["file"]
    first.unlink()
    with pytest.raises(DataError, match="shard file\\(s\\) missing: .*train-00000-of"):
        StoredSplit(tmp_path / "ds", "train", m).source()
    m2 = write(tmp_path / "ds2", example_arrays())
    m2["schema"][0]["shape"] = [3, 3]  # records no longer match the schema
    with pytest.raises(DataError, match="a record has 29 bytes, the schema 41; the shard is damaged"):
        StoredSplit(tmp_path / "ds2", "train", m2).source()[0]
    # An aborted write leaves nothing under the final name.
    w = DatasetWriter(tmp_path / "ds3", "photoz")
    w.add("train", example_arrays())
    w.abort()
    assert not (tmp_path / "ds3").exists() and not list(tmp_path.glob(".ds3*"))


def final_params(run_dir: Path, step: int = 120) -> dict[str, np.ndarray]:
    restored = ocp.StandardCheckpointer().restore((run_dir / "checkpoints" / str(step) / "state").absolute())
    leaves = jax.tree_util.tree_flatten_with_path({"params": restored["params"], "opt": restored["opt_state"]})[0]
    return {jax.tree_util.keystr(p): np.asarray(v) for p, v in leaves}


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    root = tmp_path_factory.mktemp("store")
    from astroflax.cli import main

    main(["data", "convert", "photoz", "--out", str(root / "ds"), *set_args(PHOTOZ)])  # raises on failure
    return root


def test_convert_info_and_train_equal_to_in_memory(converted, tmp_path, capsys):
    ds = converted / "ds"
    code, out, err = run_main(["data", "info", str(ds)], capsys)
    assert code == 0, err
    m = read_manifest(ds)
    assert m["task"] == "photoz" and f"{m['splits']['train']['rows']:,}" in out and m["content_hash"] in out
    assert m["splits"]["train"]["rows"] + m["splits"]["val"]["rows"] + m["splits"]["test"]["rows"] == 9988
    code, _, err = run_main(["train", "photoz", "--run-dir", str(tmp_path / "mem"), "--no-evaluate",
                             *set_args([*PHOTOZ, "stream=false"])], capsys)
    assert code == 0, err
    code, _, err = run_main(["train", "photoz", "--data", str(ds), "--run-dir", str(tmp_path / "disk"),
                             "--no-evaluate", *set_args(PHOTOZ)], capsys)
    assert code == 0, err
    # Every batch read from disk and copied to the device, instead of the split held there whole.
    code, _, err = run_main(["train", "photoz", "--data", str(ds), "--run-dir", str(tmp_path / "streamed"),
                             "--no-evaluate", *set_args([*PHOTOZ, "train.device_data_max_mb=0"])], capsys)
    assert code == 0, err
    mem, disk, streamed = (final_params(tmp_path / d) for d in ("mem", "disk", "streamed"))
    how = {d: json.loads((tmp_path / d / "train_summary.json").read_text())["train_data"] for d in ("disk", "streamed")}
    assert how == {"disk": "on device", "streamed": "streamed"}, how
    assert mem.keys() == disk.keys() == streamed.keys()
    for k in mem:  # the same batches in the same order: bitwise the same run
        assert np.array_equal(mem[k], disk[k]), k
        assert np.array_equal(mem[k], streamed[k]), k
    info = json.loads((tmp_path / "disk" / "data_info.json").read_text())
    assert info["dataset"]["content_hash"] == m["content_hash"] and info["dataset"]["rows"]["train"] == 6988
    saved = (tmp_path / "disk" / "config.yaml").read_text()
    assert f"dataset: {ds.absolute()}" in saved


def test_data_errors_are_one_line(converted, tmp_path, capsys):
    code, _, err = run_main(["train", "spectra", "--data", str(converted / "ds"), "--run-dir", str(tmp_path / "r")],
                            capsys)
    assert code == 2 and "was converted for task 'photoz', not 'spectra'" in err, err
    code, _, err = run_main(["data", "info", str(tmp_path)], capsys)
    assert code == 2 and "not a converted dataset (no manifest.json)" in err, err
    code, _, err = run_main(["data", "convert", "photoz", "--out", str(converted / "ds")], capsys)
    assert code == 2 and "already exists" in err, err


def test_bundled_and_user_data_stream_through_one_cache(tmp_path, monkeypatch):
    """Without --data, a task's data (bundled or data.path) is converted into the dataset cache
    at first use and streamed; the key follows the data settings and the input files."""
    from astroflax.config import build_config
    from astroflax.data.store import cache_path, load_dataset
    from astroflax.tasks import get_task

    monkeypatch.setenv("ASTROFLAX_CACHE_DIR", str(tmp_path / "cache"))
    cfg = build_config("photoz", None, None, [])
    first = load_dataset(cfg)
    directory = cache_path(cfg, get_task("photoz"))
    assert isinstance(first.splits["train"], StoredSplit) and directory.parent == tmp_path / "cache" / "datasets"
    manifest = read_manifest(directory)
    assert first.version == manifest["content_hash"] and first.info["dataset"]["path"] == str(directory.resolve())
    stamp = (directory / "manifest.json").stat().st_mtime_ns
    again = load_dataset(cfg)  # reused, not rewritten
    assert again.version == first.version and (directory / "manifest.json").stat().st_mtime_ns == stamp
    memory = load_dataset(build_config("photoz", None, None, ["stream=false"]))
    assert isinstance(memory.splits["train"], dict)
    for key, values in memory.splits["test"].items():
        assert np.array_equal(first.splits["test"][key], values), key
    other = build_config("photoz", None, None, ["data.use_errors=true"])
    assert cache_path(other, get_task("photoz")) != directory
    # A damaged cache entry is converted again rather than failing the run.
    (directory / manifest["splits"]["val"]["shards"][0]["file"]).unlink()
    assert load_dataset(cfg).version == first.version and is_store(directory)
    # data.path: a changed input file is a new cache entry.
    user = tmp_path / "user"
    user.mkdir()
    (user / "a.csv").write_text("x\n1\n")
    cfg_user = build_config("transients", None, None, [f"data.path={user}"])
    key = cache_path(cfg_user, get_task("transients"))
    (user / "a.csv").write_text("x\n1\n2\n")
    assert cache_path(cfg_user, get_task("transients")) != key


@pytest.mark.slow  # a real process killed with SIGKILL mid-run, resumed from the streamed dataset
def test_sigkill_then_resume_on_a_streamed_dataset_is_bitwise(converted, tmp_path, capsys):
    ds = converted / "ds"
    # Every batch read from disk (not the split held on the device, the default at this size).
    argv = ["train", "photoz", "--data", str(ds), "--no-evaluate", *set_args([*PHOTOZ, "train.device_data_max_mb=0"])]
    code, _, err = run_main([*argv, "--run-dir", str(tmp_path / "reference")], capsys)
    assert code == 0, err
    run_dir = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "astroflax", *argv, "--run-dir", str(run_dir)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    target = random.Random(os.getpid()).randint(30, 100)

    def logged() -> int:
        try:
            lines = (run_dir / "metrics.jsonl").read_text().splitlines()
        except OSError:
            return 0
        steps = []
        for line in lines:
            try:
                steps.append(json.loads(line)["step"])
            except ValueError:
                pass
        return max(steps, default=0)

    def committed() -> bool:
        # An async save commits by renaming its temporary directory to the bare step number;
        # killing before the first commit would leave nothing to resume from (seen in CI).
        try:
            return any(p.name.isdigit() for p in (run_dir / "checkpoints").iterdir())
        except OSError:
            return False

    deadline = time.monotonic() + 300
    while ((logged() < target or not committed()) and proc.poll() is None
           and time.monotonic() < deadline):
        time.sleep(0.001)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "the run ended before it was killed"
    # Resumed with the split held on the device: the iterator state is the same either way.
    resume_argv = ["train", "photoz", "--data", str(ds), "--no-evaluate", *set_args(PHOTOZ)]
    code, _, err = run_main([*resume_argv, "--run-dir", str(run_dir)], capsys)
    assert code == 0 and "Resuming" in err, err
    ref, resumed = final_params(tmp_path / "reference"), final_params(run_dir)
    for k in ref:
        assert np.array_equal(ref[k], resumed[k]), f"{k} differs after the resume (killed at step ~{target})"
