"""Pretrained models shipped in astroflax/pretrained: cards, predict --pretrained, finetune from them."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest

from astroflax.data import examples
from astroflax.data import spectra as sp
from astroflax.pretrained import MODEL_CARD, PRETRAINED_DIR, available
from conftest import REPO, run_main

SHIPPED = ["digits", "morphology", "photoz", "spectra", "transients", "vae", "variables"]


def test_each_shipped_model_is_a_verified_export_with_a_model_card():
    assert available() == SHIPPED
    for task in SHIPPED:
        d = PRETRAINED_DIR / task
        manifest = json.loads((d / "manifest.json").read_text())
        assert manifest["task"] == task and manifest["config"]["task"] == task
        card = (d / MODEL_CARD).read_text()
        for part in ("Trained with:", "scripts/pretrain.py", "Code:** astroflax at commit",
                     "Licence of the training data:", "Known limits", "Test-split figures",
                     f"astroflax predict {task} --pretrained"):
            assert part in card, (task, part)
        assert "| `" in card  # at least one measured figure
        size = sum(f.stat().st_size for f in d.iterdir())
        # Small enough to ship in the wheel: the vae's 1.86 M float32 parameters (its encoder and
        # decoder: predict scores each image's likelihood) are 7.5 MB; every other model is under 2 MB.
        assert size < (8e6 if task == "vae" else 2.5e6), (task, size)
    assert "pretrained/*/*" in (REPO / "pyproject.toml").read_text()


def test_predict_pretrained_spectra_types_real_templates_and_partial_coverage(tmp_path, capsys):
    t = sp.load_templates()
    inputs = tmp_path / "in"
    inputs.mkdir()
    names = ["A0V", "F8V", "G8V", "K2V", "M4V"]  # real Pickles templates, observed at full and partial coverage
    wave = np.arange(3700.0, 9200.0, 2.0)
    for name in names:
        flux = np.interp(wave, t.wavelength, t.flux[list(t.name).index(name)])
        for tag, keep in (("full", wave > 0), ("red", wave > 4600)):
            with open(inputs / f"{name}_{tag}.csv", "w", newline="") as fh:
                w = csv.writer(fh)
                w.writerow(["wavelength", "flux"])
                w.writerows(zip(wave[keep], flux[keep]))
    out = tmp_path / "pred.csv"
    code, _, err = run_main(["predict", "spectra", "--pretrained", "--input", str(inputs), "--output", str(out)],
                            capsys)
    assert code == 0, err
    rows = {r["file"]: r for r in csv.DictReader(out.open())}
    assert len(rows) == 2 * len(names)
    right = sum(rows[f"{n}_{tag}.csv"]["predicted_class"] == n[0] for n in names for tag in ("full", "red"))
    assert right >= 8, {k: (v["predicted_class"], v["spectral_type"]) for k, v in rows.items()}


def test_predict_pretrained_photoz_on_a_catalogue(tmp_path, capsys):
    path, _ = examples.photoz(tmp_path / "cat")
    out = tmp_path / "z.csv"
    code, _, err = run_main(["predict", "photoz", "--pretrained", "--input", str(path), "--output", str(out),
                             "--keep", "zspec"], capsys)
    assert code == 0, err
    rows = [r for r in csv.DictReader(out.open()) if r.get("flag", "0") in ("0", "")]
    z = np.array([float(r["z_mean"]) for r in rows])
    zs = np.array([float(r["zspec"]) for r in rows])
    dz = (z - zs) / (1 + zs)
    assert len(rows) > 100 and 1.4826 * np.median(np.abs(dz - np.median(dz))) < 0.03


def test_predict_pretrained_transients_on_plasticc_tables(tmp_path, capsys):
    """PLAsTiCC-layout tables (lightcurves.csv + metadata.csv) -> one calibrated row per object. The
    objects are bundled ones (some were trained on), so this checks the path, not the accuracy."""
    from astroflax.data import lightcurves as lc

    path, _ = examples.transients(tmp_path / "lc", n=200)
    out = tmp_path / "p.csv"
    code, _, err = run_main(["predict", "transients", "--pretrained", "--input", str(path), "--output", str(out)], capsys)
    assert code == 0, err
    rows = list(csv.DictReader(out.open()))
    names = list(lc.PLASTICC_CLASSES.values())
    assert len(rows) == 200 and all(r["predicted_class"] in names for r in rows)
    probs = np.array([[float(r[f"p_{c}"]) for c in names] for r in rows])
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-4)
    truth = dict(zip(*np.loadtxt(path / "metadata.csv", delimiter=",", skiprows=1, usecols=(0, 1), unpack=True)))
    hits = [lc.PLASTICC_CLASSES[int(truth[float(r["object_id"])])] == r["predicted_class"] for r in rows]
    assert np.mean(hits) > 0.5  # 14 classes: chance is far below


def test_predict_pretrained_vae_scores_digits_given_their_class(tmp_path, capsys):
    """The shipped vae scores each digit under its stated class: the same digits under a wrong
    class are far less likely (the model uses the condition), and the bound is a plausible one."""
    path, _ = examples.vae(tmp_path / "digits", n=60)
    rows = np.loadtxt(path, delimiter=",", dtype=np.int64)
    wrong = rows.copy()
    wrong[:, -1] = (wrong[:, -1] + 1) % 10
    np.savetxt(tmp_path / "wrong.csv", wrong, fmt="%d", delimiter=",")
    scores = {}
    for name, src in (("right", path), ("wrong", tmp_path / "wrong.csv")):
        out = tmp_path / f"{name}.csv"
        code, _, err = run_main(["predict", "vae", "--pretrained", "--input", str(src), "--output", str(out)], capsys)
        assert code == 0, err
        got = list(csv.DictReader(out.open()))
        assert [int(r["row"]) for r in got] == list(range(1, 61))
        scores[name] = np.array([float(r["neg_elbo"]) for r in got])
        iwae = np.array([float(r["nll_iwae"]) for r in got])
        assert np.median(iwae) < np.median(scores[name])  # 64 importance samples: a tighter bound than the ELBO
    assert 60 < np.median(scores["right"]) < 160, np.median(scores["right"])
    assert np.mean(scores["wrong"] > scores["right"] + 10) > 0.9


def test_sample_pretrained_vae_draws_the_asked_digits(tmp_path, capsys):
    """The shipped vae generates digits of the asked class: the shipped digits classifier (through
    the standalone export loader) reads 10 samples of each class as that class; the CLI writes the grid."""
    from matplotlib.image import imread

    from astroflax.export.loader import load_export
    from astroflax.runs import model_from_export
    from astroflax.tasks.vae import sample_digits

    model, task, info, step = model_from_export(PRETRAINED_DIR / "vae")
    assert task.name == "vae" and step == json.loads((PRETRAINED_DIR / "vae" / "manifest.json").read_text())[
        "source"]["checkpoint_step"]
    labels = np.repeat(np.arange(10), 10)
    images = sample_digits(model, labels, seed=3)
    judge = load_export(PRETRAINED_DIR / "digits")
    probs = np.asarray(judge.predict({"image": images.astype(np.float32)}))
    assert np.mean(probs[:, :10].argmax(-1) == labels) >= 0.9
    out = tmp_path / "sevens.png"
    code, _, err = run_main(["sample", "vae", "--pretrained", "--class", "7", "--n", "4", "--out", str(out),
                             "--scale", "1"], capsys)
    assert code == 0 and "checkpoint step" in err, err
    assert imread(out).shape[:2] == (2 * 28 + 3 * 2, 2 * 28 + 3 * 2)
    code, _, err = run_main(["sample", "vae", "--pretrained", "--checkpoint", "latest", "--out", str(out)], capsys)
    assert code == 2 and "export" in err and len(err.strip().splitlines()) == 1


def test_predict_pretrained_unknown_task_is_one_line(tmp_path, capsys):
    code, _, err = run_main(["predict", "quasars", "--pretrained", "--input", str(tmp_path),
                             "--output", str(tmp_path / "p.csv")], capsys)
    assert code == 2 and "no pretrained model for task 'quasars'" in err and "spectra, transients, vae" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_finetune_from_pretrained_restores_every_parameter(tmp_path, capsys):
    run_dir = tmp_path / "ft"
    code, _, err = run_main(["finetune", "pretrained", "--task", "spectra", "--run-dir", str(run_dir),
                             "--no-evaluate", "--set", "data.num_train=128", "--set", "data.val_per_type=2",
                             "--set", "data.test_per_snr=1", "--set", "data.stress_per_snr=0",
                             "--set", "train.steps=2", "--set", "train.eval_every=2", "--set", "train.progress=false",
                             "--set", "checkpoint.every=2"], capsys)
    assert code == 0, err
    src = json.loads((run_dir / "finetune_source.json").read_text())
    assert src["task"] == "spectra" and not src["new"] and not src["dropped"]
    manifest = json.loads((PRETRAINED_DIR / "spectra" / "manifest.json").read_text())
    assert src["restored_values"] == manifest["params"]["count"]


def test_finetune_from_pretrained_builds_the_shipped_architecture(tmp_path, capsys):
    """The vae's full-preset model is wider than the default one: fine-tuning it (under the default
    preset) builds the shipped model's architecture, so every parameter is restored; a model key
    given with --set still changes it."""
    common = ["--no-evaluate", "--set", "train.steps=2", "--set", "train.eval_every=2",
              "--set", "train.progress=false", "--set", "checkpoint.every=2"]
    manifest = json.loads((PRETRAINED_DIR / "vae" / "manifest.json").read_text())
    code, _, err = run_main(["finetune", "pretrained", "--task", "vae", "--run-dir", str(tmp_path / "ft"), *common],
                            capsys)
    assert code == 0, err
    src = json.loads((tmp_path / "ft" / "finetune_source.json").read_text())
    assert not src["new"] and not src["dropped"] and src["restored_values"] == manifest["params"]["count"]
    code, _, err = run_main(["finetune", "pretrained", "--task", "vae", "--run-dir", str(tmp_path / "ft16"), *common,
                             "--set", "model.latent_dim=16"], capsys)
    assert code == 0, err
    src = json.loads((tmp_path / "ft16" / "finetune_source.json").read_text())
    assert any(p.startswith("enc_mean.kernel") for p in src["new"]) and src["restored"]


def test_finetune_refuses_a_damaged_pretrained_export(tmp_path, capsys):
    bad = tmp_path / "spectra-export"
    shutil.copytree(PRETRAINED_DIR / "spectra", bad)
    data = bytearray((bad / "params.npz").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (bad / "params.npz").write_bytes(bytes(data))
    code, _, err = run_main(["finetune", str(bad), "--task", "spectra", "--run-dir", str(tmp_path / "ft"),
                             "--set", "train.steps=2"], capsys)
    assert code == 2 and "params.npz" in err and "sha256" in err, err
    assert not (tmp_path / "ft").exists()
