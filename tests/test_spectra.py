"""The ``spectra`` task: template conversion, the spectrum simulator, the split, the model and the CLI."""

from __future__ import annotations

import csv
import importlib.util
import json
import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from astropy.io import fits
from flax import nnx

from astroflax.data import spectra as sp
from astroflax.data import spectra_io as sio
from astroflax.data import spectra_synth as synth
from astroflax.errors import ConfigError, DataError
from astroflax.models.spectra import SpectralConvolution, SpectrumCNN
from astroflax.tasks import spectra as task_mod
from conftest import REPO, run_cli, set_args

TINY = [
    "data.num_pixels=256",
    "data.num_train=256",
    "data.val_per_type=4",
    "data.test_per_snr=2",
    "model.channels=[4,8]",
    "model.hidden=16",
    "train.steps=6",
    "train.batch_size=32",
    "train.eval_batch_size=64",
    "train.eval_every=3",
    "train.log_every=3",
    "checkpoint.every=3",
    "schedule.warmup_steps=2",
    "train.progress=false",
]


# ----------------------------------------------------------------------------- conversion


def _load_converter():
    spec = importlib.util.spec_from_file_location("convert_pickles", REPO / "scripts" / "convert_pickles.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _write_template(path: Path, flux: np.ndarray) -> None:
    wave = np.arange(1150.0, 25000.1, 5.0)
    np.savetxt(path, np.column_stack([wave, flux]), header="wave\tflux", delimiter="\t", comments="#")


def test_converter_rejects_zero_file_and_parses_names(tmp_path):
    conv = _load_converter()
    src = tmp_path / "src"
    src.mkdir()
    wave = np.arange(1150.0, 25000.1, 5.0)
    _write_template(src / "G2V_pickles1998.txt", 1.0 + 0.1 * np.sin(wave / 300.0))
    _write_template(src / "M2_pickles1998.txt", wave / 5000.0)
    np.savetxt(src / "K0V-ZRICH_pickles1998.txt", np.zeros((4770, 2)), header="wave\tflux", comments="#")
    messages: list[str] = []
    arrays = conv.convert(src, tmp_path / "out.npz", log=messages.append)
    assert any("rejected K0V-ZRICH_pickles1998.txt" in m and "zero" in m for m in messages), messages
    assert arrays["name"].tolist() == ["G2V", "M2.5V"]
    assert arrays["scale"].tolist() == pytest.approx([4.2, 6.25])
    with np.load(tmp_path / "out.npz", allow_pickle=False) as d:
        assert d["flux"].dtype == np.float32 and d["flux"].shape == (2, conv.GRID_PIXELS)
        grid = d["wavelength"]
        np.testing.assert_allclose(d["flux"][1], grid / 5000.0, rtol=1e-5)


def test_bundled_templates():
    t = sp.load_templates()
    assert len(t) == 44  # 45 files, K0V-ZRICH (all zeros) rejected
    assert "K0V-ZRICH" not in t.name and "M2.5V" in t.name and "G5V-ZPOOR" in t.name
    assert np.bincount(t.class_index, minlength=7).tolist() == [2, 6, 5, 9, 8, 6, 8]
    assert t.flux.dtype == np.float32 and t.flux.shape == (44, 2048)
    assert t.wavelength[0] == pytest.approx(3500.0) and t.wavelength[-1] == pytest.approx(9500.0)
    np.testing.assert_allclose(np.median(t.flux, axis=1), 1.0, rtol=1e-6)
    assert t.scale[list(t.name).index("G2V")] == pytest.approx(4.2)
    assert np.all(np.diff(t.scale) >= 0)
    # Metal-poor/rich variants keep class and subtype.
    assert t.scale[list(t.name).index("F8V-ZRICH")] == t.scale[list(t.name).index("F8V")]


# ----------------------------------------------------------------------------- simulator


def _line_template(centre: float = 6000.0, fwhm: float = 2.0, depth: float = 0.8):
    wave = np.exp(np.linspace(np.log(3500.0), np.log(9500.0), 8192))
    sig = fwhm / 2.3548
    flux = 1.0 - depth * np.exp(-0.5 * ((wave - centre) / sig) ** 2)
    return wave, flux[None, :].astype(np.float32)


def _sim(tpl, grid, rv=0.0, res=5000.0, ebv=0.0, snr=0.0, n=1, rng=None, normalise=None, idx=0):
    z = np.zeros(n)
    i = np.full(n, idx)
    return sp.simulate(tpl, i, i, z, z + rv, z + res, z + ebv, z + snr, grid, rng, normalise)


def _line_centre(flux: np.ndarray) -> float:
    depth = 1.0 - flux
    j = int(np.argmax(depth))
    win = slice(j - 6, j + 7)
    x = np.arange(len(flux))[win]
    return float(np.sum(x * depth[win]) / np.sum(depth[win]))


def test_rv_shift_moves_line_by_expected_pixels():
    tpl = _line_template()
    grid = sp.model_grid(5500.0, 6500.0, 1024)
    dln = np.log(grid[1] / grid[0])
    c0 = _line_centre(_sim(tpl, grid)[0])
    for rv in (300.0, -250.0):
        beta = rv / sp.C_KMS
        expected = 0.5 * np.log((1 + beta) / (1 - beta)) / dln  # ~6 pixels
        shift = _line_centre(_sim(tpl, grid, rv=rv)[0]) - c0
        assert shift == pytest.approx(expected, abs=0.05), (rv, shift, expected)
    assert c0 == pytest.approx(np.log(6000.0 / grid[0]) / dln, abs=0.05)


def test_lsf_broadening_lowers_line_depth_and_conserves_flux():
    tpl = _line_template()
    grid = sp.model_grid(5500.0, 6500.0, 1024)
    sharp, broad = _sim(tpl, grid, res=5000.0)[0], _sim(tpl, grid, res=500.0)[0]
    assert 1.0 - broad.min() < 0.5 * (1.0 - sharp.min())
    # Convolution preserves the equivalent width.
    assert np.sum(1.0 - broad) == pytest.approx(np.sum(1.0 - sharp), rel=0.02)


@pytest.mark.parametrize("snr", [5.0, 20.0, 100.0])
def test_noise_matches_requested_snr(snr):
    t = sp.load_templates()
    grid = sp.model_grid()
    m = list(t.name).index("M4V")  # a strongly structured spectrum
    rng = np.random.default_rng(1)
    clean = _sim(t, grid, idx=m)[0]
    noisy = _sim(t, grid, snr=snr, n=400, rng=rng, idx=m)
    sigma = (noisy - clean).std(axis=0)
    measured = np.median(clean / sigma)
    assert measured == pytest.approx(snr, rel=0.10)
    assert np.mean(noisy - clean) == pytest.approx(0.0, abs=3 * np.median(clean) / snr / np.sqrt(noisy.size))


def test_reddening_lowers_blue_to_red_ratio():
    t = sp.load_templates()
    grid = sp.model_grid()
    g = list(t.name).index("G2V")
    blue, red = (grid > 4000) & (grid < 4500), (grid > 8000) & (grid < 8500)
    ratios = [float(f[blue].mean() / f[red].mean()) for f in (_sim(t, grid, ebv=e, idx=g)[0] for e in (0.0, 0.25, 0.5))]
    assert ratios[0] > ratios[1] > ratios[2]
    # The blue/red ratio falls as 10^(-0.4 E(B-V) (A_blue - A_red)/E(B-V)) of the extinction law.
    f = sp.extinction_factor(grid, np.array([0.5]))[0]
    assert ratios[2] / ratios[0] == pytest.approx(f[blue].mean() / f[red].mean(), rel=0.02)


def test_continuum_normalisation_and_mixing():
    t = sp.load_templates()
    grid = sp.model_grid()
    rng = np.random.default_rng(0)
    n = 64
    a, b, w, scale = sp.sample_mixtures(t.scale, n, rng, mix_fraction=1.0)
    args = (a, b, w, rng.uniform(-300, 300, n), np.full(n, 1000.0), rng.uniform(0, 0.5, n), np.full(n, 20.0))
    med = sp.simulate(t, *args, grid, rng, "median")
    poly = sp.simulate(t, *args, grid, rng, "poly")
    np.testing.assert_allclose(np.median(med, axis=1), 1.0, atol=1e-5)
    # Envelope fit: lines sit below a continuum of ~1 (K/M stars are line-blanketed, so lower medians).
    pm = np.median(poly, axis=1)
    assert np.all(np.abs(pm[scale < 5] - 1.0) < 0.05) and np.all((pm > 0.75) & (pm < 1.02))
    # Mixtures lie between adjacent levels and carry the interpolated label.
    np.testing.assert_allclose(scale, (1 - w) * t.scale[a] + w * t.scale[b], atol=1e-5)
    levels = np.unique(t.scale)
    assert np.all(np.searchsorted(levels, t.scale[b]) - np.searchsorted(levels, t.scale[a]) <= 1)
    assert np.all((w > 0) & (w < 1) | (t.scale[a] == t.scale[b]) | (w == 0) | (w == 1))
    assert sp.spectral_type(4.23) == "G2.3" and sp.spectral_type(4.95, class_index=5) == "K0.0"


# ----------------------------------------------------------------------------- split


def test_leave_templates_out_split_is_disjoint():
    t = sp.load_templates()
    d = task_mod.SpectraData(num_train=200, val_per_type=3, test_per_snr=2, num_pixels=256)
    splits, parts = synth.build_splits(d, t)
    sets = {k: set(v.tolist()) for k, v in parts.items()}
    assert not (sets["train"] & sets["val"]) and not (sets["train"] & sets["test"]) and not (sets["val"] & sets["test"])
    assert sets["train"] | sets["val"] | sets["test"] == set(range(len(t)))
    assert set(t.class_index[parts["train"]].tolist()) == set(range(7))
    # All metallicity variants of a held-out type are held out together.
    assert {"G5V", "G5V-ZPOOR", "G5V-ZRICH"} <= set(t.name[parts["test"]])
    assert set(splits["train"]["template"]) | set(splits["train"]["template_b"]) <= sets["train"]
    assert set(splits["val"]["template"]) == sets["val"] and set(splits["test"]["template"]) == sets["test"]
    assert sorted(set(splits["test"]["snr"].tolist())) == [5.0, 10.0, 20.0, 50.0, 100.0]
    assert splits["train"]["flux"].shape == (200, 256) and splits["train"]["flux"].dtype == np.float32
    np.testing.assert_array_equal(splits["train"]["label"], np.floor(splits["train"]["subtype"] + 1e-6))
    again, _ = synth.build_splits(d, t)  # deterministic from the seed
    np.testing.assert_array_equal(again["test"]["flux"], splits["test"]["flux"])
    with pytest.raises(ConfigError, match="without training templates"):
        synth.template_split(t, ["O5V"], ["O9V"])
    with pytest.raises(ConfigError, match="unknown spectral type"):
        synth.template_split(t, ["X1V"], [])


# ----------------------------------------------------------------------------- model


def test_spectral_convolution_shape_and_wavelength_gain():
    layer = SpectralConvolution(2, 3, 5, 32, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(1), (4, 32, 2))
    y = layer(x)
    assert y.shape == (4, 32, 3)
    np.testing.assert_allclose(y, layer.conv(x), atol=1e-6)  # starts as a plain convolution
    # Translation-equivariant with unit gain (away from the edges) ...
    y_shift = layer(jnp.roll(x, 3, axis=1))
    np.testing.assert_allclose(y_shift[:, 8:24], jnp.roll(y, 3, axis=1)[:, 8:24], atol=1e-5)
    # ... but the per-wavelength gain/offset act on single pixels only.
    layer.gain[...] = layer.gain[...].at[10].set(0.0)
    layer.offset[...] = layer.offset[...].at[10, 1].set(2.0)
    y2 = layer(x)
    np.testing.assert_allclose(y2[:, 10, 0], 0.0, atol=1e-7)
    np.testing.assert_allclose(y2[:, 10, 1], 2.0, atol=1e-6)
    np.testing.assert_allclose(np.delete(np.asarray(y2), 10, axis=1), np.delete(np.asarray(y), 10, axis=1), atol=1e-6)
    grads = nnx.grad(lambda m: jnp.sum(m(x) ** 2))(layer)
    assert float(jnp.abs(grads.gain[...]).sum()) > 0
    with pytest.raises(ValueError, match="expects"):
        layer(jnp.zeros((1, 16, 2)))


def test_cnn_batchnorm_train_vs_eval():
    model = SpectrumCNN(64, 7, channels=(4, 4), hidden=8, dropout=0.1, rngs=nnx.Rngs(0))
    x = 1.0 + 0.1 * jax.random.normal(jax.random.key(0), (8, 64))
    logits, scale = model(x)
    assert logits.shape == (8, 7) and scale.shape == (8,)
    # Eval mode uses running averages: one example's output does not depend on its batch.
    np.testing.assert_allclose(model(x[:1])[0], logits[:1], atol=1e-5)
    before = np.asarray(model.norms[0].mean[...])
    model(x, train=True, rng=jax.random.key(1))
    assert not np.allclose(before, np.asarray(model.norms[0].mean[...]))
    with pytest.raises(ValueError, match="rng"):
        model(x, train=True)


def test_ema_weights_get_their_own_batch_norm_statistics(tmp_path):
    """``--weights ema`` on a batch-norm model recomputes the running statistics for the averaged
    weights (as SWA does): the raw weights' statistics belong to the raw weights."""
    from astroflax.config import build_config
    from astroflax.runs import load_run
    from astroflax.train.averaging import has_batch_stats
    from astroflax.train.loop import train
    from astroflax.train.optim import flat_params

    run_dir = tmp_path / "ema"
    train(build_config("spectra", "quick", overrides=[*TINY, "data.stress_per_snr=0", "optim.ema.decay=0.5",
                                                      "optim.ema.bn_batches=2", f"run_dir={run_dir}"]))
    raw, ema = load_run(run_dir, "latest"), load_run(run_dir, "latest", weights="ema")
    assert has_batch_stats(raw.state.model_state)
    r, e = flat_params(jax.device_get(raw.state.model_state)), flat_params(jax.device_get(ema.state.model_state))
    stats = [k for k in r if k.endswith((".mean", ".var"))]
    assert stats and all(np.isfinite(e[k]).all() for k in stats)
    assert all(not np.allclose(r[k], e[k]) for k in stats)
    probs = ema.predict(ema.task.load_data(ema.cfg).split("val"))
    assert np.allclose(probs[:, :7].sum(-1), 1.0, atol=1e-5)


# ----------------------------------------------------------------------------- user spectra


def _user_spectrum(name: str = "G2V"):
    t = sp.load_templates()
    wave = np.arange(3600.0, 9300.0, 2.0)
    return wave, np.interp(wave, t.wavelength, t.flux[list(t.name).index(name)])


def _write_csv(path: Path, wave, flux, header=("wavelength", "flux")):
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(zip(wave, flux))


def _write_fits_image(path: Path, name: str = "M3V"):
    t = sp.load_templates()
    loglam = np.arange(np.log10(3650.0), np.log10(9250.0), 1e-4)
    flux = np.interp(10**loglam, t.wavelength, t.flux[list(t.name).index(name)])
    hdu = fits.PrimaryHDU(flux.astype(np.float32))
    hdu.header.update({"CRVAL1": loglam[0], "CDELT1": 1e-4, "CRPIX1": 1.0, "DC-FLAG": 1})
    hdu.writeto(path)
    return 10**loglam, flux


FLAM = "erg/(s cm2 Angstrom)"


def _user_data(path: Path, grid: np.ndarray, **settings):
    """The spectra task's reader of user spectra (prediction layout: no labels), units from the config."""
    data = task_mod.SpectraData(wave_unit="Angstrom", flux_unit=FLAM, **settings)
    return sio.load_user_data(path, data, grid, "median", labelled=False)


def _pixels_covered(grid: np.ndarray, lo: float, hi: float, gap: tuple[float, float] | None = None) -> np.ndarray:
    """Model pixels at least half covered by data in [lo, hi] (minus ``gap``), from the log pixel edges."""
    ln = np.log(grid)
    half = 0.5 * (ln[1] - ln[0])
    edges = np.exp(np.concatenate([[ln[0] - half], 0.5 * (ln[1:] + ln[:-1]), [ln[-1] + half]]))
    a, b = edges[:-1], edges[1:]
    inside = np.clip(np.minimum(b, hi) - np.maximum(a, lo), 0.0, None)
    if gap is not None:
        inside -= np.clip(np.minimum(b, gap[1]) - np.maximum(a, gap[0]), 0.0, None)
    return inside >= 0.5 * (b - a)


def test_user_spectra_fits_and_csv_agree(tmp_path):
    grid = sp.model_grid()
    wave, flux = _user_spectrum("G2V")
    _write_csv(tmp_path / "g.csv", wave, flux)
    cols = [fits.Column(name="WAVELENGTH", format="D", array=wave), fits.Column(name="FLUX", format="D", array=flux)]
    fits.BinTableHDU.from_columns(cols).writeto(tmp_path / "g_table.fits")
    _write_fits_image(tmp_path / "g_image.fits", "G2V")
    u = _user_data(tmp_path, grid)
    assert u.names == ["g.csv", "g_image.fits", "g_table.fits"]
    assert u.flux.shape == (3, len(grid)) and u.mask.min() == 1.0  # 3600-9300 A covers the whole grid
    assert u.units["reader"] == {"text table": 1, "specutils wcs1d-fits": 1, "astropy FITS table": 1}
    assert u.units["medium"] == {"air": 3} and u.units["wave_unit"] == {"Angstrom": 2, "dex(Angstrom)": 1}
    np.testing.assert_allclose(np.median(u.flux, axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(u.flux[0], u.flux[2], atol=1e-6)
    np.testing.assert_allclose(u.flux[0], u.flux[1], atol=0.03)  # log-WCS image, different sampling
    expected = sp.normalise_continuum(sp.simulate(sp.load_templates(), *([np.array([25])] * 2), np.zeros(1),
                                                  np.zeros(1), np.full(1, 5000.0), np.zeros(1), np.zeros(1), grid, None,
                                                  None), grid)
    assert sp.load_templates().name[25] == "G2V"
    assert np.median(np.abs(u.flux[0] - expected[0])) < 0.02


def test_user_spectrum_errors(tmp_path):
    grid = sp.model_grid()
    wave, flux = _user_spectrum()
    bad = wave.copy()
    bad[100] = bad[99]
    _write_csv(tmp_path / "order.csv", bad, flux)
    with pytest.raises(DataError, match=r"order\.csv: column 'wavelength': wavelengths must increase, but row 99 has "
                                        r"3798 and row 100 has 3798$"):
        _user_data(tmp_path / "order.csv", grid)
    nanw = wave.copy()
    nanw[[5, 9]] = np.nan
    _write_csv(tmp_path / "nanw.csv", nanw, flux)
    with pytest.raises(DataError, match=r"nanw\.csv: column 'wavelength', line 7: expected a finite number.*"
                                        r"\[2 bad rows in total\]"):
        _user_data(tmp_path / "nanw.csv", grid)
    # NaN fluxes are uncovered pixels (mask 0, flux 1 = the continuum); too many: below data.min_coverage.
    nan = flux.copy()
    nan[:400] = np.nan  # 3600-4398 A
    _write_csv(tmp_path / "nan.csv", wave, nan)
    u = _user_data(tmp_path / "nan.csv", grid)
    want = _pixels_covered(grid, wave[400], wave[-1])
    assert int(want.sum()) == 850 and np.array_equal(u.mask[0], want.astype(np.float32))
    assert u.mask[0, grid > 4405].all() and not u.mask[0, grid < 4395].any()
    assert np.all(u.flux[0, u.mask[0] == 0] == 1.0) and np.median(u.flux[0, u.mask[0] == 1]) == pytest.approx(1.0)
    with pytest.raises(DataError, match=r"nan\.csv: covers 83\.0% of the model grid 3800-9000 A \(850 of 1024 pixels; "
                                        r"data 4400-9298 A\), below data\.min_coverage = 0\.9$"):
        _user_data(tmp_path / "nan.csv", grid, min_coverage=0.9)
    few = flux.copy()
    few[1000:1010] = np.nan  # 5600-5618 A: a gap of 22 A between the good pixels at 5598 and 5620 A
    _write_csv(tmp_path / "few.csv", wave, few)
    u = _user_data(tmp_path / "few.csv", grid)
    want = _pixels_covered(grid, wave[0], wave[-1], gap=(wave[999], wave[1010]))
    assert int((~want).sum()) == 5 and np.array_equal(u.mask[0], want.astype(np.float32))
    assert np.isfinite(u.flux).all() and np.all(u.flux[0, ~want] == 1.0)
    # A short spectrum is resampled with a mask, or refused below data.min_coverage.
    short = wave < 8000
    _write_csv(tmp_path / "short.csv", wave[short], flux[short])
    u = _user_data(tmp_path / "short.csv", grid)
    want = _pixels_covered(grid, wave[0], wave[short][-1])
    assert int(want.sum()) == 883 and np.array_equal(u.mask[0], want.astype(np.float32))
    with pytest.raises(DataError, match=r"short\.csv: covers 86\.2% of the model grid 3800-9000 A \(883 of 1024 "
                                        r"pixels; data 3600-7998 A\), below data\.min_coverage = 0\.9$"):
        _user_data(tmp_path / "short.csv", grid, min_coverage=0.9)
    _write_csv(tmp_path / "cols.csv", wave, flux, header=("x", "y"))
    with pytest.raises(DataError, match=r"cols\.csv: no wavelength column; expected one of .* found \['x', 'y'\]"):
        _user_data(tmp_path / "cols.csv", grid)
    (tmp_path / "spec.gif").write_text("1 2\n")
    with pytest.raises(DataError, match=r"spec\.gif: unsupported spectrum file type; expected one of \['\.fits'"):
        _user_data(tmp_path / "spec.gif", grid)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match=r"empty: no spectrum files \(\.fits, .*\) in this directory"):
        _user_data(empty, grid)
    fits.PrimaryHDU(np.ones(50, np.float32)).writeto(tmp_path / "nowcs.fits")
    with pytest.raises(DataError, match=r"nowcs\.fits: 1-D image needs WCS keywords CRVAL1 and CDELT1 \(or CD1_1\)"):
        _user_data(tmp_path / "nowcs.fits", grid)


# ----------------------------------------------------------------------------- CLI


def test_cli_train_evaluate_predict(tmp_path):
    run_dir = tmp_path / "run"
    run_cli("train", "spectra", "--run-dir", str(run_dir), *set_args(TINY), check=True)
    report = json.loads((run_dir / "eval" / "test.json").read_text())
    for key in ("accuracy", "confusion_matrix", "subtype_mae", "per_snr", "per_template", "targets"):
        assert key in report, key
    assert sorted(report["per_snr"], key=float) == ["5", "10", "20", "50", "100"]
    assert report["n"] == 10 * 5 * 2 and np.asarray(report["confusion_matrix"]).sum() == report["n"]
    assert set(report["per_template"]) == {"O9V", "B3V", "A3V", "F5V", "F5V-ZPOOR", "G5V", "G5V-ZPOOR",
                                           "G5V-ZRICH", "K3V", "M3V"}
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    val = [m for m in metrics if "val_loss" in m]
    assert val and all(np.isfinite(m["val_loss"]) and "val_subtype_mae" in m and "val_accuracy" in m for m in val)
    # The stress sets: the held-out templates through each survey effect, next to the clean split.
    stress = report["stress"]
    assert list(stress) == ["clean", "fluxcal", "lsf", "wavecal", "telluric", "sky", "mask", "reddening", "all"]
    assert stress["clean"]["n"] == 10 * 2 * 2 and all(v["n"] == 10 * 2 * 20 for k, v in stress.items() if k != "clean")
    assert all(0.0 <= v["accuracy"] <= 1.0 and np.isfinite(v["subtype_mae"]) for v in stress.values())
    html = (run_dir / "report" / "index.html").read_text()
    assert "<h4>stress</h4>" in html and "stress.all.accuracy" in html

    inputs = tmp_path / "inputs"
    inputs.mkdir()
    wave, flux = _user_spectrum("K0V")
    _write_csv(inputs / "star_a.csv", wave, flux)
    _write_fits_image(inputs / "star_b.fits", "M3V")
    # A spectrum that starts at 4400 A: the model reads the coverage mask, so it is not refused.
    _write_csv(inputs / "star_c.csv", wave[wave > 4400], flux[wave > 4400])
    out = tmp_path / "pred.csv"
    run_cli("predict", str(run_dir), "--input", str(inputs), "--output", str(out), check=True)
    rows = list(csv.DictReader(out.open()))
    assert [r["file"] for r in rows] == ["star_a.csv", "star_b.fits", "star_c.csv"]
    for r in rows:
        probs = [float(r[f"p_{c}"]) for c in "OBAFGKM"]
        assert sum(probs) == pytest.approx(1.0, abs=1e-4)
        assert r["predicted_class"] == "OBAFGKM"[int(np.argmax(probs))]
        assert re.fullmatch(r"[OBAFGKM]\d\.\d", r["spectral_type"]) and r["spectral_type"][0] == r["predicted_class"]
        assert np.isfinite(float(r["type_scale"]))


def test_mc_dropout_on_the_batchnorm_models():
    """Both spectra models: mc_dropout=True draws masks from the key on BatchNorm's running
    averages (a row ignores its batch, the statistics stay put); without it, no dropout."""
    from astroflax.models.spectra import SpectrumMLP

    x = 1.0 + 0.1 * jax.random.normal(jax.random.key(0), (8, 64))
    for model in (SpectrumCNN(64, 7, channels=(4, 4), hidden=16, dropout=0.5, rngs=nnx.Rngs(0)),
                  SpectrumMLP(64, 7, (16, 16), 0.5, rngs=nnx.Rngs(0))):
        det = np.asarray(model(x)[0])
        a = np.asarray(model(x, rng=jax.random.key(1), mc_dropout=True)[0])
        b = np.asarray(model(x, rng=jax.random.key(2), mc_dropout=True)[0])
        assert not np.allclose(a, det, atol=1e-4) and not np.allclose(a, b, atol=1e-4)
        np.testing.assert_array_equal(np.asarray(model(x, rng=jax.random.key(1), mc_dropout=True)[0]), a)
        np.testing.assert_array_equal(np.asarray(model(x, rng=jax.random.key(1))[0]), det)  # a key alone: no dropout
        y = x.at[1:].set(5.0)
        np.testing.assert_allclose(np.asarray(model(y, rng=jax.random.key(1), mc_dropout=True)[0])[0], a[0], atol=1e-5)
        np.testing.assert_array_equal(np.asarray(model.norms[0].mean[...]), 0.0)
        with pytest.raises(ValueError, match="rng"):
            model(x, mc_dropout=True)
