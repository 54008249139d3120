"""The ``variables`` task: simulated variable-star light curves, real MACHO/ASAS data, CLI run."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from astropy.timeseries import LombScargle

from astroflax.data import variable_sim as vs
from astroflax.data import visits
from astroflax.errors import DataError
from astroflax.tasks import variables as var
from conftest import run_cli, set_args

R_ONLY = vs.Survey(max_obs=150, min_obs=150, band_probs=(0.0, 0.0, 1.0, 0.0, 0.0), mag_range=(16.0, 17.0))


@pytest.fixture(scope="module")
def sim() -> dict[str, np.ndarray]:
    return vs.simulate(150, seed=7, survey=vs.Survey(max_obs=64, min_obs=20))


def test_period_recovered_from_noiseless_curves():
    # Miras are left out on purpose: their cycle-to-cycle scatter and 2-10 cycles per survey make
    # a 1% period irreproducible even without noise.
    s = vs.simulate(2, seed=3, survey=R_ONLY, classes=("RRab", "RRc", "Cepheid", "delta_Scuti"), noiseless=True)
    for i in range(len(s["label"])):
        m = s["mask"][i]
        t, y = s["time"][i][m], s["mag_true"][i][m]
        assert m.sum() >= 140  # bright objects: every visit is a detection
        p = float(s["period"][i])
        # search an octave either side (including the 1/day aliases for P < 1 d and the first harmonic)
        freq, power = LombScargle(t, y).autopower(minimum_frequency=0.5 / p, maximum_frequency=2 / p, method="fast")
        best = 1 / freq[np.argmax(power)]
        assert abs(best - p) / p < 0.01, (vs.CLASSES[s["label"][i]], p, best)


def test_seasonal_gaps_and_cadence(sim):
    spans = sim["time"].max(axis=1)
    assert spans.max() < 3 * 365.25 and spans.max() > 2.5 * 365.25
    for i in np.flatnonzero(spans > 400)[:300]:
        t = sim["time"][i][sim["mask"][i]]
        assert np.all(np.diff(t) > 0)  # one visit per night, sorted
        assert np.diff(t).max() > 100  # the 4-month gap between 8-month seasons
    # bands are never simultaneous and all five are used
    assert set(np.unique(sim["band"][sim["mask"]])) == {0, 1, 2, 3, 4}
    assert np.all(sim["mask"][:, :20].sum(1) >= 1)


def test_errors_grow_with_magnitude(sim):
    m = sim["mask"] & (sim["band"] == 2)
    mag, err = sim["mag_true"][m], sim["mag_err"][m]
    assert err.min() >= vs.SIGMA_SYS * 0.99 and err.max() <= 0.5
    edges = np.arange(16, 24)
    med = [np.median(err[(mag >= a) & (mag < a + 1)]) for a in edges[:-1]]
    assert np.all(np.diff(med) > 0), med
    assert med[0] < 0.01 and med[-1] > 0.03  # Ivezic+2019: sigma(r=22.5) ~ 0.04


def test_class_balance_ranges_and_determinism(sim):
    assert np.bincount(sim["label"], minlength=8).tolist() == [150] * 8
    p, a = sim["period"], sim["amplitude"]
    rng_of = {c: (p[sim["label"] == k].min(), p[sim["label"] == k].max()) for k, c in enumerate(vs.CLASSES)}
    assert 0.45 <= rng_of["RRab"][0] and rng_of["RRab"][1] <= 0.9
    assert 0.25 <= rng_of["RRc"][0] and rng_of["RRc"][1] <= 0.45
    assert 2 <= rng_of["Cepheid"][0] and rng_of["Cepheid"][1] <= 50
    assert 0.25 <= rng_of["EB_contact"][0] and rng_of["EB_contact"][1] <= 0.7
    assert 1 <= rng_of["EB_detached"][0] and rng_of["EB_detached"][1] <= 20
    assert 0.02 <= rng_of["delta_Scuti"][0] and rng_of["delta_Scuti"][1] <= 0.25
    assert 100 <= rng_of["Mira"][0] and rng_of["Mira"][1] <= 500
    assert a[sim["label"] == 6].min() >= 2.0 and a[sim["label"] == 5].max() <= 0.3  # Mira big, delta Scuti small
    again = vs.simulate(150, seed=7, survey=vs.Survey(max_obs=64, min_obs=20))
    assert all(np.array_equal(sim[k], again[k]) for k in sim)
    other = vs.simulate(150, seed=8, survey=vs.Survey(max_obs=64, min_obs=20))
    assert not np.array_equal(sim["mag"], other["mag"])


def test_per_band_normalisation(sim):
    arrays = visits.model_arrays(sim["time"], sim["mag"], sim["mag_err"], sim["band"], sim["mask"], var.VariablesData().normalise)
    i = int(np.flatnonzero(sim["label"] == 6)[0])  # a Mira: brighter = positive flux
    for b in range(5):
        sel = sim["mask"][i] & (sim["band"][i] == b)
        if sel.sum():
            assert abs(np.median(arrays["flux"][i][sel])) < 1e-5
    assert np.all(arrays["flux"][~sim["mask"]] == 0) and arrays["meta"].shape == (len(sim["label"]), 0)


def test_bundled_real_data():
    raw = vs.load_real()
    assert raw["macho_name"].tolist()[:2] == ["1.3444.614", "1.3567.1310"] and len(raw["macho_name"]) == 10
    assert raw["macho_offsets"][-1] == len(raw["macho_mjd"]) == 15118
    lens = np.diff(raw["macho_offsets"])
    assert lens.min() == 109 and lens.max() == 2491  # 2.4907.2086 (64 B + 45 R) ... 1.3568.288
    r_only = raw["macho_band"][raw["macho_offsets"][4]:raw["macho_offsets"][5]]
    assert set(r_only.tolist()) == {1}  # 1.4418.1930 has no B file
    classes = dict(zip(raw["asas_name"].tolist(), raw["asas_class"].tolist()))
    assert classes == {"217801": "Mira", "224635": "Classical_Cepheid", "232798": "Mira", "235913": "Classical_Cepheid",
                       "243412": "W_Ursae_Maj", "247327": "Mira", "257141": "W_Ursae_Maj"}
    assert np.diff(raw["asas_offsets"]).tolist() == [537, 699, 640, 515, 533, 482, 475]
    tm = vs.load_templates()
    assert tm.table.shape == (23, 5, 501) and tm.is_rrc.sum() == 2
    assert np.allclose(tm.table[:, :, 0], 0, atol=1e-3) and np.allclose(tm.table.max(axis=2), 1)  # max light at phase 0


def test_real_smoke_arrays_follow_the_band_mapping():
    d = var.VariablesData(max_len=64)
    arrays, objects = visits.real_smoke_arrays(d.max_len, d.years, d.max_err, d.normalise)
    assert len(objects) == 17 and arrays["mask"].shape == (17, 64)
    assert [o["label"] for o in objects[10:]] == ["Mira", "Cepheid", "Mira", "Cepheid", "EB_contact", "Mira", "EB_contact"]
    assert set(np.unique(arrays["band"][arrays["mask"]])) == {1, 2}  # B, V -> g; R -> r
    assert np.all(arrays["time"].max(1) <= 3 * 365.25) and np.all(arrays["sample_weight"] == 0)


def _write_csv(path: Path, rows: list[dict]) -> Path:
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path


def _asas_rows(n_obj: int = 3) -> list[dict]:
    raw = vs.load_real()
    rows = []
    for k in range(n_obj):
        s = slice(raw["asas_offsets"][k], raw["asas_offsets"][k + 1])
        for t, m, e in zip(raw["asas_time"][s], raw["asas_mag"][s], raw["asas_err"][s]):
            rows.append({"object_id": f"ASAS-{raw['asas_name'][k]}", "mjd": float(t), "band": "V", "mag": float(m), "err": float(e)})
    return rows


@pytest.mark.parametrize(
    "change, expected",
    [
        (lambda r: r.pop("err"), "missing column(s) 'err'"),
        (lambda r: r.update(band="H"), "column 'band', line 2 (object_id ASAS-217801): expected one of u g r i z"),
        (lambda r: r.update(err=-0.1), "column 'err', line 2 (object_id ASAS-217801): expected a positive uncertainty"),
        (lambda r: r.update(mag="bright"), "column 'mag', line 2 (object_id ASAS-217801): expected a finite number"),
    ],
)
def test_predict_table_errors(tmp_path, change, expected):
    rows = _asas_rows(1)[:5]
    for r in rows:
        change(r)
    with pytest.raises(DataError) as e:
        visits.read_table(_write_csv(tmp_path / "in.csv", rows))
    assert expected in str(e.value) and "\n" not in str(e.value)


def test_predict_table_flux_and_paths(tmp_path):
    rows = [{"object_id": 5, "time": 1.0 + i, "band": "r", "flux": 100.0 - i, "flux_err": 2.0} for i in range(4)]
    out, ids = visits.read_table(_write_csv(tmp_path / "f.csv", rows))
    assert ids.tolist() == [5] and np.allclose(out["mag"], -2.5 * np.log10([100, 99, 98, 97]))
    assert np.allclose(out["err"][0], 2.5 / np.log(10) * 2 / 100) and out["band"].tolist() == [2] * 4
    rows[2]["flux"] = 0.0
    with pytest.raises(DataError, match="column 'flux', line 4 .*expected a positive flux"):
        visits.read_table(_write_csv(tmp_path / "f.csv", rows))
    with pytest.raises(DataError, match="is a directory"):
        visits.read_table(tmp_path)
    with pytest.raises(DataError, match="no visit with an error <= 0.5 mag"):
        visits.pad_ragged(np.array([0, 2]), np.array([0.0, 1.0]), np.zeros(2), np.array([0.9, 1.0]), np.zeros(2, int),
                          16, 3.0, 0.5, ["object_id 'x'"])


def test_cli_train_evaluate_predict(tmp_path):
    run = tmp_path / "run"
    overrides = [
        "data.n_per_class=40", "data.max_len=32", "model.d_model=16", "model.num_heads=2", "model.num_layers=1",
        "model.num_inducing=4", "train.batch_size=32", "train.eval_batch_size=256", "train.steps=12",
        "train.eval_every=6", "train.log_every=6", "checkpoint.every=6", "schedule.warmup_steps=2",
    ]
    run_cli("train", "variables", "--run-dir", str(run), *set_args(overrides), check=True)
    rep = json.loads((run / "eval" / "test.json").read_text())
    assert rep["n"] == 8 * 8 and len(rep["confusion_matrix"]) == 8  # 20% of 40 per class; real rows excluded
    smoke = rep["real_smoke"]
    assert "SMOKE TEST" in smoke["note"] and len(smoke["objects"]) == 17 and smoke["asas_n"] == 7
    assert smoke["asas_agreement"] == pytest.approx(smoke["asas_correct"] / 7)
    assert {o["predicted_class"] for o in smoke["objects"]} <= set(vs.CLASSES)
    inp = _write_csv(tmp_path / "visits.csv", _asas_rows(2))
    out = tmp_path / "pred.csv"
    run_cli("predict", str(run), "--input", str(inp), "--output", str(out), check=True)
    with out.open() as fh:
        pred = list(csv.DictReader(fh))
    assert [p["object_id"] for p in pred] == ["ASAS-217801", "ASAS-224635"]
    probs = np.array([[float(p[f"p_{c}"]) for c in vs.CLASSES] for p in pred])
    assert np.allclose(probs.sum(1), 1, atol=1e-4)
    assert [p["predicted_class"] for p in pred] == [vs.CLASSES[j] for j in probs.argmax(1)]
