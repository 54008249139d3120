"""Host-side classification metrics checked against scikit-learn and hand calculations."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from PIL import Image
from rich.console import Console
from sklearn import metrics as skm

from astroflax.evaluate import classification as C
from astroflax.evaluate.plots import plot_confusion_matrix, plot_reliability_diagram, plot_roc_curves
from astroflax.evaluate.tables import report_table


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _random_problem(seed: int, n: int = 300, k: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """Imbalanced labels; logits correlated with the label; last class is never the argmax."""
    rng = np.random.default_rng(seed)
    labels = rng.choice(k, size=n, p=np.linspace(2, 1, k) / np.linspace(2, 1, k).sum())
    logits = rng.normal(size=(n, k)) + 1.5 * np.eye(k)[labels]
    logits[:, k - 1] -= 20.0  # class k-1 never predicted -> precision zero-division
    return _softmax(logits), labels


# ----------------------------------------------------------------- confusion matrix / PRF


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_confusion_and_prf_match_sklearn(seed: int) -> None:
    probs, labels = _random_problem(seed)
    k = probs.shape[1]
    preds = probs.argmax(axis=1)
    assert not np.any(preds == k - 1)
    cm = C.confusion_matrix(labels, preds, k)
    assert cm.dtype.kind == "i"
    np.testing.assert_array_equal(cm, skm.confusion_matrix(labels, preds, labels=range(k)))

    prf = C.precision_recall_f1(cm)
    p, r, f, s = skm.precision_recall_fscore_support(labels, preds, labels=range(k), zero_division=0)
    np.testing.assert_allclose(prf["precision"], p, atol=1e-12)
    np.testing.assert_allclose(prf["recall"], r, atol=1e-12)
    np.testing.assert_allclose(prf["f1"], f, atol=1e-12)
    np.testing.assert_array_equal(prf["support"], s)
    assert prf["precision"][k - 1] == 0.0 and prf["f1"][k - 1] == 0.0
    mp, mr, mf, _ = skm.precision_recall_fscore_support(
        labels, preds, labels=range(k), average="macro", zero_division=0
    )
    assert prf["macro"]["precision"] == pytest.approx(mp, abs=1e-12)
    assert prf["macro"]["recall"] == pytest.approx(mr, abs=1e-12)
    assert prf["macro"]["f1"] == pytest.approx(mf, abs=1e-12)


def test_confusion_keeps_absent_classes_and_orientation() -> None:
    cm = C.confusion_matrix([0, 0, 1], [1, 1, 1], num_classes=3)
    np.testing.assert_array_equal(cm, [[0, 2, 0], [0, 1, 0], [0, 0, 0]])  # rows = true
    prf = C.precision_recall_f1(cm)
    # class 2: no samples and no predictions -> all zero (sklearn zero_division=0)
    assert prf["precision"][2] == prf["recall"][2] == prf["f1"][2] == 0.0
    assert prf["recall"][1] == 1.0 and prf["precision"][1] == pytest.approx(1 / 3)


# ----------------------------------------------------------------- log losses


@pytest.mark.parametrize("seed", [0, 3])
def test_log_loss_matches_sklearn(seed: int) -> None:
    probs, labels = _random_problem(seed)
    expected = skm.log_loss(labels, probs, labels=range(probs.shape[1]))
    assert C.log_loss(probs, labels) == pytest.approx(expected, rel=1e-9)


def test_flat_weighted_log_loss_hand_computed_imbalanced() -> None:
    # 3 objects of class 0 predicted well (p_true=0.9), 1 object of class 1 poorly (p_true=0.5)
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.9, 0.1], [0.5, 0.5]])
    labels = np.array([0, 0, 0, 1])
    plain = (3 * -math.log(0.9) - math.log(0.5)) / 4
    flat = (-math.log(0.9) - math.log(0.5)) / 2
    assert C.log_loss(probs, labels) == pytest.approx(plain, rel=1e-12)
    assert C.flat_weighted_log_loss(probs, labels, 2) == pytest.approx(flat, rel=1e-12)
    # the rare, badly predicted class weighs more in the flat metric
    assert C.flat_weighted_log_loss(probs, labels, 2) > C.log_loss(probs, labels) + 0.1

    # reversed roles: the common class is the badly predicted one -> flat is *smaller*
    probs2 = np.array([[0.5, 0.5], [0.5, 0.5], [0.5, 0.5], [0.1, 0.9]])
    assert C.flat_weighted_log_loss(probs2, labels, 2) < C.log_loss(probs2, labels) - 0.1


def test_flat_weighted_log_loss_absent_class_has_zero_weight_and_clipping() -> None:
    probs3 = np.array([[0.9, 0.05, 0.05], [0.2, 0.7, 0.1]])
    labels = np.array([0, 1])
    # class 2 absent: average over classes 0 and 1 only
    assert C.flat_weighted_log_loss(probs3, labels, 3) == pytest.approx(
        (-math.log(0.9) - math.log(0.7)) / 2, rel=1e-12
    )
    # a zero probability on the true class is clipped to 1e-15, not inf
    hard = np.array([[0.0, 1.0]])
    loss = C.flat_weighted_log_loss(hard, [0], 2)
    assert math.isfinite(loss)
    assert loss == pytest.approx(-math.log(1e-15 / (1e-15 + 1 - 1e-15)), rel=1e-9)
    # rows are renormalised after clipping: scaling a row does not change the loss
    assert C.log_loss(np.array([[2.0, 2.0]]), [0]) == pytest.approx(math.log(2), rel=1e-12)


# ----------------------------------------------------------------- ROC / AUC


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("decimals", [None, 1])
def test_roc_auc_and_curve_match_sklearn(seed: int, decimals: int | None) -> None:
    probs, labels = _random_problem(seed, n=257)
    if decimals is not None:  # heavy ties
        probs = np.round(probs, decimals)
    for j in range(probs.shape[1]):
        scores, pos = probs[:, j], labels == j
        assert C.roc_auc(scores, pos) == pytest.approx(skm.roc_auc_score(pos, scores), abs=1e-12)
        for drop in (True, False):
            fpr, tpr, thr = C.roc_curve_ovr(scores, pos, drop_intermediate=drop)
            sfpr, stpr, sthr = skm.roc_curve(pos, scores, drop_intermediate=drop)
            np.testing.assert_allclose(fpr, sfpr, atol=1e-12)
            np.testing.assert_allclose(tpr, stpr, atol=1e-12)
            np.testing.assert_array_equal(thr, sthr)
        # AUC from the curve (trapezoid) equals the rank-based AUC
        fpr, tpr, _ = C.roc_curve_ovr(scores, pos)
        assert np.trapezoid(tpr, fpr) == pytest.approx(C.roc_auc(scores, pos), abs=1e-12)


def test_roc_auc_ties_hand_computed_and_single_class_nan() -> None:
    # all scores tied -> AUC exactly 0.5
    assert C.roc_auc([0.3, 0.3, 0.3, 0.3], [1, 0, 1, 0]) == 0.5
    # pos {0.8, 0.5}, neg {0.5, 0.2}: pairs (0.8>0.5)(0.8>0.2)(0.5=0.5 -> 1/2)(0.5>0.2) = 3.5/4
    assert C.roc_auc([0.8, 0.5, 0.5, 0.2], [True, True, False, False]) == 0.875
    assert math.isnan(C.roc_auc([0.1, 0.2], [1, 1]))
    assert math.isnan(C.roc_auc([0.1, 0.2], [0, 0]))


# ----------------------------------------------------------------- calibration


def test_ece_hand_computed() -> None:
    # n_bins=5 -> bins (0,.2] (.2,.4] (.4,.6] (.6,.8] (.8,1]
    probs = np.array([[0.9, 0.1], [0.25, 0.75], [0.65, 0.35], [0.45, 0.55]])
    labels = np.array([0, 0, 0, 0])
    # bin 4: conf .9, acc 1 -> gap .1 (1 sample); bin 3: confs .75 (wrong) .65 (right) -> |.5-.7| = .2 (2);
    # bin 2: conf .55 wrong -> .55 (1)
    expected = (1 * 0.1 + 2 * 0.2 + 1 * 0.55) / 4
    assert C.expected_calibration_error(probs, labels, n_bins=5) == pytest.approx(expected, abs=1e-12)
    curve = C.reliability_curve(probs, labels, n_bins=5)
    np.testing.assert_array_equal(curve["counts"], [0, 0, 1, 2, 1])
    np.testing.assert_allclose(curve["bin_centers"], [0.1, 0.3, 0.5, 0.7, 0.9])
    np.testing.assert_allclose(curve["accuracy"][2:], [0.0, 0.5, 1.0])
    np.testing.assert_allclose(curve["confidence"][2:], [0.55, 0.7, 0.9])
    assert np.all(np.isnan(curve["accuracy"][:2])) and np.all(np.isnan(curve["confidence"][:2]))
    assert curve["ece"] == pytest.approx(expected, abs=1e-12)


def test_ece_perfectly_calibrated_and_overconfident() -> None:
    # one-hot correct predictions: confidence 1, accuracy 1 -> ECE 0
    labels = np.arange(4) % 2
    assert C.expected_calibration_error(np.eye(2)[labels], labels) == 0.0
    # always confident 0.99 but wrong -> ECE 0.99
    assert C.expected_calibration_error(np.eye(2)[1 - labels] * 0.98 + 0.01, labels) == pytest.approx(0.99)


# ----------------------------------------------------------------- report


def test_classification_report_is_json_and_consistent() -> None:
    probs, labels = _random_problem(4, n=200, k=4)
    names = ["SN Ia", "SN II", "AGN", "RR Lyrae"]
    rep = C.classification_report(probs, labels, names, positive_class="SN Ia")
    text = json.dumps(rep, allow_nan=False)  # strict JSON: plain types, no NaN
    assert json.loads(text) == rep
    assert rep["n"] == 200 and rep["class_names"] == names
    preds = probs.argmax(1)
    assert rep["accuracy"] == pytest.approx(skm.accuracy_score(labels, preds))
    assert rep["log_loss"] == pytest.approx(skm.log_loss(labels, probs, labels=range(4)), rel=1e-9)
    assert rep["confusion_matrix"] == skm.confusion_matrix(labels, preds, labels=range(4)).tolist()
    auc = skm.roc_auc_score(labels == 0, probs[:, 0])
    assert rep["auc_positive"] == pytest.approx(auc) and rep["auc_SN Ia"] == pytest.approx(auc)
    assert rep["positive_class"] == "SN Ia"
    assert rep["auc_ovr"]["AGN"] == pytest.approx(skm.roc_auc_score(labels == 2, probs[:, 2]))
    p, r, f, s = skm.precision_recall_fscore_support(labels, preds, labels=range(4), zero_division=0)
    for j, name in enumerate(names):
        row = rep["per_class"][name]
        assert (row["precision"], row["recall"], row["f1"]) == pytest.approx((p[j], r[j], f[j]))
        assert row["support"] == int(s[j]) and type(row["support"]) is int
    assert rep["macro"]["f1"] == pytest.approx(f.mean())
    assert rep["flat_weighted_log_loss"] == pytest.approx(C.flat_weighted_log_loss(probs, labels, 4))
    assert rep["ece"] == pytest.approx(C.expected_calibration_error(probs, labels))


def test_report_absent_class_auc_is_none_and_no_positive_keys() -> None:
    probs = _softmax(np.random.default_rng(0).normal(size=(20, 3)))
    labels = np.array([0, 1] * 10)
    rep = C.classification_report(probs, labels, ["a", "b", "c"])
    assert rep["auc_ovr"]["c"] is None
    assert "auc_positive" not in rep and "positive_class" not in rep
    json.dumps(rep, allow_nan=False)


# ----------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: C.confusion_matrix([0, 1], [0], 2), "shape mismatch"),
        (lambda: C.confusion_matrix([0, 3], [0, 1], 3), r"labels out of range \[0, 3\)"),
        (lambda: C.confusion_matrix([0, 1], [0, -1], 2), "preds out of range"),
        (lambda: C.confusion_matrix([0.5, 1], [0, 1], 2), "integer"),
        (lambda: C.confusion_matrix([0, 1], [0, 1], 0), "num_classes"),
        (lambda: C.precision_recall_f1(np.ones((2, 3))), "square"),
        (lambda: C.log_loss(np.full((3, 2), 0.5), [0, 1]), "3 rows but labels has 2"),
        (lambda: C.log_loss(np.array([[np.nan, 1.0]]), [0]), "non-finite"),
        (lambda: C.log_loss(np.array([[-1.0, 2.0]]), [0]), "negative"),
        (lambda: C.log_loss(np.full(4, 0.5), [0, 1, 0, 1]), "2-D"),
        (lambda: C.log_loss(np.full((2, 2), 0.5), [0, 2]), "out of range"),
        (lambda: C.flat_weighted_log_loss(np.full((2, 2), 0.5), [0, 1], 3), "num_classes=3"),
        (lambda: C.roc_auc([0.1, 0.2, 0.3], [1, 0]), "shape mismatch"),
        (lambda: C.roc_auc([0.1, np.inf], [1, 0]), "non-finite"),
        (lambda: C.roc_curve_ovr([0.1, 0.2], [2, 0]), "boolean or 0/1"),
        (lambda: C.expected_calibration_error(np.full((2, 2), 0.5), [0, 1], n_bins=0), "n_bins"),
        (lambda: C.classification_report(np.full((2, 2), 0.5), [0, 1], ["a"]), "1 class_names"),
        (lambda: C.classification_report(np.full((2, 2), 0.5), [0, 1], ["a", "b"], "z"), "positive_class"),
        (lambda: C.classification_report(np.full((2, 2), 0.5), [[0, 1]], ["a", "b"]), "labels must be 1-D"),
    ],
)
def test_invalid_inputs_raise_helpful_value_error(call, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        call()


# ----------------------------------------------------------------- plots and table


def _assert_png(path, size: tuple[int, int]) -> None:
    assert path.exists() and path.stat().st_size > 1000
    with Image.open(path) as im:
        assert im.format == "PNG"
        assert im.size == size
        # not a blank canvas
        assert len(im.convert("L").getcolors(maxcolors=1 << 20)) > 10


def test_plots_write_pngs_with_expected_size(tmp_path) -> None:
    k = 14
    names = [f"class_{i:02d}_long_name" for i in range(k)]
    rng = np.random.default_rng(0)
    labels = rng.integers(0, k - 1, size=400)  # last class absent -> its ROC is "n/a"
    probs = _softmax(rng.normal(size=(400, k)) + 2.0 * np.eye(k)[labels])
    cm = C.confusion_matrix(labels, probs.argmax(1), k)

    out = plot_confusion_matrix(cm, names, tmp_path / "sub" / "cm.png", figsize=(10, 9), dpi=50)
    assert out == tmp_path / "sub" / "cm.png"
    _assert_png(out, (500, 450))
    out = plot_confusion_matrix(cm, names, tmp_path / "cm_counts.png", normalize=False, title="counts")
    with Image.open(out) as im:  # default size grows with class count: (0.6*14+4, 0.6*14+3) in at 100 dpi
        assert im.size == (1240, 1140)

    curve = C.reliability_curve(probs, labels, n_bins=10)
    _assert_png(plot_reliability_diagram(curve, tmp_path / "rel.png"), (600, 650))
    _assert_png(plot_roc_curves(probs, labels, names, tmp_path / "roc.png", dpi=60), (420, 360))

    with pytest.raises(ValueError, match="class_names"):
        plot_confusion_matrix(cm, names[:3], tmp_path / "bad.png")
    with pytest.raises(ValueError, match="missing key"):
        plot_reliability_diagram({"counts": [1]}, tmp_path / "bad.png")


def test_report_table_renders_all_classes() -> None:
    probs, labels = _random_problem(5, n=100, k=3)
    rep = C.classification_report(probs, labels, ["SN Ia", "SN II", "AGN"], positive_class="SN Ia")
    console = Console(record=True, width=120)
    console.print(report_table(rep, "validation"))
    text = console.export_text()
    assert "validation" in text and "flat-weighted log-loss" in text
    for name in ("SN Ia", "SN II", "AGN"):
        assert name in text
    assert f"{rep['accuracy']:.4f}" in text
    assert f"{rep['per_class']['SN II']['f1']:.4f}" in text
    assert f"{rep['auc_positive']:.4f}" in text
