"""``astroflax export``: StableHLO + params.npz + manifest, run without the training code."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from astroflax.cli import main
from astroflax.data import lightcurves as lc
from astroflax.export.loader import ExportFormatError, load_export
from conftest import TINY_TRANSIENTS, run_main, set_args

LOADER = Path(__file__).resolve().parents[1] / "astroflax" / "export" / "loader.py"
_SHARED: dict[str, Path] = {}


def shared_trained_run(tmp_path_factory) -> Path:
    """One tiny transients run, trained and evaluated on test once per session (also used by test_diagnostics)."""
    if "run" not in _SHARED:
        from astroflax.config import build_config
        from astroflax.evaluate.runner import evaluate_run, save_evaluation
        from astroflax.runs import load_run
        from astroflax.train.loop import train

        run_dir = tmp_path_factory.mktemp("shared") / "run"
        cfg = build_config("transients", None, None, TINY_TRANSIENTS + ["train.progress=false"],
                           extra={"run_dir": str(run_dir)})
        train(cfg)
        save_evaluation(evaluate_run(load_run(run_dir), "test"))
        _SHARED["run"] = run_dir
    return _SHARED["run"]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    run_dir = shared_trained_run(tmp_path_factory)
    out_dir = tmp_path_factory.mktemp("export") / "transients"
    with pytest.raises(SystemExit) as exc:
        main(["export", str(run_dir), "--out", str(out_dir)])
        raise SystemExit(0)
    assert exc.value.code in (0, None)
    return run_dir, out_dir


@pytest.fixture(scope="module")
def test_arrays(exported):
    from astroflax.runs import load_run

    run = load_run(exported[0])
    arrays = run.task.load_data(run.cfg).split("test")
    return run, {k: v[:40] for k, v in arrays.items()}


def write_user_lightcurves(directory: Path, n: int = 9) -> np.ndarray:
    """Objects of the bundled test split in the documented user-data layout (no labels)."""
    lcs = lc.load_bundled_plasticc()
    sub = lcs.select(lc.split_indices(lcs)["test"][:n])
    frames = []
    for i, oid in enumerate(sub.object_id):
        a, b = sub.offsets[i], sub.offsets[i + 1]
        frames.append(pd.DataFrame({"object_id": oid, "mjd": sub.mjd[a:b], "passband": sub.passband[a:b],
                                    "flux": sub.flux[a:b], "flux_err": sub.flux_err[a:b],
                                    "detected": sub.detected[a:b]}))
    directory.mkdir(parents=True, exist_ok=True)
    pd.concat(frames).to_csv(directory / "lightcurves.csv", index=False)
    pd.DataFrame({"object_id": sub.object_id, "hostgal_photoz": sub.meta[:, 0], "hostgal_photoz_err": sub.meta[:, 1],
                  "mwebv": sub.meta[:, 2]}).to_csv(directory / "metadata.csv", index=False)
    return sub.object_id


# ---------------------------------------------------------------------------- the format


def test_manifest_is_versioned_documented_and_checksummed(exported):
    run_dir, out_dir = exported
    manifest = json.loads((out_dir / "manifest.json").read_text())
    assert manifest["format"] == "astroflax-export" and manifest["format_version"] == 1
    assert set(manifest["files"]) == {"model.stablehlo", "params.npz"}
    for name, entry in manifest["files"].items():
        import hashlib

        assert hashlib.sha256((out_dir / name).read_bytes()).hexdigest() == entry["sha256"]
        assert (out_dir / name).stat().st_size == entry["bytes"]
    # Only what the prediction reads: no labels, weights or ids.
    assert [s["name"] for s in manifest["inputs"]] == ["band", "flux", "flux_err", "mask", "meta", "time"]
    assert all(s["shape"][0] == "b" for s in manifest["inputs"])
    assert manifest["output"] == {"dtype": "float32", "shape": ["b", 14], "kind": "probabilities"}
    pre = manifest["preprocessing"]
    assert len(pre["class_names"]) == 14 and "meta_mean" in pre["normalisation"] and "meta_std" in pre["normalisation"]
    calibration = json.loads((run_dir / "calibration.json").read_text())  # written by `evaluate`
    assert pre["temperature"] == pytest.approx(calibration["temperature"])
    with np.load(out_dir / "params.npz", allow_pickle=False) as npz:  # plain arrays, no pickle
        assert sorted(npz.files) == sorted(manifest["params"]["arrays"])
        assert sum(npz[k].size for k in npz.files) == manifest["params"]["count"]


def test_exported_predictions_equal_in_process_predictions(exported, test_arrays):
    run, arrays = test_arrays
    model = load_export(exported[1])
    inputs = {s["name"]: arrays[s["name"]] for s in model.inputs}
    for n in (1, 7):
        ours = run.predict({k: v[:n] for k, v in arrays.items()})
        theirs = model.predict({k: v[:n] for k, v in inputs.items()})
        assert theirs.shape == ours.shape == (n, 14)
        np.testing.assert_allclose(theirs, ours, rtol=1e-5, atol=1e-6)
    # 40 rows in chunks of 7 (the last one padded) give the same rows as one in-process pass.
    everything = run.predict(arrays)
    np.testing.assert_allclose(model.predict(inputs, batch_size=7), everything, rtol=1e-5, atol=1e-6)
    calibrated = model.predict(inputs, batch_size=7, calibrated=True)
    logits = np.log(everything.astype(np.float64)) / model.temperature
    expected = np.exp(logits - logits.max(1, keepdims=True))
    np.testing.assert_allclose(calibrated, expected / expected.sum(1, keepdims=True), rtol=1e-4, atol=1e-6)


def test_loader_runs_standalone_without_astroflax(exported, test_arrays, tmp_path):
    """The loader file alone, in a fresh interpreter where astroflax cannot be imported."""
    run, arrays = test_arrays
    model = load_export(exported[1])
    np.savez(tmp_path / "inputs.npz", **{s["name"]: arrays[s["name"]][:5] for s in model.inputs})
    shutil.copy(LOADER, tmp_path / "serve_loader.py")
    script = (
        "import sys, numpy as np\n"
        "sys.modules['astroflax'] = None  # any import of astroflax now fails\n"
        "import serve_loader\n"
        f"m = serve_loader.load_export({str(exported[1])!r})\n"
        "x = dict(np.load('inputs.npz'))\n"
        "np.save('out.npy', m.predict(x))\n"
        "print(sorted(k for k, v in sys.modules.items() if v is not None and k.startswith(('astroflax', 'flax', 'optax', 'orbax'))))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, env=env,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "[]"
    np.testing.assert_allclose(np.load(tmp_path / "out.npy"), run.predict({k: v[:5] for k, v in arrays.items()}),
                               rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------ damaged exports


def _damage(src: Path, dst: Path, how: str) -> None:
    shutil.copytree(src, dst)
    if how == "tampered":
        data = bytearray((dst / "params.npz").read_bytes())
        data[len(data) // 2] ^= 0xFF
        (dst / "params.npz").write_bytes(bytes(data))
    elif how == "missing":
        (dst / "model.stablehlo").unlink()
    elif how == "version":
        manifest = json.loads((dst / "manifest.json").read_text())
        manifest["format_version"] = 2
        (dst / "manifest.json").write_text(json.dumps(manifest))
    elif how == "malformed":
        text = (dst / "manifest.json").read_text()
        (dst / "manifest.json").write_text(text[: len(text) // 2])


DAMAGE = [
    ("tampered", "params.npz: sha256"),
    ("missing", "model.stablehlo: file listed in manifest.json is missing"),
    ("version", "format_version 2 is not supported"),
    ("malformed", "manifest.json: not valid JSON"),
]


@pytest.mark.parametrize("how, fragment", DAMAGE)
def test_damaged_export_gives_one_clear_error(exported, tmp_path, how, fragment):
    bad = tmp_path / "bad"
    _damage(exported[1], bad, how)
    with pytest.raises(ExportFormatError) as exc:
        load_export(bad)
    assert isinstance(exc.value, ValueError)
    message = str(exc.value)
    assert fragment in message and "\n" not in message, message


@pytest.mark.parametrize("how, fragment", [DAMAGE[0], DAMAGE[3]])
def test_predict_on_a_damaged_export_exits_2_in_one_line(exported, tmp_path, how, fragment, capsys):
    bad = tmp_path / "bad"
    _damage(exported[1], bad, how)
    user = tmp_path / "user"
    write_user_lightcurves(user, 3)
    code, _, err = run_main(["predict", str(bad), "--input", str(user), "--output", str(tmp_path / "p.csv")], capsys)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and fragment in lines[0], err
    assert "Traceback" not in err and not (tmp_path / "p.csv").exists()


# ------------------------------------------------------------------ predict on exports


def test_predict_with_an_export_matches_predict_with_the_run(exported, tmp_path, capsys):
    run_dir, out_dir = exported
    ids = write_user_lightcurves(tmp_path / "user", 9)
    code, _, err = run_main(["predict", str(out_dir), "--input", str(tmp_path / "user"),
                             "--output", str(tmp_path / "export.csv")], capsys)
    assert code == 0, err
    assert "export of transients" in err and "temperature scaling" in err
    code, _, err = run_main(["predict", str(run_dir), "--input", str(tmp_path / "user"),
                             "--output", str(tmp_path / "run.csv")], capsys)
    assert code == 0, err
    a = list(csv.DictReader((tmp_path / "export.csv").open()))
    b = list(csv.DictReader((tmp_path / "run.csv").open()))
    assert [int(r["object_id"]) for r in a] == [int(i) for i in ids] == [int(r["object_id"]) for r in b]
    assert [r["predicted_class"] for r in a] == [r["predicted_class"] for r in b]
    cols = [c for c in a[0] if c.startswith("p_")]
    assert len(cols) == 14
    np.testing.assert_allclose([[float(r[c]) for c in cols] for r in a], [[float(r[c]) for c in cols] for r in b],
                               rtol=1e-4, atol=1e-6)


def test_export_refuses_to_overwrite_a_foreign_directory(exported, tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("mine")
    code, _, err = run_main(["export", str(exported[0]), "--out", str(tmp_path)], capsys)
    assert code == 2 and "is not an export directory" in err
    assert (tmp_path / "notes.txt").read_text() == "mine"
