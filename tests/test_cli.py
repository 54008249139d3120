"""The command line end to end: real processes, real files, one-line errors with exit code 2."""

from __future__ import annotations

import csv
import json

import numpy as np
import pandas as pd
import pytest
import yaml

from astroflax.data import lightcurves as lc
from conftest import TINY_TRANSIENTS, run_cli, set_args


def write_user_data(directory, n_objects: int = 12, with_target: bool = True, split: str = "test"):
    """A slice of the bundled PLAsTiCC test split written in the documented user-data layout."""
    lcs = lc.load_bundled_plasticc()
    idx = lc.split_indices(lcs)[split][:n_objects]
    sub = lcs.select(idx)
    rows = []
    for i, oid in enumerate(sub.object_id):
        a, b = sub.offsets[i], sub.offsets[i + 1]
        rows.append(pd.DataFrame({
            "object_id": oid, "mjd": sub.mjd[a:b], "passband": sub.passband[a:b],
            "flux": sub.flux[a:b], "flux_err": sub.flux_err[a:b], "detected": sub.detected[a:b],
        }))
    directory.mkdir(parents=True, exist_ok=True)
    pd.concat(rows).to_csv(directory / "lightcurves.csv", index=False)
    meta = pd.DataFrame({"object_id": sub.object_id, "hostgal_photoz": sub.meta[:, 0],
                         "hostgal_photoz_err": sub.meta[:, 1], "mwebv": sub.meta[:, 2]})
    if with_target:
        meta["target"] = [lc.PLASTICC_CLASS_IDS[k] for k in sub.labels]
    meta.to_csv(directory / "metadata.csv", index=False)
    return sub


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("cli") / "run"
    proc = run_cli("train", "transients", "--run-dir", str(run_dir), *set_args(TINY_TRANSIENTS), check=True)
    return run_dir, proc


def assert_one_line_error(proc, *fragments):
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    lines = [l for l in proc.stderr.splitlines() if l.strip() and not l.startswith(("WARNING", "W1", "I1"))]
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    for frag in fragments:
        assert frag in lines[0], (frag, lines[0])


def test_tasks_lists_transients():
    proc = run_cli("tasks", check=True)
    assert "transients" in proc.stdout and "quick" in proc.stdout


def test_config_show_is_valid_resolved_yaml():
    proc = run_cli("config", "show", "transients", "--preset", "full", "--set", "optim.lr=0.0005", check=True)
    cfg = yaml.safe_load(proc.stdout)
    assert cfg["task"] == "transients" and cfg["preset"] == "full"
    assert cfg["optim"]["lr"] == 0.0005
    assert {"data", "model", "optim", "schedule", "train", "checkpoint"} <= set(cfg)


@pytest.mark.parametrize(
    "args, fragments",
    [
        (["evaluate", "/nonexistent/run"], ["/nonexistent/run", "does not exist"]),
        (["train", "transients", "--set", "optim.lrr=1"], ["optim.lrr"]),
        (["train", "transients", "--set", "optim.lr=fast"], ["optim.lr", "fast"]),
        (["train", "transients", "--config", "/no/such.yaml"], ["/no/such.yaml"]),
        (["train", "galaxies"], ["galaxies", "transients"]),
        (["train", "transients", "--bogus"], ["--bogus"]),
        (["config", "show", "transients", "--preset", "huge"], ["huge", "quick"]),
    ],
)
def test_bad_arguments_give_one_line_and_exit_2(args, fragments):
    assert_one_line_error(run_cli(*args), *fragments)


def test_debug_shows_traceback():
    proc = run_cli("--debug", "evaluate", "/nonexistent/run")
    assert proc.returncode != 0 and "Traceback" in proc.stderr


def test_train_writes_run_directory_and_evaluates(trained_run):
    run_dir, proc = trained_run
    for name in ("config.yaml", "metrics.jsonl", "data_info.json", "train_summary.json", "eval/test.json"):
        assert (run_dir / name).is_file(), name
    assert any((run_dir / "tb").iterdir())
    report = json.loads((run_dir / "eval" / "test.json").read_text())
    assert report["n"] == 1571 and len(report["confusion_matrix"]) == 14
    assert np.sum(report["confusion_matrix"]) == 1571
    assert 0 <= report["accuracy"] <= 1 and report["flat_weighted_log_loss"] > 0
    assert "auc_positive" in report and report["positive_class"] == "SN Ia"
    assert "flat-weighted" in proc.stdout  # the table was printed


def test_evaluate_checkpoint_choices(trained_run):
    run_dir, _ = trained_run
    latest = run_cli("evaluate", str(run_dir), "--split", "val", "--checkpoint", "latest", check=True)
    assert "checkpoint step 24" in latest.stdout
    report = json.loads((run_dir / "eval" / "val.json").read_text())
    assert report["checkpoint_step"] == 24 and report["n"] == 784
    assert_one_line_error(run_cli("evaluate", str(run_dir), "--checkpoint", "7"), "7", "available")
    assert_one_line_error(run_cli("evaluate", str(run_dir), "--split", "holdout"), "holdout")


def test_predict_on_user_tables(trained_run, tmp_path):
    run_dir, _ = trained_run
    sub = write_user_data(tmp_path / "mine", with_target=False)
    out = tmp_path / "preds.csv"
    run_cli("predict", str(run_dir), "--input", str(tmp_path / "mine"), "--output", str(out), check=True)
    rows = list(csv.DictReader(out.open()))
    assert [int(r["object_id"]) for r in rows] == [int(o) for o in sub.object_id]
    probs = np.array([[float(r[k]) for k in r if k.startswith("p_")] for r in rows])
    assert probs.shape == (len(sub.object_id), 14)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)


def test_predict_bad_input_names_file_and_column(trained_run, tmp_path):
    run_dir, _ = trained_run
    write_user_data(tmp_path / "bad", n_objects=3, with_target=False)
    table = pd.read_csv(tmp_path / "bad" / "lightcurves.csv").drop(columns=["flux_err"])
    table.to_csv(tmp_path / "bad" / "lightcurves.csv", index=False)
    proc = run_cli("predict", str(run_dir), "--input", str(tmp_path / "bad"), "--output", str(tmp_path / "p.csv"))
    assert_one_line_error(proc, "lightcurves.csv", "flux_err")
    assert not (tmp_path / "p.csv").exists()
    assert_one_line_error(
        run_cli("predict", str(run_dir), "--input", str(tmp_path / "nothing")), "nothing", "no such file"
    )


def test_train_on_user_data_directory(tmp_path):
    data_dir = tmp_path / "data"
    write_user_data(data_dir, n_objects=60, split="train")
    run_dir = tmp_path / "run"
    overrides = [o for o in TINY_TRANSIENTS if not o.startswith("train.batch_size")] + [
        f"data.path={data_dir}", "train.batch_size=8", "train.steps=8",
    ]
    run_cli("train", "transients", "--run-dir", str(run_dir), *set_args(overrides), check=True)
    info = json.loads((run_dir / "data_info.json").read_text())
    assert sum(info["split_sizes"].values()) == 60
