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


def _read_table(path: Path) -> dict[str, np.ndarray]:
    """Columns of a CSV or FITS table by lower-case name (vector FITS columns stay 2-D)."""
    suffix = "".join(path.suffixes[-2:]).lower()
    if path.is_dir():
        raise DataError(f"{path}: expected a CSV or FITS table, got a directory")
    if suffix.endswith((".fits", ".fit", ".fits.gz", ".fts")):
        from astropy.table import Table

        try:
            table = Table.read(path)
        except Exception as exc:  # astropy raises many types for broken files
            raise DataError(f"{path}: cannot read as a FITS table ({type(exc).__name__}: {exc})") from None
        return {name.lower(): np.asarray(table[name]) for name in table.colnames}
    import pandas as pd

    try:
        frame = pd.read_csv(path)
    except Exception as exc:
        raise DataError(f"{path}: cannot read as CSV ({type(exc).__name__}: {exc})") from None
    return {str(name).strip().lower(): frame[name].to_numpy() for name in frame.columns}


def _find(cols: dict, patterns: tuple[str, ...], band: str) -> str | None:
    for p in patterns:
        name = p.format(b=band)
        if name in cols:
            return name
    return None


def _numeric(cols: dict, name: str, path: Path) -> np.ndarray:
    try:
        values = np.asarray(cols[name], np.float64)
    except (TypeError, ValueError):
        raise DataError(f"{path}: column {name!r} must be numeric") from None
    bad = np.flatnonzero(~np.isfinite(values))
    if bad.size:
        raise DataError(f"{path}: column {name!r} has a non-finite value at row {int(bad[0])} (first data row = 0)")
    return values


def _band_columns(cols: dict, patterns: tuple[str, ...], vector: str | None, path: Path, what: str,
                  required: bool = True) -> np.ndarray | None:
    """(N, 5) array from per-band columns or one vector column; None if absent and not required."""
    if vector is not None and vector in cols and np.ndim(cols[vector]) == 2:
        arr = cols[vector]
        if arr.shape[1] != len(BANDS):
            raise DataError(f"{path}: column {vector!r} has {arr.shape[1]} entries per row, expected 5 (ugriz)")
        return np.stack([_numeric({f"{vector}[{b}]": arr[:, j]}, f"{vector}[{b}]", path)
                         for j, b in enumerate(BANDS)], axis=1)
    out = []
    for b in BANDS:
        name = _find(cols, patterns, b)
        if name is None:
            if not required and not out:
                return None
            accepted = ", ".join(p.format(b=b) for p in patterns) + (f" or a 5-wide {vector!r}" if vector else "")
            raise DataError(f"{path}: missing {what} column for band {b!r}; accepted names: {accepted}")
        out.append(_numeric(cols, name, path))
    return np.stack(out, axis=1)


def _first_bad_row(mask: np.ndarray) -> tuple[int, str]:
    row, band = np.argwhere(mask)[0]
    return int(row), BANDS[int(band)]


def read_photometry(path: str | Path) -> Photometry:
    """Read and validate a user table of ugriz magnitudes or fluxes (see the module docstring)."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file")
    cols = _read_table(path)
    if not cols or len(next(iter(cols.values()))) == 0:
        raise DataError(f"{path}: table has no rows")
    has_mags = _find(cols, MAG_NAMES, BANDS[0]) is not None
    has_flux = FLUX_VECTOR in cols or _find(cols, FLUX_NAMES, BANDS[0]) is not None
    if has_mags or not has_flux:
        mag = _band_columns(cols, MAG_NAMES, None, path, "magnitude")
        err = _band_columns(cols, ERR_NAMES, None, path, "magnitude-error")
        if np.any(err < 0):
            row, b = _first_bad_row(err < 0)
            raise DataError(f"{path}: negative magnitude error in band {b!r} at row {row}; errors must be >= 0")
        source = "magnitudes"
    else:
        flux = _band_columns(cols, FLUX_NAMES, FLUX_VECTOR, path, "flux")
        ivar = _band_columns(cols, IVAR_NAMES, IVAR_VECTOR, path, "flux inverse-variance")
        if np.any(ivar <= 0):
            row, b = _first_bad_row(ivar <= 0)
            raise DataError(f"{path}: inverse variance <= 0 in band {b!r} at row {row}; it must be > 0")
        if np.any(flux <= 0):
            row, b = _first_bad_row(flux <= 0)
            raise DataError(f"{path}: flux <= 0 in band {b!r} at row {row}; a magnitude needs a positive flux")
        mag, err = flux_to_mag(flux, ivar)
        source = "fluxes"
    ext = _band_columns(cols, EXT_NAMES, EXT_VECTOR, path, "extinction", required=False)
    if ext is not None:
        mag = mag - ext
    id_name = next((n for n in ID_NAMES if n in cols), None)
    ids = np.asarray(cols[id_name]) if id_name else np.arange(len(mag), dtype=np.int64)
    return Photometry(mag.astype(np.float32), err.astype(np.float32), ids, source)
