"""Convert the Pickles (1998) dwarf templates into ``astroflax/data/files/pickles_dwarfs.npz``.

Run once (the package never reads the source folder at run time)::

    python scripts/convert_pickles.py [SRC_DIR] [OUT_NPZ]

Each source file has two columns (wavelength in Angstrom, F_lambda) from 1150 to 25000 A on a
5 A grid. We keep 3500-9500 A (the default 3800-9000 A instrument window plus room for radial
velocities and a wider window), resampled by linear interpolation onto 2048 log-spaced pixels
(148 km/s per pixel, finer than the native 5 A everywhere) so that Doppler shifts and the
line-spread function are plain shifts/convolutions in log-wavelength. Files that are all zeros
(K0V-ZRICH in the kastredux copy) are rejected with a message and left out.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np

GRID_MIN = 3500.0
GRID_MAX = 9500.0
GRID_PIXELS = 2048
CLASSES = "OBAFGKM"
# Pickles "b57v" is a B5-7 V average; "M2" in the kastredux copy is Pickles' m2.5v (the "." was
# dropped from the file name): its TiO band depth and red/blue colour lie between M2V and M3V.
SUBTYPE_OVERRIDES = {"B57V": 6.0, "M2": 2.5}
NAME_OVERRIDES = {"M2": "M2.5V"}

_NAME = re.compile(r"^([OBAFGKM])(\d+)(V?)(?:-Z(POOR|RICH))?$")


class TemplateError(ValueError):
    """A source file that cannot be used as a template."""


def parse_name(stem: str) -> dict:
    """Spectral class, subtype and metallicity from a file stem such as ``G5V-ZPOOR_pickles1998``."""
    key = stem.split("_")[0].upper()
    m = _NAME.match(key)
    if not m:
        raise TemplateError(f"{stem}: cannot parse a spectral type like 'G5V' or 'F8V-ZRICH' from the name")
    letter, digits, _, metal = m.groups()
    base = key.split("-")[0]
    subtype = SUBTYPE_OVERRIDES.get(base, float(digits))
    name = NAME_OVERRIDES.get(base, base) + (f"-Z{metal}" if metal else "")
    cls = CLASSES.index(letter)
    return {
        "name": name,
        "class_index": cls,
        "subtype": float(subtype),
        "scale": cls + float(subtype) / 10.0,
        "metallicity": {None: 0, "POOR": -1, "RICH": 1}[metal],
    }


def log_grid(lo: float = GRID_MIN, hi: float = GRID_MAX, n: int = GRID_PIXELS) -> np.ndarray:
    return np.exp(np.linspace(np.log(lo), np.log(hi), n))


def read_template(path: Path, grid: np.ndarray) -> np.ndarray:
    """The template's flux on ``grid``; raises :class:`TemplateError` for unusable files."""
    data = np.loadtxt(path, comments="#", dtype=np.float64)
    if data.ndim != 2 or data.shape[1] < 2:
        raise TemplateError(f"{path.name}: expected two columns (wavelength, flux), got shape {data.shape}")
    wave, flux = data[:, 0], data[:, 1]
    if not np.any(wave) and not np.any(flux):
        raise TemplateError(f"{path.name}: every wavelength and flux value is zero (an empty template)")
    if not np.all(np.isfinite(data)):
        raise TemplateError(f"{path.name}: {int((~np.isfinite(data)).sum())} non-finite values")
    if np.any(np.diff(wave) <= 0):
        i = int(np.flatnonzero(np.diff(wave) <= 0)[0])
        raise TemplateError(f"{path.name}: wavelengths not increasing at row {i + 1} ({wave[i]} -> {wave[i + 1]})")
    if wave[0] > grid[0] or wave[-1] < grid[-1]:
        raise TemplateError(
            f"{path.name}: covers {wave[0]:.0f}-{wave[-1]:.0f} A, need {grid[0]:.0f}-{grid[-1]:.0f} A"
        )
    out = np.interp(grid, wave, flux)
    if np.median(out) <= 0:
        raise TemplateError(f"{path.name}: flux is not positive in {grid[0]:.0f}-{grid[-1]:.0f} A")
    return out


def convert(src: Path, out: Path, log=print) -> dict:
    """Convert every ``*_pickles1998.txt`` in ``src``; returns the arrays written to ``out``."""
    files = sorted(Path(src).glob("*_pickles1998.txt"))
    if not files:
        raise TemplateError(f"{src}: no *_pickles1998.txt files")
    grid = log_grid()
    rows, fluxes, sources = [], [], []
    for path in files:
        try:
            meta = parse_name(path.stem)
            flux = read_template(path, grid)
        except TemplateError as exc:
            log(f"rejected {exc}")
            continue
        rows.append(meta)
        fluxes.append(flux)
        sources.append(path.name)
    order = sorted(range(len(rows)), key=lambda i: (rows[i]["scale"], rows[i]["metallicity"]))
    arrays = {
        "wavelength": grid.astype(np.float64),
        "flux": np.stack([fluxes[i] for i in order]).astype(np.float32),
        "name": np.array([rows[i]["name"] for i in order]),
        "source_file": np.array([sources[i] for i in order]),
        "class_index": np.array([rows[i]["class_index"] for i in order], np.int32),
        "subtype": np.array([rows[i]["subtype"] for i in order], np.float32),
        "scale": np.array([rows[i]["scale"] for i in order], np.float32),
        "metallicity": np.array([rows[i]["metallicity"] for i in order], np.int8),
        "class_names": np.array(list(CLASSES)),
    }
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out, **arrays)
    log(f"wrote {len(order)} templates x {len(grid)} pixels ({grid[0]:.0f}-{grid[-1]:.0f} A) to {out}")
    return arrays


if __name__ == "__main__":
    repo = Path(__file__).resolve().parents[1]
    src = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("/work/shared/data/pickles1998_dwarfs")
    dst = Path(sys.argv[2]) if len(sys.argv) > 2 else repo / "astroflax/data/files/pickles_dwarfs.npz"
    convert(src, dst)
