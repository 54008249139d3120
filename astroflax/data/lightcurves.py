"""Multi-band light curves (PLAsTiCC layout): loading, validation and padding.

Two sources give the same :class:`LightCurveSet` (a ragged, flat representation):

* :func:`load_bundled_plasticc` -- the PLAsTiCC training set shipped with the
  package (``data/files/plasticc_train.npz``, see ``PROVENANCE_plasticc.md``),
  with a fixed stratified 70/10/20 train/val/test split by object.
* :func:`load_user_lightcurves` -- a directory with a light-curve table and a
  metadata table in the PLAsTiCC layout (CSV, CSV.GZ or Parquet), validated
  with one-line :class:`~astroflax.errors.DataError` messages.

:func:`pad_lightcurves` turns a set into fixed-size, model-ready arrays.
"""

from __future__ import annotations

import dataclasses
import warnings
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from astroflax.data.cache import content_hash
from astroflax.data.checks import (
    F32_TINY,
    MJD_RANGE,
    show_value,
)
from astroflax.data.tables import Table, find_table, parse_split
from astroflax.errors import DataError

__all__ = [
    "META_COLUMNS",
    "PASSBANDS",
    "PLASTICC_CLASSES",
    "SPLIT_NAMES",
    "DataError",
    "LightCurveSet",
    "load_bundled_plasticc",
    "load_user_lightcurves",
    "pad_lightcurves",
    "pad_meta_names",
    "split_indices",
]

#: PLAsTiCC class id -> readable name. Class index order = sorted class ids.
PLASTICC_CLASSES: dict[int, str] = {
    6: "mu-lens single",
    15: "TDE",
    16: "EB",
    42: "SN II",
    52: "SN Iax",
    53: "Mira",
    62: "SN Ibc",
    64: "KN",
    65: "M-dwarf flare",
    67: "SN Ia-91bg",
    88: "AGN",
    90: "SN Ia",
    92: "RR Lyrae",
    95: "SLSN-I",
}
PLASTICC_CLASS_IDS: list[int] = sorted(PLASTICC_CLASSES)
PLASTICC_CLASS_NAMES: list[str] = [PLASTICC_CLASSES[c] for c in PLASTICC_CLASS_IDS]

#: Passband index -> LSST filter letter.
PASSBANDS = "ugrizy"
#: Per-object metadata columns carried in ``LightCurveSet.meta`` (same for both sources).
META_COLUMNS: tuple[str, ...] = ("hostgal_photoz", "hostgal_photoz_err", "mwebv")
SPLIT_NAMES: tuple[str, ...] = ("train", "val", "test")

#: S/N threshold used to approximate ``detected`` when a user table has no such column.
DETECTION_SNR = 5.0
#: Quantile of |flux| used as the per-object flux scale in :func:`pad_lightcurves`.
FLUX_SCALE_QUANTILE = 0.95
#: Largest |flux| and flux_err accepted in user tables: PLAsTiCC FLUXCAL units (zero point 27.5),
#: so 1e23 is magnitude -30, brighter than anything in the sky but the Sun.
FLUX_ABS_MAX = 1e23
#: Accepted ranges of the metadata columns (redshifts and E(B-V) in magnitudes); empty = missing.
META_RANGES: dict[str, tuple[float, float]] = {
    "hostgal_photoz": (0.0, 20.0),
    "hostgal_photoz_err": (0.0, 20.0),
    "mwebv": (0.0, 50.0),
}

_BUNDLED_NPZ = "plasticc_train.npz"


# --------------------------------------------------------------------------- data class
@dataclasses.dataclass
class LightCurveSet:
    """Ragged set of N multi-band light curves with T observations in total.

    Object ``i`` owns the flat rows ``offsets[i]:offsets[i+1]``; objects are
    sorted by ``object_id`` and observations by ``mjd`` within each object.
    """

    object_id: np.ndarray  # int64 (N,)
    offsets: np.ndarray  # int64 (N+1,)
    mjd: np.ndarray  # float64 (T,)
    flux: np.ndarray  # float32 (T,)
    flux_err: np.ndarray  # float32 (T,)
    passband: np.ndarray  # uint8 (T,), 0..5 = ugrizy
    detected: np.ndarray  # uint8 (T,), 0/1
    labels: np.ndarray  # int32 (N,), index into class_names, -1 = unknown
    meta: np.ndarray  # float32 (N, M); missing values are 0 (see meta_missing)
    meta_names: list[str]  # M column names of ``meta``
    meta_missing: np.ndarray  # bool (N, M); True where meta was absent/NaN and set to 0
    split: np.ndarray | None  # uint8 (N,): 0 train, 1 val, 2 test; None if unknown
    class_names: list[str]
    version: str  # content hash (12 hex digits)
    source: str = ""  # where the data came from (for messages)
    extra: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)  # per-object (N,)

    def __post_init__(self) -> None:
        n = len(self.object_id)
        t = int(self.offsets[-1]) if len(self.offsets) else 0
        if len(self.offsets) != n + 1:
            raise ValueError(f"offsets has {len(self.offsets)} entries, expected N+1 = {n + 1}")
        for name in ("mjd", "flux", "flux_err", "passband", "detected"):
            if len(getattr(self, name)) != t:
                raise ValueError(f"{name} has {len(getattr(self, name))} entries, expected {t}")
        if len(self.labels) != n or self.meta.shape != (n, len(self.meta_names)):
            raise ValueError("labels/meta do not match the number of objects")

    def __len__(self) -> int:
        return len(self.object_id)

    @property
    def lengths(self) -> np.ndarray:
        """Number of observations per object, int64 (N,)."""
        return np.diff(self.offsets)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def select(self, index: np.ndarray) -> LightCurveSet:
        """A new set with the objects ``index`` (integer indices, kept in the given order)."""
        index = np.asarray(index, dtype=np.int64)
        lengths = self.lengths[index]
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        rows = _segment_rows(self.offsets[index], lengths)
        return dataclasses.replace(
            self,
            object_id=self.object_id[index],
            offsets=offsets,
            mjd=self.mjd[rows],
            flux=self.flux[rows],
            flux_err=self.flux_err[rows],
            passband=self.passband[rows],
            detected=self.detected[rows],
            labels=self.labels[index],
            meta=self.meta[index],
            meta_missing=self.meta_missing[index],
            split=None if self.split is None else self.split[index],
            extra={k: v[index] for k, v in self.extra.items()},
        )


def _segment_rows(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Flat row indices of the segments [starts[i], starts[i]+lengths[i]) concatenated."""
    total = int(lengths.sum())
    seg_start_in_out = np.cumsum(lengths) - lengths
    return np.arange(total, dtype=np.int64) + np.repeat(starts - seg_start_in_out, lengths)


# --------------------------------------------------------------------------- bundled
def load_bundled_plasticc() -> LightCurveSet:
    """Load the packaged PLAsTiCC training set (7,848 objects, 14 classes).

    ``meta`` columns: :data:`META_COLUMNS`. ``extra`` holds ``target_id``
    (PLAsTiCC class id), ``hostgal_specz``, ``distmod`` and ``ddf``.
    Does not touch anything outside the installed package.
    """
    ref = resources.files("astroflax.data").joinpath("files", _BUNDLED_NPZ)
    with resources.as_file(ref) as path, np.load(path, allow_pickle=False) as z:
        d = {k: z[k] for k in z.files}
    mjd = np.cumsum(d["mjd_delta_1e4"], dtype=np.int64) / 1e4
    target = d["target"].astype(np.int64)
    labels = np.searchsorted(PLASTICC_CLASS_IDS, target).astype(np.int32)
    meta = np.stack([d[c].astype(np.float32) for c in META_COLUMNS], axis=1)
    return LightCurveSet(
        object_id=d["object_id"].astype(np.int64),
        offsets=d["offsets"].astype(np.int64),
        mjd=mjd,
        flux=d["flux"],
        flux_err=d["flux_err"],
        passband=d["passband"],
        detected=d["detected"],
        labels=labels,
        meta=meta,
        meta_names=list(META_COLUMNS),
        meta_missing=np.zeros(meta.shape, dtype=bool),
        split=d["split"].astype(np.uint8),
        class_names=list(PLASTICC_CLASS_NAMES),
        version=str(d["version"]),
        source=f"bundled:{_BUNDLED_NPZ}",
        extra={
            "target_id": target,
            "hostgal_specz": d["hostgal_specz"],
            "distmod": d["distmod"],
            "ddf": d["ddf"],
        },
    )


# --------------------------------------------------------------------------- user data
def _parse_passband(tab: Table) -> np.ndarray:
    s = tab.df["passband"]
    text = s.astype("string").str.strip().str.lower().to_numpy(dtype=object, na_value=None)
    lut = {b: i for i, b in enumerate(PASSBANDS)}
    lut.update({str(i): i for i in range(len(PASSBANDS))})
    lut.update({f"{i}.0": i for i in range(len(PASSBANDS))})
    out = np.empty(len(text), dtype=np.int64)
    bad = np.zeros(len(text), dtype=bool)
    for i, t in enumerate(text):  # cheap: dictionary lookup per row
        j = lut.get(t) if t is not None else None
        if j is None:
            bad[i] = True
        else:
            out[i] = j
    if bad.any():
        pos = int(np.flatnonzero(bad)[0])
        raise tab.fail("passband", pos, f"expected 0-5 or one of u g r i z y, got {show_value(s.iloc[pos])}", int(bad.sum()))
    return out.astype(np.uint8)


def _parse_detected(tab: Table) -> np.ndarray:
    s = tab.df["detected"]
    text = s.astype("string").str.strip().str.lower().to_numpy(dtype=object, na_value=None)
    lut = {"0": 0, "1": 1, "0.0": 0, "1.0": 1, "true": 1, "false": 0}
    vals = [lut.get(t) if t is not None else None for t in text]
    bad = np.array([v is None for v in vals], dtype=bool)
    if bad.any():
        pos = int(np.flatnonzero(bad)[0])
        raise tab.fail("detected", pos, f"expected 0/1 or true/false, got {show_value(s.iloc[pos])}", int(bad.sum()))
    return np.asarray(vals, dtype=np.uint8)


def _parse_labels(tab: Table, class_names: list[str] | None) -> tuple[np.ndarray, list[str]]:
    """Map ``target`` to class indices. Empty target -> -1.

    Integer targets are PLAsTiCC class ids (looked up in :data:`PLASTICC_CLASSES`);
    text targets are class names. Without ``class_names`` the 14 PLAsTiCC classes are used.
    """
    names = list(class_names) if class_names is not None else list(PLASTICC_CLASS_NAMES)
    if len(set(names)) != len(names):
        raise DataError(f"class_names contains duplicates: {names}")
    n = len(tab.df)
    if "target" not in tab.df.columns:
        return np.full(n, -1, dtype=np.int32), names
    index = {name: i for i, name in enumerate(names)}
    index.update({name.lower(): i for i, name in enumerate(names) if name.lower() not in index})
    s = tab.df["target"]
    text = s.astype("string").str.strip().to_numpy(dtype=object, na_value=None)
    labels = np.full(n, -1, dtype=np.int32)
    bad = np.zeros(n, dtype=bool)
    for i, t in enumerate(text):
        if t is None or t == "":
            continue
        j = index.get(t, index.get(t.lower()))
        if j is None:
            try:
                f = float(t)
                cid = int(f) if f == int(f) else None
            except ValueError:
                cid = None
            if cid is not None and cid in PLASTICC_CLASSES:
                j = index.get(PLASTICC_CLASSES[cid])
        if j is None:
            bad[i] = True
        else:
            labels[i] = j
    if bad.any():
        pos = int(np.flatnonzero(bad)[0])
        ids = [c for c in PLASTICC_CLASS_IDS if PLASTICC_CLASSES[c] in index]
        allowed = f" or the PLAsTiCC class ids {ids}" if ids else ""
        raise tab.fail(
            "target", pos,
            f"unknown label {show_value(s.iloc[pos])}; expected one of the class names {names}{allowed}",
            int(bad.sum()))
    return labels, names


def load_user_lightcurves(directory: str | Path, class_names: list[str] | None = None) -> LightCurveSet:
    """Load and validate user light curves in the PLAsTiCC layout.

    ``directory`` must contain

    * a light-curve table ``lightcurves.csv`` / ``.csv.gz`` / ``.parquet`` (or the
      single table whose name contains ``lightcurves``) with columns
      ``object_id, mjd, passband, flux, flux_err`` and optionally ``detected``
      (alias ``detected_bool``). ``passband`` is 0-5 or a letter of ``ugrizy``.
      Without ``detected`` it is approximated as ``|flux|/flux_err >= 5``.
    * a metadata table ``metadata.csv`` / ``.csv.gz`` / ``.parquet`` (or the single
      table whose name contains ``metadata``) with column ``object_id`` and
      optionally ``target``, ``hostgal_photoz``, ``hostgal_photoz_err``, ``mwebv``,
      ``split`` (train/val/test or 0/1/2).

    Labels: integer ``target`` values are PLAsTiCC class ids, text values are class
    names; both must belong to ``class_names`` (default: the 14 PLAsTiCC classes,
    in sorted-id order). No ``target`` column or an empty cell -> label -1.
    Missing/empty metadata values become 0 and are flagged in ``meta_missing``.
    Observations are sorted by time within each object; if any object was not
    time-ordered a :class:`UserWarning` says how many. Column names are
    case-insensitive. Every problem raises a one-line :class:`DataError`
    naming the file, column and line/row (or object_id).
    """
    directory = Path(directory).expanduser()
    if not directory.exists():
        raise DataError(f"{directory}: directory does not exist; expected a folder with lightcurves.csv and metadata.csv")
    if not directory.is_dir():
        raise DataError(f"{directory}: not a directory; expected a folder with lightcurves.csv and metadata.csv")
    lc_path = find_table(directory, "lightcurves", "light-curve")
    meta_path = find_table(directory, "metadata", "metadata")

    # ---- light curves
    lc = Table(lc_path)
    lc.require(("object_id", "mjd", "passband", "flux", "flux_err"), aliases={"detected_bool": "detected"})
    if len(lc.df) == 0:
        raise DataError(f"{lc_path}: the table has no rows; expected at least one observation")
    oid = lc.numeric("object_id", integer=True)
    mjd = lc.numeric("mjd")
    lc.check_range("mjd", mjd, "a Modified Julian Date", *MJD_RANGE,
                   note=" (days; a Julian Date is MJD + 2400000.5)")
    flux = lc.numeric("flux")
    lc.check_range("flux", flux, "a flux in FLUXCAL units (zero point 27.5)", -FLUX_ABS_MAX, FLUX_ABS_MAX,
                   note=", i.e. not brighter than magnitude -30")
    flux_err = lc.numeric("flux_err")
    bad = flux_err <= 0
    if bad.any():
        pos = int(np.flatnonzero(bad)[0])
        raise lc.fail("flux_err", pos, f"expected a positive uncertainty, got {show_value(flux_err[pos])}", int(bad.sum()))
    lc.check_range("flux_err", flux_err, "a positive uncertainty in FLUXCAL units", F32_TINY, FLUX_ABS_MAX,
                   note=" (the lower bound is the smallest normal float32)")
    passband = _parse_passband(lc)
    if "detected" in lc.df.columns:
        detected = _parse_detected(lc)
    else:
        detected = (np.abs(flux) / flux_err >= DETECTION_SNR).astype(np.uint8)

    # ---- metadata
    md = Table(meta_path)
    md.require(("object_id",))
    if len(md.df) == 0:
        raise DataError(f"{meta_path}: the table has no rows; expected one row per object")
    m_oid = md.numeric("object_id", integer=True)
    order_m = np.argsort(m_oid, kind="stable")
    sorted_m = m_oid[order_m]
    dup = np.flatnonzero(sorted_m[1:] == sorted_m[:-1])
    if dup.size:
        first, pos = sorted((int(order_m[dup[0]]), int(order_m[dup[0] + 1])))
        raise md.fail("object_id", pos, f"duplicate object_id {m_oid[pos]}: also on {md.where(first)}; "
                                        "expected one row per object", dup.size + 1)
    labels, names = _parse_labels(md, class_names)
    split = parse_split(md)
    meta_cols, missing_cols = [], []
    for c in META_COLUMNS:
        if c in md.df.columns:
            v = md.numeric(c, allow_nan=True)
            if c in META_RANGES:
                md.check_range(c, v, f"{c} (empty = missing)", *META_RANGES[c])
            missing_cols.append(np.isnan(v))
            meta_cols.append(np.nan_to_num(v, nan=0.0))
        else:
            missing_cols.append(np.ones(len(md.df), dtype=bool))
            meta_cols.append(np.zeros(len(md.df)))
    meta = np.stack(meta_cols, axis=1).astype(np.float32)
    meta_missing = np.stack(missing_cols, axis=1)

    # ---- cross-checks between the tables
    known = np.isin(oid, sorted_m)
    if not known.all():
        bad_pos = np.flatnonzero(~known)
        n_obj = len(np.unique(oid[bad_pos]))
        raise lc.fail("object_id", int(bad_pos[0]),
                      f"object_id {oid[bad_pos[0]]} has no row in {meta_path.name}; expected every observed object "
                      f"in the metadata ({n_obj} unknown object(s))", oid=None)
    has_obs = np.isin(m_oid, oid)
    if not has_obs.all():
        bad_pos = np.flatnonzero(~has_obs)
        raise md.fail("object_id", int(bad_pos[0]),
                      f"object_id {m_oid[bad_pos[0]]} has no observations in {lc_path.name}; expected at least one "
                      f"per object ({len(bad_pos)} such object(s))")

    # ---- order: objects by id, observations by time
    by_obj = np.argsort(oid, kind="stable")
    oid_s, mjd_s = oid[by_obj], mjd[by_obj]
    same = oid_s[1:] == oid_s[:-1]
    back = same & (mjd_s[1:] < mjd_s[:-1])
    n_unsorted = len(np.unique(oid_s[1:][back]))
    if n_unsorted:
        warnings.warn(
            f"{lc_path}: observations of {n_unsorted} object(s) were not in time order; sorted them by mjd",
            UserWarning, stacklevel=2)
    order = np.lexsort((mjd, oid))  # stable: by object_id, then mjd
    oid, mjd, flux, flux_err = oid[order], mjd[order], flux[order], flux_err[order]
    passband, detected = passband[order], detected[order]

    object_id = sorted_m.astype(np.int64)
    starts = np.searchsorted(oid, object_id, side="left")
    offsets = np.concatenate([starts, [len(oid)]]).astype(np.int64)
    labels, meta, meta_missing = labels[order_m], meta[order_m], meta_missing[order_m]
    split = None if split is None else split[order_m]

    flux32, ferr32 = flux.astype(np.float32), flux_err.astype(np.float32)
    version = content_hash(object_id, offsets, mjd, flux32, ferr32, passband, detected,
                           labels, meta, meta_missing, split, repr(names).encode(), length=12)
    return LightCurveSet(
        object_id=object_id, offsets=offsets, mjd=mjd, flux=flux32, flux_err=ferr32,
        passband=passband, detected=detected, labels=labels, meta=meta,
        meta_names=list(META_COLUMNS), meta_missing=meta_missing, split=split,
        class_names=names, version=version, source=str(directory),
    )


# --------------------------------------------------------------------------- padding
def pad_meta_names(lcs: LightCurveSet) -> list[str]:
    """Column names of ``pad_lightcurves(lcs, ...)["meta"]``."""
    return list(lcs.meta_names) + ["log_flux_scale"]


def _segment_order(values: np.ndarray, obj: np.ndarray, n: int) -> np.ndarray:
    """Permutation sorting by (obj, values); fast: quicksort by value, then radix-sort by object."""
    o = np.argsort(values)
    small = np.uint16 if n < 2**16 else np.int64
    return o[np.argsort(obj.astype(small)[o], kind="stable")]


def _window_starts(mjd: np.ndarray, starts: np.ndarray, lengths: np.ndarray, peak: np.ndarray,
                   L: int) -> np.ndarray:
    """Local start of the L-observation window around the peak (0 for objects with <= L obs).

    Equivalent to growing a window from the peak, each step taking the nearer in
    time of the next earlier / next later observation (the earlier one on ties):
    the L observations closest in time to the peak. Vectorised binary search.
    """
    a = np.zeros(len(starts), dtype=np.int64)
    long_ = np.flatnonzero(lengths > L)
    if long_.size == 0:
        return a
    s0, n_, p = starts[long_], lengths[long_], peak[long_] - starts[long_]
    t = mjd[peak[long_]]
    lo = np.maximum(0, p - L + 1)
    hi = np.minimum(p, n_ - L)
    # find the first a in [lo, hi] where moving right does not help:
    #   (t - x[a]) > (x[a+L] - t) is True for a < a*, False from a* on (monotone).
    while True:
        active = lo < hi
        if not active.any():
            break
        mid = (lo + hi) // 2
        # guard the gather for inactive entries (mid == hi may equal n_ - L -> a+L valid anyway)
        left = t - mjd[s0 + mid]
        right = mjd[s0 + np.minimum(mid + L, n_ - 1)] - t
        move = active & (left > right)
        lo = np.where(move, mid + 1, lo)
        hi = np.where(active & ~move, mid, hi)
    a[long_] = lo
    return a


def pad_lightcurves(lcs: LightCurveSet, max_len: int) -> dict[str, np.ndarray]:
    """Fixed-size, model-ready arrays (L = ``max_len``; first dim N = len(lcs)).

    * reference epoch ``t_ref`` = mjd of the observation with the largest
      ``flux/flux_err`` (signal-to-noise peak; earliest one on ties);
      ``time`` = mjd - t_ref in days.
    * flux scale = max(95th percentile of |flux|, median flux_err) over ALL the
      object's observations (before cutting); ``flux`` and ``flux_err`` are
      divided by it and ``log10(scale)`` is appended to ``meta`` as
      ``log_flux_scale``, so the amplitude is not lost.
    * objects with more than L observations keep the L observations closest in
      time to the peak (a contiguous run in time order that contains the peak;
      on equal distance the earlier observation wins).
    * padded positions are exactly 0 and ``mask`` False; real observations are
      left-aligned and in time order.

    Returns ``time, flux, flux_err`` float32 (N,L); ``band`` int32 (N,L);
    ``detected`` float32 (N,L); ``mask`` bool (N,L); ``meta`` float32 (N,M+1)
    (names: :func:`pad_meta_names`); ``label`` int32 (N,); ``object_id`` int64
    (N,); ``t_ref`` float64 (N,); ``n_obs`` int32 (N,) observations before cutting.
    """
    if int(max_len) < 1:
        raise ValueError(f"max_len must be >= 1, got {max_len}")
    L = int(max_len)
    n = len(lcs)
    lengths = lcs.lengths.astype(np.int64)
    if n and lengths.min() < 1:
        raise DataError(f"{lcs.source}: object_id {lcs.object_id[np.argmin(lengths)]} has no observations")
    starts = lcs.offsets[:-1].astype(np.int64)
    obj = np.repeat(np.arange(n, dtype=np.int64), lengths)
    flux = lcs.flux.astype(np.float64)
    ferr = lcs.flux_err.astype(np.float64)
    if n == 0:
        raise DataError(f"{lcs.source}: no objects to pad")

    # S/N peak per object (earliest on ties)
    snr = flux / ferr
    best = np.maximum.reduceat(snr, starts)
    cand = np.where(snr == best[obj], np.arange(len(snr)), len(snr))
    peak = np.minimum.reduceat(cand, starts)
    t_ref = lcs.mjd[peak]

    # robust flux scale over all the object's observations
    absf = np.abs(flux)
    abs_sorted = absf[_segment_order(absf, obj, n)]
    q = starts + np.floor(FLUX_SCALE_QUANTILE * (lengths - 1)).astype(np.int64)
    ferr_sorted = ferr[_segment_order(ferr, obj, n)]
    med = 0.5 * (ferr_sorted[starts + (lengths - 1) // 2] + ferr_sorted[starts + lengths // 2])
    scale = np.maximum(np.maximum(abs_sorted[q], med), np.finfo(np.float32).tiny)

    # window of at most L observations around the peak
    a = _window_starts(lcs.mjd, starts, lengths, peak, L)
    local = np.arange(len(obj), dtype=np.int64) - starts[obj]
    col_all = local - a[obj]
    keep = np.flatnonzero((col_all >= 0) & (col_all < L))
    kobj, col = obj[keep], col_all[keep]

    def scatter(values: np.ndarray, dtype: Any) -> np.ndarray:
        out = np.zeros((n, L), dtype=dtype)
        out[kobj, col] = values[keep]
        return out

    mask = np.zeros((n, L), dtype=bool)
    mask[kobj, col] = True
    obj_scale = scale[obj]
    meta = np.concatenate([lcs.meta.astype(np.float32), np.log10(scale).astype(np.float32)[:, None]], axis=1)
    with np.errstate(over="ignore", invalid="ignore"):
        arrays = {"time": scatter(lcs.mjd - t_ref[obj], np.float32), "flux": scatter(flux / obj_scale, np.float32),
                  "flux_err": scatter(ferr / obj_scale, np.float32)}
    for name, values in (*arrays.items(), ("meta", meta)):
        bad = ~np.isfinite(values).reshape(n, -1).all(axis=1)
        if bad.any():  # the readers' range checks should make this impossible: never feed NaN to the model
            i = int(np.flatnonzero(bad)[0])
            raise DataError(f"{lcs.source}: object_id {lcs.object_id[i]}: its {name} is not finite after scaling "
                            f"(flux scale {scale[i]:g}); check the flux and flux_err values of this object")
    return {
        **arrays,
        "band": scatter(lcs.passband, np.int32),
        "detected": scatter(lcs.detected, np.float32),
        "mask": mask,
        "meta": meta,
        "label": lcs.labels.astype(np.int32),
        "object_id": lcs.object_id.astype(np.int64),
        "t_ref": t_ref.astype(np.float64),
        "n_obs": lengths.astype(np.int32),
    }


def split_indices(lcs: LightCurveSet) -> dict[str, np.ndarray]:
    """Object indices (int64, ascending) of the stored 'train', 'val' and 'test' splits."""
    if lcs.split is None:
        raise DataError(
            f"{lcs.source}: the data has no train/val/test split; add a 'split' column "
            "(train/val/test) to the metadata table")
    return {name: np.flatnonzero(lcs.split == i).astype(np.int64) for i, name in enumerate(SPLIT_NAMES)}


# --------------------------------------------------------------------------- user data, any format
USER_FORMATS: tuple[str, ...] = ("auto", "plasticc", "ztf_fp")


def detect_format(path: str | Path) -> str:
    """``ztf_fp`` for files starting with ``#key=value`` lines (ZTF forced photometry), else ``plasticc``."""
    from astroflax.data import ztf

    path = Path(path).expanduser()
    if path.is_file():
        return "ztf_fp" if ztf.is_forced_photometry(path) else "plasticc"
    if path.is_dir():
        names = [p.name.lower() for p in path.iterdir()]
        if not any("lightcurves" in n or "metadata" in n for n in names) and ztf.is_forced_photometry(path):
            return "ztf_fp"
    return "plasticc"


def load_user_data(path: str | Path, fmt: str = "auto", *, class_names: list[str] | None = None,
                   map_plasticc: bool = False, training: bool = True
                   ) -> tuple[LightCurveSet, list[Any], dict[str, Any]]:
    """User light curves in any accepted format: (set, the objects' own ids, ``info["source"]``).

    ``fmt``: ``plasticc`` (:func:`load_user_lightcurves`), ``ztf_fp``
    (:func:`astroflax.data.ztf.load_forced_photometry`) or ``auto`` (:func:`detect_format`).
    ``class_names``: the trained model's classes (prediction); ``map_plasticc``: ZTF BTS classes
    are mapped onto the PLAsTiCC names.
    """
    from astroflax.data import ztf
    from astroflax.data.tables import source_info

    fmt = detect_format(path) if fmt == "auto" else fmt
    if fmt == "ztf_fp":
        lcs, ids, more, rows = ztf.load_forced_photometry(path, class_names=class_names, map_plasticc=map_plasticc,
                                                          training=training)
        return lcs, ids, source_info(path, "ztf_fp (ZTF forced photometry, one object per file)", rows, **more)
    lcs = load_user_lightcurves(path, class_names=class_names if class_names is not None else None)
    d = Path(path).expanduser()
    files = [find_table(d, "lightcurves", "light-curve").name, find_table(d, "metadata", "metadata").name]
    return lcs, lcs.object_id.tolist(), source_info(path, "plasticc (light-curve + metadata tables)",
                                                    int(lcs.offsets[-1]), files=files, objects=len(lcs))
