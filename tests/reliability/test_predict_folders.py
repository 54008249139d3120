"""``astroflax predict`` on a folder of spectra or images reads it in batches of files
(``--chunk-rows`` files at a time, ``Task.input_batches``): the predictions equal those of one
whole read, row for row, and a bad file still stops the run with its one-line error and no
output file (not a partial one from the batches before it)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import run_main


def _spectra(folder: Path, n: int) -> Path:
    folder.mkdir(parents=True)
    w = np.linspace(3000.0, 10000.0, 1500)
    for i in range(n):  # different continuum slopes and line depths: different predictions
        f = (1.0 + 0.05 * i * (w - 6500.0) / 3500.0) * (1.0 - 0.3 * np.exp(-0.5 * ((w - 6563.0) / (5.0 + i)) ** 2))
        pd.DataFrame({"wavelength": w, "flux": f}).to_csv(folder / f"star{i:02d}.csv", index=False)
    return folder


def _images(folder: Path, n: int) -> Path:
    from PIL import Image

    folder.mkdir(parents=True)
    rng = np.random.default_rng(4)
    for i in range(n):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8), mode="RGB").save(buf, format="PNG")
        (folder / f"g{i:02d}.png").write_bytes(buf.getvalue())
    return folder


@pytest.mark.parametrize("task, make, bad_name, bad_bytes", [
    ("spectra", _spectra, "star03.csv", b"wavelength,flux\n5000,abc\n"),
    ("morphology", _images, "g03.png", b"not a png"),
])
def test_folder_in_batches_equals_one_read(task, make, bad_name, bad_bytes, tiny_run, tmp_path, capsys):
    folder = make(tmp_path / "in", 7)
    run = tiny_run(task)
    outs = {}
    for size in (3, 1000):  # 3 batches (3 + 3 + 1 files) vs one batch of all 7
        out = tmp_path / f"p{size}.csv"
        code, _, err = run_main(["predict", str(run), "--input", str(folder), "--output", str(out),
                                 "--chunk-rows", str(size)], capsys)
        assert code == 0, err
        assert "Wrote 7 predictions" in err, err
        outs[size] = pd.read_csv(out)
    assert len(outs[3]) == 7 and outs[3]["file"].tolist() == sorted(p.name for p in folder.iterdir())
    pd.testing.assert_frame_equal(outs[3], outs[1000])
    from astroflax.runs import load_run

    loaded = load_run(run, "best")  # what predict iterated over: 3 + 3 + 1 files, in file order
    batches = loaded.task.input_batches(loaded.cfg, loaded.info, folder, 3)
    assert [list(ids) for _, ids in batches] == [outs[3]["file"].tolist()[i:i + 3] for i in (0, 3, 6)]
    probs = outs[3].filter(like="p_").to_numpy()
    assert np.isfinite(probs).all() and len(np.unique(probs.round(6), axis=0)) > 1  # not one row repeated
    # A bad file in the second batch: the one-line error, and no output (not the first batch's rows).
    (folder / bad_name).write_bytes(bad_bytes)
    out = tmp_path / "bad.csv"
    code, _, err = run_main(["predict", str(run), "--input", str(folder), "--output", str(out), "--chunk-rows", "3"],
                            capsys)
    assert code == 2, err
    lines = [ln for ln in err.splitlines() if ln.startswith("error")]
    assert len(lines) == 1 and bad_name in lines[0], err
    assert not out.exists() and not out.with_name("bad.csv.tmp").exists()
