"""Hostile inputs through the real CLI: every case ends in one line on stderr, exit code 2.

A corpus of bad user files for every task's reader (``astroflax predict RUN --input F`` on a
tiny trained run of that task, in this process: no JAX start-up per case), each asserting exit
code 2, no traceback, one line that names the file and the column/row/value at fault, and that
no predictions file (nor its ``.tmp``) was written. Then property-based cases (hypothesis) for
the table readers: random tables fed to the reader functions directly must either raise a
DataError naming a column/row, or give finite float32 arrays with one row per object.
"""

from __future__ import annotations

import gzip
import io
import math
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from astroflax.data import digits, lightcurves, photometry, spectra, spectra_io, visits
from astroflax.data.checks import MAG_RANGE
from astroflax.errors import DataError
from astroflax.tasks.spectra import SpectraData
from conftest import run_main

NOISE = ("WARNING", "W1", "I1", "E1")  # absl / XLA log lines are not the CLI's output


def run_cli_here(argv: list[str], capsys) -> tuple[int, str, str]:
    """``run_main`` with Python's default warning filters: a warning the real CLI would print is
    appended to stderr as the line it would be (pytest otherwise collects it silently)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        code, out, err = run_main(argv, capsys)
    hidden = (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning)
    shown = [w for w in caught if not issubclass(w.category, hidden)]
    return code, out, err + "".join(f"{w.filename}:{w.lineno}: {w.category.__name__}: {w.message}\n" for w in shown)


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.strip() and not line.startswith(NOISE)]


def assert_one_line_error(code: int, err: str, fragments: list[str]) -> str:
    assert "Traceback" not in err, err
    assert code == 2, (code, err)
    lines = error_lines(err)
    assert len(lines) == 1, err
    assert lines[0].startswith("error: "), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


# ------------------------------------------------------------------------ file makers
def write_csv(path: Path, header: list[str], rows: list[list]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(",".join(header) + "\n" + "".join(",".join(map(str, r)) + "\n" for r in rows))
    return path


BANDS = "ugriz"
PHOT_HEADER = ["objid", *BANDS, *(f"{b}_err" for b in BANDS)]
PHOT_ROW = [19.4, 17.7, 16.8, 16.3, 16.0, 0.06, 0.01, 0.005, 0.005, 0.01]


def phot_rows(n: int = 3) -> list[list]:
    return [[100 + i, *PHOT_ROW] for i in range(n)]


def photoz_table(column: str | None = None, value=None, row: int = 1, header: list[str] | None = None):
    """``maker(tmp) -> (input, file to be named)``: a good magnitudes table with one cell changed."""
    def make(tmp: Path):
        rows = phot_rows()
        if column is not None:
            rows[row][PHOT_HEADER.index(column)] = value
        path = write_csv(tmp / "mags.csv", header or PHOT_HEADER, rows)
        return path, path
    return make


def photoz_fluxes(column: str, value) -> Callable:
    header = [*(f"flux_{b}" for b in BANDS), *(f"flux_ivar_{b}" for b in BANDS)]

    def make(tmp: Path):
        rows = [[10, 20, 30, 40, 50, 1, 1, 1, 1, 1] for _ in range(3)]
        rows[2][header.index(column)] = value
        path = write_csv(tmp / "fluxes.csv", header, rows)
        return path, path
    return make


def raw_file(name: str, content: bytes | Callable[[], bytes]) -> Callable:
    def make(tmp: Path):
        path = tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content() if callable(content) else content)
        return path, path
    return make


def directory(name: str, files: dict[str, bytes] | None = None) -> Callable:
    def make(tmp: Path):
        d = tmp / name
        d.mkdir(parents=True, exist_ok=True)
        for fname, data in (files or {}).items():
            (d / fname).write_bytes(data)
        return d, d
    return make


def garbage(n: int = 3000, seed: int = 0) -> bytes:
    return np.random.default_rng(seed).bytes(n)


def fits_table_bytes(cut: int | None = None) -> bytes:
    from astropy.table import Table

    buf = io.BytesIO()
    cols = {"objid": [1, 2, 3], **{b: [19.0, 18.0, 17.0] for b in BANDS}, **{f"{b}_err": [0.1] * 3 for b in BANDS}}
    Table(cols).write(buf, format="fits")
    data = buf.getvalue()
    return data[:cut] if cut else data


def masked_fits_table() -> bytes:
    from astropy.table import MaskedColumn, Table

    buf = io.BytesIO()
    cols = {"objid": [1, 2, 3], **{b: [19.0, 18.0, 17.0] for b in BANDS}, **{f"{b}_err": [0.1] * 3 for b in BANDS}}
    cols["r"] = MaskedColumn([19.0, 18.0, 17.0], mask=[False, True, False])
    Table(cols, masked=True).write(buf, format="fits")
    return buf.getvalue()


# transients: a directory with lightcurves.csv and metadata.csv (3 objects, 6 observations each)
def lc_frames() -> tuple[pd.DataFrame, pd.DataFrame]:
    rows = []
    for oid in (10, 11, 12):
        for j in range(6):
            rows.append({"object_id": oid, "mjd": 60000.0 + 3.0 * j, "passband": j % 6, "flux": float(10 * j - 5),
                         "flux_err": 1.0 + 0.1 * j, "detected": j % 2})
    meta = pd.DataFrame({"object_id": [10, 11, 12], "hostgal_photoz": [0.1, 0.2, 0.0],
                         "hostgal_photoz_err": [0.01, 0.02, 0.0], "mwebv": [0.03, 0.04, 0.05]})
    return pd.DataFrame(rows), meta


def transients_dir(lc_cell: tuple | None = None, meta_cell: tuple | None = None, lc_text: bytes | None = None,
                   meta_text: bytes | None = None, drop: str | None = None, named: str = "lightcurves.csv"):
    """A good user directory with one cell (row, column, value) of either table changed."""
    def make(tmp: Path):
        d = tmp / "user"
        d.mkdir(parents=True, exist_ok=True)
        lc, meta = lc_frames()
        for frame, cell in ((lc, lc_cell), (meta, meta_cell)):
            if cell is not None:
                r, c, v = cell
                frame[c] = frame[c].astype(object)
                frame.loc[r, c] = v
        if drop:
            lc = lc.drop(columns=[drop])
        lc.to_csv(d / "lightcurves.csv", index=False)
        meta.to_csv(d / "metadata.csv", index=False)
        if lc_text is not None:
            (d / "lightcurves.csv").write_bytes(lc_text)
        if meta_text is not None:
            (d / "metadata.csv").write_bytes(meta_text)
        return d, d / named
    return make


def transients_dup_meta(tmp: Path):
    d, _ = transients_dir()(tmp)
    meta = pd.read_csv(d / "metadata.csv")
    pd.concat([meta, meta.iloc[[1]]]).to_csv(d / "metadata.csv", index=False)  # object 11 on lines 3 and 5
    return d, d / "metadata.csv"


# spectra
def spectrum_csv(column: str | None = None, value=None, row: int = 100, n: int = 2000, header=("wavelength", "flux"),
                 wave: tuple[float, float] = (3000.0, 10000.0)):
    def make(tmp: Path):
        w = np.linspace(*wave, n)
        f = 1.0 + 0.1 * np.sin(w / 50.0)
        df = pd.DataFrame({header[0]: w, header[1]: f}).astype(object)
        if column is not None:
            df.loc[row, column] = value
        path = tmp / "star.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        df.to_csv(path, index=False)
        return path, path
    return make


def spectrum_fits_bytes(image: bool = False) -> bytes:
    from astropy.io import fits

    w = np.linspace(3000.0, 10000.0, 3000)
    f = 1.0 + 0.1 * np.sin(w / 50.0)
    buf = io.BytesIO()
    if image:
        hdu = fits.PrimaryHDU(f.astype(np.float32))
        hdu.header["CRVAL1"], hdu.header["CDELT1"] = 3000.0, float(w[1] - w[0])
        hdu.writeto(buf)
    else:
        fits.HDUList([fits.PrimaryHDU(), fits.BinTableHDU.from_columns(
            [fits.Column("wavelength", "D", array=w), fits.Column("flux", "D", array=f)])]).writeto(buf)
    return buf.getvalue()


# morphology
def png_bytes(size: int = 32, mode: str = "RGB", constant: bool = False) -> bytes:
    from PIL import Image

    rng = np.random.default_rng(1)
    shape = (size, size, 3) if mode == "RGB" else (size, size)
    arr = np.full(shape, 7, np.uint8) if constant else rng.integers(0, 255, shape, dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr, mode=mode).save(buf, format="PNG")
    return buf.getvalue()


def fits_image_bytes(value: float | None = None, all_nan: bool = False) -> bytes:
    from astropy.io import fits

    img = np.random.default_rng(2).normal(10.0, 1.0, (32, 32))
    if value is not None:
        img[5, 7] = value
    if all_nan:
        img[:] = np.nan
    buf = io.BytesIO()
    fits.PrimaryHDU(img).writeto(buf)
    return buf.getvalue()


# variables
VIS_HEADER = ["object_id", "time", "band", "mag", "err"]


def visits_table(column: str | None = None, value=None, row: int = 3, header: list[str] | None = None):
    def make(tmp: Path):
        rows = [[f"star{k}", 10.0 * i + k, "gr"[i % 2], 15.0 + 0.3 * math.sin(i), 0.02] for k in range(2) for i in range(8)]
        head = list(header or VIS_HEADER)
        if column is not None:
            rows[row][head.index(column)] = value
        path = write_csv(tmp / "visits.csv", head, rows)
        return path, path
    return make


# vae / digits: MNIST layout, 784 pixels then a label
def digits_csv(cell: int | None = None, value=None, ncol: int = 785, gz: str | None = None):
    def make(tmp: Path):
        rows = [[(7 * r + c) % 256 for c in range(784)] + [r % 10] for r in range(3)]
        rows = [row[:ncol] for row in rows]
        if cell is not None:
            rows[1][cell] = value
        text = "".join(",".join(map(str, row)) + "\n" for row in rows).encode()
        name = "digits.csv.gz" if gz else "digits.csv"
        path = tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        data = gzip.compress(text) if gz else text
        path.write_bytes(data[: len(data) // 2] if gz == "truncated" else data)
        return path, path
    return make


# ------------------------------------------------------------------------------ corpus
@dataclass(frozen=True)
class Case:
    id: str
    task: str
    make: Callable[[Path], tuple[Path, Path]]  # -> (the --input path, the file the message must name)
    fragments: tuple[str, ...]  # besides the file: what the one line must also say


C = Case
CORPUS: list[Case] = [
    # ---- photoz: CSV/FITS tables of magnitudes or fluxes
    C("photoz-empty-file", "photoz", raw_file("mags.csv", b""), ("empty",)),
    C("photoz-header-only", "photoz", raw_file("mags.csv", (",".join(PHOT_HEADER) + "\n").encode()), ("no rows",)),
    C("photoz-wrong-columns", "photoz", raw_file("mags.csv", b"ra,dec\n1,2\n"), ("missing magnitude column", "'u'")),
    C("photoz-missing-err-column", "photoz", photoz_table(header=PHOT_HEADER[:-1] + ["zerr"]),
      ("magnitude-error column", "'z'")),
    C("photoz-non-numeric", "photoz", photoz_table("i", "abc"), ("column 'i'", "line 3", "expected a finite number", "'abc'")),
    C("photoz-nan", "photoz", photoz_table("r", "nan"), ("line 3", "band 'r'", "magnitude empty or NaN",
                                                                 "cannot use a mask")),
    C("photoz-inf", "photoz", photoz_table("g", "inf"), ("column 'g'", "line 3", "expected a finite number", "got inf")),
    C("photoz-mag-1e30", "photoz", photoz_table("r", 1e30), ("column 'r'", "line 3", "[-30, 40]", "got 1e+30")),
    C("photoz-mag-1e300", "photoz", photoz_table("u", 1e300), ("column 'u'", "line 3", "float32", "got 1e+300")),
    C("photoz-mag-99-code", "photoz", photoz_table("z", 99), ("band 'z'", "line 3", "no-data code", "cannot use a mask")),
    C("photoz-mag-negative-huge", "photoz", photoz_table("g", -1e30, row=2), ("column 'g'", "line 4", "got -1e+30")),
    C("photoz-err-negative", "photoz", photoz_table("g_err", -0.01), ("column 'g_err'", "magnitude error > 0", "got -0.01")),
    C("photoz-err-zero", "photoz", photoz_table("r_err", 0), ("column 'r_err'", "line 3", "magnitude error > 0", "got 0.0")),
    C("photoz-err-1e300", "photoz", photoz_table("i_err", 1e300), ("column 'i_err'", "float32", "got 1e+300")),
    C("photoz-err-tiny", "photoz", photoz_table("i_err", 1e-300), ("band i", "magnitude error 1e-300 is 0 in float32")),
    C("photoz-duplicate-ids", "photoz", photoz_table("objid", 100, row=2),
      ("column 'objid'", "line 4", "duplicate object id 100", "also at line 2")),
    C("photoz-empty-id", "photoz", photoz_table("objid", "", row=1), ("column 'objid'", "line 3", "got an empty cell")),
    C("photoz-flux-1e300", "photoz", photoz_fluxes("flux_r", 1e300),
      ("column 'flux_r'", "line 4", "float32", "got 1e+300")),
    C("photoz-flux-negative", "photoz", photoz_fluxes("flux_i", -4), ("band 'i'", "line 4", "flux <= 0", "cannot use a mask")),
    C("photoz-ivar-tiny", "photoz", photoz_fluxes("flux_ivar_g", 1e-300), ("band 'g'", "line 4", "S/N below")),
    C("photoz-ivar-zero", "photoz", photoz_fluxes("flux_ivar_u", 0), ("band 'u'", "line 4", "inverse variance")),
    C("photoz-extinction-negative", "photoz", raw_file("ext.csv", (",".join(
        PHOT_HEADER + [f"extinction_{b}" for b in BANDS]) + "\n1," + ",".join(map(str, PHOT_ROW)) + ",0.1,0.1,-5,0.1,0.1\n"
      ).encode()), ("column 'extinction_r'", "line 2", "Galactic extinction", "got -5.0")),
    C("photoz-garbage-fits", "photoz", raw_file("mags.fits", garbage), ("cannot read table",)),
    C("photoz-truncated-fits", "photoz", raw_file("mags.fits", lambda: fits_table_bytes(cut=3000)),
      ("truncated or damaged",)),
    C("photoz-truncated-fits-padding", "photoz", raw_file("mags.fits", lambda: fits_table_bytes()[:-1000]),
      ("truncated",)),
    C("photoz-masked-fits-cell", "photoz", raw_file("mags.fits", masked_fits_table),
      ("band 'r'", "row 1", "magnitude")),
    C("photoz-binary-csv", "photoz", raw_file("mags.csv", lambda: garbage(2000, 3)), ("cannot read table",)),
    C("photoz-directory", "photoz", directory("tables"), ("got a directory",)),
    C("photoz-duplicate-columns", "photoz", raw_file("mags.csv", b"u,U\n1,2\n"), ("'u' appears more than once",)),
    # ---- transients: a directory of light-curve and metadata tables
    C("transients-file-not-dir", "transients", raw_file("lightcurves.csv", b"object_id\n1\n"), ("not a directory",)),
    C("transients-empty-dir", "transients", directory("user"), ("no light-curve table",)),
    C("transients-empty-table", "transients", transients_dir(lc_text=b""), ("cannot read table",)),
    C("transients-header-only", "transients", transients_dir(lc_text=b"object_id,mjd,passband,flux,flux_err\n"),
      ("no rows",)),
    C("transients-missing-column", "transients", transients_dir(drop="flux_err"), ("missing column(s) 'flux_err'",)),
    C("transients-binary-table", "transients", transients_dir(lc_text=garbage(4000, 4)), ("cannot read table",)),
    C("transients-non-numeric-mjd", "transients", transients_dir(lc_cell=(7, "mjd", "abc")),
      ("column 'mjd'", "line 9", "object_id 11", "'abc'")),
    C("transients-nan-flux", "transients", transients_dir(lc_cell=(7, "flux", "nan")),
      ("column 'flux'", "line 9", "finite")),
    C("transients-inf-flux", "transients", transients_dir(lc_cell=(7, "flux", "-inf")), ("column 'flux'", "line 9")),
    C("transients-flux-1e300", "transients", transients_dir(lc_cell=(7, "flux", 1e300)),
      ("column 'flux'", "line 9", "1e+300")),
    C("transients-flux-1e30", "transients", transients_dir(lc_cell=(7, "flux", 1e30)),
      ("column 'flux'", "line 9", "FLUXCAL", "1e+30")),
    C("transients-flux-err-zero", "transients", transients_dir(lc_cell=(7, "flux_err", 0.0)),
      ("column 'flux_err'", "line 9", "positive")),
    C("transients-flux-err-negative", "transients", transients_dir(lc_cell=(2, "flux_err", -1.0)),
      ("column 'flux_err'", "line 4", "object_id 10", "positive")),
    C("transients-flux-err-tiny", "transients", transients_dir(lc_cell=(7, "flux_err", 1e-300)),
      ("column 'flux_err'", "line 9", "1e-300")),
    C("transients-mjd-as-jd", "transients", transients_dir(lc_cell=(7, "mjd", 2460000.5)),
      ("column 'mjd'", "line 9", "Julian Date", "[0, 1e+06]")),
    C("transients-mjd-negative", "transients", transients_dir(lc_cell=(0, "mjd", -5.0)),
      ("column 'mjd'", "line 2", "-5.0")),
    C("transients-object-id-huge", "transients", transients_dir(lc_cell=(7, "object_id", "1e20")),
      ("column 'object_id'", "line 9", "integer")),
    C("transients-passband", "transients", transients_dir(lc_cell=(7, "passband", "q")), ("column 'passband'", "'q'")),
    C("transients-duplicate-id", "transients", transients_dup_meta,
      ("column 'object_id'", "duplicate object_id 11", "line 5", "line 3")),
    C("transients-photoz-1e300", "transients", transients_dir(meta_cell=(1, "hostgal_photoz", 1e300), named="metadata.csv"),
      ("column 'hostgal_photoz'", "line 3", "1e+300")),
    C("transients-photoz-code", "transients", transients_dir(meta_cell=(2, "hostgal_photoz", -9.0), named="metadata.csv"),
      ("column 'hostgal_photoz'", "line 4", "-9.0")),
    C("transients-mwebv-inf", "transients", transients_dir(meta_cell=(0, "mwebv", "inf"), named="metadata.csv"),
      ("column 'mwebv'", "line 2")),
    C("transients-unknown-object", "transients", transients_dir(lc_cell=(17, "object_id", 99)),
      ("column 'object_id'", "99", "no row in metadata.csv")),
    # ---- spectra: FITS/CSV spectra, a file or a folder
    C("spectra-truncated-fits-table", "spectra", raw_file("star.fits", lambda: spectrum_fits_bytes()[:30000]),
      ("truncated",)),
    C("spectra-truncated-fits-image", "spectra", raw_file("star.fits", lambda: spectrum_fits_bytes(True)[:8640]),
      ("truncated",)),
    C("spectra-garbage-fits", "spectra", raw_file("star.fits", garbage), ("cannot read as a FITS spectrum",)),
    C("spectra-empty-csv", "spectra", raw_file("star.csv", b""), ("cannot read table", "the file is empty")),
    C("spectra-header-only", "spectra", raw_file("star.csv", b"wavelength,flux\n"), ("at least 2 spectrum pixels",)),
    C("spectra-missing-flux", "spectra", spectrum_csv(header=("wavelength", "counts")), ("no flux column",)),
    C("spectra-non-numeric", "spectra", spectrum_csv("flux", "abc"), ("column 'flux', line 102", "'abc'")),
    C("spectra-flux-1e300", "spectra", spectrum_csv("flux", 1e300), ("column 'flux', line 102", "float32", "1e+300")),
    C("spectra-all-nan", "spectra", raw_file("star.csv", b"wavelength,flux\n" + b"".join(
        b"%d,nan\n" % (4000 + i) for i in range(10))), ("all 10 flux values are zero or NaN",)),
    C("spectra-wave-decreasing", "spectra", spectrum_csv("wavelength", 1.0e5, row=50),
      ("wavelengths must increase",)),
    C("spectra-wave-in-nm", "spectra", spectrum_csv(wave=(380.0, 900.0)), ("covers", "model grid")),
    C("spectra-wave-1e300", "spectra", spectrum_csv("wavelength", 1e300, row=1999), ("column 'wavelength', line 2001", "float32", "1e+300")),
    C("spectra-binary-csv", "spectra", raw_file("star.csv", lambda: garbage(3000, 5)), ("cannot read table",)),
    C("spectra-empty-dir", "spectra", directory("spectra"), ("no spectrum files",)),
    C("spectra-unsupported", "spectra", raw_file("star.gif", b"GIF89a"), ("star.gif", "expected one of", ".fits")),
    # ---- morphology: PNG/JPEG/FITS images
    C("morphology-truncated-png", "morphology", raw_file("g.png", lambda: png_bytes()[:200]), ("truncated",)),
    C("morphology-garbage-png", "morphology", raw_file("g.png", garbage), ("cannot read as an image",)),
    C("morphology-empty-png", "morphology", raw_file("g.png", b""), ("cannot read as an image",)),
    C("morphology-tiny-png", "morphology", raw_file("g.png", lambda: png_bytes(4)), ("4x4 pixels", "8x8")),
    C("morphology-constant-png", "morphology", raw_file("g.png", lambda: png_bytes(constant=True)), ("constant",)),
    C("morphology-fits-1e300", "morphology", raw_file("g.fits", lambda: fits_image_bytes(1e300)),
      ("pixel (x=7, y=5)", "1e+300")),
    C("morphology-fits-all-nan", "morphology", raw_file("g.fits", lambda: fits_image_bytes(all_nan=True)),
      ("every pixel is NaN/Inf",)),
    C("morphology-truncated-fits", "morphology", raw_file("g.fits", lambda: fits_image_bytes()[:4000]),
      ("truncated",)),
    C("morphology-empty-dir", "morphology", directory("imgs", {"notes.txt": b"x"}), ("no image files",)),
    C("morphology-unsupported", "morphology", raw_file("g.gif", b"GIF89a"), ("g.gif", ".png, .jpg")),
    # ---- variables: a visits table
    C("variables-empty-file", "variables", raw_file("visits.csv", b""), ("cannot read table",)),
    C("variables-header-only", "variables", raw_file("visits.csv", (",".join(VIS_HEADER) + "\n").encode()),
      ("no rows",)),
    C("variables-missing-err", "variables", visits_table(header=VIS_HEADER[:4] + ["sigma"]), ("missing column(s) 'err'",)),
    C("variables-non-numeric", "variables", visits_table("mag", "bright"), ("column 'mag'", "line 5", "'bright'")),
    C("variables-mag-1e30", "variables", visits_table("mag", 1e30), ("column 'mag'", "line 5", "1e+30")),
    C("variables-mag-99-code", "variables", visits_table("mag", 99.0), ("column 'mag'", "line 5", "'no data'")),
    C("variables-err-zero", "variables", visits_table("err", 0), ("column 'err'", "line 5", "positive")),
    C("variables-err-1e300", "variables", visits_table("err", 1e300), ("column 'err'", "line 5", "1e+300")),
    C("variables-time-1e300", "variables", visits_table("time", 1e300), ("column 'time'", "line 5", "1e+300")),
    C("variables-time-huge", "variables", visits_table("time", 1e7), ("column 'time'", "line 5", "1e+06")),
    C("variables-mjd-as-jd", "variables", visits_table("mjd", 2450000.5, header=["object_id", "mjd", "band", "mag", "err"]),
      ("column 'mjd'", "line 5", "Julian Date")),
    C("variables-band", "variables", visits_table("band", "Q"), ("column 'band'", "'Q'")),
    C("variables-flux-1e300", "variables", visits_table("flux", 1e300, header=["object_id", "time", "band", "flux", "err"]),
      ("column 'flux'", "line 5", "1e+300")),
    C("variables-flux-negative", "variables", visits_table("flux", -3, header=["object_id", "time", "band", "flux", "err"]),
      ("column 'flux'", "line 5", "positive flux")),
    C("variables-directory", "variables", directory("visits"), ("is a directory",)),
    C("variables-binary", "variables", raw_file("visits.csv", lambda: garbage(3000, 6)), ("cannot read table",)),
    # ---- vae: digits in the MNIST CSV layout
    C("vae-empty-file", "vae", raw_file("digits.csv", b""), ("empty file",)),
    C("vae-wrong-column-count", "vae", digits_csv(ncol=100), ("row 1 has 100 columns", "785")),
    C("vae-non-integer", "vae", digits_csv(cell=5, value="0.5"), ("row 2, column 6", "'0.5'", "integer")),
    C("vae-pixel-300", "vae", digits_csv(cell=10, value=300), ("row 2, column 11", "300", "0-255")),
    C("vae-label-12", "vae", digits_csv(cell=784, value=12), ("row 2, column 785 (label) = 12",)),
    C("vae-pixel-1e30", "vae", digits_csv(cell=3, value="1e30"), ("row 2, column 4", "'1e30'")),
    C("vae-pixel-beyond-int64", "vae", digits_csv(cell=3, value=10**25), ("row 2, column 4", "0-255")),
    C("vae-truncated-gzip", "vae", digits_csv(gz="truncated"), ("truncated or damaged",)),
    C("vae-directory", "vae", directory("digits"), ("is a directory",)),
    C("vae-binary", "vae", raw_file("digits.csv", lambda: garbage(5000, 7)), ("columns",)),
]


@pytest.mark.parametrize("case", CORPUS, ids=[c.id for c in CORPUS])
def test_bad_input_is_one_clear_line(case: Case, tiny_run, tmp_path, capsys):
    run_dir = tiny_run(case.task)
    given_path, named = case.make(tmp_path / "in")
    out = tmp_path / "out.csv"
    # photoz tables are streamed: a bad row is flagged by default (test_bad_rows_are_flagged),
    # --bad-rows error makes it the run's one-line error
    strict = ["--bad-rows", "error"] if case.task == "photoz" else []
    code, _, err = run_cli_here(["predict", str(run_dir), "--input", str(given_path), "--output", str(out), *strict],
                                capsys)
    assert_one_line_error(code, err, [str(named), *case.fragments])
    assert not out.exists() and not out.with_name("out.csv.tmp").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in"], "the run left work files behind"


def test_corpus_covers_every_task():
    assert {c.task for c in CORPUS} == {"photoz", "transients", "spectra", "morphology", "variables", "vae"}
    assert len({c.id for c in CORPUS}) == len(CORPUS) >= 90


# ------------------------------------------------------------ valid inputs still work
@pytest.mark.parametrize("task, make", [
    ("photoz", photoz_table()),
    ("transients", transients_dir()),
    ("spectra", spectrum_csv()),
    ("morphology", raw_file("g.png", png_bytes)),
    ("variables", visits_table()),
    ("vae", digits_csv()),
])
def test_valid_inputs_predict_finite_rows(task, make, tiny_run, tmp_path, capsys):
    """The checks do not refuse good files: exit 0 and finite numbers in every row."""
    given_path, _ = make(tmp_path / "in")
    out = tmp_path / "out.csv"
    code, _, err = run_cli_here(["predict", str(tiny_run(task)), "--input", str(given_path), "--output", str(out)], capsys)
    assert code == 0, err
    table = pd.read_csv(out)
    expected = {"photoz": 3, "transients": 3, "spectra": 1, "morphology": 1, "variables": 2, "vae": 3}[task]
    assert len(table) == expected
    if "flag" in table:  # a streamed prediction (photoz): no row flagged, so 'problem' is empty
        assert (table.pop("flag") == 0).all() and table.pop("problem").isna().all()
    numbers = table.select_dtypes("number").to_numpy(np.float64)
    assert numbers.size and np.isfinite(numbers).all()


def test_nan_pixels_are_replaced_with_a_counted_warning(tiny_run, tmp_path, capsys):
    """Where a reader repairs instead of refusing, it says so once, with a count."""
    from astropy.io import fits

    img = np.random.default_rng(3).normal(10.0, 1.0, (32, 32))
    img[1, 2] = img[3, 4] = img[5, 6] = np.nan
    path = tmp_path / "g.fits"
    fits.PrimaryHDU(img).writeto(path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code, _, err = run_main(["predict", str(tiny_run("morphology")), "--input", str(path),
                                 "--output", str(tmp_path / "p.csv")], capsys)
    assert code == 0, err
    messages = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
    assert messages == [f"{path}: 3 NaN/Inf pixels replaced by the image's median"], messages
    from astroflax.cli import _format_warning

    assert _format_warning(messages[0], UserWarning, "x.py", 1) == f"warning: {messages[0]}\n"


def test_predict_output_directory_leaves_nothing_behind(tiny_run, tmp_path, capsys):
    given_path, _ = photoz_table()(tmp_path / "in")
    target = tmp_path / "outdir"
    target.mkdir()
    code, _, err = run_cli_here(["predict", str(tiny_run("photoz")), "--input", str(given_path), "--output", str(target)],
                            capsys)
    assert_one_line_error(code, err, [f"--output {target}", "is a directory"])
    assert list(target.iterdir()) == [] and not (tmp_path / "outdir.tmp").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in", "outdir"]


def test_write_predictions_cleans_up_its_tmp_file(tmp_path):
    from astroflax.runs import write_predictions

    with pytest.raises(DataError, match="is a directory"):
        write_predictions(tmp_path, [{"id": 1}])
    with pytest.raises(ValueError):  # a row with a key the header does not have: csv raises mid-write
        write_predictions(tmp_path / "p.csv", [{"id": 1}, {"id": 2, "other": 3}])
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    with pytest.raises(DataError, match=r"not written: the prediction for id 7 \(row 1\) has nan in column 'z'"):
        write_predictions(tmp_path / "p.csv", [{"id": 6, "z": 0.5}, {"id": 7, "z": float("nan")}])
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    write_predictions(tmp_path / "p.csv", [{"id": 1}, {"id": 2}])
    assert (tmp_path / "p.csv").read_text().split() == ["id", "1", "2"]


# --------------------------------------------------------------------------- exports
def test_export_loader_refuses_non_finite_and_overflowing_inputs(tiny_run, tmp_path, capsys):
    from astroflax.export.loader import ExportInputError, load_export

    out_dir = tmp_path / "export"
    code, _, err = run_cli_here(["export", str(tiny_run("photoz")), "--out", str(out_dir)], capsys)
    assert code == 0, err
    model = load_export(out_dir)
    names = [s["name"] for s in model.inputs]
    good = {"mag": np.tile(np.float32(PHOT_ROW[:5]), (4, 1)), "mag_err": np.tile(np.float32(PHOT_ROW[5:]), (4, 1))}
    good = {k: v for k, v in good.items() if k in names}
    assert np.isfinite(model.predict(good)).all()
    nan = {k: v.copy() for k, v in good.items()}
    nan["mag"][2, 3] = np.nan
    with pytest.raises(ExportInputError, match=r"input 'mag' row 2 \(position \[2, 3\]\) is nan; expected finite"):
        model.predict(nan)
    huge = {**good, "mag": good["mag"].astype(np.float64)}
    huge["mag"][1, 0] = 1e300
    with pytest.raises(ExportInputError, match=r"input 'mag' row 1 .* is 1e\+300, which overflows float32"):
        model.predict(huge)
    # through the CLI, the task's reader refuses the file before the export runs
    bad, _ = photoz_table("r", 1e30)(tmp_path / "in")
    code, _, err = run_cli_here(["predict", str(out_dir), "--input", str(bad), "--output", str(tmp_path / "p.csv"),
                                 "--bad-rows", "error"], capsys)
    assert_one_line_error(code, err, [str(bad), "column 'r'", "got 1e+30"])
    assert not (tmp_path / "p.csv").exists()


# ------------------------------------------------------------- property-based readers
# Random tables (random column subsets, ordinary values mixed with huge / NaN / negative / zero /
# text cells, repeated ids) fed to the readers directly. Property: a one-line DataError that
# names the file and a column/row, or finite float32 arrays with one row per object.
MESSAGE_NAMES_A_PLACE = ("column", "row", "line", "band")
PROPERTY = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# What breaks float32 or a physical range, or is not a number at all.
NASTY = st.sampled_from([float("nan"), float("inf"), -float("inf"), 1e300, -1e300, 1e30, 3.5e38, 1e-300, 0.0, -1.0,
                         99.0, -9999.0, 2460000.5, "abc", ""])


class Cells:
    """Draws cells: a clean table (half of them) has only ordinary values; a dirty one has
    about one nasty cell in ``rate``."""

    def __init__(self, draw, rate: int = 6):
        self.draw, self.dirty, self.rate = draw, draw(st.booleans()), rate

    def __call__(self, ordinary: st.SearchStrategy):
        if self.dirty and self.draw(st.integers(1, self.rate)) == 1:
            return self.draw(NASTY)
        return self.draw(ordinary)


def _refused(exc: DataError, path: Path, also_ok: tuple[str, ...] = ()) -> None:
    event("refused")
    msg = str(exc)
    assert "\n" not in msg and str(path) in msg, msg
    assert any(w in msg for w in MESSAGE_NAMES_A_PLACE + also_ok), msg


@st.composite
def photometry_tables(draw):
    cell = Cells(draw, rate=12)
    n = draw(st.integers(1, 6))
    mags = [b for b in BANDS if draw(st.integers(0, 15))]  # usually all five
    errs = [f"{b}_err" for b in BANDS if draw(st.integers(0, 15))]
    header = (["objid"] if draw(st.booleans()) else []) + mags + errs
    repeat = draw(st.integers(0, 5)) == 0  # now and then an id twice
    rows = []
    for i in range(n):
        row = []
        for col in header:
            if col == "objid":
                row.append(0 if repeat and i < 2 else i)
            elif col.endswith("_err"):
                row.append(cell(st.floats(1e-4, 5.0)))
            else:
                row.append(cell(st.floats(10.0, 30.0)))
        rows.append(row)
    return header, rows


@PROPERTY
@given(photometry_tables())
def test_property_photometry_reader(table):
    header, rows = table
    with tempfile.TemporaryDirectory() as tmp:
        path = write_csv(Path(tmp) / "t.csv", header, rows)
        try:
            p = photometry.read_photometry(path)
        except DataError as exc:
            return _refused(exc, path)
    event("accepted")
    assert p.mag.dtype == p.mag_err.dtype == np.float32
    assert p.mag.shape == p.mag_err.shape == (len(rows), 5) and len(p.ids) == len(rows)
    assert np.isfinite(p.mag).all() and np.isfinite(p.mag_err).all() and (p.mag_err > 0).all()
    assert (p.mag >= MAG_RANGE[0]).all() and (p.mag <= MAG_RANGE[1]).all()
    assert len(set(np.asarray(p.ids).tolist())) == len(rows)


@st.composite
def lightcurve_dirs(draw):
    cell = Cells(draw, rate=10)
    ids = draw(st.lists(st.integers(1, 6), min_size=1, max_size=4))  # repeated ids now and then
    lc_cols = [c for c in ("object_id", "mjd", "passband", "flux", "flux_err") if draw(st.integers(0, 15))]
    rows = []
    for oid in sorted(set(ids)):
        for _ in range(draw(st.integers(1, 4))):
            values = {"object_id": oid, "mjd": cell(st.floats(59000.0, 61000.0)),
                      "passband": cell(st.sampled_from([0, 1, 2, 5, "g", "r", "Y"])),
                      "flux": cell(st.floats(-1e4, 1e4)), "flux_err": cell(st.floats(0.1, 100.0))}
            rows.append([values[c] for c in lc_cols])
    meta_cols = ["object_id"] + [c for c in ("hostgal_photoz", "hostgal_photoz_err", "mwebv") if draw(st.booleans())]
    meta = [[oid] + [cell(st.floats(0.0, 2.0)) for _ in meta_cols[1:]] for oid in ids]
    return lc_cols, rows, meta_cols, meta


@PROPERTY
@given(lightcurve_dirs())
def test_property_lightcurve_reader(tables):
    lc_cols, rows, meta_cols, meta = tables
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        write_csv(d / "lightcurves.csv", lc_cols, rows)
        write_csv(d / "metadata.csv", meta_cols, meta)
        try:
            s = lightcurves.load_user_lightcurves(d)
            padded = lightcurves.pad_lightcurves(s, 8)
        except DataError as exc:
            return _refused(exc, d)
    event("accepted")
    assert len(s) == len(meta) == len({r[0] for r in meta})
    for key in ("time", "flux", "flux_err", "meta"):
        assert padded[key].dtype == np.float32 and padded[key].shape[0] == len(meta), key
        assert np.isfinite(padded[key]).all(), key
    assert s.flux.dtype == s.flux_err.dtype == np.float32 and (s.flux_err > 0).all()


@st.composite
def visit_tables(draw):
    cell = Cells(draw, rate=10)
    kind = draw(st.sampled_from(["mag", "flux"]))
    header = ["object_id", draw(st.sampled_from(["time", "mjd"])), "band", kind, "err"]
    header = [c for c in header if draw(st.integers(0, 15))]
    rows = []
    for k in range(draw(st.integers(1, 3))):
        for _ in range(draw(st.integers(1, 5))):
            v = {"object_id": f"s{k}", "time": cell(st.floats(0.0, 1000.0)), "mjd": cell(st.floats(50000.0, 51000.0)),
                 "band": cell(st.sampled_from(["g", "r", "V", 2, "x"])), "mag": cell(st.floats(10.0, 20.0)),
                 "flux": cell(st.floats(1.0, 1e4)), "err": cell(st.floats(0.001, 0.4))}
            rows.append([v[c] for c in header])
    return header, rows


@PROPERTY
@given(visit_tables())
def test_property_visits_reader(table):
    header, rows = table
    with tempfile.TemporaryDirectory() as tmp:
        path = write_csv(Path(tmp) / "v.csv", header, rows)
        try:
            flat, ids = visits.read_table(path)
            names = [f"object_id {i} in {path}" for i in ids]  # as the variables task names them
            p = visits.pad_ragged(flat["offsets"], flat["time"], flat["mag"], flat["err"], flat["band"],
                                  16, 3.0, 0.5, names)
            arrays = visits.model_arrays(p["time"], p["mag"], p["err"], p["band"], p["mask"], "per_band")
        except DataError as exc:
            return _refused(exc, path, also_ok=("object_id",))
    event("accepted")
    assert len(ids) == len({r[header.index("object_id")] for r in rows})
    for key in ("time", "flux", "flux_err"):
        assert arrays[key].dtype == np.float32 and arrays[key].shape[0] == len(ids), key
        assert np.isfinite(arrays[key]).all(), key


def _missing_cell(cell) -> bool:
    """Whether a CSV reader with pandas' defaults reads this cell as missing (NaN, "", "null"...)."""
    return bool(pd.read_csv(io.StringIO(f"x\n{cell}\n"), skip_blank_lines=False)["x"].isna().iloc[0])


@st.composite
def spectrum_tables(draw):
    cell = Cells(draw, rate=8)
    n = draw(st.integers(0, 12))
    start = draw(st.floats(3000.0, 9000.0))
    return [[cell(st.just(start + 10.0 * i)), cell(st.floats(0.1, 10.0))] for i in range(n)]


@PROPERTY
@given(spectrum_tables())
def test_property_spectrum_reader(pixels):
    with tempfile.TemporaryDirectory() as tmp:
        path = write_csv(Path(tmp) / "s.csv", ["wavelength", "flux"], pixels)
        try:
            raw = spectra_io.read_spectrum(path, SpectraData(wave_unit="Angstrom", flux_unit="erg/(s cm2 Angstrom)"))
        except DataError as exc:
            return _refused(exc, path, also_ok=("pixels", "wavelengths", "(an empty spectrum)"))
    event("accepted")
    # Every row is kept (a NaN flux is a bad pixel, flux 0, not good) except rows whose every cell is
    # missing ("nan,nan" reads like an empty line and is dropped as one); wavelengths finite,
    # increasing, in range.
    rows = [r for r in pixels if not all(_missing_cell(c) for c in r)]
    assert 2 <= len(raw.wave) == len(raw.flux) == len(raw.good) == len(rows) and raw.ivar is None
    assert np.isfinite(raw.wave).all() and np.all(np.diff(raw.wave) > 0)
    assert raw.wave.min() >= spectra.WAVE_RANGE[0] and raw.wave.max() <= spectra.WAVE_RANGE[1]
    assert np.isfinite(raw.flux).all() and np.abs(raw.flux).max() <= 1e30
    assert np.all(raw.flux[~raw.good] == 0.0)


@st.composite
def digit_tables(draw):
    rows = [[(5 * r + c) % 256 for c in range(784)] + [draw(st.integers(0, 9))] for r in range(draw(st.integers(1, 3)))]
    if draw(st.booleans()):  # dirty: a few cells replaced
        for _ in range(draw(st.integers(1, 3))):
            r, c = draw(st.integers(0, len(rows) - 1)), draw(st.integers(0, 784))
            rows[r][c] = draw(st.one_of(st.integers(-5, 300), st.sampled_from(["x", "", "1.5", "1e30", 10**30])))
    return rows


@PROPERTY
@given(digit_tables())
def test_property_digit_reader(rows):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "d.csv"
        path.write_text("".join(",".join(map(str, r)) + "\n" for r in rows))
        try:
            images, labels = digits.read_digit_csv(path)
        except DataError as exc:
            return _refused(exc, path)
    event("accepted")
    assert images.shape == (len(rows), 28, 28) and images.dtype == np.uint8 and (labels < 10).all()
    assert np.array_equal(images.reshape(len(rows), -1), np.asarray(rows)[:, :784].astype(np.int64))
