"""Broad-band ugriz photometry: magnitudes from fluxes, features, the bundled SDSS set, user tables.

User tables (CSV or FITS) are read with column names matched case-insensitively; either
magnitudes with errors or SDSS-style fluxes (nanomaggies) with inverse variances are accepted,
see :data:`MAG_NAMES`, :data:`ERR_NAMES`, :data:`FLUX_NAMES`, :data:`IVAR_NAMES`. Magnitudes
are used as given (they should already be corrected for Galactic extinction) unless extinction
columns (:data:`EXT_NAMES`) are present, in which case they are subtracted -- exactly as was
done for the bundled training set.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from astroflax.data.checks import MAG_ERR_MAX, MAG_RANGE, fits_warnings, out_of_range, show_value
from astroflax.errors import DataError

BANDS = ("u", "g", "r", "i", "z")
ZERO_POINT = 22.5  # SDSS nanomaggies: mag = 22.5 - 2.5 log10(flux)
POGSON = 2.5 / np.log(10.0)  # 1.0857: d(mag) = 1.0857 d(flux) / flux

BUNDLED = Path(__file__).resolve().parent / "files" / "sdss_photoz.npz"

# Accepted column names per band ({b} = u, g, r, i, z), matched case-insensitively, first wins.
MAG_NAMES = ("{b}", "mag_{b}", "{b}_mag", "modelmag_{b}")
ERR_NAMES = ("{b}_err", "magerr_{b}", "err_{b}", "{b}_mag_err", "modelmagerr_{b}")
FLUX_NAMES = ("modelflux_{b}", "flux_{b}")
IVAR_NAMES = ("modelflux_ivar_{b}", "flux_ivar_{b}")
EXT_NAMES = ("extinction_{b}", "ext_{b}")
# Vector (N, 5) columns as in SDSS FITS tables.
FLUX_VECTOR, IVAR_VECTOR, EXT_VECTOR = "modelflux", "modelflux_ivar", "extinction"
ID_NAMES = ("object_id", "objid", "id")


def flux_to_mag(flux: np.ndarray, ivar: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Magnitudes and 1-sigma errors from nanomaggies and their inverse variances (first order)."""
    flux = np.asarray(flux, np.float64)
    ivar = np.asarray(ivar, np.float64)
    mag = ZERO_POINT - 2.5 * np.log10(flux)
    err = POGSON / (flux * np.sqrt(ivar))
    return mag, err


def colours(mag: np.ndarray) -> np.ndarray:
    """Adjacent-band colours u-g, g-r, r-i, i-z (works for numpy and jax arrays)."""
    return mag[..., :-1] - mag[..., 1:]


def stratify_bins(z: np.ndarray, num_bins: int = 20) -> np.ndarray:
    """Equal-count redshift bins (integer labels) so every split spans the whole z range."""
    edges = np.quantile(z, np.linspace(0, 1, num_bins + 1)[1:-1])
    return np.searchsorted(edges, z, side="right").astype(np.int64)


def load_bundled() -> dict[str, np.ndarray]:
    """The converted SDSS set: mag, mag_err, extinction, z, object_id, ra, dec, split codes."""
    if not BUNDLED.is_file():
        raise DataError(f"{BUNDLED}: bundled SDSS photo-z file missing; run scripts/convert_sdss_photoz.py")
    with np.load(BUNDLED, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


# ------------------------------------------------------------------------------ user tables


@dataclass
class Photometry:
    """Validated magnitudes (extinction corrected), their errors and one id per row."""

    mag: np.ndarray  # (N, 5) float32
    mag_err: np.ndarray  # (N, 5) float32
    ids: np.ndarray  # (N,)
    source: str  # "magnitudes" or "fluxes"


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _read_table(path: Path) -> dict[str, np.ndarray]:
    """Columns of a CSV or FITS table by lower-case name (vector FITS columns stay 2-D).

    Masked (null) cells of numeric FITS columns become NaN, so that they are reported as
    missing values rather than read as whatever fill value the file holds.
    """
    suffix = "".join(path.suffixes[-2:]).lower()
    if path.is_dir():
        raise DataError(f"{path}: expected a CSV or FITS table, got a directory")
    expected = "a CSV or FITS table of ugriz magnitudes or fluxes"
    if suffix.endswith((".fits", ".fit", ".fits.gz", ".fts")):
        from astropy.table import Table

        try:
            with fits_warnings(path):
                table = Table.read(path, format="fits")
        except DataError:
            raise
        except Exception as exc:  # astropy raises many types for broken files; its messages can be long lists
            raise DataError(f"{path}: not a FITS/CSV table: cannot read it as FITS ({type(exc).__name__}: "
                            f"{_first_line(exc)}); expected {expected}") from None
        cols: dict[str, np.ndarray] = {}
        for name in table.colnames:
            col = table[name]
            data, mask = np.ma.getdata(col), np.ma.getmaskarray(col)
            if mask.any() and data.dtype.kind in "fiu":
                data = data.astype(np.float64)
                data[mask] = np.nan
            cols[name.lower()] = np.asarray(data)
        return cols
    import pandas as pd

    try:
        frame = pd.read_csv(path)
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: the file is empty; expected {expected} with a header line") from None
    except Exception as exc:
        raise DataError(f"{path}: not a FITS/CSV table: cannot read it as CSV ({type(exc).__name__}: "
                        f"{_first_line(exc)}); expected {expected}") from None
    names = [str(name).strip().lower() for name in frame.columns]
    dup = next((n for i, n in enumerate(names) if n in names[:i]), None)
    if dup is not None:
        raise DataError(f"{path}: column {dup!r} appears more than once (names are case-insensitive)")
    return {name: frame[col].to_numpy() for name, col in zip(names, frame.columns)}


def _find(cols: dict, patterns: tuple[str, ...], band: str) -> str | None:
    for p in patterns:
        name = p.format(b=band)
        if name in cols:
            return name
    return None


def _row(r: int) -> str:
    return f"row {r} (first data row = 0)"


def _numeric(cols: dict, name: str, path: Path) -> np.ndarray:
    raw = cols[name]
    try:
        with np.errstate(over="ignore"):
            values = np.asarray(raw, np.float64)
    except (TypeError, ValueError):
        r = next((i for i, x in enumerate(np.ravel(raw)) if not _is_number(x)), 0)
        raise DataError(f"{path}: column {name!r} must be numeric; {_row(r)} is {show_value(np.ravel(raw)[r])}") from None
    bad = np.flatnonzero(~np.isfinite(values))
    if bad.size:
        r = int(bad[0])
        got = "a missing value (empty or NaN)" if values[r] != values[r] else show_value(np.ravel(raw)[r])
        raise DataError(f"{path}: column {name!r} has a non-finite value at {_row(r)}: {got}; expected a finite number"
                        + (f" [{bad.size} bad rows in total]" if bad.size > 1 else ""))
    return values


def _is_number(x) -> bool:
    try:
        float(x)
    except (TypeError, ValueError):
        return False
    return True


def _band_columns(cols: dict, patterns: tuple[str, ...], vector: str | None, path: Path, what: str,
                  required: bool = True) -> tuple[np.ndarray, list[str]] | tuple[None, None]:
    """(N, 5) array from per-band columns or one vector column, and the column name of each band;
    (None, None) if absent and not required."""
    if vector is not None and vector in cols and np.ndim(cols[vector]) == 2:
        arr = cols[vector]
        if arr.shape[1] != len(BANDS):
            raise DataError(f"{path}: column {vector!r} has {arr.shape[1]} entries per row, expected 5 (ugriz)")
        names = [f"{vector}[{b}]" for b in BANDS]
        return np.stack([_numeric({n: arr[:, j]}, n, path) for j, n in enumerate(names)], axis=1), names
    out, names = [], []
    for b in BANDS:
        name = _find(cols, patterns, b)
        if name is None:
            if not required and not out:
                return None, None
            accepted = ", ".join(p.format(b=b) for p in patterns) + (f" or a 5-wide {vector!r}" if vector else "")
            raise DataError(f"{path}: missing {what} column for band {b!r}; accepted names: {accepted}")
        out.append(_numeric(cols, name, path))
        names.append(name)
    return np.stack(out, axis=1), names


def _check_bands(path: Path, mask: np.ndarray, problem: str, names: list[str], raw: np.ndarray, expected: str,
                 shown: np.ndarray | None = None, shown_as: str = "") -> None:
    """A DataError at the first True of ``mask`` (N, 5): "{problem} in band 'g' at row r (column 'g_err'
    = value[ gives shown_as X]); expected ..."."""
    if not mask.any():
        return
    row, j = (int(k) for k in np.argwhere(mask)[0])
    value = f"column {names[j]!r} = {show_value(raw[row, j])}"
    if shown is not None:
        value += f" gives {shown_as} {shown[row, j]:.6g}"
    more = f" [{int(mask.any(axis=1).sum())} bad rows in total]" if mask.any(axis=1).sum() > 1 else ""
    raise DataError(f"{path}: {problem} in band {BANDS[j]!r} at row {row} (first data row = 0; {value}); "
                    f"expected {expected}{more}")


MAG_TEXT = (f"an apparent magnitude in [{MAG_RANGE[0]:g}, {MAG_RANGE[1]:g}] (99, -99 and -9999 are 'no data' codes "
            "in many catalogues: drop such rows)")
ERR_TEXT = f"an error > 0 and <= {MAG_ERR_MAX:g} mag"
#: Extinction corrections (mag) accepted in the extinction columns.
EXT_RANGE = (0.0, 30.0)


def _check_mags(path: Path, mag: np.ndarray, names: list[str], raw: np.ndarray, what: str, shown_as: str = "") -> None:
    bad = out_of_range(mag, *MAG_RANGE)
    _check_bands(path, bad, f"{what} out of range", names, raw, MAG_TEXT,
                 shown=mag if shown_as else None, shown_as=shown_as)


def _check_errors(path: Path, err: np.ndarray, names: list[str], raw: np.ndarray, shown_as: str = "") -> None:
    shown = err if shown_as else None
    _check_bands(path, err < 0, "negative magnitude error", names, raw, ERR_TEXT, shown, shown_as)
    with np.errstate(over="ignore", under="ignore"):
        zero = err.astype(np.float32) <= 0
    _check_bands(path, zero, "zero magnitude error (0 in float32; an error must be positive)", names, raw, ERR_TEXT,
                 shown, shown_as)
    _check_bands(path, err > MAG_ERR_MAX, f"magnitude error above {MAG_ERR_MAX:g} mag", names, raw, ERR_TEXT,
                 shown, shown_as)


def _check_ids(path: Path, ids: np.ndarray, id_name: str) -> np.ndarray:
    """Object ids: none empty, none twice (the error names the id and both rows)."""
    import pandas as pd

    ids = np.asarray(ids)
    if ids.dtype.byteorder not in "=|":  # FITS columns are big-endian
        ids = ids.astype(ids.dtype.newbyteorder("="))
    s = pd.Series(ids)
    empty = s.isna().to_numpy()
    if empty.any():
        r = int(np.flatnonzero(empty)[0])
        raise DataError(f"{path}: column {id_name!r}, {_row(r)}: empty object id; expected one id per row")
    dup = s.duplicated().to_numpy()
    if dup.any():
        r = int(np.flatnonzero(dup)[0])
        first = int(np.flatnonzero((s == s.iloc[r]).to_numpy())[0])
        more = f" [{int(dup.sum())} repeated ids in total]" if dup.sum() > 1 else ""
        raise DataError(f"{path}: column {id_name!r}: duplicate object id {show_value(ids[r])} at rows {first} and {r} "
                        f"(first data row = 0); expected one row per object{more}")
    return np.asarray(ids)


def _first_bad_row(mask: np.ndarray) -> tuple[int, str]:
    row, band = np.argwhere(mask)[0]
    return int(row), BANDS[int(band)]


def read_photometry(path: str | Path) -> Photometry:
    """Read and validate a user table of ugriz magnitudes or fluxes (see the module docstring).

    Accepted values: magnitudes (given, from fluxes, and after the extinction correction) in
    :data:`~astroflax.data.checks.MAG_RANGE`; magnitude errors > 0 and <= 100 mag; fluxes and
    inverse variances > 0; extinctions in [0, 30] mag; object ids unique. Every problem is a
    one-line DataError naming the file, the column, the row (first data row = 0) and the value.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file")
    cols = _read_table(path)
    if not cols:
        raise DataError(f"{path}: table has no columns; expected ugriz magnitude (or flux) columns with errors")
    if len(next(iter(cols.values()))) == 0:
        raise DataError(f"{path}: table has no rows")
    has_mags = _find(cols, MAG_NAMES, BANDS[0]) is not None
    has_flux = FLUX_VECTOR in cols or _find(cols, FLUX_NAMES, BANDS[0]) is not None
    if has_mags or not has_flux:
        mag, mag_names = _band_columns(cols, MAG_NAMES, None, path, "magnitude")
        err, err_names = _band_columns(cols, ERR_NAMES, None, path, "magnitude-error")
        _check_mags(path, mag, mag_names, mag, "magnitude")
        _check_errors(path, err, err_names, err)
        source = "magnitudes"
    else:
        flux, flux_names = _band_columns(cols, FLUX_NAMES, FLUX_VECTOR, path, "flux")
        ivar, ivar_names = _band_columns(cols, IVAR_NAMES, IVAR_VECTOR, path, "flux inverse-variance")
        if np.any(ivar <= 0):
            row, b = _first_bad_row(ivar <= 0)
            raise DataError(f"{path}: inverse variance <= 0 in band {b!r} at row {row} (first data row = 0; "
                            f"column {ivar_names[BANDS.index(b)]!r} = {show_value(ivar[row, BANDS.index(b)])}); "
                            "it must be > 0")
        if np.any(flux <= 0):
            row, b = _first_bad_row(flux <= 0)
            raise DataError(f"{path}: flux <= 0 in band {b!r} at row {row} (first data row = 0; "
                            f"column {flux_names[BANDS.index(b)]!r} = {show_value(flux[row, BANDS.index(b)])}); "
                            "a magnitude needs a positive flux")
        with np.errstate(over="ignore", under="ignore", divide="ignore"):
            mag, err = flux_to_mag(flux, ivar)
        _check_mags(path, mag, flux_names, flux, "magnitude from flux", shown_as="magnitude")
        _check_errors(path, err, ivar_names, ivar, shown_as="magnitude error")
        source = "fluxes"
    ext, ext_names = _band_columns(cols, EXT_NAMES, EXT_VECTOR, path, "extinction", required=False)
    if ext is not None:
        _check_bands(path, out_of_range(ext, *EXT_RANGE), "extinction out of range", ext_names, ext,
                     f"an extinction in [{EXT_RANGE[0]:g}, {EXT_RANGE[1]:g}] mag")
        mag = mag - ext
        _check_mags(path, mag, ext_names, ext, "magnitude after the extinction correction",
                    shown_as="a corrected magnitude")
    id_name = next((n for n in ID_NAMES if n in cols), None)
    ids = _check_ids(path, cols[id_name], id_name) if id_name else np.arange(len(mag), dtype=np.int64)
    return Photometry(mag.astype(np.float32), err.astype(np.float32), ids, source)
