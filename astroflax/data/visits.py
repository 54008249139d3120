"""Magnitude light curves as visits (one row per observation) -> padded ugriz model arrays.

Used by the ``variables`` task for the user's visit tables (:func:`read_table`) and for the
bundled real MACHO/ASAS curves (:func:`real_smoke_arrays`). Model inputs per object:
``time`` = days since the first kept visit; ``flux`` = -(mag - median mag) (brighter =
positive; magnitudes keep amplitudes comparable across objects); ``flux_err`` = mag error.
Curves longer than the simulated survey keep the ``years``-long window with most visits and
are thinned evenly to ``max_len`` visits (:func:`pad_ragged`).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np

from astroflax.data import variable_sim as vs
from astroflax.data.checks import F32_MAX, F32_TINY, MAG_RANGE, MJD_RANGE, TIME_RANGE
from astroflax.data.checks import show_value
from astroflax.data.tables import Table
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
    cat = lambda a, b: np.concatenate([a, b])  # noqa: E731
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
    """Validate a CSV/Parquet table of visits; returns flat time-sorted rows + offsets and the object ids.

    Columns (case-insensitive): ``object_id``; ``time`` or ``mjd`` (days); ``band`` (u g r i z or
    0-4; Johnson/MACHO B and V -> g, R -> r, I -> i, U -> u as names are case-insensitive);
    ``mag`` or ``flux`` (flux > 0, converted to mag); ``err`` (alias ``mag_err``/``flux_err``, the
    error of the given quantity, > 0).
    """
    import pandas as pd

    path = Path(path).expanduser()
    if not path.exists():
        raise DataError(f"{path}: no such file; expected a CSV or Parquet table of visits")
    if path.is_dir():
        raise DataError(f"{path}: is a directory; expected a CSV or Parquet table with columns object_id, time, band, mag, err")
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
    return rows, uniques
