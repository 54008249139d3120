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
from typing import Any

import numpy as np

from astroflax.data.checks import (
    MAG_ERR_MAX,
    MAG_RANGE,
    fits_warnings,
    out_of_range,
    show_value,
)
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


# ------------------------------------------------------------------ catalogues with missing bands
#
# The reader behind ``data.path`` and ``predict``: any table format of
# :class:`astroflax.data.tables.Table`, any list of bands, magnitudes or fluxes. A band whose
# value (or error) is empty, NaN or a survey "no data" code, or whose flux cannot give a
# magnitude (flux <= 0, inverse variance 0), is *missing*: the row is kept and the band is
# masked (the model sees the mask). Anything else that is not a valid measurement is an error.

#: Column patterns tried, in order, when ``data.mag_columns`` etc. are unset ({band} = band name).
MAG_PATTERNS = ("{band}", "mag_{band}", "{band}_mag", "modelmag_{band}")
ERR_PATTERNS = ("{band}_err", "magerr_{band}", "err_{band}", "{band}_mag_err", "modelmagerr_{band}")
FLUX_PATTERNS = ("modelflux", "modelflux_{band}", "flux_{band}")
FLUX_IVAR_PATTERNS = ("modelflux_ivar", "modelflux_ivar_{band}", "flux_ivar_{band}")
FLUX_ERR_PATTERNS = ("fluxerr_{band}", "flux_err_{band}", "{band}_fluxerr", "{band}_flux_err")
EXT_PATTERNS = ("extinction", "extinction_{band}", "ext_{band}")
#: Redshift column names tried when ``data.target`` is unset (a band column is never taken).
TARGET_ALIASES = ("z", "zspec", "z_spec", "specz", "spec_z", "redshift")
ID_ALIASES = ("object_id", "objid", "id")
SDSS_FLUX_NAMES = ("modelflux",)  # SDSS convention: nanomaggies when the file declares no unit
DEFAULT_SENTINELS = (-99.0, 99.0, -9999.0)
#: Spectroscopic redshifts accepted (stars scatter slightly below 0).
Z_RANGE = (-0.05, 15.0)
AB_ZERO_POINT_JY = 3631.0


@dataclass(frozen=True)
class CatalogueSpec:
    """How to read a catalogue: the bands and the column pattern of each quantity.

    A pattern holds ``{band}`` (one column per band, e.g. ``mag_{band}``) or names a vector
    column with one element per band (FITS/HDF5, e.g. SDSS ``modelflux``). None = try the
    standard names (:data:`MAG_PATTERNS` ...). Set either magnitudes (``mag`` + ``err``) or fluxes
    (``flux`` + ``flux_err`` or ``flux_ivar``, in ``flux_unit`` or with an AB ``zero_point``).
    """

    bands: tuple[str, ...] = BANDS
    mag: str | None = None
    err: str | None = None
    flux: str | None = None
    flux_err: str | None = None
    flux_ivar: str | None = None
    flux_unit: str | None = None
    zero_point: float | None = None
    extinction: str | None = None
    target: str | None = None
    id_column: str | None = None
    sentinels: tuple[float, ...] = DEFAULT_SENTINELS
    hdu: int | str | None = None

    def to_info(self) -> dict:
        """JSON form (``info["reader"]``): predict reads new files exactly as training did."""
        import dataclasses

        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_info(cls, d: dict) -> CatalogueSpec:
        d = dict(d)
        d["bands"] = tuple(d.get("bands", BANDS))
        d["sentinels"] = tuple(float(s) for s in d.get("sentinels", DEFAULT_SENTINELS))
        return cls(**d)


def predict_spec(info: dict) -> CatalogueSpec:
    """How ``predict`` reads a new catalogue for a model: as its training data were read
    (``info["reader"]``), else (the bundled SDSS model, runs made before user data) the standard
    column names with fluxes in SDSS nanomaggies, the unit that model was trained on."""
    if "reader" in info:
        return CatalogueSpec.from_info(info["reader"])
    return CatalogueSpec(bands=tuple(info.get("bands", BANDS)), flux_unit="nanomaggy")


@dataclass
class Catalogue:
    """Validated photometry of the kept rows; missing bands have ``observed`` False (and 0 values)."""

    mag: np.ndarray  # (N, B) float32, extinction corrected; 0 where not observed
    mag_err: np.ndarray  # (N, B) float32; 0 where not observed
    observed: np.ndarray  # (N, B) bool
    z: np.ndarray | None  # (N,) float64 spectroscopic redshift (training only)
    ids: np.ndarray  # (N,)
    split: np.ndarray | None  # (N,) uint8 codes from a ``split`` column, or None
    spec: CatalogueSpec  # with the column patterns actually used filled in
    kind: str  # "magnitudes" or "fluxes"
    fmt: str  # table format (file suffix)
    rows_read: int
    dropped: Any  # tables.DropLog: rows not kept, with reasons
    masked: Any  # tables.DropLog: (band, reason) cells masked
    masked_per_band: dict[str, int]
    target_column: str | None = None


class _Cols:
    """Per-band numeric columns of a :class:`~astroflax.data.tables.Table`, scalar or vector."""

    def __init__(self, tab, n: int):
        self.tab, self.n = tab, n

    def where(self, pos: int) -> str:
        return self.tab.where(pos) if pos < len(self.tab.df) else f"row {pos} (0-based)"

    def fail(self, column: str, pos: int, msg: str, n_bad: int = 1) -> DataError:
        from astroflax.data.checks import cell_error

        return cell_error(self.tab.path, column, self.where(pos), msg, n_bad)

    def names(self, pattern: str, bands: tuple[str, ...]) -> list[str] | None:
        """The column of each band for ``pattern`` (``vec[i]`` for a vector column), None if absent."""
        p = pattern.strip().lower()
        if "{band}" not in p:
            vec = self.tab.vectors.get(p)
            return None if vec is None else [f"{p}[{j}]" for j in range(len(bands))]
        names = [p.replace("{band}", b.lower()) for b in bands]
        return names if all(n in self.tab.df.columns for n in names) else None

    def values(self, name: str, bands: tuple[str, ...]) -> np.ndarray:
        """float64 values of column ``name`` (or vector element ``vec[j]``); NaN = empty cell."""
        from astroflax.data.checks import F32_MAX

        if not name.endswith("]"):
            return self.tab.numeric(name, allow_nan=True)
        vec_name, j = name[:-1].split("[")
        vec = self.tab.vectors[vec_name]
        if vec.ndim != 2 or vec.shape[1] != len(bands):
            raise DataError(f"{self.tab.path}: column {vec_name!r} has {vec.shape[1:]} elements per row; expected "
                            f"one per band ({len(bands)}: {', '.join(bands)}), in the order of data.bands")
        if vec.dtype.kind not in "fiu":
            raise DataError(f"{self.tab.path}: column {vec_name!r} has type {vec.dtype}; expected numbers")
        v = vec[:, int(j)].astype(np.float64)
        for bad, what in ((np.isinf(v), "a finite number"), (np.abs(v) > F32_MAX, "a number that float32 can hold")):
            if bad.any():
                pos = int(np.flatnonzero(bad)[0])
                raise self.fail(name, pos, f"expected {what}, got {show_value(v[pos])}", int(bad.sum()))
        return v


def _pick(cols: _Cols, pattern: str | None, candidates: tuple[str, ...], bands: tuple[str, ...], what: str,
          setting: str, required: bool = True) -> tuple[str | None, list[str] | None]:
    """(pattern, column per band): the configured pattern, else the first candidate present for every band."""
    if pattern is not None:
        names = cols.names(pattern, bands)
        if names is None:
            if "{band}" in pattern:
                missing = next(n for n in (pattern.lower().replace("{band}", b.lower()) for b in bands)
                               if n not in cols.tab.df.columns)
                band = bands[[pattern.lower().replace("{band}", b.lower()) for b in bands].index(missing)]
                raise DataError(f"{cols.tab.path}: column {missing!r} not found: {what} of band {band!r} "
                                f"({setting} = {pattern!r}); columns are: {', '.join(cols.tab.df.columns)}")
            raise DataError(f"{cols.tab.path}: vector column {pattern!r} ({setting}) not found; vector columns are: "
                            f"{', '.join(cols.tab.vectors) or 'none'}")
        return pattern.lower(), names
    for cand in candidates:
        names = cols.names(cand, bands)
        if names is not None:
            return cand, names
    if not required:
        return None, None
    # name the first band the best-matching pattern lacks
    per_band = [c for c in candidates if "{band}" in c]
    best = max(per_band, key=lambda c: sum(c.replace("{band}", b.lower()) in cols.tab.df.columns for b in bands))
    band = next(b for b in bands if best.replace("{band}", b.lower()) not in cols.tab.df.columns)
    accepted = ", ".join(c.replace("{band}", band.lower()) for c in per_band)
    vectors = [c for c in candidates if "{band}" not in c]
    if vectors:
        accepted += f" (or a vector column {', '.join(map(repr, vectors))})"
    raise DataError(f"{cols.tab.path}: missing {what} column for band {band!r}; accepted names: {accepted}; "
                    f"or set {setting}")


def _flux_scale(cols: _Cols, spec: CatalogueSpec, first_col: str, pattern: str) -> tuple[float, str]:
    """Factor turning the file's flux values into maggies (flux / 3631 Jy), and the unit used."""
    import astropy.units as u

    zp = u.zero_point_flux(AB_ZERO_POINT_JY * u.Jy)
    if spec.zero_point is not None:
        return 10 ** (-0.4 * spec.zero_point), f"AB zero point {spec.zero_point:g}"
    base = first_col.split("[")[0]
    unit_text = spec.flux_unit or cols.tab.units.get(base)
    if unit_text is None:
        if pattern.split("{")[0].rstrip("_") in SDSS_FLUX_NAMES:
            unit_text = "nanomaggy"
        else:
            raise DataError(f"{cols.tab.path}: column {base!r}: the file gives no flux unit; set data.flux_unit "
                            "(nanomaggy, uJy, nJy, Jy, ...) or data.zero_point (AB magnitude of flux 1)")
    try:
        unit = u.Unit(unit_text.replace("nanomaggies", "nanomaggy"))
        return float((1.0 * unit).to_value(u.mgy, zp)), unit_text
    except (ValueError, u.UnitsError) as exc:
        raise DataError(f"flux unit {unit_text!r} of column {base!r}: not a flux density astropy can convert to AB "
                        f"magnitudes ({_first_line(exc)}); expected e.g. nanomaggy, uJy, nJy, Jy") from None


def read_catalogue(path: str | Path, spec: CatalogueSpec, *, need_target: bool, min_bands: int = 0,
                   table: Any = None) -> Catalogue:
    """Read and validate a catalogue of broad-band photometry (see :class:`CatalogueSpec`).

    Missing measurements (empty, NaN, a code in ``spec.sentinels``, flux <= 0, inverse
    variance 0, S/N < 0.011 i.e. magnitude error > 100) are masked and counted per band;
    everything else must be valid or a one-line DataError names file, column, row and value.
    With ``need_target`` (training) rows without a usable redshift, and rows with fewer than
    ``min_bands`` observed bands, are dropped and logged; prediction keeps every row.
    ``table``: an already read :class:`~astroflax.data.tables.Table` (e.g. one chunk of a large
    file, see :mod:`astroflax.predict.tables`) instead of reading ``path``.
    """
    from astroflax.data.tables import DropLog, Table, parse_split, table_suffix

    path = Path(path)
    if table is None and not path.exists():
        raise DataError(f"{path}: no such file")
    bands = tuple(spec.bands)
    if len(bands) < 2 or len({b.lower() for b in bands}) != len(bands):
        raise DataError(f"data.bands = {list(bands)}: expected at least two distinct band names")
    if spec.flux is not None and spec.mag is not None:
        raise DataError("data.mag_columns and data.flux_columns are both set; give magnitudes or fluxes, not both")
    tab = table if table is not None else Table(path, hdu=spec.hdu)
    n = len(tab.df) if len(tab.df.columns) else len(next(iter(tab.vectors.values()), []))
    if n == 0:
        raise DataError(f"{path}: table has no rows")
    cols = _Cols(tab, n)
    sentinels = np.asarray(spec.sentinels, np.float64)

    def missing(v: np.ndarray) -> np.ndarray:
        return np.isnan(v) | np.isin(v, sentinels)

    observed = np.ones((n, len(bands)), bool)
    mag = np.zeros((n, len(bands)))
    err = np.zeros((n, len(bands)))
    used: dict[str, Any] = {}

    why = np.full((n, len(bands)), -1, np.int16)  # index into reasons of the first reason a cell is masked
    reasons: list[str] = []

    def mask(j: int, bad: np.ndarray, reason: str) -> None:
        new = bad & observed[:, j]
        if new.any():
            if reason not in reasons:
                reasons.append(reason)
            why[new, j] = reasons.index(reason)
            observed[:, j] &= ~new

    sent_text = "/".join(f"{s:g}" for s in spec.sentinels) or "none set"
    use_flux = spec.flux is not None or (spec.mag is None and _pick(cols, None, MAG_PATTERNS, bands, "", "",
                                                                     required=False)[0] is None
                                         and _pick(cols, None, FLUX_PATTERNS, bands, "", "", required=False)[0])
    if not use_flux:
        used["mag"], mag_names = _pick(cols, spec.mag, MAG_PATTERNS, bands, "magnitude", "data.mag_columns")
        used["err"], err_names = _pick(cols, spec.err, ERR_PATTERNS, bands, "magnitude-error", "data.err_columns")
        for j in range(len(bands)):
            m, e = cols.values(mag_names[j], bands), cols.values(err_names[j], bands)
            mask(j, np.isnan(m), "magnitude empty or NaN")
            mask(j, np.isin(m, sentinels), f"magnitude is a no-data code ({sent_text})")
            mask(j, missing(e), f"magnitude error empty, NaN or a no-data code ({sent_text})")
            _check_observed(cols, mag_names[j], m, observed[:, j], MAG_RANGE, "an apparent magnitude",
                            f" (or a no-data code listed in data.sentinels: {sent_text})")
            _check_errors_observed(cols, err_names[j], e, observed[:, j], sent_text)
            mag[:, j], err[:, j] = m, e
        kind = "magnitudes"
    else:
        used["flux"], flux_names = _pick(cols, spec.flux, FLUX_PATTERNS, bands, "flux", "data.flux_columns")
        if spec.flux_err is not None and spec.flux_ivar is not None:
            raise DataError("data.flux_err_columns and data.flux_ivar_columns are both set; give one")
        if spec.flux_err is None:
            used["flux_ivar"], ivar_names = _pick(cols, spec.flux_ivar, FLUX_IVAR_PATTERNS, bands,
                                                  "flux inverse-variance", "data.flux_ivar_columns",
                                                  required=spec.flux_ivar is not None)
        else:
            ivar_names = None
        sig_names = None
        if ivar_names is None:
            used["flux_err"], sig_names = _pick(cols, spec.flux_err, FLUX_ERR_PATTERNS, bands,
                                                "flux-error (or inverse-variance)",
                                                "data.flux_err_columns (or data.flux_ivar_columns)")
        scale, used["flux_unit"] = _flux_scale(cols, spec, flux_names[0], used["flux"])
        if spec.zero_point is not None:
            used["zero_point"], used["flux_unit"] = spec.zero_point, None
        for j in range(len(bands)):
            f = cols.values(flux_names[j], bands)
            mask(j, np.isnan(f), "flux empty or NaN")
            mask(j, np.isin(f, sentinels), f"flux is a no-data code ({sent_text})")
            mask(j, f <= 0, "flux <= 0 (no magnitude)")
            if ivar_names is not None:
                iv = cols.values(ivar_names[j], bands)
                _check_observed(cols, ivar_names[j], iv, ~missing(iv), (0.0, None), "an inverse variance", "")
                mask(j, missing(iv), f"inverse variance empty, NaN or a no-data code ({sent_text})")
                mask(j, iv == 0, "inverse variance 0 (no measurement)")
                with np.errstate(divide="ignore", invalid="ignore"):
                    sig = 1.0 / np.sqrt(iv)
            else:
                sig = cols.values(sig_names[j], bands)
                mask(j, missing(sig), f"flux error empty, NaN or a no-data code ({sent_text})")
                _check_observed(cols, sig_names[j], sig, observed[:, j], (0.0, None), "a flux error > 0", "",
                                lo_open=True)
            with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
                m = -2.5 * np.log10(f * scale)
                e = POGSON * sig / f
            mask(j, ~(e <= MAG_ERR_MAX), f"S/N below {POGSON / MAG_ERR_MAX:.3g} (magnitude error > {MAG_ERR_MAX:g})")
            _check_observed(cols, flux_names[j], m, observed[:, j], MAG_RANGE, "a flux giving an apparent magnitude",
                            f" with flux unit {used['flux_unit'] or used.get('zero_point')} (wrong unit?)",
                            raw=f, shown_as="magnitude")
            mag[:, j], err[:, j] = m, e
        kind = "fluxes"
    with np.errstate(over="ignore", under="ignore"):
        tiny = observed & (err.astype(np.float32) <= 0)
    if tiny.any():
        pos, j = (int(k) for k in np.argwhere(tiny)[0])
        raise cols.fail(f"band {bands[j]}", pos, f"magnitude error {err[pos, j]:.3g} is 0 in float32; expected an "
                        "error >= 1e-38", int(tiny.any(axis=1).sum()))
    used["extinction"], ext_names = _pick(cols, spec.extinction, EXT_PATTERNS, bands, "extinction",
                                          "data.extinction_columns", required=spec.extinction is not None)
    if ext_names is not None:
        for j in range(len(bands)):
            ext = cols.values(ext_names[j], bands)
            _check_observed(cols, ext_names[j], ext, observed[:, j], EXT_RANGE, "a Galactic extinction (mag)", "")
            mag[:, j] = np.where(observed[:, j], mag[:, j] - np.nan_to_num(ext), 0.0)
            _check_observed(cols, ext_names[j], mag[:, j], observed[:, j], MAG_RANGE,
                            "an extinction leaving a magnitude", "", raw=ext, shown_as="corrected magnitude")
    mag = np.where(observed, mag, 0.0)
    err = np.where(observed, err, 0.0)

    band_cols = {c.split("[")[0] for key in ("mag", "err", "flux", "flux_err", "flux_ivar", "extinction")
                 if used.get(key) for c in [used[key].replace("{band}", b.lower()) for b in bands]}
    dropped = DropLog()
    keep = np.ones(n, bool)
    z = None
    if need_target:
        target = spec.target.lower() if spec.target else next(
            (a for a in TARGET_ALIASES if a in tab.df.columns and a not in band_cols), None)
        if target is None or target not in tab.df.columns:
            raise DataError(f"{path}: no redshift column " + (f"{spec.target!r} (data.target)" if spec.target else
                            f"(tried {', '.join(TARGET_ALIASES)}); set data.target") +
                            f"; columns are: {', '.join(tab.df.columns)}")
        used["target"] = target
        z = tab.numeric(target, allow_nan=True)
        no_z = missing(z)
        _check_observed(cols, target, z, ~no_z, Z_RANGE, "a spectroscopic redshift",
                        f" (or a no-data code listed in data.sentinels: {sent_text})")
        if no_z.any():
            pos = np.flatnonzero(no_z)
            dropped.add(f"no usable redshift in {target!r} (empty, NaN or a no-data code {sent_text})",
                        [cols.where(int(p)) for p in pos[:5]], count=len(pos))
        keep &= ~no_z
    if min_bands:
        few = keep & (observed.sum(axis=1) < min_bands)
        if few.any():
            pos = np.flatnonzero(few)
            dropped.add(f"fewer than {min_bands} observed bands (data.min_bands)",
                        [cols.where(int(p)) for p in pos[:5]], count=len(pos))
        keep &= ~few

    id_col = spec.id_column.lower() if spec.id_column else next((a for a in ID_ALIASES if a in tab.df.columns), None)
    if id_col is not None:
        if id_col not in tab.df.columns:
            raise DataError(f"{path}: id column {id_col!r} (data.id_column) not found; columns are: "
                            f"{', '.join(tab.df.columns)}")
        ids = _catalogue_ids(tab, id_col, as_int=need_target)
        used["id_column"] = id_col
    else:
        ids = np.arange(n, dtype=np.int64)  # 0-based row number in the file
    split = parse_split(tab) if need_target else None
    per_band = {b: int((~observed[keep, j]).sum()) for j, b in enumerate(bands)}
    masked = DropLog()  # masked cells of the kept rows, per band and reason
    for j, b in enumerate(bands):
        for r, reason in enumerate(reasons):
            pos = np.flatnonzero(keep & (why[:, j] == r))
            if len(pos):
                masked.add(f"band {b!r}: {reason}", [cols.where(int(p)) for p in pos[:5]], count=len(pos))
    resolved = CatalogueSpec(**{**spec.to_info(), "bands": bands, "sentinels": tuple(spec.sentinels),
                                **{k: v for k, v in used.items() if k != "target"}})
    return Catalogue(mag=mag[keep].astype(np.float32), mag_err=err[keep].astype(np.float32), observed=observed[keep],
                     z=None if z is None else z[keep], ids=ids[keep], split=None if split is None else split[keep],
                     spec=resolved, kind=kind, fmt=table_suffix(path).lstrip(".") or "csv", rows_read=n,
                     dropped=dropped, masked=masked, masked_per_band=per_band,
                     target_column=used.get("target"))


def _check_observed(cols: _Cols, column: str, values: np.ndarray, observed: np.ndarray, rng: tuple, what: str,
                    note: str, lo_open: bool = False, raw: np.ndarray | None = None, shown_as: str = "") -> None:
    """DataError at the first observed value outside ``rng`` (names the raw cell value, and what it became)."""
    from astroflax.data.checks import range_text

    lo, hi = rng
    bad = observed & (out_of_range(values, lo, hi, lo_open=lo_open) | np.isnan(values))
    if bad.any():
        pos = int(np.flatnonzero(bad)[0])
        got = show_value(values[pos]) if raw is None else f"{show_value(raw[pos])} ({shown_as} {values[pos]:.6g})"
        raise cols.fail(column, pos, f"expected {what} {range_text(lo, hi, lo_open)}{note}, got {got}", int(bad.sum()))


def _check_errors_observed(cols: _Cols, column: str, err: np.ndarray, observed: np.ndarray, sent_text: str) -> None:
    _check_observed(cols, column, err, observed, (0.0, MAG_ERR_MAX), "a magnitude error",
                    f" (or a no-data code listed in data.sentinels: {sent_text})", lo_open=True)


def _catalogue_ids(tab, column: str, as_int: bool) -> np.ndarray:
    """Object ids: integers for training (they are stored as int64), any text for prediction; unique."""
    import pandas as pd

    s = tab.df[column]
    if as_int or pd.api.types.is_numeric_dtype(s.dtype):
        ids = tab.numeric(column, integer=True)
    else:
        if s.isna().any():
            raise tab.fail(column, int(np.flatnonzero(s.isna().to_numpy())[0]), "empty object id; expected one per row")
        ids = s.astype(str).to_numpy()
    dup = pd.Series(ids).duplicated().to_numpy()
    if dup.any():
        pos = int(np.flatnonzero(dup)[0])
        first = int(np.flatnonzero(ids == ids[pos])[0])
        raise tab.fail(column, pos, f"duplicate object id {show_value(ids[pos])} (also at {tab.where(first)}); "
                                    "expected one row per object", int(dup.sum()))
    return ids
