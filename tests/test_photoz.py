"""photoz: bundled SDSS data, model/loss behaviour, a real tiny CLI run, predict, input validation."""

from __future__ import annotations

import csv
import json
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from astroflax.config import build_config
from astroflax.data import photometry as phot
from astroflax.errors import DataError
from astroflax.tasks import get_task
from conftest import run_cli, set_args

TINY = [
    "model.hidden=[32,32]",
    "model.head=mixture",
    "model.num_components=2",
    "train.batch_size=64",
    "train.eval_batch_size=512",
    "train.steps=30",
    "train.eval_every=15",
    "train.log_every=15",
    "checkpoint.every=15",
    "schedule.warmup_steps=5",
    "train.progress=false",
]


def test_flux_to_mag_by_hand():
    mag, err = phot.flux_to_mag(np.array([1.0, 100.0]), np.array([4.0, 1.0]))
    np.testing.assert_allclose(mag, [22.5, 17.5])
    np.testing.assert_allclose(err, [1.0857362 / 2, 1.0857362 / 100], rtol=1e-6)
    np.testing.assert_allclose(phot.colours(np.array([[20.0, 19.0, 18.5, 18.25, 18.0]])), [[1.0, 0.5, 0.25, 0.25]])


def test_bundled_data_round_trip():
    raw = phot.load_bundled()
    n = 9988  # 10,000 FITS rows minus 12 with a non-positive flux
    assert raw["mag"].shape == (n, 5) and raw["mag_err"].shape == (n, 5) and raw["z"].shape == (n,)
    for key in ("mag", "mag_err", "z", "extinction"):
        assert np.all(np.isfinite(raw[key])), key
    assert np.all(raw["mag_err"] > 0) and raw["z"].min() > 0.01 and raw["z"].max() < 0.59
    # first FITS row, by hand: MODELFLUX_u = 27.263485, EXTINCTION_u = 0.2627758, Z = 0.08265872
    assert raw["object_id"][0] == 0
    assert raw["mag"][0, 0] == pytest.approx(22.5 - 2.5 * np.log10(27.263485) - 0.2627758, abs=1e-5)
    assert raw["mag_err"][0, 0] == pytest.approx(1.0857362 / (27.263485 * np.sqrt(1.528638)), rel=1e-5)
    assert raw["z"][0] == pytest.approx(0.08265872)
    assert len(np.unique(raw["object_id"])) == n
    task = get_task("photoz")
    ds = task.load_data(build_config("photoz", "quick", None, []))
    sizes = {k: len(v["z"]) for k, v in ds.splits.items()}
    assert sizes == {"train": 6988, "val": 1000, "test": 2000}
    ids = [set(v["object_id"].tolist()) for v in ds.splits.values()]
    assert not (ids[0] & ids[1]) and not (ids[0] & ids[2]) and not (ids[1] & ids[2])
    assert sum(map(len, ids)) == n
    # every split spans the redshift range (stratified on z bins)
    for split in ds.splits.values():
        assert split["z"].min() < 0.03 and split["z"].max() > 0.3
    tr = ds.splits["train"]
    x = np.concatenate([tr["mag"], phot.colours(tr["mag"])], axis=1)
    np.testing.assert_allclose(ds.info["input_mean"], x.mean(0), rtol=1e-5)
    assert ds.info["rows_dropped"] == 12 and ds.info["target_std"] == pytest.approx(tr["z"].std(), rel=1e-5)


def _model_and_batch(overrides):
    """The config's bound loss and predict functions, a fresh model and 64 validation rows."""
    task = get_task("photoz")
    cfg = build_config("photoz", "quick", None, overrides)
    ds = task.load_data(cfg)
    model = task.build_model(cfg, ds.info, nnx.Rngs(params=0))
    val = ds.splits["val"]
    batch = {k: jnp.asarray(val[k][:64]) for k in ("mag", "mag_err", "z")}
    fns = types.SimpleNamespace(loss_fn=task.make_loss_fn(cfg, ds.info), predict_fn=task.make_predict_fn(cfg, ds.info))
    return fns, model, batch


def _scalar_loss(fns):
    return nnx.jit(lambda m, b, k, train: fns.loss_fn(m, b, k, train)[0], static_argnums=3)


def test_training_noise_is_on_device_from_the_step_rng():
    task, model, batch = _model_and_batch(["model.head=gaussian"])
    loss = _scalar_loss(task)
    k1, k2 = jax.random.key(1), jax.random.key(2)
    l1 = float(loss(model, batch, k1, True))
    assert l1 == float(loss(model, batch, k1, True))  # same key, same noise
    assert l1 != float(loss(model, batch, k2, True))  # new key, new noise
    assert float(loss(model, batch, k1, False)) == float(loss(model, batch, k2, False))
    # Gaussian head: packed outputs are weight 1, mean, sigma > 0
    out = np.asarray(nnx.jit(task.predict_fn)(model, batch))
    assert out.shape == (64, 3) and np.allclose(out[:, 0], 1.0) and np.all(out[:, 2] > 0)
    task, model, batch = _model_and_batch(["model.head=gaussian", "data.noise_augment=false"])
    loss = _scalar_loss(task)
    assert float(loss(model, batch, k1, True)) == float(loss(model, batch, k2, True))
    # huber adds its term on top of the NLL
    task, model, batch = _model_and_batch(["model.loss=huber"])
    total, aux = nnx.jit(task.loss_fn, static_argnums=3)(model, batch, k1, False)
    assert set(aux) == {"nll", "abs_err", "huber"}
    assert float(total) == pytest.approx(float(aux["nll"]) + float(aux["huber"]), rel=1e-5)


def test_cli_train_evaluate_predict(tmp_path):
    run_dir = tmp_path / "run"
    # train, then (same process) evaluate the best checkpoint on the test split
    proc = run_cli("train", "photoz", "--preset", "quick", "--run-dir", str(run_dir), *set_args(TINY), check=True)
    assert "sigma_nmad" in proc.stdout and "coverage_68" in proc.stdout
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    val = [r for r in rows if "val_loss" in r]
    assert len(val) == 2 and all(np.isfinite(r["val_loss"]) for r in val)
    assert {"val_sigma_nmad", "val_coverage_68", "val_nll"} <= set(val[0])
    assert val[-1]["val_loss"] == pytest.approx(val[-1]["val_nll"])

    saved = json.loads((run_dir / "eval" / "test.json").read_text())
    for key in ("sigma_nmad", "bias", "outlier_fraction", "crps", "pit_ks", "coverage_68", "coverage_95", "nll"):
        assert np.isfinite(saved[key]), key
    assert saved["loss"] == saved["nll"] and 0 <= saved["coverage_68"] <= saved["coverage_95"] <= 1
    assert saved["n"] == 2000
    assert 0 < saved["sigma_nmad"] < 0.1  # 30 steps already beat predicting the mean (~0.06)
    for fig in saved["figures"].values():
        assert (run_dir / "eval" / "test" / fig.split("/")[-1]).stat().st_size > 1000
    # intervals recalibrated on val (sigma scaling), applied to the test report and kept for predict
    record = json.loads((run_dir / "calibration.json").read_text())
    assert record["method"] == "sigma_scale" and record["checkpoint_step"] == saved["checkpoint_step"]
    assert record["val_after"]["pit_cvm"] <= record["val_before"]["pit_cvm"]
    assert saved["calibration"]["sigma_scale"] == record["sigma_scale"] != 1.0
    assert saved["coverage_68"] == pytest.approx(saved["calibration"]["after"]["coverage_68"])
    assert "deterministic + sigma scaling" in saved["uncertainty"]["methods"]

    # magnitudes with mag_u / magerr_u names and an objid column
    raw = phot.load_bundled()
    src = tmp_path / "mags.csv"
    with src.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["objid"] + [f"mag_{b}" for b in phot.BANDS] + [f"magerr_{b}" for b in phot.BANDS])
        for i in range(7):
            w.writerow([1000 + i, *raw["mag"][i].tolist(), *raw["mag_err"][i].tolist()])
    out = tmp_path / "pred.csv"
    run_cli("predict", str(run_dir), "--input", str(src), "--output", str(out), check=True)
    with out.open() as fh:
        pred = list(csv.DictReader(fh))
    assert len(pred) == 7
    assert list(pred[0])[:3] == ["id", "z_mean", "z_sigma"]
    assert {"weight_0", "weight_1", "z_mean_0", "z_sigma_1"} <= set(pred[0])
    assert [int(r["id"]) for r in pred] == list(range(1000, 1007))
    assert all(float(r["z_sigma"]) > 0 and -0.5 < float(r["z_mean"]) < 1.5 for r in pred)

    # a bad table through the task's own reader (what `predict` calls): one clear DataError
    bad = tmp_path / "bad.csv"
    bad.write_text("u,g,r,i,u_err,g_err,r_err,i_err,z_err\n1,2,3,4,0.1,0.1,0.1,0.1,0.1\n")
    with pytest.raises(DataError, match="missing magnitude column for band 'z'.*mag_z"):
        get_task("photoz").load_inputs(None, {}, bad)


def _write_mags(path, header, rows):
    path.write_text(",".join(header) + "\n" + "\n".join(",".join(map(str, r)) for r in rows) + "\n")
    return path


MAG_HEADER = ["u", "g", "r", "i", "z", "u_err", "g_err", "r_err", "i_err", "z_err"]
GOOD_ROW = [19.4, 17.7, 16.8, 16.3, 16.0, 0.06, 0.01, 0.005, 0.005, 0.01]


def test_read_photometry_formats(tmp_path):
    p = phot.read_photometry(_write_mags(tmp_path / "a.csv", MAG_HEADER, [GOOD_ROW, GOOD_ROW]))
    assert p.source == "magnitudes" and p.ids.tolist() == [0, 1]
    np.testing.assert_allclose(p.mag[0], GOOD_ROW[:5], rtol=1e-6)
    # extinction columns are subtracted from magnitudes
    header = MAG_HEADER + [f"extinction_{b}" for b in phot.BANDS]
    p = phot.read_photometry(_write_mags(tmp_path / "e.csv", header, [GOOD_ROW + [0.1, 0.2, 0.3, 0.4, 0.5]]))
    np.testing.assert_allclose(p.mag[0], np.array(GOOD_ROW[:5]) - [0.1, 0.2, 0.3, 0.4, 0.5], rtol=1e-6)
    # SDSS-style FITS with vector MODELFLUX / MODELFLUX_IVAR / EXTINCTION and an OBJID column
    from astropy.table import Table

    flux = np.array([[27.263485, 73.981636, 132.56783, 198.52243, 238.05383]])
    ivar = np.array([[1.528638, 5.232234, 2.4296649, 1.0422094, 0.16529995]])
    ext = np.array([[0.2627758, 0.19334793, 0.14023204, 0.10633371, 0.07539193]])
    Table({"OBJID": [42], "MODELFLUX": flux, "MODELFLUX_IVAR": ivar, "EXTINCTION": ext}).write(tmp_path / "f.fits")
    p = phot.read_photometry(tmp_path / "f.fits")
    raw = phot.load_bundled()
    assert p.source == "fluxes" and p.ids.tolist() == [42]
    np.testing.assert_allclose(p.mag[0], raw["mag"][0], atol=1e-5)
    np.testing.assert_allclose(p.mag_err[0], raw["mag_err"][0], rtol=1e-5)


@pytest.mark.parametrize(
    "header, row, message",
    [
        (MAG_HEADER[:4] + MAG_HEADER[5:], GOOD_ROW[:4] + GOOD_ROW[5:],
         "missing magnitude column for band 'z'; accepted names: z, mag_z, z_mag, modelmag_z"),
        (MAG_HEADER[:9], GOOD_ROW[:9], "missing magnitude-error column for band 'z'; accepted names: z_err, magerr_z"),
        (MAG_HEADER, GOOD_ROW[:2] + ["nan"] + GOOD_ROW[3:], "column 'r' has a non-finite value at row 1"),
        (MAG_HEADER, GOOD_ROW[:6] + [-0.01] + GOOD_ROW[7:], "negative magnitude error in band 'g' at row 1"),
        (MAG_HEADER, GOOD_ROW[:3] + ["abc"] + GOOD_ROW[4:], "column 'i' must be numeric"),
        (["modelflux_" + b for b in "ugriz"] + ["modelflux_ivar_" + b for b in "ugriz"],
         [10, 20, 30, 40, 50, 1, 1, 0, 1, 1], "inverse variance <= 0 in band 'r' at row 1"),
        (["flux_" + b for b in "ugriz"] + ["flux_ivar_" + b for b in "ugriz"],
         [10, 20, 30, -4, 50, 1, 1, 1, 1, 1], "flux <= 0 in band 'i' at row 1"),
        (["ra", "dec"], [1, 2], "missing magnitude column for band 'u'"),
    ],
)
def test_read_photometry_errors(tmp_path, header, row, message):
    good = GOOD_ROW if header == MAG_HEADER else row
    if header[0].startswith(("modelflux", "flux")):
        good = [10, 20, 30, 40, 50, 1, 1, 1, 1, 1]
    elif header != MAG_HEADER:
        good = row
    path = _write_mags(tmp_path / "t.csv", header, [good, row])
    with pytest.raises(DataError) as exc:
        phot.read_photometry(path)
    text = str(exc.value)
    assert message in text and str(path) in text and "\n" not in text
