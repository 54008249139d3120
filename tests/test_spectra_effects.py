"""Survey effects on simulated spectra (astroflax.data.spectra_effects) and the stress sets."""

from __future__ import annotations

import dataclasses

import astropy.units as u
import numpy as np
import pytest
from dust_extinction.parameter_averages import F99

from astroflax.data import spectra as sp
from astroflax.data import spectra_effects as fx
from astroflax.data import spectra_synth as synth
from astroflax.tasks import spectra as task_mod

FLAT = (np.exp(np.linspace(np.log(3500.0), np.log(9500.0), 8192)), np.ones((1, 8192), np.float32))


def _line_template(centre: float, fwhm: float = 2.0, depth: float = 0.8):
    wave = FLAT[0]
    flux = 1.0 - depth * np.exp(-0.5 * ((wave - centre) / (fwhm / 2.3548)) ** 2)
    return wave, flux[None, :].astype(np.float32)


def _effects(p: int, n: int = 1, **fields) -> fx.Effects:
    e = fx.Effects.none(n, p)
    for k, v in fields.items():
        setattr(e, k, np.asarray(v, np.float64) if k != "mask" else np.asarray(v, bool))
    return e


def _sim(tpl, grid, effects=None, snr=0.0, rng=None, normalise=None, res=5000.0, ebv=0.0):
    n = 1 if effects is None else len(effects)
    z, i = np.zeros(n), np.zeros(n, int)
    return sp.simulate(tpl, i, i, z, z, z + res, z + ebv, z + snr, grid, rng, normalise, effects=effects)


def _centroid(flux: np.ndarray, grid: np.ndarray, near: float) -> float:
    """Line centre in Angstrom, from the depth-weighted mean over +-8 pixels of the deepest pixel near ``near``."""
    win = np.abs(grid - near) < 30
    j = np.flatnonzero(win)[np.argmin(flux[win])]
    s = slice(j - 8, j + 9)
    depth = 1.0 - flux[s]
    return float(np.sum(grid[s] * depth) / np.sum(depth))


def _fwhm_aa(flux: np.ndarray, grid: np.ndarray, near: float) -> float:
    """Equivalent width / depth * 0.94: the FWHM of a Gaussian line (Angstrom)."""
    win = np.abs(grid - near) < 40
    depth = 1.0 - flux[win]
    ew = np.sum(depth * np.gradient(grid[win]))
    return float(ew / depth.max() * 0.9394)


def test_extinction_is_f99_from_dust_extinction_with_r_v_per_spectrum():
    grid = sp.model_grid(3800.0, 9000.0, 512)
    r_v = np.array([2.5, 3.1, 4.37, 5.0])
    curves = fx.extinction_curves(grid, r_v)
    for row, rv in zip(curves, r_v):  # interpolation over the R_V table is within 0.2% of F99 itself
        np.testing.assert_allclose(row, F99(Rv=rv)(grid * u.AA), rtol=2e-3)
    # A(B) - A(V) = E(B-V): the factor at 4400 / 5500 A for E(B-V) = 0.5, R_V = 3.1.
    two = np.array([4400.0, 5500.0])
    f = sp.extinction_factor(two, np.array([0.5]), 3.1)[0]
    assert -2.5 * np.log10(f[0] / f[1]) == pytest.approx(0.5, abs=0.02)
    # A(V) = R_V E(B-V): the drawn R_V sets the total extinction at a given colour excess.
    v = sp.extinction_factor(np.array([5500.0]), np.array([0.5, 0.5]), np.array([5.0, 2.5]))[:, 0]
    np.testing.assert_allclose(-2.5 * np.log10(v), [2.5, 1.25], rtol=0.03)


def test_flux_calibration_error_is_smooth_and_has_the_drawn_rms():
    t = sp.load_templates()
    grid = sp.model_grid()
    g = list(t.name).index("G2V")
    rng = np.random.default_rng(3)
    e = fx.draw(fx.Strengths(fluxcal=0.15, fixed=True), 8, len(grid), rng)
    clean = sp.simulate(t, np.full(8, g), np.full(8, g), np.zeros(8), np.zeros(8), np.full(8, 2000.0), np.zeros(8),
                        np.zeros(8), grid, None, None)
    bent = sp.simulate(t, np.full(8, g), np.full(8, g), np.zeros(8), np.zeros(8), np.full(8, 2000.0), np.zeros(8),
                       np.zeros(8), grid, None, None, effects=e)
    ln_ratio = np.log(bent / clean)
    np.testing.assert_allclose(np.sqrt(np.mean((ln_ratio - 0.0) ** 2, axis=1)), 0.15, rtol=0.03)
    # Smooth: a cubic in position across the window fits it exactly (no line-scale structure).
    t_win = fx.legendre_t(len(grid))
    for row in ln_ratio:
        fit = np.polynomial.legendre.legval(t_win, np.polynomial.legendre.legfit(t_win, row, 3))
        assert np.max(np.abs(row - fit)) < 1e-4


def test_wavelength_calibration_error_moves_lines_by_zero_point_and_stretch():
    grid = sp.model_grid(5500.0, 6500.0, 2048)
    for near in (5600.0, 6400.0):
        tpl = _line_template(near)
        c0 = _centroid(_sim(tpl, grid)[0], grid, near)
        e = _effects(len(grid), wavecal=[[1.5, 0.5]])
        t_at = np.interp(near, grid, fx.legendre_t(len(grid)))
        moved = _centroid(_sim(tpl, grid, e)[0], grid, near)
        # the pixel labelled lambda saw lambda - delta: the line appears delta redder
        assert moved - c0 == pytest.approx(1.5 + 0.5 * t_at, abs=0.05), near


def test_lsf_tilt_changes_resolution_from_blue_to_red():
    grid = sp.model_grid(3800.0, 9000.0, 4096)
    blue, red = 4000.0, 8800.0
    tpl = (FLAT[0], (_line_template(blue, 1.0, 0.5)[1] + _line_template(red, 1.0, 0.5)[1] - 1.0))
    flat = _sim(tpl, grid, res=1000.0)[0]
    tilt = np.log(2.0)
    e = _effects(len(grid), lsf_tilt=[tilt])
    tilted = _sim(tpl, grid, e, res=1000.0)[0]
    r_blue = blue / _fwhm_aa(tilted, grid, blue)
    r_red = red / _fwhm_aa(tilted, grid, red)
    assert blue / _fwhm_aa(flat, grid, blue) == pytest.approx(1000.0, rel=0.08)
    # R = 1000 e^(-tilt/2) at the blue end, e^(+tilt/2) at the red end (linear blend between).
    assert r_blue == pytest.approx(1000.0 * np.exp(-tilt / 2 * (1 - 2 * 0.07)), rel=0.1)
    assert r_red / r_blue == pytest.approx(2.0, rel=0.15)


def test_telluric_bands_and_sky_residuals_sit_at_their_wavelengths():
    grid = sp.model_grid()
    p = len(grid)
    flux = _sim(FLAT, grid, _effects(p, telluric=[1.0]))[0]
    a_band = (grid > 7600) & (grid < 7625)
    assert 1.0 - flux[a_band].mean() == pytest.approx(0.65, abs=0.05)
    assert np.allclose(flux[(grid > 5000) & (grid < 6200)], 1.0, atol=1e-5)  # no band there
    # Sky: +3 sigma of the noise at [O I] 5577 (relative strength 1), nothing away from the lines.
    amp = np.zeros((1, len(fx.SKY_LINES)))
    amp[0, 0] = 3.0
    sky = _sim(FLAT, grid, _effects(p, sky=amp), snr=50.0, rng=None)[0]
    k = int(np.argmin(np.abs(grid - 5577.34)))
    sigma = 1.0 / 100.0  # no noise drawn (rng None): the residual is scaled to sigma = median / 100
    assert sky[k] - 1.0 == pytest.approx(3.0 * sigma, rel=0.1)
    assert np.allclose(sky[(grid > 6000) & (grid < 6250)], 1.0, atol=1e-6)


def test_masked_ranges_read_as_the_continuum_and_leave_most_of_the_window():
    rng = np.random.default_rng(0)
    e = fx.draw(fx.Strengths(mask=1.0, fixed=True), 200, 1024, rng)
    cov = e.mask.mean(axis=1)
    assert cov.min() >= 0.6 and cov.max() < 1.0 and not e.mask[:, 0].all()
    t = sp.load_templates()
    grid = sp.model_grid()
    n = 4
    i = np.full(n, list(t.name).index("K3V"))
    e4 = e.take(slice(0, n))
    flux = sp.simulate(t, i, i, np.zeros(n), np.zeros(n), np.full(n, 2000.0), np.zeros(n), np.full(n, 30.0), grid,
                       np.random.default_rng(1), "median", effects=e4)
    assert np.all(flux[~e4.mask] == 1.0)
    np.testing.assert_allclose([np.median(f[m]) for f, m in zip(flux, e4.mask)], 1.0, atol=0.02)
    # The user-data path (spectra_io.prepare) and the simulator normalise a masked spectrum alike.
    raw = np.where(e4.mask[0], flux[0] * 7.0, np.nan)
    np.testing.assert_allclose(sp.normalise_continuum(raw[None], grid, "median", mask=e4.mask[:1])[0], flux[0],
                               rtol=1e-5)


def test_training_draws_each_effect_with_its_probability():
    rng = np.random.default_rng(5)
    s = fx.Strengths(fluxcal=0.1, lsf=0.5, wavecal=1.0, telluric=1.0, sky=5.0, mask=0.3, prob=0.5)
    e = fx.draw(s, 4000, 256, rng, r_v=(2.5, 5.0))
    assert np.mean(np.any(e.fluxcal != 0, axis=1)) == pytest.approx(0.5, abs=0.03)
    assert np.mean(e.telluric > 0) == pytest.approx(0.5, abs=0.03) and e.telluric.max() <= 1.0
    assert np.mean(~e.mask.all(axis=1)) == pytest.approx(0.5 * 0.92, abs=0.05)  # prob x P(any cut or gap)
    assert np.abs(e.lsf_tilt).max() <= 0.5 and e.r_v.min() >= 2.5 and e.r_v.max() <= 5.0
    none = fx.draw(fx.Strengths(), 10, 256, rng)
    assert not none.fluxcal.any() and not none.sky.any() and none.mask.all() and not none.wavecal.any()
    # No effect drawn gives exactly the spectra of effects=None.
    t = sp.load_templates()
    grid = sp.model_grid()
    n = 6
    i = rng.integers(0, len(t), n)
    args = (i, i, np.zeros(n), rng.uniform(-300, 300, n), np.full(n, 2000.0), rng.uniform(0, 0.5, n), np.full(n, 20.0))
    plain = sp.simulate(t, *args, grid, np.random.default_rng(1), "median")
    same = sp.simulate(t, *args, grid, np.random.default_rng(1), "median", effects=fx.Effects.none(n, len(grid)))
    np.testing.assert_array_equal(plain, same)


def test_stress_sets_are_held_out_deterministic_and_one_effect_each():
    t = sp.load_templates()
    d = task_mod.SpectraData(num_train=64, val_per_type=2, test_per_snr=2, num_pixels=256, stress_per_snr=3)
    sets = synth.build_stress(d, t)
    assert list(sets) == list(fx.STRESS_SPLITS)
    test = set(synth.template_split(t, d.val_types, d.test_types)["test"].tolist())
    again = synth.build_stress(d, t)
    for name, a in sets.items():
        assert set(a["template"].tolist()) == test and len(a["label"]) == len(test) * 3 * 2
        assert set(np.unique(a["snr"]).tolist()) == {20.0, 50.0}
        assert np.isfinite(a["flux"]).all() and a["mask"].shape == a["flux"].shape
        np.testing.assert_array_equal(a["flux"], again[name]["flux"])
        assert (a["mask"].min() < 1.0) == (name in ("mask", "all")), name
    assert sets["reddening"]["ebv"].min() >= 0.3 and sets["fluxcal"]["ebv"].max() <= d.ebv_max
    # Without a coverage input (effects.mask = 0) the stress sets have no masked ranges.
    d0 = d.model_copy(update={"effects": d.effects.model_copy(update={"mask": 0.0})})
    sets0 = synth.build_stress(d0, t)
    assert "mask" not in sets0 and "mask" not in sets0["all"]


def test_training_splits_carry_effects_and_the_mask_channel():
    t = sp.load_templates()
    d = task_mod.SpectraData(num_train=400, val_per_type=10, test_per_snr=2, num_pixels=256)
    splits, _ = synth.build_splits(d, t)
    assert splits["test"]["mask"].min() == 1.0  # the clean test split
    assert splits["train"]["mask"].min() == 0.0 and splits["val"]["mask"].min() == 0.0
    off = d.model_copy(update={"effects": task_mod.SpectraEffects(prob=0.0, mask=0.0)})
    plain, _ = synth.build_splits(off, t)
    assert "mask" not in plain["train"]
    # Same seed and settings, same spectra; the effects change them.
    again, _ = synth.build_splits(d, t)
    np.testing.assert_array_equal(splits["train"]["flux"], again["train"]["flux"])
    assert not np.allclose(splits["train"]["flux"], plain["train"]["flux"])
    with pytest.raises(ValueError, match="r_v_min"):
        task_mod.SpectraEffects(r_v_min=4.0, r_v_max=3.0)
    assert dataclasses.asdict(fx.Strengths.of(d.effects))["fluxcal"] == d.effects.fluxcal
