"""Deep ensembles and MC-dropout end to end: a 2-member tiny transients ensemble through the CLI,
its evaluation (members averaged, calibrated, reported), prediction with the saved temperature."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import yaml

from astroflax.evaluate import calibration as cal
from astroflax import ensembles
from astroflax.evaluate import uncertainty as unc
from conftest import TINY_TRANSIENTS, run_cli, set_args
from test_cli import write_user_data

TINY = [*TINY_TRANSIENTS, "train.steps=16"]


@pytest.fixture(scope="module")
def ensemble_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("ens") / "ensemble"
    proc = run_cli("ensemble", "transients", "--members", "2", "--run-dir", str(d), *set_args(TINY), check=True)
    assert "ensemble of 2" in proc.stdout
    return d


def test_mean_of_probabilities_and_gaussian_mixture():
    rng = np.random.default_rng(0)
    members = [rng.dirichlet(np.ones(4), size=10) for _ in range(3)]
    combined = unc.mean_probabilities(members)
    np.testing.assert_allclose(combined, (members[0] + members[1] + members[2]) / 3)
    mean, var = unc.gaussian_mixture_moments(np.array([[0.0], [2.0]]), np.array([[1.0], [1.0]]))
    assert mean[0] == pytest.approx(1.0) and var[0] == pytest.approx(2.0)  # 1 + spread of the means
    # Packed mixtures ([w | m | s]) combine into one mixture with those moments.
    a = np.array([[1.0, 0.0, 1.0]])
    b = np.array([[1.0, 2.0, 1.0]])
    packed = unc.concat_packed_mixtures([a, b])
    np.testing.assert_allclose(packed, [[0.5, 0.5, 0.0, 2.0, 1.0, 1.0]])


@pytest.fixture(scope="module")
def loaded(ensemble_dir):
    """The ensemble loaded in this process, and 40 test rows."""
    ens = ensembles.open_run(ensemble_dir)
    test = ens.task.load_data(ens.cfg).split("test")
    return ens, {k: v[:40] for k, v in test.items()}


def test_ensemble_directory_and_evaluation(ensemble_dir):
    spec = json.loads((ensemble_dir / "ensemble.json").read_text())
    assert spec["members"] == ["member-0", "member-1"] and spec["seeds"] == [0, 1]
    seeds = [yaml.safe_load((ensemble_dir / m / "config.yaml").read_text())["train"]["seed"] for m in spec["members"]]
    assert seeds == [0, 1]
    report = json.loads((ensemble_dir / "eval" / "test.json").read_text())
    methods = report["uncertainty"]["methods"]
    assert set(methods) == {"member-0", "member-1", "ensemble of 2", "ensemble of 2 + temperature scaling"}
    for m in methods.values():
        assert {"accuracy", "log_loss", "ece"} <= set(m)
    record = json.loads((ensemble_dir / "calibration.json").read_text())
    assert record["checkpoint_step"] == report["checkpoint_step"] and len(record["checkpoint_step"]) == 2
    assert record["val_after"]["log_loss"] <= record["val_before"]["log_loss"] + 1e-12
    # The headline numbers are those of the temperature-scaled ensemble.
    assert report["ece"] == pytest.approx(methods["ensemble of 2 + temperature scaling"]["ece"])
    assert report["calibration"]["after"]["log_loss"] == pytest.approx(report["log_loss"])
    page = (ensemble_dir / "report" / "index.html").read_text()
    assert "ensemble of 2 members" in page and "member-1" in page
    assert page.count("<img ") >= 5 and "data:image/png;base64," in page


def test_ensemble_averages_member_probabilities(ensemble_dir, loaded):
    ens, rows = loaded
    assert isinstance(ens, ensembles.EnsembleRun)
    members = ens.member_outputs(rows)
    assert not np.allclose(members[0], members[1], atol=1e-3)  # different seeds, different models
    np.testing.assert_allclose(ens.predict(rows), (members[0] + members[1]) / 2, atol=1e-6)
    # evaluate averaged the members too: by convexity, the log-loss of the mean is at most the mean log-loss
    methods = json.loads((ensemble_dir / "eval" / "test.json").read_text())["uncertainty"]["methods"]
    member_mean = (methods["member-0"]["log_loss"] + methods["member-1"]["log_loss"]) / 2
    assert methods["ensemble of 2"]["log_loss"] < member_mean
    assert methods["member-0"]["log_loss"] != methods["member-1"]["log_loss"]

    # MC-dropout on one member: passes differ from each other and from the deterministic model,
    # are reproducible from the seed, and combine by averaging.
    run = ens.members[0]
    mc = unc.mc_dropout_outputs(run, rows, passes=3, seed=7)
    assert mc.shape == (3, 40, 14)
    np.testing.assert_allclose(mc.sum(-1), 1.0, atol=1e-5)
    assert not np.allclose(mc[0], mc[1], atol=1e-4)
    assert not np.allclose(mc[0], run.predict(rows), atol=1e-4)
    np.testing.assert_allclose(unc.mc_dropout_outputs(run, rows, passes=3, seed=7), mc, atol=1e-6)
    np.testing.assert_allclose(unc.mc_dropout_predict(run, rows, 3, seed=7), mc.mean(0), atol=1e-6)


def test_predict_on_ensemble_applies_saved_temperature(ensemble_dir, loaded, tmp_path):
    sub = write_user_data(tmp_path / "mine", n_objects=10)
    record = json.loads((ensemble_dir / "calibration.json").read_text())
    record["temperature"] = 2.0  # a clearly visible rescaling, for the same checkpoints
    (ensemble_dir / "calibration.json").write_text(json.dumps(record))
    out = tmp_path / "pred.csv"
    proc = run_cli("predict", str(ensemble_dir), "--input", str(tmp_path / "mine"), "--output", str(out), check=True)
    assert "T = 2" in proc.stderr
    rows = list(csv.DictReader(out.open()))
    got = np.array([[float(r[k]) for k in r if k.startswith("p_")] for r in rows])

    ens, _ = loaded
    arrays, ids = ens.task.load_inputs(ens.cfg, ens.info, tmp_path / "mine")
    raw = ens.predict(arrays)
    assert [int(r["object_id"]) for r in rows] == [int(i) for i in ids] == [int(i) for i in sub.object_id]
    np.testing.assert_allclose(got, cal.apply_temperature(raw, 2.0), atol=2e-5)
    assert np.abs(got - raw).max() > 1e-3  # really rescaled
    assert np.all(got.max(1) < raw.max(1))  # T > 1 flattens every row
