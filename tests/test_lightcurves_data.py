"""Tests of the PLAsTiCC / user light-curve data layer (astroflax.data.lightcurves)."""

from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from astroflax.data.lightcurves import (
    PLASTICC_CLASSES,
    LightCurveSet,
    load_bundled_plasticc,
    load_user_lightcurves,
    pad_lightcurves,
    pad_meta_names,
    split_indices,
)
from astroflax.errors import DataError

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bundled() -> LightCurveSet:
    return load_bundled_plasticc()


@pytest.fixture(scope="module")
def padded(bundled) -> dict[str, np.ndarray]:
    return pad_lightcurves(bundled, 256)


# ----------------------------------------------------------------------------- bundled set
def test_bundled_npz_has_no_object_arrays():
    path = REPO / "astroflax" / "data" / "files" / "plasticc_train.npz"
    with np.load(path, allow_pickle=False) as z:
        for k in z.files:
            assert z[k].dtype != object, k
        assert str(z["version"]) and len(str(z["version"])) == 12


def test_bundled_contents(bundled):
    assert len(bundled) == 7848
    assert bundled.offsets[0] == 0 and bundled.offsets[-1] == len(bundled.mjd) == 1_421_705
    assert np.all(np.diff(bundled.offsets) > 0)
    assert np.all(np.diff(bundled.object_id) > 0)
    assert bundled.class_names == [PLASTICC_CLASSES[c] for c in sorted(PLASTICC_CLASSES)]
    assert len(bundled.class_names) == 14
    assert set(np.unique(bundled.labels)) == set(range(14))
    assert np.all(bundled.extra["target_id"] == np.array(sorted(PLASTICC_CLASSES))[bundled.labels])
    # observations sorted by time within each object
    same_obj = np.repeat(np.arange(len(bundled)), bundled.lengths)
    d = np.diff(bundled.mjd)
    assert np.all(d[same_obj[1:] == same_obj[:-1]] >= 0)
    assert bundled.passband.max() == 5 and set(np.unique(bundled.detected)) == {0, 1}
    assert np.all(bundled.flux_err > 0) and np.all(np.isfinite(bundled.flux))
    # mjd decoded exactly to 1e-4 day
    assert np.array_equal(np.round(bundled.mjd * 1e4) / 1e4, bundled.mjd)
    assert 59580 < bundled.mjd.min() < bundled.mjd.max() < 60675
    assert bundled.meta.shape == (7848, 3) and not bundled.meta_missing.any()
    assert isinstance(bundled.version, str) and len(bundled.version) == 12


def test_split_fractions_stratified_disjoint(bundled):
    idx = split_indices(bundled)
    assert set(idx) == {"train", "val", "test"}
    allidx = np.concatenate(list(idx.values()))
    assert len(allidx) == len(bundled) == len(np.unique(allidx))  # disjoint and complete
    n = len(bundled)
    for name, frac in (("train", 0.7), ("val", 0.1), ("test", 0.2)):
        assert abs(len(idx[name]) / n - frac) < 0.005, name
        assert set(np.unique(bundled.labels[idx[name]])) == set(range(14)), name  # every class
    # stratified: per-class fractions close to the global ones
    for c in range(14):
        n_c = np.sum(bundled.labels == c)
        n_test = np.sum(bundled.labels[idx["test"]] == c)
        assert abs(n_test / n_c - 0.2) < 0.05
    # no object id in two splits
    ids = {k: set(bundled.object_id[v]) for k, v in idx.items()}
    assert not (ids["train"] & ids["val"]) and not (ids["train"] & ids["test"]) and not (ids["val"] & ids["test"])


def test_split_is_deterministic_and_reproducible(bundled):
    spec = importlib.util.spec_from_file_location("convert_plasticc", REPO / "scripts" / "convert_plasticc.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    again = mod.stratified_split(bundled.extra["target_id"], seed=20181001)
    assert np.array_equal(again, bundled.split)
    other = mod.stratified_split(bundled.extra["target_id"], seed=1)
    assert not np.array_equal(other, bundled.split)
    assert load_bundled_plasticc().version == bundled.version


# ----------------------------------------------------------------------------- padding
def test_pad_shapes_dtypes_and_zero_padding(bundled, padded):
    n, L = len(bundled), 256
    expect = {"time": np.float32, "flux": np.float32, "flux_err": np.float32, "band": np.int32,
              "detected": np.float32, "mask": np.bool_}
    for k, dt in expect.items():
        assert padded[k].shape == (n, L) and padded[k].dtype == dt, k
    assert padded["meta"].shape == (n, 4) and padded["meta"].dtype == np.float32
    assert pad_meta_names(bundled) == ["hostgal_photoz", "hostgal_photoz_err", "mwebv", "log_flux_scale"]
    assert padded["label"].dtype == np.int32 and padded["object_id"].dtype == np.int64
    assert np.array_equal(padded["object_id"], bundled.object_id)
    mask = padded["mask"]
    assert np.array_equal(mask.sum(1), np.minimum(bundled.lengths, L))
    # real observations are left-aligned
    assert np.all(mask[:, :-1] >= mask[:, 1:])
    for k in expect:
        assert np.all(padded[k][~mask] == 0), k
    assert np.all(padded["flux_err"][mask] > 0)
    # time sorted within each row, and 0 (the peak) present in every row
    t = np.where(mask, padded["time"], np.float32(1e9))
    assert np.all(np.diff(t, axis=1)[mask[:, 1:]] >= 0)
    assert np.all(np.any(mask & (padded["time"] == 0), axis=1))


def test_pad_reference_epoch_is_snr_peak_and_scale_roundtrips(bundled, padded):
    for i in (0, 1, 500, 7847):
        s, e = bundled.offsets[i], bundled.offsets[i + 1]
        snr = bundled.flux[s:e].astype(np.float64) / bundled.flux_err[s:e]
        assert padded["t_ref"][i] == bundled.mjd[s + np.argmax(snr)]
        scale = 10.0 ** padded["meta"][i, 3]
        row = padded["mask"][i]
        if e - s <= 256:
            np.testing.assert_allclose(padded["flux"][i, row] * scale, bundled.flux[s:e], rtol=1e-4, atol=1e-3)
            np.testing.assert_allclose(padded["time"][i, row], bundled.mjd[s:e] - padded["t_ref"][i], atol=1e-3)


def test_pad_cut_keeps_observations_closest_to_peak(bundled):
    sub = bundled.select(np.arange(0, len(bundled), 50))
    L = 40
    p = pad_lightcurves(sub, L)
    n_cut = 0
    for i in range(len(sub)):
        s, e = sub.offsets[i], sub.offsets[i + 1]
        dt = np.abs(sub.mjd[s:e] - p["t_ref"][i])
        kept = p["mask"][i].sum()
        assert kept == min(L, e - s)
        if e - s > L:
            n_cut += 1
            kept_dt = np.abs(p["time"][i, :kept].astype(np.float64))
            dropped = np.sort(dt)[L:]
            assert kept_dt.max() <= dropped.min() + 1e-3
            assert np.any(p["time"][i, :kept] == 0)  # peak kept
    assert n_cut > 50


def test_pad_rejects_bad_max_len(bundled):
    with pytest.raises(ValueError):
        pad_lightcurves(bundled.select(np.arange(3)), 0)


def test_select_matches_full(bundled, padded):
    idx = np.array([7, 3, 4000])
    sub = pad_lightcurves(bundled.select(idx), 256)
    for k in ("time", "flux", "mask", "meta", "label", "object_id"):
        assert np.array_equal(sub[k], padded[k][idx]), k


# ----------------------------------------------------------------------------- user data
def _lc_frame() -> pd.DataFrame:
    rows = []
    for oid, n in ((10, 5), (11, 4), (12, 6)):
        for j in range(n):
            rows.append({"object_id": oid, "mjd": 60000.0 + 3.0 * j, "passband": j % 6,
                         "flux": float(10 * j - 5), "flux_err": 1.0 + 0.1 * j, "detected": int(j % 2)})
    return pd.DataFrame(rows)


def _meta_frame() -> pd.DataFrame:
    return pd.DataFrame({"object_id": [10, 11, 12], "target": [90, 42, 16],
                         "hostgal_photoz": [0.1, 0.2, 0.0], "hostgal_photoz_err": [0.01, 0.02, 0.0],
                         "mwebv": [0.03, 0.04, 0.05]})


def _write(d: Path, lc: pd.DataFrame | None = None, meta: pd.DataFrame | None = None,
           lc_name: str = "lightcurves.csv", meta_name: str = "metadata.csv") -> Path:
    d.mkdir(parents=True, exist_ok=True)
    lc = _lc_frame() if lc is None else lc
    meta = _meta_frame() if meta is None else meta
    for df, name in ((lc, lc_name), (meta, meta_name)):
        if name.endswith(".parquet"):
            df.to_parquet(d / name)
        else:
            df.to_csv(d / name, index=False)
    return d


def _error(directory, **kw) -> str:
    with pytest.raises(DataError) as ei:
        load_user_lightcurves(directory, **kw)
    msg = str(ei.value)
    assert "\n" not in msg, msg
    return msg


def test_user_valid_csv(tmp_path):
    d = _write(tmp_path / "ok")
    s = load_user_lightcurves(d)
    assert len(s) == 3 and list(s.object_id) == [10, 11, 12]
    assert list(s.offsets) == [0, 5, 9, 15]
    names = [PLASTICC_CLASSES[c] for c in sorted(PLASTICC_CLASSES)]
    assert [s.class_names[i] for i in s.labels] == [PLASTICC_CLASSES[90], PLASTICC_CLASSES[42], PLASTICC_CLASSES[16]]
    assert s.class_names == names and s.split is None
    np.testing.assert_allclose(s.meta[0], [0.1, 0.01, 0.03], rtol=1e-6)
    assert not s.meta_missing.any()
    p = pad_lightcurves(s, 4)
    assert p["mask"].sum(1).tolist() == [4, 4, 4]
    with pytest.raises(DataError, match="split"):
        split_indices(s)


def test_user_parquet_equals_csv(tmp_path):
    a = load_user_lightcurves(_write(tmp_path / "csv"))
    b = load_user_lightcurves(_write(tmp_path / "pq", lc_name="lightcurves.parquet", meta_name="metadata.parquet"))
    for k in ("object_id", "offsets", "mjd", "flux", "flux_err", "passband", "detected", "labels", "meta"):
        assert np.array_equal(getattr(a, k), getattr(b, k)), k
    assert a.version == b.version


def test_user_lenient_names_letters_no_target(tmp_path):
    lc = _lc_frame().rename(columns={"detected": "detected_bool"})
    lc["passband"] = [("ugrizy"[b]).upper() if i % 2 else "ugrizy"[b] for i, b in enumerate(lc.passband)]
    meta = _meta_frame().drop(columns=["target", "mwebv"])
    d = _write(tmp_path / "x", lc, meta, lc_name="my_lightcurves.csv.gz", meta_name="my_metadata.csv")
    s = load_user_lightcurves(d)
    assert np.array_equal(s.passband, _lc_frame().passband.to_numpy(np.uint8))
    assert np.all(s.labels == -1)
    assert s.meta_missing[:, 2].all() and not s.meta_missing[:, :2].any()
    assert np.all(s.meta[:, 2] == 0)


def test_user_custom_class_names_and_split(tmp_path):
    meta = _meta_frame()
    meta["target"] = ["star", "galaxy", "star"]
    meta["split"] = ["train", "val", "test"]
    s = load_user_lightcurves(_write(tmp_path / "c", meta=meta), class_names=["galaxy", "star"])
    assert s.labels.tolist() == [1, 0, 1]
    assert {k: v.tolist() for k, v in split_indices(s).items()} == {"train": [0], "val": [1], "test": [2]}


def test_user_detected_absent_is_snr_threshold(tmp_path):
    lc = _lc_frame().drop(columns=["detected"])
    s = load_user_lightcurves(_write(tmp_path / "d", lc))
    assert np.array_equal(s.detected, (np.abs(s.flux) / s.flux_err >= 5).astype(np.uint8))


def test_user_unsorted_times_warns_with_count(tmp_path):
    lc = _lc_frame()
    lc.loc[[0, 1], "mjd"] = lc.loc[[1, 0], "mjd"].to_numpy()  # object 10
    lc.loc[[9, 10], "mjd"] = lc.loc[[10, 9], "mjd"].to_numpy()  # object 12
    lc = lc.iloc[::-1].reset_index(drop=True)  # reversed: all objects unsorted in file order
    d = _write(tmp_path / "u", lc)
    with pytest.warns(UserWarning, match=r"3 object\(s\)"):
        s = load_user_lightcurves(d)
    assert np.all(np.diff(s.mjd[0:5]) > 0) and np.all(np.diff(s.mjd[9:15]) > 0)
    ref = load_user_lightcurves(_write(tmp_path / "ref"))
    assert np.array_equal(np.sort(s.mjd), np.sort(ref.mjd))

    lc2 = _lc_frame()
    lc2.loc[[5, 6], "mjd"] = lc2.loc[[6, 5], "mjd"].to_numpy()  # only object 11
    with pytest.warns(UserWarning, match=r"1 object\(s\)"):
        load_user_lightcurves(_write(tmp_path / "u1", lc2))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_user_lightcurves(_write(tmp_path / "sorted"))  # no warning when sorted


def test_user_missing_directory_and_files(tmp_path):
    msg = _error(tmp_path / "nope")
    assert "nope" in msg and "does not exist" in msg
    d = tmp_path / "onlymeta"
    d.mkdir()
    _meta_frame().to_csv(d / "metadata.csv", index=False)
    msg = _error(d)
    assert "lightcurves.csv" in msg and str(d) in msg
    d = tmp_path / "onlylc"
    d.mkdir()
    _lc_frame().to_csv(d / "lightcurves.csv", index=False)
    assert "metadata.csv" in _error(d)
    d = _write(tmp_path / "two", lc_name="a_lightcurves.csv")
    _lc_frame().to_csv(d / "b_lightcurves.csv", index=False)
    msg = _error(d)
    assert "a_lightcurves.csv" in msg and "b_lightcurves.csv" in msg


def test_user_missing_column(tmp_path):
    msg = _error(_write(tmp_path / "m", _lc_frame().drop(columns=["flux_err"])))
    assert "lightcurves.csv" in msg and "'flux_err'" in msg


@pytest.mark.parametrize("column,value,fragment", [
    ("flux", np.nan, "empty"),
    ("flux", np.inf, "finite"),
    ("mjd", np.nan, "empty"),
    ("mjd", "abc", "'abc'"),
    ("flux_err", -1.0, "positive"),
    ("flux_err", np.nan, "finite"),
    ("passband", 7, "u g r i z y"),
    ("passband", "q", "'q'"),
    ("detected", 3, "0/1"),
])
def test_user_bad_values_name_file_column_line_object(tmp_path, column, value, fragment):
    lc = _lc_frame().astype({column: object})
    lc.loc[6, column] = value  # data row 7 -> file line 8, object 11
    msg = _error(_write(tmp_path / "b", lc))
    assert "lightcurves.csv" in msg and f"'{column}'" in msg, msg
    assert "line 8" in msg and "object_id 11" in msg, msg
    assert fragment in msg, msg


def test_user_unknown_label(tmp_path):
    meta = _meta_frame()
    meta.loc[1, "target"] = 99
    msg = _error(_write(tmp_path / "l", meta=meta))
    assert "metadata.csv" in msg and "'target'" in msg and "line 3" in msg and "object_id 11" in msg
    assert "99" in msg
    meta["target"] = ["star", "galaxy", "quasar"]
    msg = _error(_write(tmp_path / "l2", meta=meta), class_names=["galaxy", "star"])
    assert "'target'" in msg and "line 4" in msg and "quasar" in msg


def test_user_object_without_observations(tmp_path):
    meta = pd.concat([_meta_frame(), pd.DataFrame({"object_id": [13], "target": [90]})], ignore_index=True)
    msg = _error(_write(tmp_path / "o", meta=meta))
    assert "metadata.csv" in msg and "object_id 13" in msg and "no observations" in msg


def test_user_observation_of_unknown_object(tmp_path):
    lc = _lc_frame()
    lc.loc[14, "object_id"] = 99
    msg = _error(_write(tmp_path / "o", lc))
    assert "lightcurves.csv" in msg and "'object_id'" in msg and "99" in msg and "line 16" in msg


def test_user_duplicate_metadata_object(tmp_path):
    meta = pd.concat([_meta_frame(), _meta_frame().iloc[[0]]], ignore_index=True)
    msg = _error(_write(tmp_path / "dup", meta=meta))
    assert "metadata.csv" in msg and "duplicate object_id 10" in msg and "line 5" in msg
