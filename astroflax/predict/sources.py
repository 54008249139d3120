"""Input tables read in fixed row ranges: memory follows the chunk size, not the file size.

A chunk is rows ``[start, stop)`` of the file in the file's own row numbering (for text files,
data line ``i`` is file line ``i + 2``, blank lines included), so the same chunk index means the
same rows on every run, with any chunk size of the reader's batches, in any process: that is what
``--resume`` and the Dask workers rely on. Every chunk comes as a :class:`Frame` whose DataFrame
index holds those row numbers, so a reader's messages name the row in the file (``row 1234567
(0-based)`` or ``line 1234569``), not in the chunk.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from astroflax.data.tables import (
    ASTROPY_FORMATS,
    PARQUET_SUFFIXES,
    first_line,
    table_suffix,
)
from astroflax.errors import DataError

#: Files whose presence makes a directory a HATS catalogue (read with LSDB).
HATS_MARKERS = ("hats.properties", "properties", "partition_info.csv", "collection.properties")


@dataclasses.dataclass
class Frame:
    """Rows ``[start, stop)`` of an input table, as the table readers expect them."""

    path: Path
    start: int
    stop: int
    df: Any  # pandas DataFrame, lower-case column names, index = row number in the file
    is_csv: bool = False
    units: dict[str, str] = dataclasses.field(default_factory=dict)
    vectors: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)  # 2-D columns (FITS/HDF5)


def is_hats_catalogue(path: Path) -> bool:
    return path.is_dir() and any((path / m).is_file() for m in HATS_MARKERS)


@dataclasses.dataclass(frozen=True)
class TableSource:
    """A table file to read in chunks; ``num_rows`` is None when only a full pass would tell (CSV)."""

    path: Path
    kind: str  # parquet | csv | fits | astropy
    num_rows: int | None
    hdu: int | str | None = None

    def fingerprint(self) -> dict[str, Any]:
        """What must not change between a run and its ``--resume`` (name, size, mtime)."""
        st = os.stat(self.path)
        return {"path": str(self.path.resolve()), "bytes": st.st_size, "mtime_ns": st.st_mtime_ns}

    def frames(self, start: int, stop: int | None, chunk_rows: int) -> Iterator[Frame]:
        """Chunks of ``chunk_rows`` rows from ``start`` (a multiple of ``chunk_rows``) to ``stop``
        (None = end of file); the last may be shorter."""
        reader = {"parquet": _parquet_frames, "csv": _csv_frames, "fits": _fits_frames,
                  "astropy": _astropy_frames}[self.kind]
        yield from reader(self, start, stop, chunk_rows)


def open_source(path: Path, hdu: int | str | None = None) -> TableSource:
    """The chunk reader for ``path`` (a DataError for anything that is not a table file)."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"--input {path}: no such file or directory")
    if path.is_dir():
        raise DataError(f"--input {path}: a directory that is not a HATS catalogue (no {', '.join(HATS_MARKERS)}); "
                        "expected a table file or a HATS catalogue directory")
    suffix = table_suffix(path)
    try:
        if suffix in PARQUET_SUFFIXES:
            import pyarrow.parquet as pq

            return TableSource(path, "parquet", int(pq.ParquetFile(path).metadata.num_rows), hdu)
        if suffix in ASTROPY_FORMATS and ASTROPY_FORMATS[suffix] == "fits" and suffix != ".fits.gz":
            return TableSource(path, "fits", _fits_rows(path, hdu), hdu)
        if suffix in ASTROPY_FORMATS:
            return TableSource(path, "astropy", None, hdu)
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001 - pyarrow/astropy raise many types for a damaged file
        raise DataError(f"--input {path}: cannot read table: {first_line(exc)}") from None
    return TableSource(path, "csv", None, hdu)


# ---------------------------------------------------------------------------- Parquet


def _parquet_frames(src: TableSource, start: int, stop: int | None, chunk_rows: int) -> Iterator[Frame]:
    """Row groups from the one holding ``start``, decoded in batches (never a whole group at once)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(src.path)
    n = pf.metadata.num_rows
    stop = n if stop is None else min(stop, n)
    if start >= stop:
        return
    first, offset = 0, 0
    sizes = [pf.metadata.row_group(g).num_rows for g in range(pf.num_row_groups)]
    while offset + sizes[first] <= start:
        offset += sizes[first]
        first += 1
    pos, pending, pending_rows = offset, [], 0
    # One reader per row group: a reader over many row groups keeps what it decoded until it is
    # done (memory then grows with the file: 2x peak RSS for 10x the rows, measured).
    batches = (b for g in range(first, pf.num_row_groups)
               for b in pf.iter_batches(batch_size=min(chunk_rows, 1 << 16), row_groups=[g], use_threads=False))
    chunk_start = start
    for batch in batches:
        lo, hi = pos, pos + batch.num_rows
        pos = hi
        if hi <= start:
            continue
        batch = batch.slice(max(0, start - lo), min(hi, stop) - max(lo, start))
        pending.append(batch)
        pending_rows += batch.num_rows
        while pending_rows >= chunk_rows or (pos >= stop and pending_rows):
            table = pa.Table.from_batches(pending)
            take = min(chunk_rows, pending_rows)
            yield _arrow_frame(src.path, chunk_start, table.slice(0, take))
            rest = table.slice(take)
            pending, pending_rows = rest.to_batches(), rest.num_rows
            chunk_start += take
        if pos >= stop:
            return


def _arrow_frame(path: Path, start: int, table) -> Frame:
    import pandas as pd

    df = table.to_pandas()
    df.index = pd.RangeIndex(start, start + len(df))
    vectors = {}
    for name in list(df.columns):  # list columns (e.g. a per-band vector) as 2-D arrays, as FITS gives them
        if len(df) and df[name].dtype == object and isinstance(df[name].iloc[0], np.ndarray | list):
            vectors[str(name).strip().lower()] = np.stack(df.pop(name).to_numpy())
    return Frame(path, start, start + len(df), _normalise_columns(df, path), vectors=vectors)


def _normalise_columns(df, path: Path):
    """Stripped, lower-case, unique column names, as :class:`astroflax.data.tables.Table` has them."""
    df.columns = [str(c).strip().lower() for c in df.columns]
    if df.columns.duplicated().any():
        raise DataError(f"{path}: column {df.columns[df.columns.duplicated()][0]!r} appears more than once "
                        "(names are case-insensitive)")
    return df


# -------------------------------------------------------------------------------- CSV


def _csv_options(path: Path) -> dict[str, Any]:
    """The options :class:`astroflax.data.tables.Table` reads text tables with."""
    suffix = table_suffix(path)
    sep = "\t" if suffix == ".tsv" else None if suffix in (".txt", ".dat") else ","
    return {"skipinitialspace": True, "skip_blank_lines": False, "sep": sep,
            "engine": "python" if sep is None else "c", "comment": "#" if sep is None else None}


def _csv_frames(src: TableSource, start: int, stop: int | None, chunk_rows: int) -> Iterator[Frame]:
    import pandas as pd

    try:
        reader = pd.read_csv(src.path, chunksize=chunk_rows, skiprows=range(1, start + 1) if start else None,
                             nrows=None if stop is None else stop - start, **_csv_options(src.path))
        chunk_start = start
        for df in reader:
            n = len(df)
            df.index = pd.RangeIndex(chunk_start, chunk_start + n)
            df = _normalise_columns(df, src.path).dropna(how="all")  # blank lines, as Table drops them
            yield Frame(src.path, chunk_start, chunk_start + n, df, is_csv=True)
            chunk_start += n
    except pd.errors.EmptyDataError:
        raise DataError(f"{src.path}: cannot read table: the file is empty; expected a table with a header line") from None
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001 - pandas raises many types for a malformed text table
        raise DataError(f"{src.path}: cannot read table: {first_line(exc)}") from None


# ------------------------------------------------------------------------------- FITS


def _fits_hdu(hdul, path: Path, hdu: int | str | None):
    from astropy.io.fits import BinTableHDU, TableHDU

    if hdu is not None:
        try:
            return hdul[hdu]
        except (KeyError, IndexError):
            raise DataError(f"{path}: no HDU {hdu!r} (data.hdu); the file has {len(hdul)}") from None
    for h in hdul:
        if isinstance(h, BinTableHDU | TableHDU):
            return h
    raise DataError(f"{path}: no table HDU in this FITS file")


def _fits_rows(path: Path, hdu: int | str | None) -> int:
    from astropy.io import fits

    from astroflax.data.checks import fits_warnings

    with fits_warnings(path), fits.open(path, memmap=True) as hdul:  # astropy's warnings are several lines
        return int(_fits_hdu(hdul, path, hdu).header.get("NAXIS2", 0))


def _fits_frames(src: TableSource, start: int, stop: int | None, chunk_rows: int) -> Iterator[Frame]:
    """Memory-mapped slices of the table HDU: only the chunk's rows are decoded."""
    from astropy.io import fits
    from astropy.table import Table as AstropyTable

    from astroflax.data.checks import fits_warnings

    with fits_warnings(src.path), fits.open(src.path, memmap=True) as hdul:
        h = _fits_hdu(hdul, src.path, src.hdu)
        n = int(h.header.get("NAXIS2", 0))
        stop = n if stop is None else min(stop, n)
        for a in range(start, stop, chunk_rows):
            b = min(a + chunk_rows, stop)
            table = AstropyTable(h.data[a:b], copy=True)
            for col in h.columns:  # the table's units and null values, as Table.read gives them
                if col.unit and col.name in table.colnames:
                    table[col.name].unit = col.unit
            yield _astropy_frame(src.path, a, table, nulls={c.name: c.null for c in h.columns if c.null is not None})


def _astropy_frame(path: Path, start: int, table, nulls: dict | None = None) -> Frame:
    """The conversion of :meth:`astroflax.data.tables.Table._read_astropy` for one slice."""
    import pandas as pd

    units, vectors, columns = {}, {}, {}
    for name in table.colnames:
        col = table[name]
        key = str(name).strip().lower()
        if getattr(col, "unit", None) is not None:
            units[key] = col.unit.to_string()
        data, mask = np.ma.getdata(col), np.ma.getmaskarray(col)
        if nulls and name in nulls and data.dtype.kind in "iu":
            mask = mask | (data == nulls[name])
        if data.dtype.kind in "fiu" and mask.any():
            data = data.astype(np.float64)
            data[mask] = np.nan
        if data.dtype.kind == "S":
            data = np.char.decode(data, "utf-8", errors="replace")
        if data.dtype.byteorder not in ("=", "|"):
            data = data.astype(data.dtype.newbyteorder("="))
        if data.ndim > 1:
            vectors[key] = np.asarray(data)
        else:
            columns[str(name)] = np.asarray(data)
    df = pd.DataFrame(columns, index=pd.RangeIndex(start, start + len(table)))
    return Frame(path, start, start + len(table), _normalise_columns(df, path), units=units, vectors=vectors)


def _astropy_frames(src: TableSource, start: int, stop: int | None, chunk_rows: int) -> Iterator[Frame]:
    """HDF5, ECSV, VOTable, gzipped FITS: read whole (these formats have no cheap row slices)."""
    from astroflax.data.tables import Table

    tab = Table(src.path, hdu=src.hdu)
    n = len(tab.df) if len(tab.df.columns) else len(next(iter(tab.vectors.values()), []))
    stop = n if stop is None else min(stop, n)
    for a in range(start, stop, chunk_rows):
        b = min(a + chunk_rows, stop)
        yield Frame(src.path, a, b, tab.df.iloc[a:b], units=dict(tab.units),
                    vectors={k: v[a:b] for k, v in tab.vectors.items()})
