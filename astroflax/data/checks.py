"""Value checks shared by the readers of user files (one-line errors naming file, column, row, value).

Values are checked in float64 and then cast to float32 for the model, so a value that is finite
in float64 may still overflow (|x| > 3.4e38) or, after a task's transforms, turn into inf/NaN or
into a finite but meaningless prediction. Where a quantity has a physical range the readers
enforce it (the constants below); elsewhere they reject values that overflow float32.

:func:`show_value` and the row naming live in :class:`astroflax.data.lightcurves.Table`
(``Table.fail``), which the table readers share; :func:`cell_error` is the same message shape for
readers that do not read through ``Table`` (FITS tables, spectra, images).
"""

from __future__ import annotations

import contextlib
import warnings
from typing import Any, Iterator

import numpy as np

from astroflax.errors import DataError

__all__ = [
    "F32_MAX",
    "F32_TINY",
    "MAG_RANGE",
    "MAG_ERR_MAX",
    "MJD_RANGE",
    "TIME_RANGE",
    "ABS_MAX",
    "show_value",
    "cell_error",
    "out_of_range",
    "range_text",
    "fits_warnings",
]

F32_MAX = float(np.finfo(np.float32).max)  # 3.4028235e+38
F32_TINY = float(np.finfo(np.float32).tiny)  # 1.1754944e-38, the smallest normal float32

#: Apparent magnitudes: the Sun is -26.7, the deepest images reach ~31. The 'no data' codes
#: 99, -99 and -9999 of many catalogues fall outside, as does anything a float32 overflow makes.
MAG_RANGE = (-30.0, 40.0)
#: Magnitude errors: > 0 and at most 100 mag (real SDSS errors reach ~18 mag for faint u).
MAG_ERR_MAX = 100.0
#: Modified Julian Dates: 1858-11-17 (MJD 0) to the year ~4596 (MJD 1e6); a JD (~2.46e6) is outside.
MJD_RANGE = (0.0, 1e6)
#: Times in days that need not be MJDs (e.g. days since the first visit): |t| <= 1e6 days.
TIME_RANGE = (-1e6, 1e6)
#: Quantities without a fixed unit (spectrum fluxes, image pixels) are rescaled per object;
#: beyond |x| = 1e30 the rescaling sums (over pixels, times wavelengths) leave float32's range.
ABS_MAX = 1e30


def show_value(value: Any) -> str:
    """repr() of a cell value without numpy's ``np.int64(...)`` wrapping."""
    if isinstance(value, np.generic):
        value = value.item()
    return repr(value)


def cell_error(path: Any, column: str | None, where: str | None, msg: str, n_bad: int = 1) -> DataError:
    """``{path}: column {column!r}, {where}: {msg} [n bad rows in total]`` as a DataError."""
    loc = f"{path}"
    if column is not None:
        loc += f": column {column!r}"
    if where:
        loc += f", {where}" if column is not None else f": {where}"
    more = f" [{n_bad} bad rows in total]" if n_bad > 1 else ""
    return DataError(f"{loc}: {msg}{more}")


def out_of_range(values: np.ndarray, lo: float | None = None, hi: float | None = None,
                 lo_open: bool = False, hi_open: bool = False) -> np.ndarray:
    """Boolean mask of the values outside the range (NaN is not flagged: check finiteness first)."""
    v = np.asarray(values, np.float64)
    bad = np.zeros(v.shape, bool)
    with np.errstate(invalid="ignore"):
        if lo is not None:
            bad |= (v <= lo) if lo_open else (v < lo)
        if hi is not None:
            bad |= (v >= hi) if hi_open else (v > hi)
    return bad


def range_text(lo: float | None = None, hi: float | None = None, lo_open: bool = False, hi_open: bool = False) -> str:
    """``[-30, 40]``, ``> 0 and <= 100``, ``<= 1e+30`` ..."""
    if lo is not None and hi is not None and not lo_open and not hi_open:
        return f"in [{lo:g}, {hi:g}]"
    parts = []
    if lo is not None:
        parts.append(f"{'>' if lo_open else '>='} {lo:g}")
    if hi is not None:
        parts.append(f"{'<' if hi_open else '<='} {hi:g}")
    return " and ".join(parts)


@contextlib.contextmanager
def fits_warnings(path: Any) -> Iterator[list]:
    """Collect astropy's warnings while reading ``path`` instead of printing them (they are
    several lines each); a "may have been truncated" warning becomes a one-line DataError, and so
    does an error raised while astropy warned of a damaged header (it is the cause, not the error)."""
    damaged = ("truncated", "corrupted", "not multiple of 2880")

    def first_damage(caught: list) -> str | None:
        for w in caught:
            text = str(w.message).strip().splitlines()[0] if str(w.message).strip() else ""
            if any(d in str(w.message).lower() for d in damaged):
                return text
        return None

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            yield caught
        except DataError:
            text = first_damage(caught)
            if text is None:
                raise
            raise DataError(f"{path}: the FITS file is truncated or damaged ({text})") from None
    text = first_damage(caught)
    if text is not None and "truncated" in text.lower():
        raise DataError(f"{path}: the FITS file is truncated or damaged ({text})")
