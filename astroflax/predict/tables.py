"""One chunk of a user's table -> the model's arrays, the row ids, and which rows are bad and why.

The rows are validated by the task's own reader (for photoz
:func:`astroflax.data.photometry.read_catalogue`, with the run's column patterns and sentinels),
so a streamed prediction sees exactly the arrays an in-memory ``predict`` of the same rows
sees. Where the in-memory reader stops at the first bad cell, a chunk isolates every bad row
(removing the row the reader names and halving the rest) and keeps going: the bad row is written with
its flag and the reader's one-line message (file, row, column, value, why), never as a silent NaN.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from typing import Any

import numpy as np

from astroflax.data.checks import show_value
from astroflax.data.tables import Table
from astroflax.errors import DataError
from astroflax.predict.sources import Frame


@dataclasses.dataclass
class ChunkInputs:
    """Model arrays of the good rows, and per row of the chunk its id and problem (None = good)."""

    arrays: dict[str, np.ndarray]  # first axis = the good rows, in file order
    good: np.ndarray  # (n,) bool over the chunk's rows
    ids: np.ndarray  # (n,) one id per row of the chunk (the input's id column, else the row number)
    problems: list[str | None]  # (n,) the reader's message for each bad row
    id_column: str | None = None  # the input column the ids come from


class ChunkTable(Table):
    """A :class:`~astroflax.data.tables.Table` of rows already in memory (one chunk, or part of one).

    It remembers the last row it was asked to name: a reader's error that named no row is about
    the whole table (a missing column, an unknown unit) and stops the run instead of flagging rows.
    """

    def __init__(self, frame: Frame, df) -> None:  # no file to read: the rows are given
        self.path, self.units, self.vectors = frame.path, dict(frame.units), {}
        self.is_csv, self.df = frame.is_csv, df
        self.named_row: int | None = None

    def where(self, pos: int) -> str:
        self.named_row = pos
        return super().where(pos)


def _subset(frame: Frame, positions: np.ndarray):
    tab = ChunkTable(frame, frame.df.iloc[positions])
    tab.vectors = {k: v[positions] for k, v in frame.vectors.items()}
    return tab


def _one_row(exc: Exception) -> str:
    """The reader's message about one row, without its count of bad rows in the block read."""
    return re.sub(r" \[\d+ bad rows in total\]$", "", str(exc))


def isolate_bad_rows(frame: Frame, read: Callable[[Any], Any], positions: np.ndarray,
                     problems: dict[int, str]) -> list[tuple[np.ndarray, Any]]:
    """``read(table)`` on the rows ``positions`` of the frame; on a row's DataError, halve and retry
    until every bad row is alone (its message recorded in ``problems``). Returns the (positions,
    result) of each block that read cleanly, in row order. An error that names no row is raised."""
    if len(positions) == 0:
        return []
    tab = _subset(frame, positions)
    try:
        return [(positions, read(tab))]
    except DataError as exc:
        if tab.named_row is None:
            raise
        if len(positions) == 1:
            problems[int(positions[0])] = _one_row(exc)
            return []
        # The named row is bad: record it, then halve the rest, so that B bad rows of an n-row
        # block cost about 2 B log2(n / B) reads of ever smaller blocks.
        at = int(tab.named_row)
        problems[int(positions[at])] = _one_row(exc)
        rest = np.delete(positions, at)
        mid = len(rest) // 2
        return (isolate_bad_rows(frame, read, rest[:mid], problems)
                + isolate_bad_rows(frame, read, rest[mid:], problems))


# ---------------------------------------------------------------------------- photoz


def photoz_chunk(frame: Frame, cfg, info: dict) -> ChunkInputs:
    """photoz arrays for the rows of ``frame``, read as ``photoz.load_inputs`` reads a whole file."""
    from astroflax.data import photometry as phot

    spec = phot.predict_spec(info)
    df = frame.df
    n = len(df)
    id_col = spec.id_column.lower() if spec.id_column else next((a for a in phot.ID_ALIASES if a in df.columns), None)
    if id_col is not None and id_col not in df.columns:
        raise DataError(f"{frame.path}: id column {id_col!r} (data.id_column) not found; columns are: "
                        f"{', '.join(df.columns)}")
    problems: dict[int, str] = {}
    positions = np.arange(n)
    if id_col is not None and n:  # a repeated id is a problem of the later row (within the chunk)
        col = df[id_col]
        dup = col.duplicated().to_numpy() & col.notna().to_numpy()
        tab = ChunkTable(frame, df)
        for p in np.flatnonzero(dup):
            first = int(np.flatnonzero((col == col.iloc[p]).to_numpy())[0])
            problems[int(p)] = (f"{frame.path}: column {id_col!r}, {tab.where(int(p))}: duplicate object id "
                                f"{show_value(col.iloc[p])} (also at {tab.where(first)}); expected one row per object")
        positions = positions[~dup]
    use_mask = bool(info.get("use_mask"))

    def read(tab):
        cat = phot.read_catalogue(frame.path, spec, need_target=False, table=tab)
        if not use_mask and not cat.observed.all():
            r, j = (int(k) for k in np.argwhere(~cat.observed)[0])
            entry = next(e for e in cat.masked.to_info() if e["reason"].startswith(f"band {spec.bands[j]!r}"))
            tab.where(r)  # a row problem, not a table problem
            raise DataError(f"{frame.path}: {tab.where(r)}: {entry['reason']}: this model was trained without "
                            "missing bands and cannot use a mask; give every band, or retrain with data.use_mask=true")
        return cat

    blocks = isolate_bad_rows(frame, read, positions, problems)
    good = np.zeros(n, bool)
    mags, errs, obs = [], [], []
    for pos, cat in blocks:
        good[pos] = True
        mags.append(cat.mag)
        errs.append(cat.mag_err)
        obs.append(cat.observed)
    b = len(spec.bands)
    arrays = {"mag": np.concatenate(mags) if mags else np.zeros((0, b), np.float32),
              "mag_err": np.concatenate(errs) if errs else np.zeros((0, b), np.float32)}
    if use_mask:
        arrays["mask"] = (np.concatenate(obs) if obs else np.zeros((0, b), bool)).astype(np.float32)
    if id_col is None:
        ids = df.index.to_numpy(np.int64)  # the row number in the file, as an in-memory read numbers rows
    else:
        ids = _ids(df[id_col])
    listed: list[str | None] = [None] * n
    for pos, msg in problems.items():
        listed[pos] = msg
    return ChunkInputs(arrays, good, ids, listed, id_col)


def _ids(col) -> np.ndarray:
    """Ids as ``read_catalogue`` gives them (integers stay integers, else text); empty ones as None."""
    import pandas as pd

    if pd.api.types.is_integer_dtype(col.dtype) and not col.isna().any():
        return col.to_numpy(np.int64)
    if pd.api.types.is_numeric_dtype(col.dtype):
        v = col.to_numpy(np.float64, na_value=np.nan)
        whole = np.isfinite(v) & (v == np.round(v)) & (np.abs(v) < 2.0**63)
        if whole.all():
            return v.astype(np.int64)
        return np.array([int(x) if w else None for x, w in zip(v, whole)], dtype=object)
    return np.array([None if pd.isna(x) else str(x) for x in col], dtype=object)


#: Chunk readers by task name: ``(frame, cfg, info) -> ChunkInputs``. A task without one is
#: predicted by ``astroflax predict`` the in-memory way (its whole input at once).
CHUNK_READERS: dict[str, Callable[..., ChunkInputs]] = {"photoz": photoz_chunk}


def chunk_reader(task_name: str) -> Callable[..., ChunkInputs] | None:
    return CHUNK_READERS.get(task_name)
