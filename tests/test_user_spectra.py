"""The ``spectra`` task on user data: the 44 real Pickles (1998) dwarfs written as FITS tables in nm,
units, coverage masks, layouts (folder + labels, one table, HDF5 datasets), errors, one tiny run."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import astropy.units as u
import h5py
import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table
from conftest import run_main, set_args

from astroflax.config import build_config
from astroflax.data import spectra as sp
from astroflax.data import spectra_io as sio
from astroflax.data.spectra import _pixel_edges
from astroflax.errors import DataError
from astroflax.tasks import spectra as task_mod

PICKLES = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "pickles1998_dwarfs"
FLAM = "erg/(s cm2 Angstrom)"
# Pickles' B57V is a B5-7 average, the kastredux "M2" file is M2.5V (see scripts/convert_pickles.py).
LABEL_OVERRIDES = {"B57V": "B6V", "M2": "M2.5V"}
TINY = ["data.num_pixels=256", "model.channels=[4,8]", "model.hidden=16", "train.steps=4", "train.batch_size=16",
        "train.eval_batch_size=64", "train.eval_every=2", "train.log_every=2", "checkpoint.every=2",
        "schedule.warmup_steps=2", "train.progress=false"]


def _pickles(name: str) -> tuple[np.ndarray, np.ndarray]:
    d = np.loadtxt(PICKLES / f"{name}_pickles1998.txt")
    return d[:, 0], d[:, 1]


def _write_nm(path: Path, wave_aa: np.ndarray, flux: np.ndarray, flux_unit: str | None = None, **header) -> None:
    """A FITS table with the wavelength in nm (TUNIT1 = 'nm'), as a user might have it."""
    t = Table({"WAVELENGTH": wave_aa / 10.0 * u.nm, "FLUX": flux if flux_unit is None else flux * u.Unit(flux_unit)})
    t.meta.update(header)
    t.write(path, overwrite=True)


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """All 45 Pickles files as FITS tables in nm (flux without a unit), labels from the file names."""
    out = tmp_path_factory.mktemp("pickles_fits")
    rows = []
    for f in sorted(PICKLES.glob("*_pickles1998.txt")):
        name = f.name.split("_")[0]
        wave, flux = _pickles(name)
        _write_nm(out / f"{name}.fits", wave, flux)
        rows.append({"file": f"{name}.fits", "label": LABEL_OVERRIDES.get(name, name.split("-")[0])})
    with open(out / "labels.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, ["file", "label"])
        w.writeheader()
        w.writerows(rows)
    return out


def _rebinned(wave: np.ndarray, flux: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """Reference: flux-conserving rebin with numpy (cumulative trapezoid integral between the log
    pixel edges over the pixel width), divided by its median."""
    edges = _pixel_edges(grid)
    assert wave[0] <= edges[0] and wave[-1] >= edges[-1]
    cum = np.concatenate([[0.0], np.cumsum(0.5 * (flux[1:] + flux[:-1]) * np.diff(wave))])
    out = np.diff(np.interp(edges, wave, cum)) / np.diff(edges)
    return out / np.median(out)


def _cfg(path: Path, *more: str):
    return build_config("spectra", None, None, [f"data.path={path}", "data.num_pixels=256", *more])


def _settings(**kw) -> task_mod.SpectraData:
    return task_mod.SpectraData(**kw)


def test_folder_of_pickles_fits_in_nm(folder, tmp_path):
    ds = task_mod.load_data(_cfg(folder, f"data.flux_unit={FLAM}"))
    info = ds.info
    assert len(list(PICKLES.glob("*.txt"))) == 45
    assert info["rows_used"] == 44 and sum(info["split_sizes"].values()) == 44
    assert info["source"]["rows_read"] == 45 and info["source"]["format"] == "folder of spectra + labels.csv"
    (drop,) = info["dropped"]
    assert drop["rows"] == 1 and drop["first"] == [
        f"{folder / 'K0V-ZRICH.fits'}: every wavelength and flux value is zero (an empty spectrum)"]
    assert info["units"]["wave_unit"] == {"nm": 44} and info["units"]["medium"] == {"air": 44}
    assert info["class_names"] == list("OBAFGKM") and info["label_mode"] == "mk" and info["subtypes_known"] == 44
    # Stratified 70/10/20 (every class reaches val and test); counts per class as in the bundled set.
    counts = np.sum([info["class_counts"][k] for k in ("train", "val", "test")], axis=0)
    assert counts.tolist() == [2, 6, 5, 9, 8, 6, 8]
    assert info["class_counts"]["val"] == [1] * 7 and info["split_method"].startswith("stratified 70/10/20")
    # nm -> Angstrom: the same numbers as a numpy rebin of the original Angstrom file, and as the
    # same spectrum written in Angstrom as a CSV and read by the reader.
    grid = sp.model_grid(3800.0, 9000.0, 256)
    every = {k: v for split in ds.splits.values() for k, v in split.items()}
    all_ids = np.concatenate([s["object_id"] for s in ds.splits.values()])
    all_flux = np.concatenate([s["flux"] for s in ds.splits.values()])
    all_scale = np.concatenate([s["subtype"] for s in ds.splits.values()])
    names = [f.name.split("_")[0] for f in sorted(PICKLES.glob("*_pickles1998.txt"))]  # labels.csv order
    g2 = int(np.flatnonzero(all_ids == names.index("G2V"))[0])
    wave, flux = _pickles("G2V")
    np.testing.assert_allclose(all_flux[g2], _rebinned(wave, flux, grid), rtol=2e-5)
    np.savetxt(tmp_path / "G2V_aa.csv", np.column_stack([wave, flux]), delimiter=",", header="wavelength,flux",
               comments="")
    aa = sio.load_user_data(tmp_path / "G2V_aa.csv", _settings(wave_unit="Angstrom", flux_unit=FLAM), grid, "median",
                            labelled=False)
    assert aa.units["wave_unit"] == {"Angstrom": 1} and aa.mask.min() == 1.0
    np.testing.assert_allclose(all_flux[g2], aa.flux[0], rtol=2e-5)
    assert all_scale[g2] == pytest.approx(4.2)
    assert all_scale[int(np.flatnonzero(all_ids == names.index("M2"))[0])] == pytest.approx(6.25)
    assert every["mask"].min() == 1.0 and info["coverage"]["full"] == 44
    # The version follows the data settings; the bundled version ignores the user-data fields.
    again = task_mod.load_data(_cfg(folder, f"data.flux_unit={FLAM}", "data.split_seed=7"))
    assert again.version != ds.version and again.version.startswith("user-")


def test_units_missing_disagreeing_and_log_lambda(tmp_path):
    wave, flux = _pickles("K5V")
    grid = sp.model_grid()
    _write_nm(tmp_path / "k5.fits", wave, flux)
    with pytest.raises(DataError) as exc:
        sio.read_spectrum(tmp_path / "k5.fits", _settings())
    assert str(exc.value) == (f"{tmp_path / 'k5.fits'}: column 'FLUX': no flux unit in the file; set config key "
                              "'data.flux_unit' (e.g. --set data.flux_unit=erg/(s cm2 Angstrom))")
    with pytest.raises(DataError, match=r"k5\.fits: column 'WAVELENGTH': the file declares wavelength unit 'nm' but "
                                        r"config key 'data.wave_unit' = 'Angstrom'; remove the setting or fix the file"):
        sio.read_spectrum(tmp_path / "k5.fits", _settings(wave_unit="Angstrom", flux_unit=FLAM))
    Table({"WAVE": wave, "FLUX": flux}).write(tmp_path / "bare.fits")
    with pytest.raises(DataError, match=r"bare\.fits: column 'WAVE': no wavelength unit in the file; set config key "
                                        r"'data.wave_unit'"):
        sio.read_spectrum(tmp_path / "bare.fits", _settings(flux_unit=FLAM))
    ref = sio.read_spectrum(tmp_path / "k5.fits", _settings(flux_unit=FLAM))
    np.testing.assert_allclose(ref.wave, wave, rtol=1e-12)  # nm -> Angstrom
    # log10 lambda: an SDSS-like ``loglam`` column, and a 1-D image with DC-FLAG = 1.
    sel = (wave > 3500) & (wave < 9500)
    Table({"loglam": np.log10(wave[sel]), "flux": flux[sel]}).write(tmp_path / "log.fits")
    log = sio.read_spectrum(tmp_path / "log.fits", _settings(wave_unit="Angstrom", flux_unit=FLAM))
    np.testing.assert_allclose(log.wave, wave[sel], rtol=1e-12)
    loglam = np.arange(np.log10(3600.0), np.log10(9300.0), 1e-4)
    hdu = fits.PrimaryHDU(np.interp(10**loglam, wave, flux))
    hdu.header.update({"CRVAL1": loglam[0], "CDELT1": 1e-4, "CRPIX1": 1.0, "DC-FLAG": 1, "CUNIT1": "Angstrom",
                       "BUNIT": FLAM})
    hdu.writeto(tmp_path / "img.fits")
    img = sio.read_spectrum(tmp_path / "img.fits", _settings())
    np.testing.assert_allclose(img.wave, 10**loglam, rtol=1e-9)
    a, b = (sio.resample_with_coverage(r, grid)[0] for r in (ref, img))
    assert np.median(np.abs(a / np.median(a) - b / np.median(b))) < 0.01
    # Vacuum wavelengths (AIRORVAC) become air with Morton (2000): n - 1 = 2.78e-4 at 6000 A.
    _write_nm(tmp_path / "vac.fits", wave, flux, FLAM, AIRORVAC="vac")
    vac = sio.read_spectrum(tmp_path / "vac.fits", _settings())
    j = int(np.argmin(np.abs(wave - 6000.0)))
    assert vac.medium == "vacuum" and wave[j] / vac.wave[j] - 1.0 == pytest.approx(2.78e-4, rel=0.01)
    with pytest.raises(DataError, match="says its wavelengths are in vacuum but config key 'data.wave_medium'"):
        sio.read_spectrum(tmp_path / "vac.fits", _settings(wave_medium="air"))
    # No silent float32 overflow: a finite float64 flux beyond float32 names its row.
    big = flux.copy()
    big[7] = 1e39
    _write_nm(tmp_path / "big.fits", wave, big, FLAM)
    with pytest.raises(DataError, match=r"big\.fits: column 'FLUX', row 7: flux is 1e\+39, expected \|flux\| <= 1e\+30"):
        sio.read_spectrum(tmp_path / "big.fits", _settings())


def test_coverage_mask_and_min_coverage(tmp_path):
    wave, flux = _pickles("F5V")
    grid = sp.model_grid()  # 3800-9000 A, 1024 pixels
    edges = _pixel_edges(grid)
    cut = wave <= edges[512]  # half the log grid
    _write_nm(tmp_path / "half.fits", wave[cut], flux[cut], FLAM)
    raw = sio.read_spectrum(tmp_path / "half.fits", _settings())
    f, m = sio.resample_with_coverage(raw, grid)
    lo, hi = edges[:-1], edges[1:]
    covered = np.clip(np.minimum(hi, wave[cut][-1]) - np.maximum(lo, wave[cut][0]), 0, None) / (hi - lo)
    assert int(m.sum()) == int(np.sum(covered >= 0.5)) and 505 <= int(m.sum()) <= 512
    assert m[:500].all() and not m[512:].any() and np.isnan(f[~m]).all()
    flux_n, mask_n, kept = sio.prepare([raw], ["half.fits"], grid, "median", 0.4, None)
    assert kept.all() and mask_n.sum() == m.sum() and np.all(flux_n[0, mask_n[0] == 0] == 1.0)
    assert np.median(flux_n[0, mask_n[0] == 1]) == pytest.approx(1.0)
    with pytest.raises(DataError, match=r"half\.fits: covers 49\.\d% of the model grid 3800-9000 A \(5\d\d of 1024 "
                                        r"pixels; data 1150-5845 A\), below data\.min_coverage = 0\.6"):
        sio.prepare([raw], ["half.fits"], grid, "median", 0.6, None)
    # Pixels with ivar = 0 are uncovered, like missing data.
    ivar = np.ones_like(flux)
    ivar[(wave > 6000) & (wave < 6500)] = 0.0
    Table({"wavelength": wave * u.AA, "flux": flux * u.Unit(FLAM), "ivar": ivar}).write(tmp_path / "ivar.fits")
    raw = sio.read_spectrum(tmp_path / "ivar.fits", _settings())
    _, m = sio.resample_with_coverage(raw, grid)
    inside = (grid > 6010) & (grid < 6490)
    assert raw.ivar is not None and not m[inside].any() and m[grid < 5990].all() and m[grid > 6510].all()


def test_one_table_with_vector_columns_split_and_dropped_row(tmp_path):
    names = ["A0V", "G2V", "M4V", "K5V", "F5V", "B3V"]
    wave = np.arange(3600.0, 9400.0, 4.0)
    flux = np.stack([np.interp(wave, *_pickles(n)) for n in names])
    flux[5, wave > 5000] = np.nan  # covers 3600-5000 A only: below min_coverage, dropped and recorded
    err = np.full_like(flux, 0.01)
    t = Table({"object_id": np.arange(100, 106), "wavelength": np.tile(wave / 1e4, (6, 1)) * u.um,
               "flux": flux * u.Unit(FLAM), "error": err * u.Unit(FLAM), "sptype": names,
               "split": ["train", "train", "val", "val", "test", "train"]})
    t.write(tmp_path / "spectra.fits")
    ds = task_mod.load_data(_cfg(tmp_path / "spectra.fits"))
    info = ds.info
    assert info["source"]["format"] == "FITS table" and info["source"]["rows_read"] == 6
    assert info["split_method"] == "the 'split' column of the input"
    assert info["split_sizes"] == {"train": 2, "val": 2, "test": 1}
    (drop,) = info["dropped"]
    assert drop["reason"] == "coverage below data.min_coverage" and "spectrum row 5: covers" in drop["first"][0]
    assert ds.splits["val"]["object_id"].tolist() == [102, 103]
    assert ds.splits["train"]["label"].tolist() == [2, 4] and ds.splits["train"]["subtype"][1] == pytest.approx(4.2)
    assert info["units"]["wave_unit"] == {"um": 5} and info["units"]["errors_used"] == 5


def test_hdf5_datasets_class_names_and_label_errors(tmp_path):
    wave = np.arange(3600.0, 9400.0, 4.0)
    flux = np.stack([np.interp(wave, *_pickles(n)) for n in ["A0V", "G2V", "M4V"] * 4])
    with h5py.File(tmp_path / "spec.h5", "w") as h:
        h.create_dataset("wavelength", data=wave / 10.0).attrs["unit"] = "nm"
        h.create_dataset("flux", data=flux).attrs["unit"] = "Jy"  # F_nu: converted to F_lambda
        h.create_dataset("label", data=np.array([b"hot", b"sun", b"cool"] * 4))
    ds = task_mod.load_data(_cfg(tmp_path / "spec.h5", "data.min_coverage=0.9"))
    assert ds.info["class_names"] == ["cool", "hot", "sun"] and ds.info["label_mode"] == "names"
    assert ds.info["source"]["format"] == "HDF5 datasets" and ds.info["units"]["flux_unit"] == {"Jy": 12}
    assert not ds.info["has_subtype"] and sum(ds.info["split_sizes"].values()) == 12
    # Jy -> F_lambda multiplies by c / lambda^2 (astropy's spectral_density), then the median is divided out.
    grid = sp.model_grid(3800.0, 9000.0, 256)
    split = next(s for s in ds.splits.values() if 0 in s["object_id"])
    got = split["flux"][list(split["object_id"]).index(0)]
    np.testing.assert_allclose(got, _rebinned(wave, flux[0] / wave**2, grid), rtol=1e-4)
    with h5py.File(tmp_path / "mixed.h5", "w") as h:
        h.create_dataset("wavelength", data=wave).attrs["unit"] = "Angstrom"
        h.create_dataset("flux", data=flux[:3]).attrs["unit"] = FLAM
        h.create_dataset("label", data=np.array([b"G2V", b"WD", b"K0"]))
    with pytest.raises(DataError, match=r"mixed\.h5: column 'label' mixes MK types \('G2V'\) and other class names "
                                        r"\('WD'\); set config key 'data.class_names'"):
        task_mod.load_data(_cfg(tmp_path / "mixed.h5"))
    with pytest.raises(DataError, match=r"mixed\.h5: column 'label', row 1 \(0-based\): expected one of "
                                        r"data.class_names \['G2V', 'K0'\], got 'WD'"):
        task_mod.load_data(_cfg(tmp_path / "mixed.h5", "data.class_names=[G2V,K0]"))


def test_train_predict_and_convert_on_user_folder(folder, tmp_path, capsys):
    """The one training test: `train --data FOLDER` (4 steps), then predict and `data convert`."""
    run_dir = tmp_path / "run"
    code, _, err = run_main(["train", "spectra", "--data", str(folder), "--run-dir", str(run_dir),
                             *set_args([*TINY, f"data.flux_unit={FLAM}"])], capsys)
    assert code == 0, err
    info = json.loads((run_dir / "data_info.json").read_text())
    assert info["split_sizes"] == {"train": 27, "val": 7, "test": 10} and info["dropped"][0]["rows"] == 1
    assert info["mask_channel"] is True and info["source"]["path"] == str(folder.absolute())
    report = json.loads((run_dir / "eval" / "test.json").read_text())
    assert report["n"] == 10 and report["coverage"]["partial_n"] == 0 and "per_template" not in report
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    wave, flux = _pickles("G8V")
    _write_nm(inputs / "a.fits", wave, flux, FLAM)
    cut = wave < 6500.0  # 60% of the grid: predicted, with the uncovered part masked
    _write_nm(inputs / "b.fits", wave[cut], flux[cut], FLAM)
    out = tmp_path / "pred.csv"
    code, _, err = run_main(["predict", str(run_dir), "--input", str(inputs), "--output", str(out)], capsys)
    assert code == 0, err
    rows = list(csv.DictReader(out.open()))
    assert [r["file"] for r in rows] == ["a.fits", "b.fits"]
    assert all(sum(float(r[f"p_{c}"]) for c in "OBAFGKM") == pytest.approx(1.0, abs=1e-4) for r in rows)
    _write_nm(inputs / "c.fits", wave[wave < 5000], flux[wave < 5000], FLAM)
    code, _, err = run_main(["predict", str(run_dir), "--input", str(inputs / "c.fits"), "--output", str(out)], capsys)
    assert code == 2 and "c.fits: covers" in err and "below data.min_coverage = 0.5" in err
    store = tmp_path / "store"
    code, _, err = run_main(["data", "convert", "spectra", "--input", str(folder), "--out", str(store),
                             "--set", "data.num_pixels=256", "--set", f"data.flux_unit={FLAM}"], capsys)
    assert code == 0, err
    manifest = json.loads((store / "manifest.json").read_text())
    assert {k: v["rows"] for k, v in manifest["splits"].items()} == {"train": 27, "val": 7, "test": 10}
    assert {f["name"]: f["shape"] for f in manifest["schema"]}["mask"] == [256]
    assert manifest["info"]["dropped"] == info["dropped"]
