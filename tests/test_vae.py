"""The ``vae`` task: bundled MNIST data, the conditional VAE maths, training, ``sample`` and ``evaluate``."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from matplotlib.image import imread

from astroflax.config import build_config
from astroflax.data import digits
from astroflax.errors import DataError
from astroflax.models.vae import bernoulli_nll, gaussian_kl, reparameterize
from astroflax.tasks import get_task
from astroflax.tasks import digits as digits_task
from astroflax.tasks import vae as vae_task
from conftest import REPO, run_cli, set_args

TINY = [
    "model.latent_dim=4",
    "model.hidden=[32]",
    "model.eval_importance_samples=2",
    "model.eval_classifier_steps=40",
    "model.kl_warmup_steps=10",
    "train.batch_size=64",
    "train.eval_batch_size=1000",
    "train.steps=20",
    "train.eval_every=20",
    "train.log_every=10",
    "train.progress=false",
    "checkpoint.every=20",
    "checkpoint.async_save=false",
    "schedule.warmup_steps=5",
]


def _write_csv(path: Path, pixels: np.ndarray, labels: np.ndarray) -> Path:
    rows = [",".join(map(str, [*p, y])) for p, y in zip(pixels.reshape(len(labels), -1), labels)]
    path.write_text("\n".join(rows) + "\n")
    return path


def test_bundled_mnist_split_is_stratified() -> None:
    d = vae_task.load_bundled_mnist()
    assert d["image"].shape == (5000, 28, 28) and d["image"].dtype == np.uint8
    assert d["label"].dtype == np.uint8 and d["split"].dtype == np.uint8
    assert np.bincount(d["label"], minlength=10).tolist() == [500] * 10
    assert int(d["image"].max()) == 255 and int(d["image"].min()) == 0
    assert len(np.unique(d["source_row"])) == 5000
    for code, per_class in ((0, 360), (1, 40), (2, 100)):  # train / val (10% of train) / test (20%)
        counts = np.bincount(d["label"][d["split"] == code], minlength=10)
        assert counts.tolist() == [per_class] * 10, (code, counts)
    assert str(d["version"]) == digits.content_version(d["image"], d["label"], d["split"])


def test_converter_on_a_synthetic_csv(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("convert_mnist", REPO / "scripts" / "convert_mnist.py")
    conv = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(conv)
    rng = np.random.default_rng(1)
    labels = rng.permutation(np.repeat(np.arange(10), 500))
    pixels = rng.integers(0, 256, (5000, 784))
    src = _write_csv(tmp_path / "digits.csv", pixels, labels)
    a = conv.convert(src)
    assert a["image"].shape == (5000, 28, 28) and a["image"].dtype == np.uint8
    np.testing.assert_array_equal(a["image"].reshape(5000, -1), pixels)
    np.testing.assert_array_equal(a["label"], labels)
    sizes = [int(np.sum(a["split"] == i)) for i in range(3)]
    assert sizes == [3600, 400, 1000]
    for i, per_class in enumerate((360, 40, 100)):
        assert np.bincount(a["label"][a["split"] == i], minlength=10).tolist() == [per_class] * 10
    np.testing.assert_array_equal(conv.convert(src)["split"], a["split"])  # fixed seed
    _write_csv(src, pixels[:4990], labels[:4990])
    with pytest.raises(SystemExit, match="500 per class"):
        conv.convert(src)


def test_read_digit_csv_rejects_bad_cells(tmp_path: Path) -> None:
    pix = np.zeros((3, 784), np.int64)
    pix[1, 4] = 200
    images, labels = vae_task.read_digit_csv(_write_csv(tmp_path / "ok.csv", pix, np.array([3, 1, 9])))
    assert images.shape == (3, 28, 28) and images[1, 0, 4] == 200 and labels.tolist() == [3, 1, 9]
    pix[1, 4] = 300
    with pytest.raises(DataError, match=r"bad\.csv: row 2, column 5 \(pixel 4\) = 300; expected 0-255"):
        vae_task.read_digit_csv(_write_csv(tmp_path / "bad.csv", pix, np.array([3, 1, 9])))
    pix[1, 4] = 0
    with pytest.raises(DataError, match=r"row 3, column 785 \(label\) = 10"):
        vae_task.read_digit_csv(_write_csv(tmp_path / "lab.csv", pix, np.array([3, 1, 10])))
    (tmp_path / "short.csv").write_text("1,2,3\n")
    with pytest.raises(DataError, match="row 1 has 3 columns; expected 785"):
        vae_task.read_digit_csv(tmp_path / "short.csv")


def test_reparameterize_is_a_pure_function_of_the_key() -> None:
    mean = jnp.array([[0.5, -1.0, 2.0]])
    logvar = jnp.log(jnp.array([[0.25, 1.0, 4.0]]))
    k1, k2 = jax.random.key(1), jax.random.key(2)
    z1 = reparameterize(mean, logvar, k1)
    np.testing.assert_array_equal(np.asarray(z1), np.asarray(reparameterize(mean, logvar, k1)))
    assert not np.allclose(np.asarray(z1), np.asarray(reparameterize(mean, logvar, k2)))
    # mean + sigma * eps with the same eps
    eps = jax.random.normal(k1, mean.shape)
    np.testing.assert_allclose(np.asarray(z1), np.asarray(mean + jnp.array([0.5, 1.0, 2.0]) * eps), rtol=1e-6)


def test_kl_matches_closed_form_hand_case() -> None:
    # KL(N(1, 1) || N(0,1)) = 1/2; KL(N(0, 2) || N(0,1)) = (2 - 1 - ln 2)/2; summed over the axis.
    mean = jnp.array([[1.0, 0.0], [0.0, 0.0]])
    logvar = jnp.array([[0.0, math.log(2.0)], [0.0, 0.0]])
    kl = np.asarray(gaussian_kl(mean, logvar))
    np.testing.assert_allclose(kl, [0.5 + (1.0 - math.log(2.0)) / 2.0, 0.0], rtol=1e-6, atol=1e-7)
    # Against a class prior N(2, 4): KL(N(0, 1) || N(2, 4)) = (ln 4 + (1 + 4)/4 - 1) / 2.
    kl_p = gaussian_kl(jnp.zeros((1, 1)), jnp.zeros((1, 1)), jnp.full((1, 1), 2.0), jnp.full((1, 1), math.log(4.0)))
    np.testing.assert_allclose(np.asarray(kl_p), [(math.log(4.0) + 1.25 - 1.0) / 2.0], rtol=1e-6)
    logits = jnp.array([[2.0, -1.0, 0.0]])
    targets = jnp.array([[1.0, 0.0, 1.0]])
    expected = math.log1p(math.exp(-2.0)) + math.log1p(math.exp(-1.0)) + math.log(2.0)
    np.testing.assert_allclose(np.asarray(bernoulli_nll(logits, targets)), [expected], rtol=1e-6)


def test_loss_decreases_and_kl_warms_up() -> None:
    task = get_task("vae")
    cfg = build_config("vae", None, None, ["model.latent_dim=4", "model.hidden=[32]", "model.kl_warmup_steps=100", "model.beta_start=0"])
    data = task.load_data(cfg)
    model = task.build_model(cfg, data.info, nnx.Rngs(params=0))
    train = data.split("train")
    batch = {k: jnp.asarray(v[:128]) for k, v in train.items()}
    settings = cfg.model  # the KL ramp reads the model section of the config
    assert float(vae_task.kl_weight(settings, {**batch, "_step": jnp.int32(49)})) == pytest.approx(0.5)
    assert float(vae_task.kl_weight(settings, batch)) == 1.0  # no step (evaluation): full beta
    settings.beta_start = 9.0  # annealing down: 9 -> 1 over 100 steps
    assert float(vae_task.kl_weight(settings, {**batch, "_step": jnp.int32(49)})) == pytest.approx(5.0)
    assert float(vae_task.kl_weight(settings, {**batch, "_step": jnp.int32(500)})) == pytest.approx(1.0)
    settings.beta_start = 0.0
    loss_fn = task.make_loss_fn(cfg, data.info)
    graphdef, params = nnx.split(model)
    tx = optax.adam(3e-3)
    opt = tx.init(params)

    @jax.jit
    def step(p, s, key):
        def f(p):
            return loss_fn(nnx.merge(graphdef, p), {**batch, "_step": jnp.int32(1000)}, key, True)

        (loss, aux), g = jax.value_and_grad(f, has_aux=True)(p)
        u, s = tx.update(g, s, p)
        return optax.apply_updates(p, u), s, loss, aux

    losses = []
    for i in range(40):
        params, opt, loss, aux = step(params, opt, jax.random.key(i))
        losses.append(float(loss))
    assert np.isfinite(losses).all()
    assert np.mean(losses[-5:]) < 0.6 * np.mean(losses[:5]), (losses[:5], losses[-5:])
    assert float(aux["kl"]) > 0 and float(aux["recon"]) > 0


def test_train_sample_evaluate_cli(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run_dir = tmp_path / "run"
    proc = run_cli("train", "vae", "--run-dir", str(run_dir), *set_args(TINY), timeout=300, check=True)
    report = json.loads((run_dir / "eval" / "test.json").read_text())
    assert report["task"] == "vae" and report["num_images"] == 1000
    assert report["elbo"] < 0 and report["elbo"] == pytest.approx(-(report["recon"] + report["kl"]), rel=1e-6)
    assert report["log_likelihood_iwae"] >= report["elbo"] - 1e-6  # the importance bound is tighter
    assert 0.0 <= report["conditional_accuracy"] <= 1.0
    assert report["conditional_accuracy"] == report["accuracy"]
    assert report["samples_per_class"] == {str(c): 100 for c in range(10)}
    assert 0.5 < report["classifier_test_accuracy"] <= 1.0
    assert Path(report["figures"]["samples"]).is_file()
    note = json.loads((run_dir / "eval" / "digit_classifier" / "classifier.json").read_text())
    assert note["test_accuracy"] == report["classifier_test_accuracy"] and note["steps"] == 40
    judge, cached = digits_task.judge(40, 0)
    assert cached["cached"] is True and cached["test_accuracy"] == note["test_accuracy"]

    from astroflax.cli import main

    # one class, 6 samples -> 3 x 2 tiles of 28*scale px with 2 px gaps
    out1 = tmp_path / "one.png"
    main(["sample", str(run_dir), "--class", "7", "--n", "6", "--out", str(out1), "--scale", "1"])
    assert imread(out1).shape[:2] == (2 * 28 + 3 * 2, 3 * 28 + 4 * 2)
    # no class: one row per class, n per row
    out2 = tmp_path / "all.png"
    main(["sample", str(run_dir), "--n", "3", "--out", str(out2), "--seed", "5"])
    img = imread(out2)
    assert img.shape[:2] == (10 * 56 + 11 * 2, 3 * 56 + 4 * 2)
    assert img[..., :3].std() > 0.05  # real pictures, not a blank canvas

    def error_of(args: list[str]) -> str:
        capsys.readouterr()
        with pytest.raises(SystemExit) as exc:
            main(["sample", str(run_dir), *args])
        assert exc.value.code == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1, lines
        return lines[0]

    assert "--class 10: out of range; this run has classes 0-9" in error_of(["--class", "10", "--out", str(out1)])
    assert "--class -1" in error_of(["--class", "-1", "--out", str(out1)])
    assert "--n 0: expected at least 1" in error_of(["--n", "0", "--out", str(out1)])
    missing = tmp_path / "nope" / "x.png"
    assert f"directory {missing.parent} does not exist" in error_of(["--out", str(missing)])

    # The export traces the prediction with the parameters as device arrays: the per-class prior is
    # indexed by the label input (with host arrays the export failed with a tracer error).
    from astroflax.data.store import load_dataset
    from astroflax.export.loader import load_export
    from astroflax.runs import load_run

    main(["export", str(run_dir), "--out", str(tmp_path / "export")])
    exported = load_export(tmp_path / "export")
    assert {"x", "label"} <= {i["name"] for i in exported.inputs}
    run = load_run(run_dir)
    test = load_dataset(run.cfg).split("test")
    rows = {k: np.asarray(v[:4]) for k, v in test.items()}
    np.testing.assert_allclose(exported.predict({i["name"]: rows[i["name"]] for i in exported.inputs}),
                               run.predict(rows), rtol=1e-4, atol=1e-4)
