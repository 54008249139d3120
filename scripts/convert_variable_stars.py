"""Convert the real variable-star files in /work/shared/data/variable_stars into one npz (run once).

Inputs (see /work/shared/data/README.md):

* ``rrlyrae_sesar2010/SesarTemplates_{u,g,r,i,z}.txt`` -- Sesar et al. (2010) RR Lyrae phase
  templates, 501 phase points in [0, 1], normalised magnitude (0 = maximum light, 1 = minimum).
* ``lc_*.tar.bz2`` -- 10 MACHO light curves, files ``lc_<field.tile.seq>.{B,R}.mjd``
  (columns MJD, instrumental mag, err; one object has R only). No labels.
* ``asas_training_subset.tar.gz`` + ``asas_training_subset_classes_with_metadata.dat`` -- 7 ASAS
  V-band light curves (time, mag, err) labelled Mira / Classical_Cepheid / W_Ursae_Maj.

Output: ``astroflax/data/files/variable_stars.npz`` (numbers and fixed-width strings only, loadable
with ``allow_pickle=False``). Values are copied unchanged; rows are sorted by time.

Usage: ``python scripts/convert_variable_stars.py [SOURCE_DIR] [OUT_NPZ]``
"""

from __future__ import annotations

import io
import sys
import tarfile
from pathlib import Path

import numpy as np

SRC = Path("/work/shared/data/variable_stars")
OUT = Path(__file__).resolve().parents[1] / "astroflax" / "data" / "files" / "variable_stars.npz"
BANDS = "ugriz"
MACHO_BANDS = "BR"


def read_sesar(src: Path, band: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(templates (K, 501) float32, template ids (K,) int32, is_rrc (K,) bool) for one band."""
    path = src / "rrlyrae_sesar2010" / f"SesarTemplates_{band}.txt"
    lines = path.read_text().splitlines()
    names = [s.strip().strip("'") for s in lines[0].split(",")][1:]
    types = [s.strip().strip("'") for s in lines[1].split(",")][1:]
    data = np.loadtxt(path, skiprows=2, delimiter=",")
    phase, tmpl = data[:, 0], data[:, 1:]
    if tmpl.shape[1] != len(names) or len(types) != len(names):
        raise SystemExit(f"{path}: header has {len(names)} names, data has {tmpl.shape[1]} columns")
    if not np.allclose(phase, np.linspace(0, 1, len(phase)), atol=1e-3):
        raise SystemExit(f"{path}: phase column is not a uniform grid on [0, 1]")
    ids = np.array([int(n[:-1]) for n in names], dtype=np.int32)  # '105g' -> 105
    if not all(n.endswith(band) for n in names) or set(types) - {"ab", "c"}:
        raise SystemExit(f"{path}: unexpected template names/types {names} {types}")
    return tmpl.T.astype(np.float32), ids, np.array([t == "c" for t in types])


def read_macho(src: Path) -> dict[str, np.ndarray]:
    names, offsets, mjd, mag, err, band = [], [0], [], [], [], []
    for tar_path in sorted(src.glob("lc_*.tar.bz2")):
        name = tar_path.name[len("lc_"):-len(".tar.bz2")]
        rows = []
        with tarfile.open(tar_path, "r:bz2") as tar:
            for member in tar.getmembers():
                b = member.name.split(".")[-2]
                if b not in MACHO_BANDS:
                    raise SystemExit(f"{tar_path}: unexpected member {member.name}")
                a = np.atleast_2d(np.loadtxt(io.BytesIO(tar.extractfile(member).read()), comments="#"))
                rows.append(np.column_stack([a, np.full(len(a), MACHO_BANDS.index(b))]))
        a = np.concatenate(rows)
        a = a[np.lexsort((a[:, 3], a[:, 0]))]
        names.append(name)
        mjd.append(a[:, 0]), mag.append(a[:, 1]), err.append(a[:, 2]), band.append(a[:, 3])
        offsets.append(offsets[-1] + len(a))
    return {
        "macho_name": np.array(names, dtype="U32"),
        "macho_offsets": np.array(offsets, dtype=np.int64),
        "macho_mjd": np.concatenate(mjd),
        "macho_mag": np.concatenate(mag).astype(np.float32),
        "macho_err": np.concatenate(err).astype(np.float32),
        "macho_band": np.concatenate(band).astype(np.uint8),
    }


def read_asas(src: Path) -> dict[str, np.ndarray]:
    table = (src / "asas_training_subset_classes_with_metadata.dat").read_text().splitlines()
    header = table[0].split(",")
    if header[:2] != ["filename", "target"]:
        raise SystemExit(f"unexpected ASAS class table header {header}")
    labels = dict(line.split(",")[:2] for line in table[1:] if line.strip())
    names, classes, offsets, t, mag, err = [], [], [0], [], [], []
    with tarfile.open(src / "asas_training_subset.tar.gz", "r:gz") as tar:
        members = sorted((m for m in tar.getmembers() if m.isfile()), key=lambda m: m.name)
        for member in members:
            name = Path(member.name).stem
            a = np.loadtxt(io.BytesIO(tar.extractfile(member).read()), delimiter=",")
            a = a[np.argsort(a[:, 0], kind="stable")]
            names.append(name), classes.append(labels[name])
            t.append(a[:, 0]), mag.append(a[:, 1]), err.append(a[:, 2])
            offsets.append(offsets[-1] + len(a))
    if set(names) != set(labels):
        raise SystemExit(f"ASAS files {names} do not match the class table {sorted(labels)}")
    return {
        "asas_name": np.array(names, dtype="U32"),
        "asas_class": np.array(classes, dtype="U32"),
        "asas_offsets": np.array(offsets, dtype=np.int64),
        "asas_time": np.concatenate(t),
        "asas_mag": np.concatenate(mag).astype(np.float32),
        "asas_err": np.concatenate(err).astype(np.float32),
    }


def main(src: Path = SRC, out: Path = OUT) -> None:
    arrays: dict[str, np.ndarray] = {}
    for b in BANDS:
        tmpl, ids, is_c = read_sesar(src, b)
        arrays[f"sesar_{b}"], arrays[f"sesar_{b}_id"], arrays[f"sesar_{b}_rrc"] = tmpl, ids, is_c
    arrays.update(read_macho(src))
    arrays.update(read_asas(src))
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out, **arrays)
    with np.load(out, allow_pickle=False) as z:
        assert set(z.files) == set(arrays)
    print(f"wrote {out} ({out.stat().st_size / 1e3:.0f} kB): "
          f"{len(arrays['macho_name'])} MACHO, {len(arrays['asas_name'])} ASAS, "
          + ", ".join(f"{b}: {len(arrays[f'sesar_{b}_id'])} templates" for b in BANDS))


if __name__ == "__main__":
    main(*(Path(a) for a in sys.argv[1:3]))
