"""User image data for ``morphology`` and ``vae``: ImageFolder, tables with vote fractions, Galaxy10
HDF5, FITS cubes, pixel-row CSVs; the real Galaxy Zoo cutouts and MNIST rows of ../shared/data."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import run_main, set_args

from astroflax.config import build_config
from astroflax.data import images as im
from astroflax.errors import DataError
from astroflax.tasks import get_task

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
GZ = SHARED / "galaxy_zoo_smoke" / "decals"
MNIST_CSV = SHARED / "mnist5k" / "mnist_5k.csv.gz"
VOTES = ("smooth-or-featured_smooth", "smooth-or-featured_featured-or-disk", "smooth-or-featured_artifact")


def _gz_votes() -> pd.DataFrame:
    """The 18 DECaLS cutouts: png path, smooth/featured/artifact votes (counts for volunteer tables,
    Zoobot fractions for the automated one)."""
    pngs = {p.stem: p for p in GZ.rglob("*.png")}
    frames = []
    for name in ("gz_decals_volunteers_1_and_2.csv", "gz_decals_volunteers_5.csv", "gz_decals_auto_posteriors.csv"):
        df = pd.read_csv(GZ / name)
        cols = list(VOTES) if VOTES[0] in df else [f"{c}_fraction" for c in VOTES]
        frames.append(pd.DataFrame({"png": [pngs[i] for i in df["iauname"]], "smooth": df[cols[0]],
                                    "featured": df[cols[1]], "artifact": df[cols[2]]}))
    return pd.concat(frames, ignore_index=True)


@pytest.fixture(scope="module")
def gz_folder(tmp_path_factory) -> Path:
    """ImageFolder of the real PNGs, class = the larger of the smooth and featured votes."""
    root = tmp_path_factory.mktemp("gz") / "folder"
    for r in _gz_votes().itertuples():
        cls = "smooth" if r.smooth >= r.featured else "featured"
        (root / cls).mkdir(parents=True, exist_ok=True)
        shutil.copy(r.png, root / cls / r.png.name)
    (root / "smooth" / "notes.txt").write_text("not an image")
    return root


def _cfg(task: str, *overrides: str):
    return build_config(task, None, None, list(overrides))


def test_image_folder_of_real_cutouts(gz_folder: Path):
    votes = _gz_votes()
    n_smooth = int((votes.smooth >= votes.featured).sum())
    ds = get_task("morphology").load_data(_cfg("morphology", f"data.path={gz_folder}", "data.image_size=32"))
    info = ds.info
    assert info["class_names"] == ["featured", "smooth"] and info["num_classes"] == 2
    assert n_smooth == 15 and sum(info["class_counts"]["train"]) + sum(info["class_counts"]["val"]) + \
        sum(info["class_counts"]["test"]) == 18
    assert [sum(c) for c in zip(*info["class_counts"].values())] == [3, 15]
    assert info["split_sizes"] == {"train": 11, "val": 3, "test": 4}
    assert info["class_counts"]["train"] == [1, 10] and info["classes_without_training_images"] == []
    assert info["split_method"].startswith("stratified 70/10/20 by object, seed 20240612")
    assert info["source"]["rows_read"] == 19 and info["source"]["images_used"] == 18
    assert info["dropped"] == [{"reason": "not an image file (expected .png, .jpg, .jpeg, .fits, .fit, .fts, .fits.gz, "
                                          ".fit.gz)", "rows": 1, "first": ["smooth/notes.txt"]}]
    assert info["channels"] == 3 and info["bands"] == ["g", "r", "i"]
    tr = ds.splits["train"]
    assert tr["image"].shape == (11, 32, 32, 3) and tr["image"].dtype == np.float32 and "soft_label" not in tr
    assert np.isfinite(tr["image"]).all()
    json.dumps(info)  # data_info.json
    # The version follows settings and content.
    again = get_task("morphology").load_data(_cfg("morphology", f"data.path={gz_folder}", "data.image_size=32"))
    seed = get_task("morphology").load_data(_cfg("morphology", f"data.path={gz_folder}", "data.image_size=32",
                                                 "data.split_seed=1"))
    assert again.version == ds.version != seed.version and ds.version.startswith("user-")


def test_vote_table_gives_soft_labels_and_records_drops(tmp_path: Path):
    votes = _gz_votes()
    rows = [{"file": str(r.png), "smooth": r.smooth, "featured": r.featured, "artifact": r.artifact}
            for r in votes.itertuples()]
    shutil.copy(votes.png[0], tmp_path / "local.png")
    rows.append({"file": "local.png", "smooth": 0, "featured": 0, "artifact": 0})  # line 20: no votes
    pd.DataFrame(rows).to_csv(tmp_path / "votes.csv", index=False)
    opt = im.ImageOptions(size=16, vote_columns=("smooth", "featured", "artifact"))
    u = im.load_user_images(tmp_path / "votes.csv", opt)
    v = votes[["smooth", "featured", "artifact"]].to_numpy(np.float64)
    assert v[:12].sum(axis=1).min() >= 3  # raw counts in the volunteer rows: normalising matters
    np.testing.assert_allclose(u.soft, v / v.sum(axis=1, keepdims=True), rtol=1e-6)
    np.testing.assert_array_equal(u.labels, v.argmax(axis=1))
    assert u.class_names == ["smooth", "featured", "artifact"] and u.rows_read == 19 and len(u.ids) == 18
    assert u.dropped.to_info() == [{"reason": "votes sum to 0 in smooth, featured, artifact (no soft label)",
                                    "rows": 1, "first": ["line 20"]}]
    # The task keeps them as soft_label; a split column is obeyed.
    pd.DataFrame(rows).assign(split=["train"] * 12 + ["val"] * 3 + ["test"] * 4).to_csv(tmp_path / "s.csv", index=False)
    ds = get_task("morphology").load_data(_cfg("morphology", f"data.path={tmp_path / 's.csv'}", "data.image_size=16",
                                               "data.vote_columns=[smooth,featured,artifact]"))
    assert ds.info["split_sizes"] == {"train": 12, "val": 3, "test": 3} and ds.info["soft_labels"] is True
    assert ds.info["split_method"] == "given by the input (the 'split' column)"
    np.testing.assert_allclose(ds.splits["train"]["soft_label"], u.soft[:12], rtol=1e-6)
    assert ds.splits["test"]["object_id"].tolist() == [15, 16, 17]
    # Bad cells: one line naming file, column, line and value.
    bad = pd.DataFrame(rows[:3]).assign(smooth=[1, -2, 3])
    bad.to_csv(tmp_path / "neg.csv", index=False)
    with pytest.raises(DataError, match=r"neg.csv: column 'smooth', line 3: expected a vote count or fraction "
                                        r"in \[0, inf\]|neg.csv: column 'smooth', line 3: expected a vote count"):
        im.load_user_images(tmp_path / "neg.csv", opt)
    pd.DataFrame({"file": ["local.png", "missing.png"], "label": ["a", "b"]}).to_csv(tmp_path / "m.csv", index=False)
    with pytest.raises(DataError, match=r"m.csv: column 'file', line 3: no such image file .*missing.png"):
        im.load_user_images(tmp_path / "m.csv", im.ImageOptions(size=16))


def test_galaxy10_hdf5_layout(tmp_path: Path):
    import h5py
    from PIL import Image

    pngs = sorted(GZ.rglob("*.png"))[:12]
    rgb = np.stack([np.asarray(Image.open(p).convert("RGB").resize((69, 69))) for p in pngs])
    ans = np.array([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 2, 2], np.uint8)
    with h5py.File(tmp_path / "Galaxy10.h5", "w") as f:
        f["images"], f["ans"] = rgb, ans
    u = im.load_user_images(tmp_path / "Galaxy10.h5", im.ImageOptions(size=69))
    assert u.images.shape == (12, 69, 69, 3) and u.labels.tolist() == ans.tolist()
    assert u.class_names == im.GALAXY10_SDSS_NAMES and u.more["class_names_from"] == "Galaxy10 SDSS (69x69)"
    np.testing.assert_array_equal(u.images[3, 10, 20], rgb[3, 10, 20, ::-1])  # RGB -> g, r, i
    assert np.all(u.full_scale == 255)
    ds = get_task("morphology").load_data(_cfg("morphology", f"data.path={tmp_path / 'Galaxy10.h5'}",
                                               "data.image_size=32"))
    assert ds.info["source"]["format"] == "HDF5 (Galaxy10 layout: images, ans)" and ds.info["source"]["rows_read"] == 12
    assert ds.splits["train"]["image"].shape[1:] == (32, 32, 3) and ds.info["num_classes"] == 10
    with h5py.File(tmp_path / "bad.h5", "w") as f:
        f["images"], f["ans"] = rgb, np.where(np.arange(12) == 4, 10, ans)
    with pytest.raises(DataError, match=r"bad.h5: column 'ans', row 4 \(0-based\): expected a class index 0-9 "
                                        r"\(10 class names\), got 10"):
        im.load_user_images(tmp_path / "bad.h5", im.ImageOptions(size=32))


def test_fits_cubes_bands_and_bad_files(tmp_path: Path, gz_folder: Path, capsys):
    from astropy.io import fits

    rng = np.random.default_rng(0)
    root = tmp_path / "cubes"
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True)
        for i in range(4):
            fits.PrimaryHDU(rng.normal(size=(4, 40, 50)).astype(np.float32)).writeto(root / cls / f"{i}.fits")
    ds = get_task("morphology").load_data(_cfg("morphology", f"data.path={root}", "data.image_size=16"))
    assert ds.info["channels"] == 4 and ds.info["bands"] == ["band0", "band1", "band2", "band3"]
    assert ds.splits["train"]["image"].shape == (4, 16, 16, 4)
    from flax import nnx

    cfg = _cfg("morphology", "data.image_size=16", "model.widths=[4]")
    model = get_task("morphology").build_model(cfg, ds.info, nnx.Rngs(0))
    assert model(ds.splits["train"]["image"]).shape == (4, 2)  # 4 input bands
    # A folder mixing band counts: the file is named.
    fits.PrimaryHDU(rng.normal(size=(40, 40)).astype(np.float32)).writeto(root / "b" / "z_flat.fits")
    with pytest.raises(DataError, match=r"b/z_flat.fits: image has 1 band\(s\), but 0.fits has 4; every image"):
        get_task("morphology").load_data(_cfg("morphology", f"data.path={root}", "data.image_size=16"))
    # Finite in float64, not in float32: named with its pixel.
    huge = np.ones((20, 20))
    huge[3, 7] = 1e39
    fits.PrimaryHDU(huge).writeto(tmp_path / "huge.fits")
    with pytest.raises(DataError, match=r"huge.fits: pixel \(x=7, y=3\) is 1e\+39; expected \|value\| <= 1e\+30"):
        im.read_bands(tmp_path / "huge.fits")
    # A corrupt PNG in an ImageFolder: one-line error (CLI exit 2) or, when asked, a recorded drop.
    broken_root = tmp_path / "broken"
    shutil.copytree(gz_folder, broken_root)
    good = next((broken_root / "featured").iterdir())
    (broken_root / "featured" / "broken.png").write_bytes(good.read_bytes()[:2000])
    code, _, err = run_main(["train", "morphology", "--data", str(broken_root), "--run-dir", str(tmp_path / "r"),
                               *set_args(["data.image_size=16", "train.progress=false"])], capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, err
    assert f"{broken_root / 'featured' / 'broken.png'}: cannot read as an image, the file is damaged or truncated" \
        in lines[0]
    ds = get_task("morphology").load_data(_cfg("morphology", f"data.path={broken_root}", "data.image_size=16",
                                               "data.skip_unreadable=true"))
    drop = [d for d in ds.info["dropped"] if d["reason"].startswith("unreadable")]
    assert drop[0]["rows"] == 1 and "broken.png: cannot read" in drop[0]["first"][0]
    assert sum(ds.info["split_sizes"].values()) == 18


def test_vae_pixel_rows_match_the_bundled_digits():
    ds = get_task("vae").load_data(_cfg("vae", f"data.path={MNIST_CSV}"))
    assert ds.info["split_sizes"] == {"train": 3500, "val": 500, "test": 1000}
    assert ds.info["class_counts"]["train"] == [350] * 10 and ds.info["class_names"] == [str(i) for i in range(10)]
    assert ds.info["source"]["rows_read"] == 5000 and ds.info["image_shape"] == [28, 28]
    # Same pixels as the packaged copy of the same rows (binarized at 128).
    from astroflax.data.digits import flat_pixels, load_bundled_mnist

    b = load_bundled_mnist()
    tr = ds.splits["train"]
    pos = {int(r): i for i, r in enumerate(b["source_row"])}
    idx = [pos[int(r)] for r in tr["example_id"][:50]]
    np.testing.assert_array_equal(tr["x"][:50], flat_pixels(b["image"][idx], "threshold"))
    np.testing.assert_array_equal(tr["label"][:50], b["label"][idx])


def test_user_data_convert_train_predict(tmp_path: Path, gz_folder: Path, capsys):
    """The one training test: morphology converted from a vote table then trained from the dataset
    directory; the vae on the ImageFolder with the folder as the condition (a few steps each)."""
    rows = [{"file": str(r.png), "smooth": r.smooth, "featured": r.featured} for r in _gz_votes().itertuples()]
    pd.DataFrame(rows).to_csv(tmp_path / "votes.csv", index=False)
    tiny = ["data.image_size=16", "data.vote_columns=[smooth,featured]", "model.widths=[4,8]", "model.space_to_depth=1",
            "train.steps=3", "train.batch_size=8", "train.eval_every=3", "train.log_every=3", "checkpoint.every=3",
            "schedule.warmup_steps=1", "train.progress=false"]
    store = tmp_path / "store"
    code, _, err = run_main(["data", "convert", "morphology", "--input", str(tmp_path / "votes.csv"), "--out",
                             str(store), *set_args(tiny)], capsys)
    assert code == 0, err
    run = tmp_path / "run"
    code, _, err = run_main(["train", "morphology", "--data", str(store), "--run-dir", str(run), *set_args(tiny)],
                            capsys)
    assert code == 0, err
    info = json.loads((run / "data_info.json").read_text())
    assert info["split_sizes"] == {"train": 11, "val": 3, "test": 4} and info["class_names"] == ["smooth", "featured"]
    assert info["dataset"]["rows"] == info["split_sizes"] and info["source"]["rows_read"] == 18
    rep = json.loads((run / "eval" / "test.json").read_text())
    assert rep["n"] == 4 and len(rep["confusion_matrix"]) == 2 and "galaxy_zoo_smoke" not in rep
    out = tmp_path / "pred.csv"
    code, _, err = run_main(["predict", str(run), "--input", str(gz_folder), "--output", str(out)], capsys)
    assert code == 0, err
    pred = list(csv.DictReader(out.open()))
    assert len(pred) == 18 and pred[0]["file"].startswith("featured/")
    assert all(abs(float(r["p_smooth"]) + float(r["p_featured"]) - 1) < 1e-4 for r in pred)

    vae_run = tmp_path / "vae"
    code, _, err = run_main(["train", "vae", "--data", str(gz_folder), "--run-dir", str(vae_run), *set_args([
        "model.latent_dim=2", "model.hidden=[16]", "model.eval_importance_samples=2", "train.steps=3",
        "train.batch_size=8", "train.eval_every=3", "train.log_every=3", "checkpoint.every=3",
        "schedule.warmup_steps=1", "train.progress=false"])], capsys)
    assert code == 0, err
    vinfo = json.loads((vae_run / "data_info.json").read_text())
    assert vinfo["num_pixels"] == 784 and vinfo["class_names"] == ["featured", "smooth"]
    vrep = json.loads((vae_run / "eval" / "test.json").read_text())
    assert vrep["num_images"] == 4 and vrep["elbo"] < 0 and "conditional_accuracy" not in vrep
    assert vrep["samples_per_class"] == {"featured": 1, "smooth": 3}
