"""User spectra for the ``spectra`` task: read, convert units, resample with a coverage mask, label.

Three layouts (``data.path``):

- a folder of spectrum files (FITS read with :mod:`specutils`: SDSS ``spec-*``, generic FITS
  tables, 1-D FITS images with a WCS; text tables CSV/TSV/ECSV through
  :class:`astroflax.data.tables.Table`) plus a labels table (``labels.csv``...: ``file``, the
  label column, optional subtype and ``split`` columns);
- one table (FITS / HDF5 / Parquet) with one spectrum per row in vector columns
  (``wavelength`` or ``loglam``, ``flux``, optional ``ivar`` or ``error``) and label columns;
- one HDF5 file of datasets: ``wavelength`` (P,) or (N, P), ``flux`` (N, P), optional ``ivar``
  / ``error`` (N, P), label datasets (units in a ``unit``/``units`` attribute).

Units come from the file (FITS ``TUNIT``/``CUNIT1``/``BUNIT``, ECSV/HDF5 metadata) and are
converted with :mod:`astropy.units`: wavelengths to Angstrom (also from frequency/energy, or
``dex(...)``/``log10(...)`` units and ``loglam`` columns for log10 lambda), fluxes to F_lambda
(``spectral_density``; a dimensionless flux is taken as F_lambda of arbitrary scale). When the
file declares none the config's ``data.wave_unit`` / ``data.flux_unit`` are used; when it
declares one and the config disagrees that is an error, and so is neither.

Wavelength medium: the model grid is in air (the Pickles (1998) library, like the optical
spectra it was compiled from, uses air wavelengths). A file that says vacuum (FITS ``AIRORVAC``
/ ``VACUUM`` keywords, ``CTYPE1 = 'WAVE'``, SDSS files) or ``data.wave_medium = 'vacuum'`` is
converted with specutils' Morton (2000) refraction index (the IAU standard conversion).

Resampling (:func:`resample_with_coverage`): flux-conserving onto the model's log pixels, each
model pixel the inverse-variance-weighted mean of the input over the part of it that is covered;
a pixel at least half covered by good input pixels (finite flux, ivar > 0 / finite error > 0,
inside the input's wavelength range) is covered (mask 1), the others are uncovered (mask 0,
flux set to the continuum level 1 after normalisation). A spectrum covering less than
``data.min_coverage`` of the grid is refused.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from astroflax.data.checks import ABS_MAX, F32_MAX, fits_warnings, show_value
from astroflax.data.spectra import (
    CLASS_NAMES,
    WAVE_RANGE,
    _pixel_edges,
    normalise_continuum,
)
from astroflax.data.tables import (
    TEXT_SUFFIXES,
    DropLog,
    Table,
    find_table,
    first_line,
    parse_split,
    table_suffix,
)
from astroflax.errors import DataError

FITS_SUFFIXES = (".fits", ".fit", ".fts", ".fits.gz", ".fit.gz")
TEXT_SPECTRUM_SUFFIXES = (*TEXT_SUFFIXES, ".ecsv")
SPECTRUM_SUFFIXES = (*FITS_SUFFIXES, *TEXT_SPECTRUM_SUFFIXES)
WAVE_COLUMNS = ("wavelength", "wave", "lambda", "lam", "wl", "awav", "loglam")
FLUX_COLUMNS = ("flux", "f_lambda", "flam", "fl")
IVAR_COLUMNS = ("ivar", "inverse_variance")
ERROR_COLUMNS = ("error", "err", "sigma", "flux_err", "flux_error", "uncertainty")
FILE_COLUMNS = ("file", "filename", "path", "spectrum")
LABEL_ALIASES = ("label", "class", "spectral_type", "sptype", "type")
MODEL_MEDIUM = "air"
#: A model pixel counts as covered when at least this fraction of it is covered by good input.
PIXEL_COVERED = 0.5
FLAM = "erg / (Angstrom s cm2)"
_MK = re.compile(r"^([OBAFGKM])(\d(?:\.\d+)?)?(?:\s*(?:I{1,3}|IV|V|VI)(?:[ab]{1,2})?)?(?:[-_ ].*)?$", re.IGNORECASE)
_MK_LETTER = re.compile(r"^[OBAFGKM]\d", re.IGNORECASE)


class UnitsError(DataError):
    """Units or medium missing or contradicting the config: a setting to fix, never a file to drop."""


class SpectraSettings(Protocol):
    """What the readers use of the task's ``data`` section."""

    wave_unit: str | None
    flux_unit: str | None
    wave_medium: str | None
    min_coverage: float


@dataclasses.dataclass
class RawSpectrum:
    """One spectrum in model units: wavelength (Angstrom, model medium), F_lambda, good pixels."""

    wave: np.ndarray
    flux: np.ndarray
    good: np.ndarray
    ivar: np.ndarray | None
    wave_unit: str
    flux_unit: str
    medium: str
    reader: str


# ----------------------------------------------------------------------------- units


def _unit(text: str, what: str, where: str) -> Any:
    import astropy.units as u

    t = str(text).strip()
    m = re.fullmatch(r"log10\((.+)\)", t, re.IGNORECASE)
    if m:
        t = f"dex({m.group(1)})"
    try:
        return u.Unit(t, parse_strict="raise")
    except (ValueError, TypeError) as exc:
        raise UnitsError(f"{where}: {what} unit {text!r} is not an astropy unit ({first_line(exc)})") from None


def _same(a: Any, b: Any) -> bool:
    try:
        return bool(a == b or (a.is_equivalent(b) and abs(float(a.to(b)) - 1.0) < 1e-12))
    except Exception:  # noqa: BLE001 - log units and the like: compare by name
        return a.to_string() == b.to_string()


def choose_unit(declared: str | None, configured: str | None, what: str, key: str, where: str) -> Any:
    """The file's unit, else the config's; a DataError when neither, or when they disagree."""
    if declared is not None and str(declared).strip() != "":
        unit = _unit(declared, what, where)
        if configured is not None and not _same(unit, _unit(configured, what, f"config key 'data.{key}'")):
            raise UnitsError(f"{where}: the file declares {what} unit {unit.to_string()!r} but config key "
                            f"'data.{key}' = {configured!r}; remove the setting or fix the file")
        return unit
    if configured is None:
        raise UnitsError(f"{where}: no {what} unit in the file; set config key 'data.{key}' "
                        f"(e.g. --set data.{key}={'Angstrom' if key == 'wave_unit' else 'erg/(s cm2 Angstrom)'})")
    return _unit(configured, what, f"config key 'data.{key}'")


def choose_medium(declared: str | None, configured: str | None, where: str) -> str:
    if declared is not None:
        if configured is not None and configured != declared:
            raise UnitsError(f"{where}: the file says its wavelengths are in {declared} but config key "
                            f"'data.wave_medium' = {configured!r}; remove the setting or fix the file")
        return declared
    return configured or MODEL_MEDIUM


def to_angstrom(values: np.ndarray, unit: Any, where: str, column: str) -> np.ndarray:
    """Wavelengths in Angstrom from a length, frequency, energy or ``dex(length)`` unit."""
    import astropy.units as u

    v = np.asarray(values, np.float64)
    try:
        if isinstance(unit, u.FunctionUnitBase) or "dex" in unit.to_string():
            with np.errstate(over="ignore", invalid="ignore"):
                q = (v * unit).physical
            return q.to_value(u.AA, equivalencies=u.spectral())
        with np.errstate(divide="ignore", invalid="ignore"):
            return (v * unit).to_value(u.AA, equivalencies=u.spectral())
    except u.UnitsError:
        raise UnitsError(f"{where}: column {column!r} has unit {unit.to_string()!r}, expected a wavelength, "
                        "frequency or energy unit (e.g. Angstrom, nm, um, dex(Angstrom))") from None


def flux_factor(unit: Any, wave_aa: np.ndarray, where: str) -> tuple[np.ndarray | float, str]:
    """Per-pixel factor to F_lambda (erg/s/cm2/A) and a note; dimensionless = arbitrary F_lambda."""
    import astropy.units as u

    if unit.physical_type == "dimensionless":
        return float(unit.to(u.dimensionless_unscaled)), "dimensionless (taken as F_lambda, arbitrary scale)"
    try:
        return (1.0 * unit).to_value(u.Unit(FLAM), equivalencies=u.spectral_density(wave_aa * u.AA)), unit.to_string()
    except u.UnitsError:
        raise UnitsError(f"{where}: flux unit {unit.to_string()!r} is not a spectral flux density (F_lambda, F_nu "
                        "or photon flux) nor dimensionless; counts are not flux-calibrated and are refused") from None


def _medium_from_header(*headers: Any, ctype: str | None = None) -> str | None:
    for h in headers:
        if h is None:
            continue
        v = h.get("AIRORVAC")
        if isinstance(v, str) and v.strip().lower()[:3] in ("air", "vac"):
            return "air" if v.strip().lower().startswith("air") else "vacuum"
        if "VACUUM" in h and isinstance(h["VACUUM"], bool):
            return "vacuum" if h["VACUUM"] else "air"
    if ctype:
        c = ctype.strip().upper()
        if c.startswith("AWAV"):
            return "air"
        if c.startswith("WAVE"):  # FITS WCS paper III: WAVE is a vacuum wavelength
            return "vacuum"
    return None


def convert_medium(wave_aa: np.ndarray, medium: str) -> np.ndarray:
    """Wavelengths in the model's medium (air): vacuum -> air with specutils' Morton (2000)."""
    if medium == MODEL_MEDIUM:
        return wave_aa
    import astropy.units as u
    from specutils.utils.wcs_utils import vac_to_air

    ok = wave_aa >= 2000.0  # the refraction formulas hold above 2000 A (shorter: no air transmission)
    out = wave_aa.copy()
    if ok.any():
        out[ok] = vac_to_air(wave_aa[ok] * u.AA, method="Morton2000").to_value(u.AA)
    return out


# ----------------------------------------------------------------------------- one spectrum


def _pick(names: list[str], wanted: tuple[str, ...]) -> str | None:
    lower = {str(c).strip().lower(): c for c in names}
    return next((lower[w] for w in wanted if w in lower), None)


def _finish(where: str, wave: np.ndarray, wave_unit: Any, flux: np.ndarray, flux_unit: Any, medium: str,
            ivar: np.ndarray | None, error: np.ndarray | None, bad: np.ndarray | None, reader: str,
            log_column: bool = False, wcol: str = "wavelength", fcol: str = "flux") -> RawSpectrum:
    """Checks (one-line errors naming the value) and conversion to Angstrom / F_lambda / air."""
    wave = np.asarray(wave, np.float64).ravel()
    flux = np.asarray(flux, np.float64).ravel()
    if len(wave) != len(flux):
        raise DataError(f"{where}: {len(wave)} wavelengths but {len(flux)} flux values")
    if len(wave) < 2:
        raise DataError(f"{where}: need at least 2 spectrum pixels, got {len(wave)}")
    if not np.any(flux) and not np.any(np.nan_to_num(wave)):
        raise DataError(f"{where}: every wavelength and flux value is zero (an empty spectrum)")
    if not np.any(np.nan_to_num(flux)):
        raise DataError(f"{where}: all {len(flux)} flux values are zero or NaN (an empty spectrum)")
    if log_column:
        wave_unit = _unit(f"dex({wave_unit.to_string()})", "wavelength", where)
    bad_w = ~np.isfinite(wave)
    if bad_w.any():
        r = int(np.flatnonzero(bad_w)[0])
        raise DataError(f"{where}: column {wcol!r}, row {r}: wavelength is {show_value(wave[r])}, expected a finite "
                        f"number [{int(bad_w.sum())} bad rows in total]" if bad_w.sum() > 1 else
                        f"{where}: column {wcol!r}, row {r}: wavelength is {show_value(wave[r])}, expected a finite number")
    for name, col, values, lim in (("flux", fcol, flux, ABS_MAX), ("ivar", "ivar", ivar, F32_MAX),
                                   ("error", "error", error, F32_MAX)):
        if values is None:
            continue
        values = np.asarray(values, np.float64).ravel()
        if len(values) != len(wave):
            raise DataError(f"{where}: {len(values)} {name} values but {len(wave)} wavelengths")
        with np.errstate(invalid="ignore"):
            over = np.isfinite(values) & (np.abs(values) > lim)
        if over.any():
            r = int(np.flatnonzero(over)[0])
            more = f" [{int(over.sum())} bad rows in total]" if over.sum() > 1 else ""
            raise DataError(f"{where}: column {col!r}, row {r}: {name} is {show_value(values[r])}, expected |{name}| "
                            f"<= {lim:g} (float32 range; rescale the spectrum){more}")
    aa = to_angstrom(wave, wave_unit, where, wcol)
    with np.errstate(invalid="ignore"):
        out = ~((aa >= WAVE_RANGE[0]) & (aa <= WAVE_RANGE[1]))
    if out.any():
        r = int(np.flatnonzero(out)[0])
        raise DataError(f"{where}: column {wcol!r}, row {r}: wavelength {show_value(wave[r])} {wave_unit.to_string()} "
                        f"is {aa[r]:g} A; expected {WAVE_RANGE[0]:g}-{WAVE_RANGE[1]:g} A (check the unit)"
                        + (f" [{int(out.sum())} bad rows in total]" if out.sum() > 1 else ""))
    if aa[-1] < aa[0]:  # frequency/energy axes run backwards in wavelength
        order = slice(None, None, -1)
        aa, flux = aa[order], flux[order]
        ivar = None if ivar is None else np.asarray(ivar, np.float64).ravel()[order]
        error = None if error is None else np.asarray(error, np.float64).ravel()[order]
        bad = None if bad is None else np.asarray(bad).ravel()[order]
    step = np.diff(aa)
    if np.any(step <= 0):
        j = int(np.flatnonzero(step <= 0)[0])
        raise DataError(f"{where}: column {wcol!r}: wavelengths must increase, but row {j} has {wave[j]:g} and row "
                        f"{j + 1} has {wave[j + 1]:g}")
    good = np.isfinite(flux)
    if bad is not None:
        good &= ~np.asarray(bad, bool).ravel()
    weights = None
    if ivar is not None:
        ivar = np.asarray(ivar, np.float64).ravel()
        neg = ivar < 0
        if neg.any():
            r = int(np.flatnonzero(neg)[0])
            raise DataError(f"{where}: column 'ivar', row {r}: ivar is {show_value(ivar[r])}, expected >= 0 "
                            "(0 marks a bad pixel)")
        good &= np.isfinite(ivar) & (ivar > 0)
        weights = np.where(good, ivar, 0.0)
    elif error is not None:
        error = np.asarray(error, np.float64).ravel()
        with np.errstate(invalid="ignore"):
            ok = np.isfinite(error) & (error > 0)
        good &= ok
        with np.errstate(divide="ignore", over="ignore"):
            weights = np.where(good, 1.0 / np.where(ok, error, 1.0) ** 2, 0.0)
    factor, flux_note = flux_factor(flux_unit, aa, where)
    flux = flux * factor
    if weights is not None:
        weights = weights / np.asarray(factor, np.float64) ** 2
        pos = weights[good]
        weights = weights / (np.median(pos) if pos.size else 1.0)
    return RawSpectrum(convert_medium(aa, medium), np.where(good, flux, 0.0), good, weights,
                       wave_unit.to_string(), flux_note, medium, reader)


def _read_text(path: Path, s: SpectraSettings) -> RawSpectrum:
    tab = Table(path)
    cols = list(tab.df.columns)
    wcol, fcol = _pick(cols, WAVE_COLUMNS), _pick(cols, FLUX_COLUMNS)
    if wcol is None or fcol is None:
        what, wanted = ("wavelength", WAVE_COLUMNS) if wcol is None else ("flux", FLUX_COLUMNS)
        raise DataError(f"{path}: no {what} column; expected one of {list(wanted)}, found {cols}")
    icol, ecol = _pick(cols, IVAR_COLUMNS), _pick(cols, ERROR_COLUMNS)
    where = str(path)
    wunit = choose_unit(tab.units.get(wcol), s.wave_unit, "wavelength", "wave_unit", f"{where}: column {wcol!r}")
    funit = choose_unit(tab.units.get(fcol), s.flux_unit, "flux", "flux_unit", f"{where}: column {fcol!r}")
    num = {c: tab.numeric(c, allow_nan=c != wcol) for c in (wcol, fcol, icol, ecol) if c is not None}
    return _finish(where, num[wcol], wunit, num[fcol], funit, choose_medium(None, s.wave_medium, where),
                   num.get(icol), num.get(ecol), None, "text table", log_column=wcol == "loglam", wcol=wcol, fcol=fcol)


def _fits_hdu(hdul: Any) -> tuple[int, str]:
    from astropy.io import fits

    for i, hdu in enumerate(hdul):
        if isinstance(hdu, (fits.BinTableHDU, fits.TableHDU)) and hdu.data is not None:
            names = list(hdu.columns.names)
            if _pick(names, WAVE_COLUMNS) and _pick(names, FLUX_COLUMNS):
                return i, "table"
    for i, hdu in enumerate(hdul):
        if isinstance(hdu, (fits.PrimaryHDU, fits.ImageHDU)) and hdu.data is not None:
            return i, "image"
    return -1, ""


GENERIC_FITS = ("tabular-fits", "wcs1d-fits", "iraf")
VACUUM_SURVEYS = ("SDSS", "APOGEE", "MaNGA", "DESI")  # formats whose wavelengths are in vacuum


def _read_fits(path: Path, s: SpectraSettings) -> RawSpectrum:
    """FITS spectra: a survey format that specutils identifies (SDSS ``spec-*``, APOGEE, ...) by
    its own loader; a 1-D image by specutils' ``wcs1d-fits`` loader; a table with wavelength and
    flux columns through astropy. Units are decided here, not assumed (specutils would take
    Angstrom for an image without CUNIT1, and cannot identify columns without TUNIT)."""
    from astropy.io import fits, registry
    from astropy.table import Table as AstropyTable
    from specutils import Spectrum

    where = str(path)
    try:
        with fits_warnings(path):
            formats = [str(f) for f in registry.identify_format("read", Spectrum, str(path), None, [], {})]
            survey = [f for f in formats if f not in GENERIC_FITS]
            if survey:
                spec = Spectrum.read(path, format=survey[0])
                if spec.flux.ndim != 1:
                    raise DataError(f"{path}: specutils' {survey[0]!r} loader gives {spec.flux.shape[0]} spectra; "
                                    "expected one spectrum per file")
                medium = "vacuum" if survey[0].startswith(VACUUM_SURVEYS) else None
                return _from_spectrum(spec, where, medium, s, f"specutils {survey[0]}")
            with fits.open(path, memmap=False) as hdul:
                idx, kind = _fits_hdu(hdul)
                if idx < 0:
                    raise DataError(f"{path}: no FITS table with wavelength/flux columns ({list(WAVE_COLUMNS)} / "
                                    f"{list(FLUX_COLUMNS)}) and no image spectrum")
                if kind == "image":
                    return _read_fits_image(path, hdul, idx, s)
                primary, hdr = hdul[0].header, hdul[idx].header
            tab = AstropyTable.read(path, hdu=idx)
        names = list(tab.colnames)
        wcol, fcol = _pick(names, WAVE_COLUMNS), _pick(names, FLUX_COLUMNS)
        icol, ecol = _pick(names, IVAR_COLUMNS), _pick(names, ERROR_COLUMNS)
        declared = {c: (None if tab[c].unit is None else tab[c].unit.to_string()) for c in names}
        ctype = str(hdr.get(f"TCTYP{names.index(wcol) + 1}") or wcol).upper()
        medium = choose_medium(_medium_from_header(hdr, primary, ctype=ctype if ctype in ("AWAV", "WAVE") else None),
                               s.wave_medium, where)
        wunit = choose_unit(declared[wcol], s.wave_unit, "wavelength", "wave_unit", f"{where}: column {wcol!r}")
        funit = choose_unit(declared[fcol], s.flux_unit, "flux", "flux_unit", f"{where}: column {fcol!r}")
        col = lambda c: None if c is None else np.ma.filled(np.ma.asarray(tab[c], np.float64), np.nan)
        return _finish(where, col(wcol), wunit, col(fcol), funit, medium, col(icol), None if icol else col(ecol),
                       None, "astropy FITS table", log_column=wcol.lower() == "loglam", wcol=wcol, fcol=fcol)
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001 - damaged files fail in many ways inside astropy/specutils
        raise _fits_error(path, exc) from None


def _fits_error(path: Path, exc: Exception) -> DataError:
    """One line for a FITS file astropy cannot read; a data section shorter than its header
    declares (astropy fails to reshape it) is reported as a truncated file."""
    if isinstance(exc, ValueError) and "reshape" in str(exc):
        return DataError(f"{path}: the FITS file is truncated or damaged (its data are shorter than the header says)")
    return DataError(f"{path}: cannot read as a FITS spectrum ({type(exc).__name__}: {first_line(exc)})")


def _read_fits_image(path: Path, hdul: Any, idx: int, s: SpectraSettings) -> RawSpectrum:
    from specutils import Spectrum

    where = f"{path}"
    hdu = hdul[idx]
    h = hdu.header
    data = np.squeeze(np.asarray(hdu.data, np.float64))
    if data.ndim != 1:
        raise DataError(f"{where}: an image spectrum must be 1-D, got shape {hdu.data.shape}")
    if "CRVAL1" not in h or not ("CDELT1" in h or "CD1_1" in h):
        raise DataError(f"{where}: 1-D image needs WCS keywords CRVAL1 and CDELT1 (or CD1_1)")
    log = str(h.get("DC-FLAG", 0)).strip() in ("1", "1.0", "True")  # IRAF/SDSS: CRVAL1, CDELT1 in log10
    wunit = choose_unit(h.get("CUNIT1"), s.wave_unit, "wavelength", "wave_unit", f"{where}: keyword CUNIT1")
    funit = choose_unit(h.get("BUNIT"), s.flux_unit, "flux", "flux_unit", f"{where}: keyword BUNIT")
    medium = choose_medium(_medium_from_header(h, hdul[0].header, ctype=h.get("CTYPE1")), s.wave_medium, where)
    # specutils' wcs1d loader builds the axis from the WCS (CRVAL1, CRPIX1, CDELT1/CD1_1); the unit
    # passed is the one decided above (log10 axes: values read as plain numbers, then 10**x).
    spec = Spectrum.read(hdul, format="wcs1d-fits", hdu=idx, spectral_axis_unit="Angstrom" if log else wunit)
    wave = np.asarray(spec.spectral_axis.value, np.float64)
    if not log and wave.size and spec.spectral_axis.unit != wunit:
        wave = spec.spectral_axis.to_value(wunit)
    return _finish(where, wave, wunit, data, funit, medium, None, None, None, "specutils wcs1d-fits",
                   log_column=log, wcol="CRVAL1")


def _from_spectrum(spec: Any, where: str, medium: str | None, s: SpectraSettings, reader: str) -> RawSpectrum:
    """A specutils Spectrum whose loader knows its units (SDSS): ivar from its uncertainty, mask."""
    from astropy.nddata import InverseVariance

    medium = choose_medium(medium, s.wave_medium, where)
    wunit = choose_unit(spec.spectral_axis.unit.to_string(), s.wave_unit, "wavelength", "wave_unit", where)
    funit = choose_unit(spec.flux.unit.to_string(), s.flux_unit, "flux", "flux_unit", where)
    ivar = None
    if spec.uncertainty is not None:
        ivar = np.asarray(spec.uncertainty.represent_as(InverseVariance).array, np.float64)
    bad = None if spec.mask is None else np.asarray(spec.mask, bool)
    return _finish(where, spec.spectral_axis.value, wunit, spec.flux.value, funit, medium, ivar, None, bad, reader)


def read_spectrum(path: str | Path, settings: SpectraSettings) -> RawSpectrum:
    """One spectrum file (FITS via specutils, or a text table) in Angstrom (air) and F_lambda."""
    path = Path(path)
    name = path.name.lower()
    if name.endswith(FITS_SUFFIXES):
        return _read_fits(path, settings)
    if name.endswith(TEXT_SPECTRUM_SUFFIXES):
        return _read_text(path, settings)
    raise DataError(f"{path}: unsupported spectrum file type; expected one of {list(SPECTRUM_SUFFIXES)}")


# ----------------------------------------------------------------------------- resampling


def resample_with_coverage(raw: RawSpectrum, grid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(flux, mask)`` on the model's log pixels: mean flux over the covered part of each pixel,
    inverse-variance weighted when the spectrum has errors; NaN flux where uncovered.

    Each input interval between two good samples carries their mean flux and weight (trapezoid
    rule); cumulative sums interpolated at the pixel edges give each pixel's covered length,
    weight and weighted flux. For a full, unweighted spectrum a pixel's flux is thus the
    cumulative trapezoid integral of the flux between its edges divided by its width.
    """
    edges = _pixel_edges(grid)
    w = raw.wave
    seg_good = (raw.good[:-1] & raw.good[1:]).astype(np.float64)
    dl = np.diff(w) * seg_good
    wt = np.ones(len(w)) if raw.ivar is None else raw.ivar
    w_seg = 0.5 * (wt[:-1] + wt[1:]) * dl
    f_seg = 0.5 * (raw.flux[:-1] + raw.flux[1:]) * w_seg
    at = lambda c: np.diff(np.interp(edges, w, np.concatenate([[0.0], np.cumsum(c)])))
    covered, weight, wflux = at(dl), at(w_seg), at(f_seg)
    mask = (covered >= PIXEL_COVERED * np.diff(edges)) & (weight > 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        flux = np.where(mask, wflux / np.where(weight > 0, weight, 1.0), np.nan)
    return flux, mask


def prepare(raws: list[RawSpectrum], names: list[str], grid: np.ndarray, normalise: str, min_coverage: float,
            drops: DropLog | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Resampled, normalised ``(flux (N, P) float32, mask (N, P) float32, kept (N,) bool)``.

    A spectrum below ``min_coverage`` or with a non-positive median flux is dropped into
    ``drops`` (training on many files), or raises (``drops`` None: prediction, one file).
    """
    n, p = len(raws), len(grid)
    flux = np.ones((n, p), np.float32)
    mask = np.zeros((n, p), np.float32)
    kept = np.zeros(n, bool)
    for i, (raw, name) in enumerate(zip(raws, names)):
        f, m = resample_with_coverage(raw, grid)
        cov = float(m.mean())
        problem = None
        if cov < min_coverage:
            problem = ((f"covers {cov:.1%} of the model grid {grid[0]:.0f}-{grid[-1]:.0f} A "
                       f"({int(m.sum())} of {p} pixels; data {raw.wave[raw.good].min(initial=np.inf):.0f}-"
                       f"{raw.wave[raw.good].max(initial=-np.inf):.0f} A), below data.min_coverage = {min_coverage:g}"),
                       "coverage below data.min_coverage")
        else:
            med = float(np.median(f[m]))
            if not med > 0:
                problem = (f"median flux over the covered pixels is {med:g}, expected > 0", "median flux not > 0")
        if problem is not None:
            if drops is None:
                raise DataError(f"{name}: {problem[0]}")
            drops.add(problem[1], f"{name}: {problem[0]}")
            continue
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            norm = normalise_continuum(f[None, :], grid, normalise, mask=m[None, :])[0]
        if not np.isfinite(norm).all():
            msg = f"the flux is not finite after resampling and continuum normalisation ({normalise})"
            if drops is None:
                raise DataError(f"{name}: {msg}")
            drops.add("not finite after normalisation", f"{name}: {msg}")
            continue
        flux[i] = norm  # 1 (the continuum) where uncovered
        mask[i] = m
        kept[i] = True
    return flux, mask, kept


# ----------------------------------------------------------------------------- labels


@dataclasses.dataclass
class Labels:
    """Class indices into ``class_names``, the type scale where the subtype is known."""

    label: np.ndarray
    subtype: np.ndarray
    subtype_known: np.ndarray
    class_names: list[str]
    mode: str


def parse_labels(tab: Table, rows: np.ndarray, label_column: str, subtype_column: str | None,
                 class_names: list[str] | None) -> Labels:
    """Labels of the table rows ``rows``: MK types (``G2V``, ``K0``, ``M2.5V``: class + subtype)
    on the task's OBAFGKM classes, or, when no label is an MK type, the data's own class names
    (sorted, or ``data.class_names``); a numeric subtype column (0-9.9) overrides/gives subtypes."""
    col = label_column.lower()
    if col not in tab.df.columns:
        alias = next((a for a in LABEL_ALIASES if a in tab.df.columns), None) if col == "label" else None
        if alias is None:
            raise DataError(f"{tab.path}: no label column {label_column!r} (config key 'data.label_column'); "
                            f"found {list(tab.df.columns)}")
        col = alias
    raw = tab.df[col].iloc[rows]
    text = raw.astype("string").str.strip().to_numpy(dtype=object, na_value=None)
    empty = np.array([t is None or t == "" for t in text])
    if empty.any():
        pos = int(rows[np.flatnonzero(empty)[0]])
        raise tab.fail(col, pos, "expected a class label, got an empty cell", int(empty.sum()))
    n = len(text)
    sub = np.zeros(n, np.float32)
    known = np.zeros(n, np.float32)
    looks_mk = np.array([bool(_MK_LETTER.match(t)) or t.upper() in CLASS_NAMES for t in text])
    if class_names is None and looks_mk.all():
        mode, names = "mk", list(CLASS_NAMES)
        label = np.zeros(n, np.int32)
        for i, t in enumerate(text):
            m = _MK.match(t)
            if m is None:
                raise tab.fail(col, int(rows[i]), f"expected an MK type such as 'G2V', 'K0', 'M2.5V' or a class "
                                                  f"letter O B A F G K M, got {show_value(t)}")
            label[i] = CLASS_NAMES.index(m.group(1).upper())
            if m.group(2) is not None:
                sub[i], known[i] = float(m.group(2)), 1.0
    else:
        if class_names is None and looks_mk.any():
            a, b = text[int(np.flatnonzero(looks_mk)[0])], text[int(np.flatnonzero(~looks_mk)[0])]
            raise DataError(f"{tab.path}: column {col!r} mixes MK types ({a!r}) and other class names ({b!r}); "
                            "set config key 'data.class_names' to the classes to train on")
        mode = "names"
        names = list(class_names) if class_names is not None else sorted(set(text))
        lut = {c: i for i, c in enumerate(names)}
        label = np.array([lut.get(t, -1) for t in text], np.int32)
        bad = label < 0
        if bad.any():
            pos = int(rows[np.flatnonzero(bad)[0]])
            raise tab.fail(col, pos, f"expected one of data.class_names {names}, got {show_value(text[bad][0])}",
                           int(bad.sum()))
    if subtype_column and subtype_column.lower() in tab.df.columns:
        sc = subtype_column.lower()
        vals = tab.numeric(sc, allow_nan=True)[rows]
        tab.check_range(sc, np.where(np.isin(np.arange(len(tab.df)), rows), tab.numeric(sc, allow_nan=True), np.nan),
                        "a subtype", 0.0, 9.9)
        have = np.isfinite(vals)
        sub = np.where(have, vals, sub).astype(np.float32)
        known = np.maximum(known, have.astype(np.float32))
    scale = (label + sub / 10.0).astype(np.float32)
    return Labels(label, scale, known, names, mode)


# ----------------------------------------------------------------------------- layouts


@dataclasses.dataclass
class UserSpectra:
    """Spectra of a user's data on the model grid, with labels (when read for training)."""

    flux: np.ndarray
    mask: np.ndarray
    ids: np.ndarray
    names: list[str]
    labels: Labels | None
    split: np.ndarray | None
    groups: np.ndarray | None
    drops: DropLog
    source: dict[str, Any]
    units: dict[str, Any]


def _units_summary(raws: list[RawSpectrum]) -> dict[str, Any]:
    out: dict[str, dict[str, int]] = {"wave_unit": {}, "flux_unit": {}, "medium": {}, "reader": {}}
    for r in raws:
        for k, v in (("wave_unit", r.wave_unit), ("flux_unit", r.flux_unit), ("medium", r.medium), ("reader", r.reader)):
            out[k][v] = out[k].get(v, 0) + 1
    out["errors_used"] = sum(r.ivar is not None for r in raws)
    out["converted_to"] = f"Angstrom ({MODEL_MEDIUM}), F_lambda; vacuum -> air with Morton (2000)"
    return out


def _spectrum_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.is_file() and p.name.lower().endswith(SPECTRUM_SUFFIXES)
                  and not p.name.lower().startswith("labels"))


def spectrum_files(directory: Path) -> list[Path]:
    """The spectrum files of a folder to predict on (sorted; a labels table is not one)."""
    files = _spectrum_files(directory)
    if not files:
        raise DataError(f"{directory}: no spectrum files ({', '.join(SPECTRUM_SUFFIXES)}) in this directory")
    return files


def read_files(files: list[Path], s: Any, grid: np.ndarray, normalise: str) -> tuple[np.ndarray, np.ndarray, list]:
    """``(flux, mask, raws)`` of spectrum files for prediction: every file must be usable."""
    raws = [read_spectrum(f, s) for f in files]
    flux, mask, _ = prepare(raws, [str(f) for f in files], grid, normalise, s.min_coverage, None)
    return flux, mask, raws


def load_folder(path: Path, s: Any, grid: np.ndarray, normalise: str, labelled: bool) -> UserSpectra:
    """A folder of spectrum files + a labels table (training) or just the files (prediction)."""
    drops = DropLog()
    if not labelled:
        files = spectrum_files(path)
        flux, mask, raws = read_files(files, s, grid, normalise)
        return UserSpectra(flux, mask, np.arange(len(files), dtype=np.int64), [f.name for f in files], None, None,
                           None, drops, {"path": str(path), "format": "folder", "rows_read": len(files)},
                           _units_summary(raws))
    tab = Table(find_table(path, "labels", "labels"))
    tab.require(("file",), {a: "file" for a in FILE_COLUMNS[1:]})
    names = tab.df["file"].astype("string").str.strip().to_numpy(dtype=object, na_value=None)
    raws, kept_rows, kept_names, listed = [], [], [], set()
    for pos, name in enumerate(names):
        if name is None or name == "":
            raise tab.fail("file", pos, "expected a spectrum file name, got an empty cell")
        if name in listed:
            raise tab.fail("file", pos, f"file {name!r} is listed twice")
        listed.add(name)
        f = (path / name)
        if not f.is_file():
            drops.add("file not found", f"{tab.where(pos)}: {name}")
            continue
        if s.bad_spectra == "error":
            raws.append(read_spectrum(f, s))
        else:
            try:
                raws.append(read_spectrum(f, s))
            except UnitsError:
                raise
            except DataError as exc:  # one bad file does not stop a large run; it is recorded
                drops.add("unreadable or invalid spectrum", str(exc))
                continue
        kept_rows.append(pos)
        kept_names.append(str(f))
    unlisted = [p.name for p in _spectrum_files(path) if p.name not in listed]
    flux, mask, ok = prepare(raws, kept_names, grid, normalise, s.min_coverage,
                             None if s.bad_spectra == "error" else drops)
    rows = np.asarray(kept_rows, np.int64)[ok]
    labels = parse_labels(tab, rows, s.label_column, s.subtype_column, s.class_names)
    split = parse_split(tab)
    groups = tab.df["object_id"].astype("string").to_numpy(dtype=object)[rows] if "object_id" in tab.df else None
    source = {"path": str(path), "format": f"folder of spectra + {tab.path.name}", "rows_read": len(tab.df),
              "labels_table": tab.path.name, "unlisted_files_ignored": len(unlisted),
              "unlisted_first": unlisted[:5]}
    return UserSpectra(flux[ok], mask[ok], rows, [Path(kept_names[i]).name for i in np.flatnonzero(ok)], labels,
                       None if split is None else split[rows], groups, drops, source,
                       _units_summary([r for r, k in zip(raws, ok) if k]))


def _rows_from_arrays(where: str, wave: np.ndarray, flux: np.ndarray, ivar: np.ndarray | None,
                      err: np.ndarray | None, wunit: Any, funit: Any, medium: str, log: bool, wcol: str,
                      fcol: str, s: Any, reader: str, drops: DropLog | None) -> tuple[list, list[int]]:
    raws, kept = [], []
    for i in range(len(flux)):
        w = wave if wave.ndim == 1 else wave[i]
        try:
            raws.append(_finish(f"{where}, spectrum row {i}", w, wunit, flux[i], funit, medium,
                                None if ivar is None else ivar[i], None if err is None else err[i], None,
                                reader, log_column=log, wcol=wcol, fcol=fcol))
            kept.append(i)
        except DataError as exc:
            if drops is None or s.bad_spectra == "error" or isinstance(exc, UnitsError):
                raise
            drops.add("unreadable or invalid spectrum", str(exc))
    return raws, kept


def _stack(tab: Table, col: str) -> np.ndarray | None:
    if col in tab.vectors:
        return np.asarray(tab.vectors[col], np.float64)
    if col in tab.df.columns and tab.df[col].dtype == object:  # Parquet list columns
        try:
            return np.stack([np.asarray(v, np.float64) for v in tab.df[col]])
        except ValueError:
            raise DataError(f"{tab.path}: column {col!r}: every row needs an array of the same length") from None
    if col in tab.df.columns:
        return tab.df[col].to_numpy(np.float64)[:, None]
    return None


def _hdf5_datasets(path: Path) -> dict[str, tuple[np.ndarray, str | None]] | None:
    """Top-level HDF5 datasets with their ``unit`` attribute, if the file holds a ``flux`` dataset."""
    import h5py

    try:
        with h5py.File(path, "r") as h:
            keys = {k.lower(): k for k in h if isinstance(h[k], h5py.Dataset)}
            if "flux" not in keys or h[keys["flux"]].ndim != 2:
                return None
            out = {}
            for low, k in keys.items():
                d = h[k]
                unit = d.attrs.get("unit", d.attrs.get("units"))
                unit = unit.decode() if isinstance(unit, bytes) else (None if unit is None else str(unit))
                data = d[()]
                if data.dtype.kind in "SO":
                    data = np.array([x.decode() if isinstance(x, bytes) else str(x) for x in data.ravel()])
                out[low] = (np.asarray(data), unit)
            return out
    except OSError as exc:
        raise DataError(f"{path}: cannot read as HDF5 ({first_line(exc)})") from None


def load_table(path: Path, s: Any, grid: np.ndarray, normalise: str, labelled: bool) -> UserSpectra:
    """One table (FITS / HDF5 / Parquet), one spectrum per row, or an HDF5 file of datasets."""
    import pandas as pd

    drops = DropLog()
    suffix = table_suffix(path)
    datasets = _hdf5_datasets(path) if suffix in (".h5", ".hdf5") else None
    if datasets is not None:
        flux = datasets["flux"][0].astype(np.float64)
        n = len(flux)
        cols = {k: v[0] for k, v in datasets.items() if v[0].ndim == 1 and len(v[0]) == n and k != "wavelength"}
        tab = Table.__new__(Table)
        tab.path, tab.units, tab.vectors, tab.is_csv = path, {k: v[1] for k, v in datasets.items() if v[1]}, {}, False
        tab.df = pd.DataFrame(cols)
        vec = {k: v[0].astype(np.float64) for k, v in datasets.items() if v[0].ndim == 2 or k in WAVE_COLUMNS}
        fmt = "HDF5 datasets"
    else:
        tab = Table(path)
        vec = {c: _stack(tab, c) for c in (*WAVE_COLUMNS, *FLUX_COLUMNS, *IVAR_COLUMNS, *ERROR_COLUMNS)
               if c in tab.vectors or (c in tab.df.columns and tab.df[c].dtype == object)}
        fmt = {".parquet": "Parquet table", ".pq": "Parquet table"}.get(suffix, f"{suffix.lstrip('.').upper()} table")
    wcol = _pick(list(vec), WAVE_COLUMNS)
    fcol = _pick(list(vec), FLUX_COLUMNS)
    if wcol is None or fcol is None:
        raise DataError(f"{path}: expected one spectrum per row in array columns: a wavelength ({list(WAVE_COLUMNS)}) "
                        f"and a flux ({list(FLUX_COLUMNS)}) array; found {sorted(vec) or list(tab.df.columns)}")
    icol, ecol = _pick(list(vec), IVAR_COLUMNS), _pick(list(vec), ERROR_COLUMNS)
    flux = vec[fcol]
    wave = vec[wcol]
    if wave.ndim == 2 and wave.shape[0] == 1 and len(flux) > 1:
        wave = wave[0]
    if wave.shape[-1] != flux.shape[1] or (wave.ndim == 2 and wave.shape[0] != flux.shape[0]):
        raise DataError(f"{path}: column {wcol!r} has shape {wave.shape} but {fcol!r} has {flux.shape}; expected "
                        "one wavelength array per row (or one for all rows) as long as each flux array")
    where = str(path)
    wunit = choose_unit(tab.units.get(wcol), s.wave_unit, "wavelength", "wave_unit", f"{where}: column {wcol!r}")
    funit = choose_unit(tab.units.get(fcol), s.flux_unit, "flux", "flux_unit", f"{where}: column {fcol!r}")
    medium = choose_medium(None, s.wave_medium, where)
    raws, kept = _rows_from_arrays(where, wave, flux, vec.get(icol), vec.get(ecol) if not icol else None, wunit,
                                   funit, medium, wcol == "loglam", wcol, fcol, s, fmt, drops if labelled else None)
    names = [f"row {i}" for i in kept]
    fl, mk, ok = prepare(raws, [f"{where}, spectrum row {i}" for i in kept], grid, normalise, s.min_coverage,
                         drops if labelled and s.bad_spectra == "drop" else None)
    rows = np.asarray(kept, np.int64)[ok]
    idcol = next((c for c in ("object_id", "id", "specobjid") if c in tab.df.columns), None)
    ids = tab.numeric(idcol, integer=True)[rows] if idcol else rows
    source = {"path": str(path), "format": fmt, "rows_read": len(flux)}
    labels = split = groups = None
    if labelled:
        labels = parse_labels(tab, rows, s.label_column, s.subtype_column, s.class_names)
        split = parse_split(tab)
        split = None if split is None else split[rows]
        groups = None if idcol is None else np.asarray(ids).astype(str).astype(object)
    return UserSpectra(fl[ok], mk[ok], np.asarray(ids, np.int64), [names[i] for i in np.flatnonzero(ok)], labels,
                       split, groups, drops, source, _units_summary([r for r, k in zip(raws, ok) if k]))


def load_user_data(path: str | Path, settings: Any, grid: np.ndarray, normalise: str,
                   labelled: bool = True) -> UserSpectra:
    """The user's spectra (a folder, one table, or one spectrum file when not ``labelled``)."""
    path = Path(path)
    if path.is_dir():
        return load_folder(path, settings, grid, normalise, labelled)
    if not path.is_file():
        raise DataError(f"{path}: no such file or directory")
    if path.name.lower().endswith(FITS_SUFFIXES) or path.name.lower().endswith((".h5", ".hdf5", ".parquet", ".pq")):
        if path.name.lower().endswith(FITS_SUFFIXES):
            from astropy.io import fits

            try:
                with fits_warnings(path), fits.open(path, memmap=False) as hdul:  # a spectrum per row iff vectors
                    idx, kind = _fits_hdu(hdul)
                    vector = kind == "table" and len(hdul[idx].columns[_pick(list(hdul[idx].columns.names),
                                                                              FLUX_COLUMNS)].array.shape) == 2
            except DataError:
                raise
            except Exception as exc:  # noqa: BLE001 - damaged files fail in many ways inside astropy
                raise _fits_error(path, exc) from None
            if not vector:
                if labelled:
                    raise DataError(f"{path}: one spectrum; training needs a folder of spectra with a labels table "
                                    "or one table with a spectrum per row")
                return _single(path, settings, grid, normalise)
        return load_table(path, settings, grid, normalise, labelled)
    if labelled:
        raise DataError(f"{path}: expected a folder of spectra with a labels table, or one FITS/HDF5/Parquet table "
                        "with a spectrum per row")
    return _single(path, settings, grid, normalise)


def _single(path: Path, s: Any, grid: np.ndarray, normalise: str) -> UserSpectra:
    raw = read_spectrum(path, s)
    flux, mask, _ = prepare([raw], [str(path)], grid, normalise, s.min_coverage, None)
    return UserSpectra(flux, mask, np.zeros(1, np.int64), [path.name], None, None, None, DropLog(),
                       {"path": str(path), "format": "one spectrum", "rows_read": 1}, _units_summary([raw]))
