"""Regression-with-uncertainty metrics against hand-computed cases, scipy and numerical integrals."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate, stats

from astroflax.evaluate import regression as reg
from astroflax.tasks import regress


def test_sigma_nmad_bias_outliers_by_hand():
    z_spec = np.zeros(5)
    z_phot = np.array([0.0, 0.01, -0.02, 0.03, 0.5])  # dz = z_phot since z_spec = 0
    # median(dz) = 0.01; |dz - 0.01| = [0.01, 0, 0.03, 0.02, 0.49] -> median 0.02
    assert reg.sigma_nmad(z_phot, z_spec) == pytest.approx(1.4826 * 0.02)
    assert reg.bias(z_phot, z_spec) == pytest.approx(0.52 / 5)
    assert reg.outlier_fraction(z_phot, z_spec) == pytest.approx(0.2)
    # the (1 + z_spec) normalisation: dz = 0.2 / 2 = 0.1 is not an outlier, 0.4 / 2 = 0.2 is
    assert reg.outlier_fraction([1.2, 1.4], [1.0, 1.0]) == pytest.approx(0.5)
    np.testing.assert_allclose(reg.normalized_residuals([1.2, 1.4], [1.0, 1.0]), [0.1, 0.2])


def test_coverage_from_pit_and_gaussian_intervals():
    pit = np.array([0.5, 0.2, 0.1, 0.95, 0.99, 0.84, 0.16])
    # central 68% interval = PIT in [0.16, 0.84]: 0.5, 0.2, 0.84, 0.16 inside -> 4/7
    assert reg.coverage(pit, [0.68])[0] == pytest.approx(4 / 7)
    # central 95%: [0.025, 0.975] -> all but 0.99
    assert reg.coverage(pit, [0.95])[0] == pytest.approx(6 / 7)
    # Gaussian: inside the 68.27% interval iff |y - mu| <= sigma
    y = np.array([0.0, 0.5, 1.5, -0.9, -2.0])
    pit = reg.pit_values(y, None, np.zeros(5), np.ones(5))
    assert reg.coverage(pit, [0.682689492])[0] == pytest.approx(3 / 5)


def test_crps_gaussian_matches_numerical_integral_and_mixture_form():
    rng = np.random.default_rng(0)
    for y, mu, sigma in zip(rng.normal(size=4), rng.normal(size=4), rng.uniform(0.2, 2.0, 4)):
        cdf = stats.norm(mu, sigma).cdf
        lo, hi = mu - 12 * sigma, mu + 12 * sigma
        left = integrate.quad(lambda x: cdf(x) ** 2, min(lo, y), y)[0]
        right = integrate.quad(lambda x: (1 - cdf(x)) ** 2, y, max(hi, y))[0]
        got = reg.crps_gaussian(y, mu, sigma)
        assert got == pytest.approx(left + right, rel=1e-6)
        assert reg.crps_mixture([y], None, [mu], [sigma])[0] == pytest.approx(got, rel=1e-10)
    # a point forecast limit: CRPS -> |y - mu| as sigma -> 0
    assert reg.crps_gaussian(1.0, 0.0, 1e-8) == pytest.approx(1.0, rel=1e-6)


def test_crps_mixture_matches_numerical_integral():
    w, m, s = np.array([[0.3, 0.7]]), np.array([[-1.0, 2.0]]), np.array([[0.5, 1.2]])
    y = 0.4
    cdf = lambda x: reg.mixture_cdf(np.array([x]), w, m, s)[0]  # noqa: E731
    expect = integrate.quad(lambda x: (cdf(x) - (x >= y)) ** 2, -15, 15, points=[y], limit=200)[0]
    assert reg.crps_mixture([y], w, m, s)[0] == pytest.approx(expect, rel=1e-6)


def test_mixture_moments_quantiles_and_nll():
    w, m, s = np.array([[0.25, 0.75]]), np.array([[0.0, 4.0]]), np.array([[1.0, 2.0]])
    mean, std = reg.mixture_mean_std(w, m, s)
    assert mean[0] == pytest.approx(3.0)
    assert std[0] == pytest.approx(np.sqrt(0.25 * 1 + 0.75 * (4 + 16) - 9))
    for p in (0.025, 0.16, 0.5, 0.84, 0.975):
        q = reg.mixture_quantile(p, w, m, s)[0]
        assert reg.mixture_cdf([q], w, m, s)[0] == pytest.approx(p, abs=1e-8)
    y = np.array([1.3])
    pdf = 0.25 * stats.norm(0, 1).pdf(1.3) + 0.75 * stats.norm(4, 2).pdf(1.3)
    assert reg.mixture_nll(y, w, m, s)[0] == pytest.approx(-np.log(pdf))
    assert reg.mixture_pdf(y, w, m, s)[0] == pytest.approx(pdf)
    # single Gaussian quantiles agree with scipy
    assert reg.mixture_quantile(0.9, None, [1.0], [2.0])[0] == pytest.approx(stats.norm(1, 2).ppf(0.9), abs=1e-8)


def test_pit_of_exact_samples_is_uniform_and_coverage_nominal():
    rng = np.random.default_rng(1)
    n = 20000
    w = np.tile([0.4, 0.6], (n, 1))
    m = np.stack([rng.normal(size=n), rng.normal(size=n) + 3], axis=1)
    s = rng.uniform(0.3, 1.5, size=(n, 2))
    comp = (rng.uniform(size=n) < 0.6).astype(int)
    y = m[np.arange(n), comp] + s[np.arange(n), comp] * rng.normal(size=n)
    pit = reg.pit_values(y, w, m, s)
    ks, p = reg.pit_ks(pit)
    assert ks == pytest.approx(stats.kstest(pit, "uniform").statistic)
    assert ks < 0.015 and p > 1e-3
    np.testing.assert_allclose(reg.coverage(pit, [0.68, 0.95]), [0.68, 0.95], atol=0.015)
    density, edges = reg.pit_histogram(pit, 10)
    np.testing.assert_allclose(density, 1.0, atol=0.08)
    # quantile-based interval membership equals PIT-based coverage
    lo = reg.mixture_quantile(0.16, w[:500], m[:500], s[:500])
    hi = reg.mixture_quantile(0.84, w[:500], m[:500], s[:500])
    inside = np.mean((y[:500] >= lo) & (y[:500] <= hi))
    assert inside == pytest.approx(reg.coverage(pit[:500], [0.68])[0])
    # an over-confident forecast (sigma halved) is detected
    pit_bad = reg.pit_values(y, w, m, s / 2)
    assert reg.coverage(pit_bad, [0.68])[0] < 0.62 and reg.pit_ks(pit_bad)[0] > 0.05


def test_regression_metrics_and_plots(tmp_path):
    rng = np.random.default_rng(2)
    z = rng.uniform(0.02, 0.4, 3000)
    sig = 0.02 * (1 + z)
    mu = z + sig * rng.normal(size=z.size)
    rep = reg.regression_metrics(z, None, mu, sig, redshift=True)
    assert rep["n"] == 3000
    assert rep["sigma_nmad"] == pytest.approx(0.02, rel=0.06)
    assert rep["outlier_fraction"] == 0.0
    assert 0.65 < rep["coverage_68"] < 0.71 and 0.93 < rep["coverage_95"] < 0.97
    assert rep["crps"] == pytest.approx(np.mean(reg.crps_gaussian(z, mu, sig)))
    assert rep["nll"] == pytest.approx(np.mean(-stats.norm(mu, sig).logpdf(z)))
    pit = reg.pit_values(z, None, mu, sig)
    for fn, name in ((reg.plot_pit_histogram, "pit.png"), (reg.plot_coverage, "cov.png")):
        out = fn(pit, tmp_path / name)
        assert out.stat().st_size > 1000 and out.read_bytes()[:4] == b"\x89PNG"
    out = reg.plot_pred_vs_true(z, mu, tmp_path / "pvt.png")
    assert out.stat().st_size > 1000


def test_jax_losses_match_numpy():
    rng = np.random.default_rng(3)
    y = rng.normal(size=6)
    logits = rng.normal(size=(6, 3))
    means = rng.normal(size=(6, 3))
    log_sig = rng.normal(scale=0.3, size=(6, 3))
    got = regress.mixture_nll(jnp.asarray(logits), jnp.asarray(means), jnp.asarray(log_sig), jnp.asarray(y))
    w = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    np.testing.assert_allclose(np.asarray(got), reg.mixture_nll(y, w, means, np.exp(log_sig)), rtol=1e-5)
    g = regress.gaussian_nll(jnp.asarray(means[:, 0]), jnp.asarray(log_sig[:, 0]), jnp.asarray(y))
    np.testing.assert_allclose(np.asarray(g), -stats.norm(means[:, 0], np.exp(log_sig[:, 0])).logpdf(y), rtol=1e-5)
    h = regress.huber(jnp.asarray([0.5, -3.0]), 1.0)
    np.testing.assert_allclose(np.asarray(h), [0.125, 2.5])
    # eval padding rows (_weight = 0) do not count
    out = (jnp.zeros((2, 1)), jnp.zeros((2, 1)), jnp.zeros((2, 1)))
    loss, _ = regress.distribution_loss(out, jnp.asarray([0.0, 100.0]), {"_weight": jnp.asarray([1.0, 0.0])})
    assert float(loss) == pytest.approx(0.5 * np.log(2 * np.pi), rel=1e-6)
    packed = np.asarray(regress.pack((jnp.asarray(logits), jnp.asarray(means), jnp.asarray(log_sig))))
    w2, m2, s2 = regress.unpack(packed)
    np.testing.assert_allclose(w2, w, rtol=1e-5)
    np.testing.assert_allclose(s2, np.exp(log_sig), rtol=1e-5)
