"""Magnitude light curves as visits (one row per observation) -> padded ugriz model arrays.

Used by the ``variables`` task for the user's visit tables (:func:`read_table`) and for the
bundled real MACHO/ASAS curves (:func:`real_smoke_arrays`). Model inputs per object:
``time`` = days since the first kept visit; ``flux`` = -(mag - median mag) (brighter =
positive; magnitudes keep amplitudes comparable across objects); ``flux_err`` = mag error.
Curves longer than the simulated survey keep the ``years``-long window with most visits and
are thinned evenly to ``max_len`` visits (:func:`pad_ragged`).
"""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from astroflax.data import variable_sim as vs
from astroflax.data.checks import (
    F32_MAX,
    F32_TINY,
    MAG_RANGE,
    MJD_RANGE,
    TIME_RANGE,
    show_value,
)
from astroflax.data.tables import Table, first_line
from astroflax.errors import DataError

Arrays = dict[str, np.ndarray]

#: band names accepted in visit tables (case-insensitive) -> model band index (ugriz).
BAND_ALIASES: dict[str, int] = {
    **{b: i for i, b in enumerate(vs.BANDS)}, **{str(i): i for i in range(len(vs.BANDS))},
    "b": 1, "v": 1,  # Johnson/MACHO B and V -> g (the model's bands are ugriz; 'r','i','u' map to themselves)
}
ASAS_TO_CLASS = {"Mira": "Mira", "Classical_Cepheid": "Cepheid", "W_Ursae_Maj": "EB_contact"}
MACHO_BANDS = {0: 1, 1: 2}  # MACHO B -> g, R -> r
REAL_ID_BASE = 1_000_000_000  # object_id of real smoke-test curves (synthetic ids are 0..N-1)


def normalise(mag: np.ndarray, err: np.ndarray, band: np.ndarray, mask: np.ndarray, mode: str):
    """(flux, flux_err) = (-(mag - reference median), err) on padded (N, L) arrays; 0 where padded.

    ``per_band`` subtracts each band's median (robust to uncalibrated photometry, such as
    MACHO's instrumental magnitudes, but drops colours); ``per_object`` the object's overall
    median (keeps colours).
    """
    ref = np.zeros(mag.shape, np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows (band never observed)
        if mode == "per_object":
            med = np.nanmedian(np.where(mask, mag, np.nan), axis=1)
            ref = np.broadcast_to(med[:, None], mag.shape)
        else:
            for b in range(len(vs.BANDS)):
                sel = mask & (band == b)
                med = np.nanmedian(np.where(sel, mag, np.nan), axis=1)
                ref = np.where(sel, med[:, None], ref)
    flux = np.where(mask, -(mag - ref), 0.0).astype(np.float32)
    flux_err = np.where(mask, err, 0.0).astype(np.float32)
    bad = ~(np.isfinite(flux) & np.isfinite(flux_err)).all(axis=1)
    if bad.any():  # the range checks of read_table should make this impossible: never feed NaN to the model
        raise DataError(f"object {int(np.flatnonzero(bad)[0])} (0-based): magnitudes or errors are not finite "
                        "after normalisation; check its mag/flux and err values")
    return flux, flux_err


def model_arrays(time, mag, err, band, mask, mode: str) -> Arrays:
    """The light-curve model's inputs from padded magnitudes (``mode``: see :func:`normalise`)."""
    flux, flux_err = normalise(mag, err, band, mask, mode)
    return {
        "time": np.where(mask, time, 0.0).astype(np.float32),
        "flux": flux,
        "flux_err": flux_err,
        "band": np.where(mask, band, 0).astype(np.int32),
        "mask": mask.astype(bool),
        "meta": np.zeros((len(mask), 0), np.float32),
    }


def pad_ragged(offsets: np.ndarray, time: np.ndarray, mag: np.ndarray, err: np.ndarray, band: np.ndarray,
               max_len: int, years: float, max_err: float, names: list[str] | None = None) -> Arrays:
    """Padded (N, max_len) arrays from flat, per-object time-sorted rows.

    Drops visits with err > ``max_err``, keeps the ``years``-long window with most visits
    (earliest on ties), thins evenly to ``max_len`` visits, and sets time = days since the
    first kept visit. Returns time, mag, err, band, mask and n_used (visits kept).
    """
    n = len(offsets) - 1
    out = {
        "time": np.zeros((n, max_len)), "mag": np.zeros((n, max_len)), "err": np.zeros((n, max_len)),
        "band": np.zeros((n, max_len), np.int32), "mask": np.zeros((n, max_len), bool), "n_used": np.zeros(n, np.int32),
    }
    span = years * 365.25
    for i in range(n):
        s = slice(offsets[i], offsets[i + 1])
        t, m, e, b = time[s], mag[s], err[s], band[s]
        keep = e <= max_err
        if not keep.any():
            who = names[i] if names is not None else i
            raise DataError(f"object {who}: no visit with an error <= {max_err} mag (data.max_err); cannot classify it")
        t, m, e, b = t[keep], m[keep], e[keep], b[keep]
        ends = np.searchsorted(t, t + span, side="right")
        a = int(np.argmax(ends - np.arange(len(t))))
        idx = np.arange(a, ends[a])
        if len(idx) > max_len:
            idx = idx[np.round(np.linspace(0, len(idx) - 1, max_len)).astype(np.int64)]
        k = len(idx)
        out["time"][i, :k] = t[idx] - t[idx[0]]
        out["mag"][i, :k], out["err"][i, :k], out["band"][i, :k] = m[idx], e[idx], b[idx]
        out["mask"][i, :k] = True
        out["n_used"][i] = k
    return out


def real_smoke_arrays(max_len: int, years: float, max_err: float, mode: str) -> tuple[Arrays, list[dict[str, Any]]]:
    """The bundled MACHO + ASAS curves as model arrays (weight 0), and a description of each object.

    Band mapping onto the model's ugriz: MACHO B -> g, MACHO R -> r, ASAS V -> g (V lies
    between g and r). ``real_label`` is the ASAS class (-1 for MACHO, which has no labels).
    """
    raw = vs.load_real()
    off_m, off_a = raw["macho_offsets"], raw["asas_offsets"]
    offsets = np.concatenate([off_m, off_m[-1] + off_a[1:]])
    cat = lambda a, b: np.concatenate([a, b])
    band = cat(np.vectorize(MACHO_BANDS.get)(raw["macho_band"]), np.full(len(raw["asas_time"]), BAND_ALIASES["v"]))
    names = [f"MACHO {x}" for x in raw["macho_name"]] + [f"ASAS {x}" for x in raw["asas_name"]]
    p = pad_ragged(offsets, cat(raw["macho_mjd"], raw["asas_time"]), cat(raw["macho_mag"], raw["asas_mag"]),
                   cat(raw["macho_err"], raw["asas_err"]), band, max_len, years, max_err, names)
    arrays = model_arrays(p["time"], p["mag"], p["err"], p["band"], p["mask"], mode)
    objects = []
    for i, name in enumerate(names):
        asas = i >= len(raw["macho_name"])
        orig = str(raw["asas_class"][i - len(raw["macho_name"])]) if asas else None
        objects.append({
            "object_id": REAL_ID_BASE + i, "name": name, "source": "ASAS" if asas else "MACHO",
            "bands": "V->g" if asas else ",".join(sorted({"B->g" if b == 1 else "R->r" for b in p["band"][i, p["mask"][i]]})),
            "n_obs_used": int(p["n_used"][i]), "catalogue_class": orig, "label": ASAS_TO_CLASS[orig] if asas else None,
        })
    n = len(names)
    label = np.array([vs.CLASSES.index(o["label"]) if o["label"] else -1 for o in objects], np.int32)
    arrays.update({
        "label": np.maximum(label, 0), "object_id": REAL_ID_BASE + np.arange(n, dtype=np.int64),
        "sample_weight": np.zeros(n, np.float32), "real_source": np.array([2 if o["source"] == "ASAS" else 1 for o in objects], np.int8),
        "real_label": label,
    })
    return arrays, objects


def read_table(path: str | Path) -> tuple[Arrays, np.ndarray]:
    """Validate a table of visits; returns flat time-sorted rows + offsets and the object ids.

    Columns (case-insensitive): ``object_id``; ``time`` or ``mjd`` (days; a unit declared in the
    file, e.g. FITS ``TUNIT``, is converted with astropy); ``band`` (u g r i z or 0-4;
    Johnson/MACHO B and V -> g, R -> r, I -> i, U -> u as names are case-insensitive); ``mag``
    or ``flux`` (flux > 0, converted to mag); ``err`` (alias ``mag_err``/``flux_err``, the error
    of the given quantity, > 0). Any format :class:`~astroflax.data.tables.Table` reads.
    """
    v = read_visits(path)
    return v.rows, v.ids


@dataclasses.dataclass
class VisitTable:
    """A validated visits table: flat rows sorted by (object, time), the object ids (in order of
    first appearance) and, per sorted row, its position in ``tab.df`` (to name it in messages)."""

    rows: Arrays  # time, mag, err, band (flat, sorted), offsets (N+1)
    ids: np.ndarray  # (N,) the user's object ids
    tab: Table
    order: np.ndarray  # (T,) position in tab.df of each sorted row
    codes: np.ndarray  # (len(tab.df),) object index of each table row


def read_visits(path: str | Path) -> VisitTable:
    """:func:`read_table`, keeping the table (for a class/split column) and the row order."""
    import astropy.units as u
    import pandas as pd

    path = Path(path).expanduser()
    if not path.exists():
        raise DataError(f"{path}: no such file; expected a table of visits (CSV, Parquet, FITS, HDF5, ECSV, VOTable)")
    if path.is_dir():
        raise DataError(f"{path}: is a directory; expected a table with columns object_id, time, band, mag, err")
    tab = Table(path)
    df = tab.df
    tcol = next((c for c in ("time", "mjd") if c in df.columns), "time")
    vcol = next((c for c in ("mag", "flux") if c in df.columns), "mag")
    ecol = next((c for c in ("err", f"{vcol}_err", "magerr") if c in df.columns), "err")
    tab.require(("object_id", tcol, "band", vcol, ecol))
    if len(df) == 0:
        raise DataError(f"{path}: the table has no rows; expected at least one visit")
    oid_raw = df["object_id"]
    if oid_raw.isna().any():
        pos = int(np.flatnonzero(oid_raw.isna().to_numpy())[0])
        raise tab.fail("object_id", pos, "expected an object id, got an empty cell", int(oid_raw.isna().sum()))
    t = tab.numeric(tcol)
    if tab.units.get(tcol):  # e.g. FITS TUNIT 'd' or 's': times are in days from here on
        try:
            t = (t * u.Unit(tab.units[tcol])).to_value(u.day)
        except (ValueError, u.UnitsError) as exc:
            raise tab.fail(tcol, None, f"unit {tab.units[tcol]!r} is not a time unit ({first_line(exc)}); "
                                       "expected days (or any time unit)") from None
    if tcol == "mjd":
        tab.check_range(tcol, t, "a Modified Julian Date", *MJD_RANGE, note=" (days; a Julian Date is MJD + 2400000.5)")
    else:
        tab.check_range(tcol, t, "a time in days", *TIME_RANGE)
    v = tab.numeric(vcol)
    e = tab.numeric(ecol)
    bad = e <= 0
    if bad.any():
        pos = int(np.flatnonzero(bad)[0])
        raise tab.fail(ecol, pos, f"expected a positive uncertainty, got {show_value(e[pos])}", int(bad.sum()))
    tab.check_range(ecol, e, "a positive uncertainty that float32 can hold,", F32_TINY, F32_MAX)
    if vcol == "flux":
        bad = v <= 0
        if bad.any():
            pos = int(np.flatnonzero(bad)[0])
            raise tab.fail("flux", pos, f"expected a positive flux (it is converted to a magnitude), got {show_value(v[pos])}", int(bad.sum()))
        tab.check_range("flux", v, "a positive flux that float32 can hold,", F32_TINY, F32_MAX)
        with np.errstate(over="ignore"):  # an error far above data.max_err only drops the visit
            e = 2.5 / np.log(10) * e / v
        v = -2.5 * np.log10(v)
    else:
        tab.check_range("mag", v, "an apparent magnitude", *MAG_RANGE,
                        note=" (99, -99 and -9999 are 'no data' codes in many catalogues: drop those visits)")
    text = df["band"].astype("string").str.strip().str.lower().str.removesuffix(".0").to_numpy(dtype=object, na_value=None)
    band = np.array([BAND_ALIASES.get(x, -1) if x is not None else -1 for x in text])
    bad = band < 0
    if bad.any():
        pos = int(np.flatnonzero(bad)[0])
        raise tab.fail("band", pos, f"expected one of u g r i z, 0-4, B or V, got {show_value(df['band'].iloc[pos])}", int(bad.sum()))
    codes, uniques = pd.factorize(oid_raw, sort=False)
    codes = codes.astype(np.int64)
    uniques = np.asarray(uniques.to_numpy() if hasattr(uniques, "to_numpy") else uniques)
    order = np.lexsort((t, codes))
    counts = np.bincount(codes, minlength=len(uniques))
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    rows = {"time": t[order], "mag": v[order], "err": e[order], "band": band[order], "offsets": offsets}
    return VisitTable(rows=rows, ids=uniques, tab=tab, order=order, codes=codes)


# ----------------------------------------------------------------------------- labelled user data
#: Names accepted for the class column (the first present is used).
CLASS_COLUMNS = ("class", "target", "label", "type")


def _id_keys(values: Any) -> np.ndarray:
    """Object ids as text for matching the visits and labels tables (5, 5.0 and '5' are the same object)."""
    import pandas as pd

    s = pd.Series(values)
    num = pd.to_numeric(s, errors="coerce")
    integral = num.notna() & (num == np.round(num))
    text = s.astype("string").str.strip()
    text[integral] = num[integral].astype(np.int64).astype(str)
    return text.to_numpy(dtype=object)


def _class_text(tab: Table) -> tuple[str | None, np.ndarray]:
    col = next((c for c in CLASS_COLUMNS if c in tab.df.columns), None)
    if col is None:
        return None, np.array([], object)
    text = tab.df[col].astype("string").str.strip().to_numpy(dtype=object, na_value=None)
    return col, np.array([t if t else None for t in text], object)


def find_visits(path: str | Path) -> tuple[Path, Path | None]:
    """The visits table and the labels table (or None) of ``path``: a table file, or a directory
    with ``visits.*`` (or the one table whose name contains 'visits', or its only table) and
    optionally ``labels.*``."""
    from astroflax.data.tables import find_table, table_suffix

    path = Path(path).expanduser()
    if not path.exists():
        raise DataError(f"{path}: no such file or directory; expected a visits table, or a directory with "
                        "visits and labels tables")
    if path.is_file():
        return path, None
    tables = [p for p in sorted(path.iterdir()) if p.is_file() and table_suffix(p)]
    if not tables:
        raise DataError(f"{path}: is a directory without a table; expected a visits table (object_id, time, band, "
                        "mag, err) or a directory with visits.csv [+ labels.csv]")
    labels = [p for p in tables if "labels" in p.name.lower()]
    others = [p for p in tables if p not in labels]
    vis = others[0] if len(others) == 1 else find_table(path, "visits", "visits")
    return vis, (find_table(path, "labels", "labels") if labels else None)


def load_labelled(path: str | Path, *, max_len: int, years: float, max_err: float, mode: str,
                  val_fraction: float, test_fraction: float, split_seed: int) -> tuple[Arrays, np.ndarray, dict[str, Any]]:
    """The user's labelled visits as model arrays (one row per kept object), split codes and info.

    Classes: the ``class`` column (aliases ``target``, ``label``, ``type``) of the labels table
    (``object_id, class[, split]``) or of the visits table (one value per object), names sorted.
    Dropped, each with its reason in ``info["dropped"]`` (counted in visit rows): objects
    without a class, objects with no visit with err <= ``max_err``, visits with a larger error,
    and visits outside the ``years``-long window with most visits or thinned to ``max_len``;
    labels rows of objects without visits (counted in labels rows). Split: a ``split`` column
    (train/val/test or 0/1/2) if given, else stratified by class with ``split_seed``.
    """
    from astroflax.data.splits import stratified_split_codes
    from astroflax.data.tables import DropLog, parse_split, source_info

    vis_path, lab_path = find_visits(path)
    vt = read_visits(vis_path)
    tab, ids, n_obj = vt.tab, vt.ids, len(vt.ids)
    first = np.unique(vt.codes, return_index=True)[1]  # table position of each object's first visit row
    drops = DropLog()
    split_tab, split_rows = tab, first
    if lab_path is not None:
        lt = Table(lab_path)
        lt.require(("object_id",))
        ccol, cls = _class_text(lt)
        if ccol is None:
            raise DataError(f"{lab_path}: missing column 'class'; expected object_id, class[, split] "
                            f"(class aliases: {', '.join(CLASS_COLUMNS[1:])})")
        if lt.df["object_id"].isna().any():
            pos = int(np.flatnonzero(lt.df["object_id"].isna().to_numpy())[0])
            raise lt.fail("object_id", pos, "expected an object id, got an empty cell")
        lkeys = _id_keys(lt.df["object_id"].to_numpy())
        seen: dict[str, int] = {}
        for i, k in enumerate(lkeys):
            if k in seen:
                raise lt.fail("object_id", i, f"duplicate object_id {show_value(lt.df['object_id'].iloc[i])}: also on "
                                              f"{lt.where(seen[k])}; expected one row per object")
            seen[k] = i
        vkeys = _id_keys(ids)
        lab_row = np.array([seen.get(k, -1) for k in vkeys], np.int64)
        obj_class = np.array([cls[r] if r >= 0 else None for r in lab_row], object)
        known = set(vkeys)
        orphans = [i for i, k in enumerate(lkeys) if k not in known]
        if orphans:
            drops.add(f"labels row of an object with no visits in {vis_path.name}", [lt.where(i) for i in orphans])
        split_tab, split_rows = lt, lab_row
        labels_rows = len(lt.df)
    else:
        ccol, cls = _class_text(tab)
        if ccol is None:
            raise DataError(f"{vis_path}: no class column and no labels table; expected a 'class' column (aliases "
                            f"{', '.join(CLASS_COLUMNS[1:])}) or a labels table (object_id, class[, split]) next to it")
        obj_class = cls[first]
        per_obj = cls[vt.order]
        off = vt.rows["offsets"]
        same = np.array([x == y for x, y in zip(per_obj, np.repeat(obj_class, np.diff(off)))], bool)
        if not same.all():
            j = int(np.flatnonzero(~same)[0])
            pos = int(vt.order[j])
            raise tab.fail(ccol, pos, f"class {show_value(per_obj[j])} differs from {show_value(obj_class[vt.codes[pos]])} "
                                      f"on {tab.where(int(first[vt.codes[pos]]))}; expected one class per object")
        labels_rows = 0
    split_all = parse_split(split_tab) if "split" in split_tab.df.columns else None
    if split_all is not None and lab_path is None:
        per = split_all[vt.order]
        bad = per != np.repeat(split_all[first], np.diff(vt.rows["offsets"]))
        if bad.any():
            pos = int(vt.order[int(np.flatnonzero(bad)[0])])
            raise tab.fail("split", pos, "differs from the split of the object's first visit; expected one split per object")

    off = vt.rows["offsets"]
    n_vis = np.diff(off)
    good = np.add.reduceat((vt.rows["err"] <= max_err).astype(np.int64), off[:-1]) if n_obj else np.zeros(0, np.int64)
    names = [f"object_id {show_value(x)}" for x in ids]
    no_class = np.array([c is None for c in obj_class], bool)
    if no_class.any():
        drops.add("object without a class (no labels row or an empty class cell)",
                  [names[i] for i in np.flatnonzero(no_class)], count=int(n_vis[no_class].sum()))
    no_good = ~no_class & (good == 0)
    if no_good.any():
        drops.add(f"object with no visit with err <= {max_err:g} mag (data.max_err)",
                  [names[i] for i in np.flatnonzero(no_good)], count=int(n_vis[no_good].sum()))
    keep = np.flatnonzero(~no_class & ~no_good)
    if keep.size == 0:
        raise DataError(f"{vis_path}: no object left to train on ({drops.total} of {len(tab.df)} visits dropped: "
                        f"{'; '.join(e['reason'] for e in drops.entries.values())})")
    n_noisy = int((n_vis[keep] - good[keep]).sum())
    if n_noisy:
        drops.add(f"visit with err > {max_err:g} mag (data.max_err)", f"{n_noisy} visits of kept objects", count=n_noisy)
    rows = {k: np.concatenate([vt.rows[k][off[i]:off[i + 1]] for i in keep]) for k in ("time", "mag", "err", "band")}
    k_off = np.concatenate([[0], np.cumsum(n_vis[keep])]).astype(np.int64)
    p = pad_ragged(k_off, rows["time"], rows["mag"], rows["err"], rows["band"], max_len, years, max_err,
                   [names[i] for i in keep])
    n_cut = int(good[keep].sum() - p["n_used"].sum())
    if n_cut:
        drops.add(f"visit outside the data.years = {years:g} window with most visits, or thinned to data.max_len = "
                  f"{max_len}", f"{n_cut} visits", count=n_cut)
    class_names = sorted({str(c) for c in obj_class[keep]})
    label = np.searchsorted(class_names, obj_class[keep].astype(str)).astype(np.int32)
    if split_all is not None:
        rows_k = split_rows[keep]
        codes = split_all[rows_k].astype(np.uint8)
        method = f"the 'split' column of {(lab_path or vis_path).name}"
    else:
        codes = stratified_split_codes(label, val_fraction, test_fraction, split_seed)
        method = (f"stratified by class, {1 - val_fraction - test_fraction:.0%}/{val_fraction:.0%}/{test_fraction:.0%} "
                  f"by object, seed {split_seed} (astroflax.data.splits.stratified_split_codes)")
    arrays = model_arrays(p["time"], p["mag"], p["err"], p["band"], p["mask"], mode)
    kept_ids = ids[keep]
    integer_ids = kept_ids.dtype.kind in "iu"
    n = len(keep)
    arrays.update({
        "label": label, "object_id": kept_ids.astype(np.int64) if integer_ids else np.arange(n, dtype=np.int64),
        "sample_weight": np.ones(n, np.float32), "real_source": np.zeros(n, np.int8), "real_label": np.full(n, -1, np.int32),
    })
    files = [vis_path.name] + ([lab_path.name] if lab_path else [])
    info: dict[str, Any] = {
        "class_names": class_names,
        "source": source_info(path, f"visits table{' + labels table' if lab_path else ''}", len(tab.df),
                              files=files, labels_rows=labels_rows, objects=n_obj,
                              time_column=next(c for c in ("time", "mjd") if c in tab.df.columns),
                              class_column=ccol),
        "split_method": method,
        "dropped": drops.to_info(),
        "visits_used": int(p["n_used"].sum()),
    }
    if not integer_ids:
        info["object_names"] = [str(x) for x in kept_ids]
    return arrays, codes, info
