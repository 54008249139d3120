"""User tables (CSV, Parquet, FITS, HDF5, ECSV, VOTable) read once, with row naming for messages.

Every reader of a user's catalogue goes through :class:`Table`, so every error names the file,
the column and the row the same way (``line N`` for text files, ``row N (0-based)`` otherwise)
and units written in the file (FITS ``TUNIT``, ECSV/VOTable/HDF5 metadata) are kept for the
readers that convert them with :mod:`astropy.units`. :class:`DropLog` records what a reader
dropped and why; :func:`split_codes` gives every task the same split rule (a ``split`` column
if the user gives one, else a stratified 70/10/20 split by object with a fixed seed).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from astroflax.data.checks import (
    F32_MAX,
    cell_error,
    fits_warnings,
    out_of_range,
    range_text,
    show_value,
)
from astroflax.data.splits import SPLIT_NAMES, stratified_split_codes
from astroflax.errors import DataError


def find_table(directory: Path, stem: str, what: str) -> Path:
    """Find ``<stem>.{csv,csv.gz,parquet}``, else the unique file whose name contains ``stem``."""
    files = [p for p in sorted(directory.iterdir()) if p.is_file()]
    tables = [p for p in files if table_suffix(p)]
    exact = [p for p in tables if p.name.lower() in {stem + s for s in TABLE_SUFFIXES}]
    if len(exact) == 1:
        return exact[0]
    cands = exact or [p for p in tables if stem in p.name.lower()]
    expected = f"expected {stem}.csv, .csv.gz, .parquet, .fits or .h5 (or one file whose name contains {stem!r})"
    if not cands:
        raise DataError(f"{directory}: no {what} table found; {expected}")
    if len(cands) > 1:
        names = ", ".join(p.name for p in cands)
        raise DataError(f"{directory}: several {what} tables ({names}); {expected}, keep only one")
    return cands[0]


TEXT_SUFFIXES = (".csv", ".csv.gz", ".tsv", ".txt", ".dat")
ASTROPY_FORMATS = {".fits": "fits", ".fit": "fits", ".fts": "fits", ".fits.gz": "fits", ".ecsv": "ascii.ecsv",
                   ".h5": "hdf5", ".hdf5": "hdf5", ".vot": "votable", ".xml": "votable"}
PARQUET_SUFFIXES = (".parquet", ".pq")
TABLE_SUFFIXES = (*TEXT_SUFFIXES, *PARQUET_SUFFIXES, *ASTROPY_FORMATS)


def table_suffix(path: Path) -> str:
    """The table-format suffix of ``path`` (``.csv.gz`` and ``.fits.gz`` count as one), or ''."""
    name = path.name.lower()
    return next((s for s in sorted(TABLE_SUFFIXES, key=len, reverse=True) if name.endswith(s)), "")


def first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


class Table:
    """A user table read once (pandas for text and Parquet, astropy for FITS/HDF5/ECSV/VOTable),
    remembering how to name its rows in messages.

    Column names are stripped and lower-cased (and must stay unique). ``units`` maps a column to
    the unit string the file declares (FITS ``TUNIT``, ECSV/VOTable/HDF5 metadata), if any.
    Vector columns of FITS/HDF5 tables (e.g. a ``flux`` array per row) are kept, 2-D, in
    ``vectors`` rather than in the DataFrame. Masked (null) numeric cells become NaN, so that
    they are reported as missing values rather than read as the file's fill value.
    """

    def __init__(self, path: Path, hdu: int | str | None = None, skiprows: int = 0):
        """``skiprows``: lines before a text table's header (e.g. a ``#key=value`` preamble);
        rows are still named by their line in the file."""
        import pandas as pd

        self.path = path = Path(path)
        self.units: dict[str, str] = {}
        self.vectors: dict[str, np.ndarray] = {}
        suffix = table_suffix(path)
        self.is_csv = suffix in TEXT_SUFFIXES or not suffix
        if path.is_dir():
            raise DataError(f"{path}: expected a table file ({', '.join(TABLE_SUFFIXES)}), got a directory")
        try:
            if suffix in ASTROPY_FORMATS:
                df = self._read_astropy(path, ASTROPY_FORMATS[suffix], hdu)
            elif suffix in PARQUET_SUFFIXES:
                df = pd.read_parquet(path)
            else:
                # skip_blank_lines=False keeps DataFrame index == file line - 2; empty rows dropped below.
                sep = "\t" if suffix == ".tsv" else None if suffix in (".txt", ".dat") else ","
                df = pd.read_csv(path, skipinitialspace=True, skip_blank_lines=False, sep=sep, skiprows=skiprows,
                                 engine="python" if sep is None else "c", comment="#" if sep is None else None)
                df.index = df.index + skiprows
        except DataError:
            raise
        except pd.errors.EmptyDataError:
            raise DataError(f"{path}: cannot read table: the file is empty; expected a table with a header line") from None
        except Exception as exc:
            raise DataError(f"{path}: cannot read table: {first_line(exc)}") from exc
        df.columns = [str(c).strip().lower() for c in df.columns]
        if df.columns.duplicated().any():
            dup = df.columns[df.columns.duplicated()][0]
            raise DataError(f"{path}: column {dup!r} appears more than once (names are case-insensitive)")
        if self.is_csv:
            df = df.dropna(how="all")
        self.df = df

    def _read_astropy(self, path: Path, fmt: str, hdu: int | str | None):
        import pandas as pd
        from astropy.table import Table as AstropyTable

        kwargs: dict[str, Any] = {}
        if hdu is not None and fmt == "fits":
            kwargs["hdu"] = hdu
        if fmt == "hdf5":
            kwargs["path"] = hdu if isinstance(hdu, str) else None
            if kwargs["path"] is None:
                kwargs.pop("path")
        with fits_warnings(path):
            table = AstropyTable.read(path, format=fmt, **kwargs)
        columns: dict[str, np.ndarray] = {}
        for name in table.colnames:
            col = table[name]
            key = str(name).strip().lower()
            if getattr(col, "unit", None) is not None:
                self.units[key] = col.unit.to_string()
            data, mask = np.ma.getdata(col), np.ma.getmaskarray(col)
            if data.dtype.kind in "fiu" and mask.any():
                data = data.astype(np.float64)
                data[mask] = np.nan
            if data.dtype.kind == "S":
                data = np.char.decode(data, "utf-8", errors="replace")
            if data.dtype.byteorder not in ("=", "|"):  # FITS is big-endian; pandas wants native order
                data = data.astype(data.dtype.newbyteorder("="))
            if data.ndim > 1:
                self.vectors[key] = np.asarray(data)
            else:
                columns[str(name)] = np.asarray(data)
        return pd.DataFrame(columns)

    def where(self, pos: int) -> str:
        """Human row reference for DataFrame positional row ``pos``."""
        idx = int(self.df.index[pos])
        return f"line {idx + 2}" if self.is_csv else f"row {idx} (0-based)"

    def fail(self, column: str | None, pos: int | None, msg: str, n_bad: int = 1, oid: Any = None) -> DataError:
        where = None
        if pos is not None:
            where = self.where(pos)
            if oid is None and "object_id" in self.df.columns and column != "object_id":
                oid = self.df["object_id"].iloc[pos]
            if oid is not None:
                where += f" (object_id {oid})"
        return cell_error(self.path, column, where, msg, n_bad)

    def check_range(self, column: str, values: np.ndarray, expected: str, lo: float | None = None,
                    hi: float | None = None, lo_open: bool = False, hi_open: bool = False, note: str = "") -> None:
        """A DataError at the first value of ``column`` outside the range (NaN = missing, not checked)."""
        bad = out_of_range(values, lo, hi, lo_open, hi_open)
        if bad.any():
            pos = int(np.flatnonzero(bad)[0])
            raise self.fail(column, pos, f"expected {expected} {range_text(lo, hi, lo_open, hi_open)}{note}, "
                                         f"got {show_value(values[pos])}", int(bad.sum()))

    def require(self, columns: tuple[str, ...], aliases: dict[str, str] | None = None) -> None:
        for alias, name in (aliases or {}).items():
            if name not in self.df.columns and alias in self.df.columns:
                self.df = self.df.rename(columns={alias: name})
        missing = [c for c in columns if c not in self.df.columns]
        if missing:
            have = ", ".join(map(str, self.df.columns)) or "none"
            raise DataError(
                f"{self.path}: missing column(s) {', '.join(map(repr, missing))}; "
                f"expected {', '.join(columns)} (found: {have})"
            )

    def numeric(self, column: str, *, integer: bool = False, allow_nan: bool = False) -> np.ndarray:
        """Column as float64 (or int64), with a DataError at the first invalid row."""
        import pandas as pd

        s = self.df[column]
        if integer and pd.api.types.is_signed_integer_dtype(s.dtype) and not s.isna().any():
            return s.to_numpy(dtype=np.int64)
        with np.errstate(over="ignore", invalid="ignore"):  # huge numbers become inf: reported below
            v = pd.to_numeric(s, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
        not_number = np.isnan(v) & s.notna().to_numpy()
        bad = not_number | np.isinf(v) | (np.isnan(v) if not allow_nan else False)
        if integer:
            bad |= np.isfinite(v) & ((v != np.round(v)) | (np.abs(v) >= 2.0**63))
        if bad.any():
            pos = int(np.flatnonzero(bad)[0])
            kind = ("an integer (int64: |id| < 9.2e18)" if integer else
                    ("a finite number or empty" if allow_nan else "a finite number"))
            got = "an empty cell" if pd.isna(s.iloc[pos]) else show_value(s.iloc[pos])
            raise self.fail(column, pos, f"expected {kind}, got {got}", int(bad.sum()))
        if integer:
            return v.astype(np.int64)
        self.check_range(column, v, "a number that float32 can hold,", -F32_MAX, F32_MAX)
        return v


def parse_split(tab: Table, column: str = "split") -> np.ndarray | None:
    """uint8 codes of a ``split`` column (train/val/test, valid/validation, or 0/1/2), else None."""
    if column not in tab.df.columns:
        return None
    s = tab.df[column]
    text = s.astype("string").str.strip().str.lower().to_numpy(dtype=object, na_value=None)
    lut = {name: i for i, name in enumerate(SPLIT_NAMES)}
    lut.update({str(i): i for i in range(3)})
    lut.update({"valid": 1, "validation": 1})
    vals = [lut.get(t) if t is not None else None for t in text]
    bad = np.array([v is None for v in vals], dtype=bool)
    if bad.any():
        pos = int(np.flatnonzero(bad)[0])
        raise tab.fail(column, pos, f"expected train/val/test (or 0/1/2), got {show_value(s.iloc[pos])}", int(bad.sum()))
    return np.asarray(vals, dtype=np.uint8)




@dataclasses.dataclass
class DropLog:
    """What a reader dropped and why: one entry per reason, with a count and the first rows.

    Saved in ``data_info.json`` (``info["dropped"]``), so a run records every row it did not
    train on; nothing is dropped silently.
    """

    entries: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)

    def add(self, reason: str, where: list[str] | str, count: int | None = None) -> None:
        where = [where] if isinstance(where, str) else list(where)
        e = self.entries.setdefault(reason, {"reason": reason, "rows": 0, "first": []})
        e["rows"] += len(where) if count is None else int(count)
        e["first"] = (e["first"] + where)[:5]

    @property
    def total(self) -> int:
        return sum(e["rows"] for e in self.entries.values())

    def to_info(self) -> list[dict[str, Any]]:
        return list(self.entries.values())


def split_codes(tab: Table | None, strata: np.ndarray, seed: int, column: str = "split",
                split_values: np.ndarray | None = None) -> tuple[np.ndarray, str]:
    """uint8 split codes (0 train, 1 val, 2 test) and how they were chosen.

    The ``split`` column of ``tab`` (or ``split_values``, already parsed) if there is one,
    else a stratified 70/10/20 split of the rows (objects) on ``strata`` (class labels, or
    bins of a regression target) with ``seed``.
    """
    codes = split_values if split_values is not None else (parse_split(tab, column) if tab is not None else None)
    if codes is not None:
        return codes.astype(np.uint8), f"the {column!r} column of the input"
    return (stratified_split_codes(np.asarray(strata), 0.1, 0.2, seed),
            f"stratified 70/10/20 by object, seed {seed} (astroflax.data.splits.stratified_split_codes)")


def source_info(path: str | Path, fmt: str, rows_read: int, **more: Any) -> dict[str, Any]:
    """``info["source"]``: where the data came from (recorded in ``data_info.json``)."""
    return {"path": str(Path(path).absolute()), "format": fmt, "rows_read": int(rows_read), **more}
