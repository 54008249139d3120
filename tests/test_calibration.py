"""Temperature scaling: recovers a known temperature, never hurts the validation NLL, fixes
over-confidence (ECE), and the saved value is matched to its checkpoint."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import special

from astroflax.evaluate import calibration as cal
from astroflax.evaluate import classification as clf


def sample(n: int, k: int, scale: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """True logits z and labels drawn from softmax(z): softmax(z) is perfectly calibrated."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, k)) * scale
    p = special.softmax(z, axis=1)
    labels = (p.cumsum(axis=1) > rng.random((n, 1))).argmax(axis=1)
    return z, labels


@pytest.mark.parametrize("true_t", [3.0, 0.5])
def test_recovers_known_temperature(true_t):
    z, y = sample(20000, 6, 2.0, seed=1)
    t = cal.fit_temperature(z * true_t, y)
    assert t == pytest.approx(true_t, rel=0.05)


def test_fit_on_probabilities_equals_fit_on_logits():
    z, y = sample(5000, 5, 2.0, seed=2)
    probs = special.softmax(3 * z, axis=1)
    t_logits = cal.fit_temperature(3 * z, y)
    t_probs = cal.fit_temperature(cal.probs_to_logits(probs), y)
    assert t_probs == pytest.approx(t_logits, rel=1e-4)


@pytest.mark.parametrize("case", ["calibrated", "overconfident", "underconfident", "random_labels", "tiny"])
def test_never_increases_validation_nll(case):
    z, y = sample(3000 if case != "tiny" else 7, 4, 2.0, seed=3)
    logits = {"calibrated": z, "overconfident": 4 * z, "underconfident": z / 3,
              "random_labels": z, "tiny": 5 * z}[case]
    if case == "random_labels":
        y = np.random.default_rng(4).integers(0, 4, size=len(y))
    t = cal.fit_temperature(logits, y)
    assert t > 0
    assert cal.nll(logits, y, t) <= cal.nll(logits, y, 1.0) + 1e-12
    if case == "random_labels":  # nothing to learn: T runs to its upper bound (near-uniform probabilities)
        assert t > 50
        return
    # and it is the minimum: nearby temperatures are no better
    for factor in (0.9, 1.1):
        assert cal.nll(logits, y, t) <= cal.nll(logits, y, t * factor) + 1e-9


def test_scaling_drops_ece_and_log_loss_and_keeps_accuracy():
    z_val, y_val = sample(4000, 8, 1.5, seed=5)
    z_test, y_test = sample(4000, 8, 1.5, seed=6)
    overconfident = lambda z: special.softmax(3 * z, axis=1)  # noqa: E731
    record = cal.fit_calibration(overconfident(z_val), y_val, step=123)
    assert record["temperature"] == pytest.approx(3.0, rel=0.1)
    assert record["checkpoint_step"] == 123
    assert record["val_after"]["log_loss"] < record["val_before"]["log_loss"]
    before = overconfident(z_test)
    after = cal.apply_temperature(before, record["temperature"])
    ece_before = clf.expected_calibration_error(before, y_test)
    ece_after = clf.expected_calibration_error(after, y_test)
    assert ece_before > 0.1
    assert ece_after < 0.03 < ece_before
    assert clf.log_loss(after, y_test) < clf.log_loss(before, y_test)
    np.testing.assert_array_equal(after.argmax(1), before.argmax(1))


def test_apply_temperature_is_softmax_of_scaled_logits():
    z, _ = sample(50, 5, 2.0, seed=7)
    probs = special.softmax(z, axis=1).astype(np.float32)
    out = cal.apply_temperature(probs, 2.0)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, special.softmax(z / 2.0, axis=1), atol=1e-6)
    np.testing.assert_allclose(cal.apply_temperature(probs, 1.0), probs, atol=1e-6)
    # T > 1 flattens: the top probability drops for every row
    assert np.all(out.max(1) < probs.max(1))


def test_probability_output_detection():
    info = {"class_names": ["a", "b", "c"]}
    p = special.softmax(np.random.default_rng(0).normal(size=(10, 3)), axis=1)
    assert cal.is_probability_output(p, info)
    assert not cal.is_probability_output(p * 2, info)  # rows do not sum to 1
    assert not cal.is_probability_output(p[:, :2], info)  # wrong number of classes
    assert not cal.is_probability_output(p, {})  # not a classifier
    assert not cal.is_probability_output(np.log(p), info)  # logits, negative


def test_saved_temperature_applies_only_to_its_checkpoint(tmp_path):
    z, y = sample(2000, 4, 2.0, seed=8)
    record = cal.fit_calibration(special.softmax(2 * z, axis=1), y, step=40)
    cal.save_calibration(tmp_path, record)
    assert json.loads((tmp_path / "calibration.json").read_text())["temperature"] == record["temperature"]
    t, note = cal.temperature_for(tmp_path, 40)
    assert t == pytest.approx(record["temperature"]) and "40" in note
    t, note = cal.temperature_for(tmp_path, 80)
    assert t is None and "fitted for checkpoint 40" in note
    assert cal.temperature_for(tmp_path, 40, weights="ema")[0] is None
    assert cal.temperature_for(tmp_path / "nothing", 40)[0] is None
    (tmp_path / "calibration.json").write_text('{"temperature": -1}')
    assert cal.load_calibration(tmp_path) is None


def test_prior_correction_fixes_what_temperature_cannot():
    """A class-weighted loss shifts probabilities towards rare classes; one temperature can't undo
    that, undoing the weighting first (-log w offsets) then fitting T does."""
    rng = np.random.default_rng(9)
    k = 8
    prior = 0.4 ** np.arange(k)
    prior /= prior.sum()

    def draw(n):
        z = rng.normal(size=(n, k)) + np.log(prior)
        y = (special.softmax(z, 1).cumsum(1) > rng.random((n, 1))).argmax(1)
        return z, y

    z_val, y_val = draw(6000)
    z_test, y_test = draw(6000)
    w = 1.0 / (k * prior)  # "balanced" weights
    model = lambda z: special.softmax(1.5 * z + np.log(w), 1)  # noqa: E731 - overconfident and reweighted
    plain = cal.fit_calibration(model(z_val), y_val, 1)
    prior_t = cal.fit_calibration(model(z_val), y_val, 1, method="prior_temperature", class_weights=w)
    assert prior_t["temperature"] == pytest.approx(1.5, rel=0.1)
    np.testing.assert_allclose(prior_t["logit_offset"], -np.log(w))
    ece = lambda rec: clf.expected_calibration_error(cal.apply_calibration(model(z_test), rec), y_test)  # noqa: E731
    assert ece(prior_t) < 0.02 < 0.03 < ece(plain)
    assert prior_t["val_after"]["log_loss"] < plain["val_after"]["log_loss"]
    # plain temperature scaling through the generic record equals apply_temperature
    np.testing.assert_allclose(cal.apply_calibration(model(z_test), plain),
                               cal.apply_temperature(model(z_test), plain["temperature"]), atol=1e-12)
    with pytest.raises(ValueError, match="class_weights"):
        cal.fit_calibration(model(z_val), y_val, 1, method="prior_temperature")
    with pytest.raises(ValueError, match="choose from"):
        cal.fit_calibration(model(z_val), y_val, 1, method="isotonic")


def test_balanced_offsets_fix_a_class_bias_in_the_flat_weighted_log_loss():
    """A model whose logits for two classes are off by a constant, on imbalanced data: one temperature
    cannot fix it, T plus per-class offsets fitted to the class-balanced NLL can, and that is what
    the flat-weighted log-loss on fresh data rewards. The record applies through the generic path."""
    rng = np.random.default_rng(4)
    k = 6
    prior = 0.5 ** np.arange(k)
    prior /= prior.sum()
    bias = np.array([0.0, 1.2, 0.0, -1.0, 0.0, 0.0])

    def draw(n):
        z = 2.0 * rng.normal(size=(n, k))
        y = rng.choice(k, size=n, p=prior)
        z[np.arange(n), y] += 2.0  # informative logits
        return z, y

    z_val, y_val = draw(4000)
    z_test, y_test = draw(4000)
    model = lambda z: special.softmax(0.7 * z + bias, 1)  # noqa: E731 - under-confident and biased
    plain = cal.fit_calibration(model(z_val), y_val, 3)
    offsets = cal.fit_calibration(model(z_val), y_val, 3, method="balanced_offsets")
    assert offsets["offset_penalty"] in cal.OFFSET_PENALTIES and offsets["checkpoint_step"] == 3
    fwll = lambda rec: clf.flat_weighted_log_loss(cal.apply_calibration(model(z_test), rec), y_test, k)  # noqa: E731
    assert fwll(offsets) < fwll(plain) - 0.02, (fwll(offsets), fwll(plain))
    # The offsets push against the bias (up to a common shift): class 1 down, class 3 up.
    b = np.asarray(offsets["logit_offset"]) / offsets["temperature"]
    assert b[1] - b[0] < -0.5 and b[3] - b[0] > 0.5, b
    assert "class offsets" in cal.describe(offsets, 3)
    # Deterministic: the same data give the same record (the CV folds are seeded).
    again = cal.fit_calibration(model(z_val), y_val, 3, method="balanced_offsets")
    assert again["logit_offset"] == offsets["logit_offset"] and again["temperature"] == offsets["temperature"]


def test_extra_output_columns_pass_through_calibration():
    # spectra-like outputs: K class probabilities, then a regression column that must not change
    z, y = sample(3000, 4, 2.0, seed=5)
    probs = special.softmax(2.5 * z, axis=1)
    scale = np.linspace(0.5, 6.5, len(y))[:, None]
    outputs = np.concatenate([probs, scale], axis=1)
    info = {"class_names": ["a", "b", "c", "d"]}
    np.testing.assert_array_equal(cal.class_probs(outputs, info), probs)
    assert cal.class_probs(outputs[:, 1:], info) is None  # columns that are not probabilities
    record = cal.fit_calibration(cal.class_probs(outputs, info), y, step=7)
    assert record["num_classes"] == 4 and record["temperature"] == pytest.approx(2.5, rel=0.1)
    out = cal.apply_calibration(outputs, record)
    assert out.shape == outputs.shape
    np.testing.assert_array_equal(out[:, 4], outputs[:, 4])
    np.testing.assert_allclose(out[:, :4], cal.apply_calibration(probs, record), rtol=1e-6)
    assert cal.calibration_metrics(out[:, :4], y)["ece"] < cal.calibration_metrics(probs, y)["ece"]


# ------------------------------------------------------------------ sigma scaling (regressors)


def mixture_sample(n: int, true_scale: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Packed 2-component mixtures and targets drawn from them with every sigma times ``true_scale``:
    the packed outputs are mis-sized by exactly that factor."""
    rng = np.random.default_rng(seed)
    w1 = rng.uniform(0.2, 0.8, n)
    w = np.stack([w1, 1 - w1], axis=1)
    m = rng.normal(0.3, 0.2, (n, 2))
    s = rng.uniform(0.01, 0.05, (n, 2))
    comp = (rng.random(n) > w[:, 0]).astype(int)
    y = m[np.arange(n), comp] + true_scale * s[np.arange(n), comp] * rng.normal(size=n)
    return np.concatenate([w, m, s], axis=1).astype(np.float32), y


@pytest.mark.parametrize("true_scale", [1.6, 0.7])
def test_sigma_scale_recovers_a_known_miss_sizing_and_brings_coverage_to_nominal(true_scale):
    packed, y = mixture_sample(6000, true_scale, seed=3)
    s = cal.fit_sigma_scale(packed, y)
    assert s == pytest.approx(true_scale, rel=0.04)
    before = cal.interval_metrics(packed, y)
    after = cal.interval_metrics(cal.scale_sigmas(packed, s), y)
    # mis-sized intervals cover the wrong fraction; scaled ones their nominal one
    assert abs(before["coverage_68"] - 0.68) > 0.05
    assert abs(after["coverage_68"] - 0.68) < 0.02 and abs(after["coverage_95"] - 0.95) < 0.01
    assert after["nll"] < before["nll"] and after["pit_ks"] < before["pit_ks"]
    # held-out draws of the same process are covered too (a fit, not a memorised sample)
    test, y_test = mixture_sample(6000, true_scale, seed=4)
    held = cal.interval_metrics(cal.scale_sigmas(test, s), y_test)
    assert abs(held["coverage_68"] - 0.68) < 0.02 and abs(held["coverage_95"] - 0.95) < 0.01


def test_sigma_scale_changes_only_the_sigmas_and_never_hurts_the_pit():
    packed, y = mixture_sample(3000, 1.0, seed=5)
    s = cal.fit_sigma_scale(packed, y)
    scaled = cal.scale_sigmas(packed, s)
    assert scaled.dtype == packed.dtype and np.array_equal(scaled[:, :4], packed[:, :4])
    assert np.allclose(scaled[:, 4:], packed[:, 4:] * s)
    from astroflax.evaluate import regression as reg

    def dist(p):
        return cal.pit_distance(reg.pit_values(y, p[:, :2], p[:, 2:4], p[:, 4:]))

    assert dist(scaled) <= dist(packed)
    assert s == pytest.approx(1.0, abs=0.05)  # already calibrated: nothing to fix


def test_pit_distance_is_cramer_von_mises():
    from scipy import stats

    u = np.random.default_rng(0).beta(2, 3, 500)
    assert cal.pit_distance(u) == pytest.approx(stats.cramervonmises(u, "uniform").statistic / 500, rel=1e-9)


def test_saved_sigma_scale_applies_only_to_its_checkpoint(tmp_path):
    packed, y = mixture_sample(2000, 2.0, seed=6)
    record = cal.fit_regression_calibration(packed, y, step=30)
    assert record["method"] == "sigma_scale" and record["n"] == 2000
    assert abs(record["val_after"]["coverage_68"] - 0.68) < abs(record["val_before"]["coverage_68"] - 0.68)
    cal.save_calibration(tmp_path, record)
    loaded, note = cal.calibration_for(tmp_path, 30)
    assert loaded["sigma_scale"] == pytest.approx(record["sigma_scale"]) and "sigma scaling s = " in note
    assert np.allclose(cal.apply_calibration(packed, loaded)[:, 4:], packed[:, 4:] * record["sigma_scale"])
    assert cal.calibration_for(tmp_path, 60)[0] is None
    assert cal.temperature_for(tmp_path, 30)[0] is None  # not a temperature: classifiers never see it
    (tmp_path / "calibration.json").write_text('{"method": "sigma_scale", "sigma_scale": 0}')
    assert cal.load_calibration(tmp_path) is None
    with pytest.raises(Exception, match="choose from sigma_scale"):
        cal.fit_regression_calibration(packed, y, step=30, method="temperature")
