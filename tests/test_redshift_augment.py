"""Redshift augmentation of light curves (astroflax.data.redshift_augment)."""

from __future__ import annotations

import numpy as np
import pytest

from astroflax.config import build_config
from astroflax.data import lightcurves as lc
from astroflax.data import redshift_augment as ra
from astroflax.tasks import get_task

LAM = ra.LSST_WAVELENGTH


def _object(t0=60000.0, width=10.0, n=400):
    """A Gaussian flare in all six bands, amplitude linear in log wavelength, densely sampled, noise-free."""
    mjd = np.repeat(np.linspace(t0 - 80, t0 + 80, n), 6)
    band = np.tile(np.arange(6), n)
    amp = lambda lam: 100.0 + 50.0 * np.log(lam / 5000.0)  # noqa: E731
    flux = amp(LAM[band]) * np.exp(-0.5 * ((mjd - t0) / width) ** 2)
    return mjd, flux, np.full(len(mjd), 1e-6), band, amp


def test_reobserve_dilates_time_shifts_wavelength_and_dims_by_distance():
    mjd, flux, err, band, amp = _object()
    z, z_new = 0.1, 0.4
    s = (1 + z_new) / (1 + z)
    t, f, e, b, d = ra.reobserve(mjd, flux, err, band, z, z_new, np.random.default_rng(0))
    scale = (ra.luminosity_distance(np.array([z])) / ra.luminosity_distance(np.array([z_new]))) ** 2
    src_lam = LAM[b] / s
    inside = src_lam >= LAM[0]
    expected = amp(src_lam) * np.exp(-0.5 * ((t - 60000.0) / (10.0 * s)) ** 2) * scale
    np.testing.assert_allclose(f, expected, rtol=0.02, atol=1e-3 * expected.max())
    # u (and g at this s) would need light bluer than u: dropped, not guessed.
    assert inside.all() and 0 not in set(b.tolist()) and {3, 4, 5} <= set(b.tolist())
    assert np.all(e >= np.float32(err[0])) and d.sum() == np.sum(np.abs(f) / e > 5)
    # Times whose source time falls outside the observed range are dropped too.
    t2, *_ = ra.reobserve(mjd, flux, err, band, 0.1, 0.05, np.random.default_rng(0))  # s < 1: compressed
    assert t2.min() > mjd.min() and t2.max() < mjd.max()


def test_reobserve_keeps_the_epochs_noise():
    """Each observation ends with the original epoch's flux error: at the same redshift the curve
    comes back as it was (its own noise is all there is); far away, where the source's noise is
    scaled down, new noise of the epoch's size is added."""
    mjd, flux, _, band, _ = _object()
    err = np.full(len(mjd), 2.0)
    noisy = flux + np.random.default_rng(0).standard_normal(len(flux)) * 2.0
    t, f, e, _, _ = ra.reobserve(mjd, noisy, err, band, 0.2, 0.2, np.random.default_rng(1))
    np.testing.assert_allclose(f, noisy, atol=1e-3)
    np.testing.assert_allclose(e, 2.0)
    z_new = 1.2
    t, f, e, b, _ = ra.reobserve(mjd, flux, err, band, 0.2, z_new, np.random.default_rng(1))
    clean = ra.reobserve(mjd, flux, np.full(len(mjd), 1e-9), band, 0.2, z_new, np.random.default_rng(1))[1]
    assert (f - clean).std() == pytest.approx(2.0, rel=0.1) and np.allclose(e, 2.0)


def test_augment_copies_extragalactic_training_objects_only():
    lcs = lc.load_bundled_plasticc()
    parts = lc.split_indices(lcs)
    idx = parts["train"][:300]
    out, added = ra.augment(lcs, idx, 3, np.random.default_rng(7))
    assert len(out) == len(lcs) + len(added) and len(added) > 100
    again, added2 = ra.augment(lcs, idx, 3, np.random.default_rng(7))
    np.testing.assert_array_equal(out.flux, again.flux)
    np.testing.assert_array_equal(added, added2)
    src_z = lcs.extra["hostgal_specz"]
    galactic = idx[src_z[idx] == 0]
    assert galactic.size and not np.any(np.isin(out.labels[added], np.unique(lcs.labels[galactic])) &
                                        ~np.isin(out.labels[added], np.unique(lcs.labels[idx[src_z[idx] > 0]])))
    assert np.all(np.diff(out.object_id) > 0) and np.all(out.split[added] == 0)
    z_new = out.extra["hostgal_specz"][added]
    assert z_new.min() > 0 and np.median(z_new) > np.median(src_z[idx][src_z[idx] > 0])
    pz = out.meta[added, out.meta_names.index("hostgal_photoz")]
    assert np.median(np.abs(pz - z_new) / (1 + z_new)) < 0.1
    # The original objects are untouched.
    n0 = int(lcs.offsets[-1])
    np.testing.assert_array_equal(out.flux[:n0], lcs.flux)


def test_transients_task_augments_the_training_split_only():
    plain = get_task("transients").load_data(build_config("transients", "quick", None, []))
    aug = get_task("transients").load_data(build_config("transients", "quick", None, ["data.redshift_augment=1"]))
    assert len(aug.splits["train"]["label"]) > len(plain.splits["train"]["label"])
    for split in ("val", "test"):
        np.testing.assert_array_equal(aug.splits[split]["flux"], plain.splits[split]["flux"])
    assert aug.version != plain.version and aug.info["redshift_augment"]["objects_added"] > 0
