"""User light curves on real files: ZTF forced photometry (transients) and MACHO/ASAS visit tables (variables).

The raw files live in ``../shared/data`` (next to the checkout); the tests turn them into the
layouts users have. One short training run (transients on the ZTF curves, via ``data convert``).
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import run_main

from astroflax.config import build_config
from astroflax.data import lightcurves as lc
from astroflax.data import ztf
from astroflax.errors import DataError
from astroflax.tasks import get_task

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
ZTF_DIR = SHARED / "ztf_bts"
VAR_DIR = SHARED / "variable_stars"
ZTF_NAMES = ["ZTF18aamvfeb", "ZTF18aavvnzu", "ZTF18aawgrxz", "ZTF19aapreis", "ZTF20actpavu", "ZTF20acueziy",
             "ZTF20acuobve", "ZTF20acvkjrm", "ZTF20acvmzfv", "ZTF20acwjhpo"]


# ----------------------------------------------------------------------------- ZTF forced photometry
@pytest.fixture(scope="module")
def ztf_set():
    return ztf.load_forced_photometry(ZTF_DIR)


def test_ztf_ten_curves_bands_labels_redshifts(ztf_set):
    lcs, names, source, rows = ztf_set
    assert names == ZTF_NAMES and len(lcs) == 10 and rows == 14827 == lcs.offsets[-1]
    assert source["files"] == 10 and source["ignored_files"] == []
    # 'ZTF g' and 'ZTF_g' both -> g (1); r -> 2; i -> 3 (276 rows are written with a space)
    assert np.bincount(lcs.passband, minlength=6).tolist() == [0, 6343, 7002, 1482, 0, 0]
    assert lcs.class_names == ["SN II", "SN Ia", "SN Ic", "SN Ic-BL", "TDE"]
    assert lcs.labels.tolist() == [1, 1, 0, 4, 0, 2, 1, 1, 3, -1]  # the last one is '#bts_class=-'
    assert lcs.meta[0, 0] == pytest.approx(0.03149) and lcs.meta_missing[:, 0].tolist() == [False] * 9 + [True]
    assert lcs.meta_missing[:, 2].all()  # mwebv is not in the files
    # first row of ZTF18aamvfeb: ampl -50.43954183033226, ampl.err 30.11210852457641, magzp 25.754417, 'ZTF i'
    assert lcs.mjd[0] == 58173.4874537 and lcs.passband[0] == 3
    assert lcs.flux[0] == pytest.approx(-50.43954183033226 * 10 ** (0.4 * (27.5 - 25.754417)), rel=1e-6)  # -251.770
    assert lcs.flux_err[0] == pytest.approx(150.30532, rel=1e-6)
    assert np.all(np.diff(lcs.mjd[: lcs.offsets[1]]) >= 0)


def test_ztf_training_data_drops_the_unclassified_object():
    task = get_task("transients")
    cfg = build_config("transients", None, None, [f"data.path={ZTF_DIR}", "data.max_len=32"])
    d = task.load_data(cfg)
    info = d.info
    assert info["source"]["format"].startswith("ztf_fp") and info["source"]["rows_read"] == 14827
    assert info["dropped"] == [{"reason": "object without a class (empty 'target' or #bts_class=-): kept for predict, "
                                          "not trained on", "rows": 932, "first": ["object ZTF20acwjhpo (932 observations)"]}]
    assert info["rows_used"] + 932 == 14827 and info["objects"] == 9
    assert sum(info["split_sizes"].values()) == 9 and info["split_sizes"] == {"train": 2, "val": 5, "test": 2}
    assert "stratified 70/10/20" in info["split_method"] and "seed 20181001" in info["split_method"]
    assert info["object_names"] == ZTF_NAMES[:9] and info["meta_names"] == list(lc.META_COLUMNS)
    assert d.splits["train"]["band"].max() == 3 and d.splits["train"]["mask"].shape == (2, 32)
    # the version follows every data setting; PLAsTiCC names on request (Ic, Ic-BL -> SN Ibc)
    other = task.load_data(build_config("transients", None, None, [f"data.path={ZTF_DIR}", "data.max_len=32",
                                                                   "data.split_seed=1", "data.class_names=plasticc"]))
    assert other.version != d.version and len(other.info["class_names"]) == 14
    counts = np.sum([other.info["class_counts"][s] for s in ("train", "val", "test")], axis=0)
    assert {other.info["class_names"][i]: int(c) for i, c in enumerate(counts) if c} == {
        "TDE": 1, "SN II": 2, "SN Ibc": 2, "SN Ia": 4}


def test_ztf_detection_and_bad_files(tmp_path):
    assert lc.detect_format(ZTF_DIR) == "ztf_fp" and lc.detect_format(ZTF_DIR / "ZTF20acvmzfv_bl.csv") == "ztf_fp"
    src = (ZTF_DIR / "ZTF20acvmzfv_bl.csv").read_text().splitlines(keepends=True)
    assert src[19].split(",")[10] == "ZTF_r"  # line 20 = first data row (18 header lines + column names)

    def write(lines: list[str]) -> Path:
        d = tmp_path / "bad"
        d.mkdir(exist_ok=True)
        (d / "one.csv").write_text("".join(lines))
        return d / "one.csv"

    bad = list(src)
    bad[24] = bad[24].replace(",ZTF_r,", ",ZTF_x,").replace(",ZTF_g,", ",ZTF_x,")
    path = write(bad)
    with pytest.raises(DataError) as e:
        ztf.load_forced_photometry(path.parent)
    assert str(e.value) == (f"{path}: column 'filter', line 25: expected a ZTF filter 'ZTF g', 'ZTF r' or 'ZTF i' "
                            "(also written 'ZTF_g' or 'g'), got 'ZTF_x'")
    bad = list(src)
    cells = bad[21].split(",")
    cells[11] = str(float(cells[11]) + 2400000.5)  # a JD instead of an MJD
    bad[21] = ",".join(cells)
    with pytest.raises(DataError, match=r"one.csv: column 'obsmjd', line 22: expected a Modified Julian Date in "
                                        r"\[0, 1e\+06\] \(days; a Julian Date is MJD \+ 2400000.5\), got 2458"):
        ztf.load_forced_photometry(write(bad))
    bad = [x.replace("#bts_z=0.06", "#bts_z=zero") for x in src]
    with pytest.raises(DataError, match=r"one.csv: header line #bts_z=: expected a redshift in \[0, 20\] or '-', got 'zero'"):
        ztf.load_forced_photometry(write(bad))


def test_ztf_convert_train_predict(tmp_path, capsys):
    """The one training run of this file: data convert -> train --data DIR (2 steps) -> predict on the files."""
    ds, run, pred = tmp_path / "ds", tmp_path / "run", tmp_path / "pred.csv"
    code, _, err = run_main(["data", "convert", "transients", "--input", str(ZTF_DIR), "--out", str(ds),
                             "--set", "data.max_len=32"], capsys)
    assert code == 0 and "train 2, val 5, test 2 rows" in err
    tiny = ["model.d_model=16", "model.num_heads=2", "model.num_layers=1", "train.batch_size=2", "train.steps=2",
            "train.eval_every=2", "train.log_every=2", "checkpoint.every=2", "schedule.warmup_steps=1"]
    code, _, err = run_main(["train", "transients", "--data", str(ds), "--run-dir", str(run), "--no-evaluate",
                             *[a for o in tiny for a in ("--set", o)]], capsys)
    assert code == 0, err
    info = json.loads((run / "data_info.json").read_text())
    assert info["dropped"][0]["rows"] == 932 and info["source"]["rows_read"] == 14827
    assert info["class_names"] == ["SN II", "SN Ia", "SN Ic", "SN Ic-BL", "TDE"]
    code, _, err = run_main(["predict", str(run), "--input", str(ZTF_DIR), "--output", str(pred)], capsys)
    assert code == 0, err
    out = pd.read_csv(pred)
    assert out["object_id"].tolist() == ZTF_NAMES  # the unclassified ZTF20acwjhpo is predicted on too
    p = out[[f"p_{c}" for c in info["class_names"]]].to_numpy()
    assert np.allclose(p.sum(1), 1, atol=1e-4)


# ----------------------------------------------------------------------------- variables: MACHO + ASAS
def _asas() -> tuple[pd.DataFrame, pd.DataFrame]:
    classes = pd.read_csv(VAR_DIR / "asas_training_subset_classes_with_metadata.dat")
    rows = []
    with tarfile.open(VAR_DIR / "asas_training_subset.tar.gz") as tar:
        for m in sorted((m for m in tar.getmembers() if m.isfile()), key=lambda m: m.name):
            a = pd.read_csv(tar.extractfile(m), header=None, names=["time", "mag", "err"])
            rows.append(a.assign(object_id=f"ASAS {Path(m.name).stem}", band="V"))
    labels = pd.DataFrame({"object_id": "ASAS " + classes["filename"].astype(str), "class": classes["target"]})
    return pd.concat(rows)[["object_id", "time", "band", "mag", "err"]], labels


def _macho() -> pd.DataFrame:
    rows = []
    for p in sorted(VAR_DIR.glob("lc_*.tar.bz2")):
        with tarfile.open(p) as tar:
            for m in tar.getmembers():
                a = pd.read_csv(io.BytesIO(tar.extractfile(m).read()), sep=r"\s+", comment="#", header=None,
                                names=["mjd", "mag", "err"])
                rows.append(a.assign(object_id=p.name[3:-len(".tar.bz2")], band=m.name.split(".")[-2]))
    return pd.concat(rows)[["object_id", "mjd", "band", "mag", "err"]]


def _variables(path: Path, *more: str):
    return get_task("variables").load_data(build_config("variables", None, None, [f"data.path={path}", "data.max_len=64", *more]))


def test_variables_asas_labels_table_and_macho_without_labels(tmp_path):
    asas, labels = _asas()
    vis = pd.concat([asas, _macho().rename(columns={"mjd": "time"})])
    vis.to_csv(tmp_path / "visits.csv", index=False)
    labels.to_parquet(tmp_path / "labels.parquet")
    d = _variables(tmp_path)
    info = d.info
    assert len(vis) == 3881 + 15118 == info["source"]["rows_read"] and info["source"]["objects"] == 17
    assert info["source"]["files"] == ["visits.csv", "labels.parquet"] and info["source"]["labels_rows"] == 7
    assert info["class_names"] == ["Classical_Cepheid", "Mira", "W_Ursae_Maj"] and info["num_classes"] == 3
    assert info["split_sizes"] == {"train": 1, "val": 3, "test": 3}  # 3 Mira, 2+2: one of each class in val and test
    dropped = {e["reason"]: e["rows"] for e in info["dropped"]}
    assert dropped["object without a class (no labels row or an empty class cell)"] == 15118  # the 10 MACHO curves
    assert info["visits_used"] + sum(dropped.values()) == len(vis)  # every visit accounted for
    assert info["object_names"] == sorted(labels["object_id"])
    allv = np.concatenate([s["band"][s["mask"]] for s in d.splits.values()])
    assert set(allv.tolist()) == {1} and info["visits_used"] == len(allv)  # V -> g
    labs = np.concatenate([s["label"] for s in d.splits.values()])
    assert np.bincount(labs).tolist() == [2, 3, 2]
    assert _variables(tmp_path, "data.split_seed=3").version != d.version != _variables(tmp_path, "data.max_err=0.2").version


def test_variables_one_table_with_class_and_split_columns(tmp_path):
    macho = _macho()
    names = sorted(macho["object_id"].unique())
    cls = {n: ("A" if i % 2 else "B") for i, n in enumerate(names)}
    split = {n: ["train", "train", "val", "test", "train"][i % 5] for i, n in enumerate(names)}
    macho = macho.assign(**{"class": macho["object_id"].map(cls), "split": macho["object_id"].map(split)})
    macho.to_csv(tmp_path / "macho.csv.gz", index=False)
    d = _variables(tmp_path / "macho.csv.gz", "data.max_err=0.3")
    info = d.info
    assert info["source"]["rows_read"] == 15118 and info["split_method"] == "the 'split' column of macho.csv.gz"
    assert info["split_sizes"] == {"train": 6, "val": 2, "test": 2} and info["class_names"] == ["A", "B"]
    noisy = int((macho["err"] > 0.3).sum())
    dropped = {e["reason"]: e["rows"] for e in info["dropped"]}
    assert dropped["visit with err > 0.3 mag (data.max_err)"] == noisy > 0
    assert info["visits_used"] + sum(dropped.values()) == 15118
    bands = np.concatenate([s["band"][s["mask"]] for s in d.splits.values()])
    assert set(np.unique(bands).tolist()) == {1, 2}  # MACHO B -> g, R -> r
    # the same directory for predict: labels optional, ids are the user's
    (tmp_path / "pred").mkdir()
    macho.drop(columns=["class", "split"]).to_csv(tmp_path / "pred" / "visits.csv", index=False)
    task = get_task("variables")
    cfg = build_config("variables", None, None, [f"data.path={tmp_path / 'macho.csv.gz'}"])
    arrays, ids = task.load_inputs(cfg, info, tmp_path / "pred")
    assert ids.tolist() == list(dict.fromkeys(macho["object_id"])) and arrays["mask"].shape == (10, 64)


@pytest.mark.parametrize("change, expected", [
    (lambda df: df.assign(band=df["band"].where(df.index != 3, "H")),
     "column 'band', line 5 (object_id ASAS 217801): expected one of u g r i z, 0-4, B or V, got 'H'"),
    (lambda df: df.rename(columns={"time": "mjd"}).assign(mjd=lambda x: x["mjd"] + 2452000.0),
     ("column 'mjd', line 2 (object_id ASAS 217801): expected a Modified Julian Date in [0, 1e+06] "
     "(days; a Julian Date is MJD + 2400000.5), got 2453868.67698 [3881 bad rows in total]")),
    (lambda df: df.assign(**{"class": np.where(df.index == 5, "Mira?", "Mira")}),
     ("column 'class', line 7 (object_id ASAS 217801): class 'Mira?' differs from 'Mira' on line 2; expected "
     "one class per object")),
])
def test_variables_errors_name_file_column_line_value(tmp_path, change, expected):
    asas, _ = _asas()
    asas = change(asas.reset_index(drop=True))
    if "class" not in asas.columns:
        asas["class"] = "Mira"
    asas.to_csv(tmp_path / "v.csv", index=False)
    with pytest.raises(DataError) as e:
        _variables(tmp_path / "v.csv")
    assert str(e.value) == f"{tmp_path / 'v.csv'}: {expected}"


def test_variables_layout_errors(tmp_path):
    asas, labels = _asas()
    asas.to_csv(tmp_path / "visits.csv", index=False)
    with pytest.raises(DataError, match="visits.csv: no class column and no labels table; expected a 'class' column"):
        _variables(tmp_path)
    labels.rename(columns={"class": "kind"}).to_csv(tmp_path / "labels.csv", index=False)
    with pytest.raises(DataError, match=r"labels.csv: missing column 'class'; expected object_id, class\[, split\]"):
        _variables(tmp_path)
    pd.concat([labels, labels.iloc[:1]]).to_csv(tmp_path / "labels.csv", index=False)
    with pytest.raises(DataError, match=r"labels.csv: column 'object_id', line 9: duplicate object_id 'ASAS 217801': "
                                        r"also on line 2"):
        _variables(tmp_path)
