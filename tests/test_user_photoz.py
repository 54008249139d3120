"""photoz on the user's own catalogues: the real SDSS FITS table through ``data.path``, masks for
missing bands and survey sentinels, fluxes in µJy from Parquet, clear errors, and one tiny
convert -> train -> predict round trip."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import run_main

from astroflax.config import build_config
from astroflax.data import photometry as phot
from astroflax.errors import DataError
from astroflax.tasks import get_task
from astroflax.tasks.photoz import masked_features

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SDSS_FITS = SHARED / "sdss_galaxies_specz" / "gst_tests_small.fits"
# the 12 FITS rows with a non-positive u flux, dropped by scripts/convert_sdss_photoz.py
BAD_U_ROWS = [418, 722, 1745, 2901, 3696, 4001, 5197, 5782, 6331, 8638, 9144, 9624]


def _load(path, *sets):
    cfg = build_config("photoz", "quick", None, [f"data.path={path}", *sets])
    return get_task("photoz").load_data(cfg)


def _all_rows(ds) -> dict[str, np.ndarray]:
    """The splits concatenated and sorted by object_id."""
    rows = {k: np.concatenate([s[k] for s in ds.splits.values()]) for k in next(iter(ds.splits.values()))}
    order = np.argsort(rows["object_id"])
    return {k: v[order] for k, v in rows.items()}


def test_sdss_fits_through_the_user_path_reproduces_the_bundled_set():
    raw = phot.load_bundled()
    assert sorted(set(range(10_000)) - set(raw["object_id"].tolist())) == BAD_U_ROWS
    # all five bands required: exactly the bundled rows, values, split and normalisation
    ds = _load(SDSS_FITS, "data.min_bands=5")
    info = ds.info
    assert info["source"]["rows_read"] == 10_000 and info["source"]["format"] == "fits"
    assert info["source"]["columns"]["flux"] == "modelflux" and info["source"]["columns"]["flux_unit"] == "nanomaggy"
    assert info["source"]["target_column"] == "z"
    assert info["dropped"] == [{"reason": "fewer than 5 observed bands (data.min_bands)", "rows": 12,
                                "first": [f"row {r} (0-based)" for r in BAD_U_ROWS[:5]]}]
    assert info["rows_dropped"] == 12 and info["use_mask"] is False and "mask" not in ds.splits["train"]
    rows = _all_rows(ds)
    np.testing.assert_array_equal(rows["object_id"], raw["object_id"])
    for key in ("mag", "mag_err", "z"):
        np.testing.assert_allclose(rows[key], raw[key], rtol=2e-7, atol=0, err_msg=key)
    assert info["split_sizes"] == {"train": 6988, "val": 1000, "test": 2000}
    for code, name in enumerate(("train", "val", "test")):  # the same galaxies in every split
        np.testing.assert_array_equal(ds.splits[name]["object_id"], raw["object_id"][raw["split"] == code])
    bundled = get_task("photoz").load_data(build_config("photoz", "quick", None, []))
    np.testing.assert_allclose(info["input_mean"], bundled.info["input_mean"], rtol=1e-6)
    assert info["features"] == bundled.info["features"]

    # default (min_bands=3): the 12 galaxies are kept with their u band masked, not dropped
    ds = _load(SDSS_FITS)
    info = ds.info
    assert info["dropped"] == [] and info["split_sizes"] == {"train": 7000, "val": 1000, "test": 2000}
    assert info["use_mask"] is True and info["masked_per_band"] == {"u": 12, "g": 0, "r": 0, "i": 0, "z": 0}
    assert info["masked"][0]["reason"] == "band 'u': flux <= 0 (no magnitude)" and info["masked"][0]["rows"] == 12
    assert info["features"][-5:] == ["missing_u", "missing_g", "missing_r", "missing_i", "missing_z"]
    rows = _all_rows(ds)
    missing = np.flatnonzero(rows["mask"][:, 0] == 0)
    assert rows["object_id"][missing].tolist() == BAD_U_ROWS and rows["mask"][:, 1:].all()
    common = np.isin(rows["object_id"], raw["object_id"])
    np.testing.assert_allclose(rows["mag"][common], raw["mag"], rtol=2e-7, atol=0)
    assert np.all(rows["mag"][missing, 0] == 0) and np.all(rows["mag_err"][missing, 0] == 0)


def _sentinel_table(n: int = 60) -> pd.DataFrame:
    raw = phot.load_bundled()
    df = pd.DataFrame({"objid": raw["object_id"][:n] + 10**6})
    for j, b in enumerate(phot.BANDS):
        df[f"mag_{b}"] = raw["mag"][:n, j].astype(np.float64)
        df[f"magerr_{b}"] = raw["mag_err"][:n, j].astype(np.float64)
    df["zspec"] = raw["z"][:n].astype(np.float64)
    df.loc[0:3, "mag_u"] = -99.0  # 4 sentinel magnitudes
    df.loc[4:5, "magerr_g"] = 99.0  # 2 sentinel errors
    df.loc[6:8, "mag_z"] = np.nan  # 3 empty cells
    df.loc[9, ["mag_u", "mag_g", "mag_r"]] = -9999.0  # 2 bands left < min_bands=3: dropped
    df.loc[10, "zspec"] = -99.0  # no redshift: dropped
    df.loc[11, "zspec"] = np.nan  # no redshift: dropped
    return df


def test_csv_with_sentinels_masks_bands_and_keeps_rows(tmp_path):
    path = tmp_path / "cat.csv"
    _sentinel_table().to_csv(path, index=False)
    ds = _load(path)
    info = ds.info
    assert info["source"]["rows_read"] == 60 and info["source"]["rows_kept"] == 57
    assert info["source"]["columns"]["mag"] == "mag_{band}" and info["source"]["target_column"] == "zspec"
    assert {e["reason"]: (e["rows"], e["first"]) for e in info["dropped"]} == {
        "no usable redshift in 'zspec' (empty, NaN or a no-data code -99/99/-9999)": (2, ["line 12", "line 13"]),
        "fewer than 3 observed bands (data.min_bands)": (1, ["line 11"]),
    }
    assert info["rows_dropped"] == 3 and sum(info["split_sizes"].values()) == 57
    assert info["masked_per_band"] == {"u": 4, "g": 2, "r": 0, "i": 0, "z": 3}
    reasons = {e["reason"]: e["rows"] for e in info["masked"]}
    assert reasons == {"band 'u': magnitude is a no-data code (-99/99/-9999)": 4,
                       "band 'g': magnitude error empty, NaN or a no-data code (-99/99/-9999)": 2,
                       "band 'z': magnitude empty or NaN": 3}
    rows = _all_rows(ds)
    assert 10**6 + 9 not in rows["object_id"] and 10**6 + 10 not in rows["object_id"]
    assert (rows["mask"] == 0).sum() == 9 and rows["mask"][:4, 0].tolist() == [0, 0, 0, 0]
    assert np.isfinite(rows["mag"]).all() and (rows["mag_err"][rows["mask"] == 0] == 0).all()
    # standardised features: 0 for missing magnitudes and the colours touching them; indicator = 1
    x = masked_features(rows["mag"], rows["mag_err"], rows["mask"] > 0.5, False, info["input_mean"][:9])
    xs = (x - np.asarray(info["input_mean"])) / np.asarray(info["input_std"])
    np.testing.assert_allclose(xs[0, [0, 5]], 0.0, atol=1e-6)  # mag_u, u-g
    assert xs[0, 9] == 1.0 and xs[0, 10] == 0.0 and abs(xs[0, 6]) > 0  # missing_u, missing_g; g-r measured
    assert info["split_method"].startswith("z stratified (5 equal-count bins), stratified 70/10/20 by object, seed")
    # the version follows the content and every data setting
    versions = {ds.version, _load(path, "data.min_bands=4").version, _load(path, "data.split_seed=1").version}
    df = _sentinel_table()
    df.loc[20, "mag_r"] += 0.01
    df.to_csv(tmp_path / "cat2.csv", index=False)
    versions.add(_load(tmp_path / "cat2.csv").version)
    assert len(versions) == 4 and ds.version == _load(path).version


def test_parquet_fluxes_in_microjansky_with_own_bands_and_split(tmp_path):
    raw = phot.load_bundled()
    n, bands = 40, ["g", "r", "i", "z"]
    mag = raw["mag"][:n, 1:].astype(np.float64)
    zp = float(2.5 * np.log10(3631e6))  # AB magnitude of 1 µJy: 23.90006
    flux = 10 ** (-0.4 * (mag - zp))
    df = pd.DataFrame({"ID": np.arange(n) + 7})
    for j, b in enumerate(bands):
        df[f"F_{b.upper()}"] = flux[:, j]
        df[f"F_{b.upper()}_ERR"] = flux[:, j] * raw["mag_err"][:n, j + 1] / phot.POGSON
    df.loc[3, "F_G"] = -0.2  # negative flux: masked
    df["redshift"] = raw["z"][:n]
    df["split"] = ["train"] * 30 + ["val"] * 5 + ["test"] * 5
    path = tmp_path / "cat.parquet"
    df.to_parquet(path)
    sets = ["data.bands=[g,r,i,z]", "data.flux_columns=f_{band}", "data.flux_err_columns=f_{band}_err",
            "data.flux_unit=uJy"]
    ds = _load(path, *sets)
    info = ds.info
    assert info["split_sizes"] == {"train": 30, "val": 5, "test": 5}
    assert info["split_method"] == "the 'split' column of the input"
    assert info["features"][:7] == ["mag_g", "mag_r", "mag_i", "mag_z", "g-r", "r-i", "i-z"]
    assert info["masked"] == [{"reason": "band 'g': flux <= 0 (no magnitude)", "rows": 1, "first": ["row 3 (0-based)"]}]
    rows = _all_rows(ds)
    ok = rows["mask"] > 0.5
    np.testing.assert_allclose(rows["mag"][ok], mag[ok], atol=2e-5)
    np.testing.assert_allclose(rows["mag_err"], np.where(ok, raw["mag_err"][:n, 1:], 0), rtol=1e-5)
    assert rows["object_id"].tolist() == list(range(7, 47))
    # the same fluxes in nJy (same magnitudes), and in µJy with the AB zero point instead of a unit
    df2 = df.copy()
    for b in bands:
        df2[f"F_{b.upper()}"] *= 1000.0
        df2[f"F_{b.upper()}_ERR"] *= 1000.0
    df2.to_parquet(tmp_path / "njy.parquet")
    nj = _all_rows(_load(tmp_path / "njy.parquet", *sets[:-1], "data.flux_unit=nJy"))
    zp = _all_rows(_load(path, *sets[:-1], f"data.zero_point={zp!r}"))
    np.testing.assert_allclose(nj["mag"], rows["mag"], atol=1e-5)
    np.testing.assert_allclose(zp["mag"], rows["mag"], atol=1e-5)


GOOD = "objid,mag_u,magerr_u,mag_g,magerr_g,mag_r,magerr_r,z\n1,19.4,0.06,17.7,0.01,16.8,0.005,0.1\n"


@pytest.mark.parametrize("text, sets, message", [
    (GOOD, ["data.bands=[u,g,r,y]", "data.mag_columns=mag_{band}", "data.err_columns=magerr_{band}"],
     ("cat.csv: column 'mag_y' not found: magnitude of band 'y' (data.mag_columns = 'mag_{band}'); columns are: "
     "objid, mag_u, magerr_u, mag_g, magerr_g, mag_r, magerr_r, z")),
    (GOOD + "2,19.4,0.06,17.7,0.01,1e39,0.005,0.2\n", ["data.bands=[u,g,r]"],
     ("cat.csv: column 'mag_r', line 3: expected a number that float32 can hold, in "
     "[-3.40282e+38, 3.40282e+38], got 1e+39")),
    (GOOD + "2,19.4,0.06,45.0,0.01,16.8,0.005,0.2\n", ["data.bands=[u,g,r]"],
     ("cat.csv: column 'mag_g', line 3: expected an apparent magnitude in [-30, 40] (or a no-data code listed "
     "in data.sentinels: -99/99/-9999), got 45.0")),
    (GOOD + "2,19.4,0.06,17.7,0.01,16.8,0.005,-1\n", ["data.bands=[u,g,r]"],
     ("cat.csv: column 'z', line 3: expected a spectroscopic redshift in [-0.05, 15] (or a no-data code listed "
     "in data.sentinels: -99/99/-9999), got -1.0")),
    (GOOD.replace(",z\n", ",zz\n"), ["data.bands=[u,g,r]"],
     "cat.csv: no redshift column (tried z, zspec, z_spec, specz, spec_z, redshift); set data.target"),
])
def test_reader_errors_name_file_column_row_value(tmp_path, text, sets, message):
    path = tmp_path / "cat.csv"
    path.write_text(text)
    with pytest.raises(DataError) as exc:
        _load(path, *sets)
    assert message in str(exc.value) and "\n" not in str(exc.value)


def test_cli_convert_train_predict_on_user_catalogue(tmp_path, capsys):
    """The one training test: data convert -> train --data DIR (few steps) -> predict with masks."""
    csv = tmp_path / "cat.csv"
    _sentinel_table(200).to_csv(csv, index=False)
    bad = tmp_path / "bad.csv"
    bad.write_text(GOOD.replace("17.7", "abc"))
    code, _, err = run_main(["train", "photoz", "--data", str(bad), "--set", "data.bands=[u,g,r]"], capsys)
    assert code == 2 and "column 'mag_g', line 2: expected a finite number or empty, got 'abc'" in err
    assert "Traceback" not in err
    store = tmp_path / "store"
    code, _, err = run_main(["data", "convert", "photoz", "--input", str(csv), "--out", str(store)], capsys)
    assert code == 0, err
    run = tmp_path / "run"
    tiny = ["model.hidden=[16]", "train.steps=8", "train.eval_every=8", "train.log_every=4", "checkpoint.every=8",
            "train.batch_size=32", "schedule.warmup_steps=2", "train.progress=false"]
    code, out, err = run_main(["train", "photoz", "--data", str(store), "--run-dir", str(run),
                               *[a for s in tiny for a in ("--set", s)]], capsys)
    assert code == 0, err
    info = json.loads((run / "data_info.json").read_text())
    assert info["masked_per_band"] == {"u": 4, "g": 2, "r": 0, "i": 0, "z": 3} and info["rows_dropped"] == 3
    assert info["split_sizes"] == {"train": 140, "val": 19, "test": 38}
    assert json.loads((run / "eval" / "test.json").read_text())["n"] == 38
    # predict on the same file: masks built as in training, no redshift needed, every row predicted
    pred = tmp_path / "pred.csv"
    df = _sentinel_table(200).drop(columns=["zspec"])
    df.to_parquet(tmp_path / "new.parquet")
    code, _, err = run_main(["predict", str(run), "--input", str(tmp_path / "new.parquet"), "--output", str(pred)],
                            capsys)
    assert code == 0, err
    out = pd.read_csv(pred)
    assert len(out) == 200 and out["id"].tolist() == (np.arange(200) + 10**6).tolist()
    assert np.isfinite(out["z_mean"]).all() and (out["z_sigma"] > 0).all()
