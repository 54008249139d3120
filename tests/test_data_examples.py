"""`astroflax data example`: the example user data of each task reads back through the task's
own user-data reader with the rows, labels, masks and splits it was written with."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import run_main

from astroflax.config import build_config
from astroflax.data import examples
from astroflax.tasks import get_task


def load(task: str, path, *overrides: str):
    cfg = build_config(task, None, None, [f"data.path={path}", *overrides])
    return get_task(task).load_data(cfg)


def rows(ds, split: str) -> int:
    return len(next(iter(ds.splits[split].values())))


def test_photoz_catalogue_sentinels_become_masks(tmp_path):
    path, settings = examples.photoz(tmp_path)
    ds = load("photoz", path)
    n = sum(rows(ds, s) for s in ("train", "val", "test"))
    assert n == 9988 and settings == ["--preset", "quick"]  # every galaxy kept: missing bands are masked
    import pandas as pd

    cat = pd.read_parquet(path)
    expected_u = int((cat["mag_u"] == -99).sum())
    assert 0.04 * n < expected_u < 0.06 * n
    info = ds.info
    text = repr(info)
    assert str(expected_u) in text  # the per-band mask count of u is recorded in data_info


def test_lightcurve_and_image_examples_read_back(tmp_path):
    path, _ = examples.variables(tmp_path / "var", n_per_class=12)
    ds = load("variables", path)
    assert ds.info["split_sizes"] == {"train": 72, "val": 8, "test": 16}  # 70/10/20 of 12 per class, by class
    visits = sum(int(np.asarray(ds.splits[s]["mask"]).sum()) for s in ("train", "val", "test"))
    assert visits + sum(e["rows"] for e in ds.info["dropped"]) == ds.info["source"]["rows_read"]
    assert len(ds.info["class_names"]) == 8
    path, _ = examples.transients(tmp_path / "tr", n=300)
    ds = load("transients", path)
    assert sum(rows(ds, s) for s in ("train", "val", "test")) == 300
    path, _ = examples.morphology(tmp_path / "morph", per_class=8)
    ds = load("morphology", path, "data.image_size=32")
    names = ds.info["class_names"]
    assert sum(rows(ds, s) for s in ("train", "val", "test")) == 8 * len(names)
    assert ds.splits["train"]["image"].shape[1:] == (32, 32, 3)


def test_spectra_example_has_partial_coverage_and_units(tmp_path):
    path, _ = examples.spectra(tmp_path / "spec", per_template=4)
    ds = load("spectra", path)
    n = sum(rows(ds, s) for s in ("train", "val", "test"))
    assert n == 44 * 4 and not ds.info.get("dropped")
    masks = np.concatenate([np.asarray(ds.splits[s]["mask"]) for s in ("train", "val", "test")])
    partial = (masks.mean(axis=1) < 0.99).sum()
    assert partial == 44  # every fourth copy covers only the red end (64% of the grid)


def test_cli_refuses_unknown_task_and_existing_dir(tmp_path, capsys):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    code, _, err = run_main(["data", "example", "photoz", "--out", str(tmp_path / "full")], capsys)
    assert code == 2 and "already exists and is not empty" in err
    code, _, err = run_main(["data", "example", "digits", "--out", str(tmp_path / "d")], capsys)
    assert code == 2 and "no example user data" in err
    with pytest.raises(Exception):
        examples.write_example("digits", tmp_path / "d2")
