"""ZTF forced-photometry light curves (one object per file, ``#key=value`` header) -> a LightCurveSet.

The format is the one of the ZTF Bright Transient Survey curves made by fpbot/ztfparsnip: a
block of ``#key=value`` header lines (``#name=``, ``#bts_class=``, ``#bts_z=``; ``-`` or empty =
unknown), then a CSV table with, among many others, the columns ``obsmjd``, ``filter`` (written
both ``ZTF g`` and ``ZTF_g`` in the same file: normalised here), ``ampl``, ``ampl.err`` and
``magzp``. The fluxes are put on the PLAsTiCC FLUXCAL scale (see :func:`fluxcal`), so the same
model, and its per-object flux scale feature, read ZTF and PLAsTiCC curves alike.

Mapping onto the model's LSST passband indices (0-5 = ugrizy): ZTF g -> 1, r -> 2, i -> 3.
Labels come from ``bts_class``; the redshift ``bts_z`` (spectroscopic) is the host redshift
metadata (``hostgal_photoz``, error 0; ``mwebv`` is not in the files and is flagged missing).
"""

from __future__ import annotations

import gzip
import re
from pathlib import Path

import numpy as np

from astroflax.data.cache import content_hash
from astroflax.data.checks import F32_TINY, MJD_RANGE, cell_error, show_value
from astroflax.data.tables import DropLog, Table, first_line
from astroflax.errors import DataError

__all__ = ["BAND_INDEX", "BTS_TO_PLASTICC", "ForcedPhotometryTable", "fluxcal", "is_forced_photometry",
           "list_files", "load_forced_photometry"]

#: ZTF filter letter -> index of the LSST passband (ugrizy) the model reads it as.
BAND_INDEX: dict[str, int] = {"g": 1, "r": 2, "i": 3}
#: The FLUXCAL zero point of PLAsTiCC (SNANA): mag = 27.5 - 2.5 log10(flux).
FLUXCAL_ZP = 27.5
#: Accepted photometric zero points (ZTF's magzp are ~24.5-26.7 mag for counts in DN).
MAGZP_RANGE = (10.0, 40.0)
#: bts_z accepted range; "-" or empty = unknown.
Z_RANGE = (0.0, 20.0)
#: BTS classifications -> PLAsTiCC class names (``data.class_names: plasticc``). SN Ib/c
#: subtypes (Ic, Ib, Ic-BL, Ibn...) are PLAsTiCC's single "SN Ibc"; all SN II subtypes are "SN II".
BTS_TO_PLASTICC: dict[str, str] = {
    "sn ia": "SN Ia", "sn ia-91bg": "SN Ia-91bg", "sn iax": "SN Iax", "sn ii": "SN II", "sn iip": "SN II",
    "sn iin": "SN II", "sn iib": "SN II", "sn ib": "SN Ibc", "sn ic": "SN Ibc", "sn ib/c": "SN Ibc",
    "sn ic-bl": "SN Ibc", "sn ibn": "SN Ibc", "sn icn": "SN Ibc", "tde": "TDE", "slsn-i": "SLSN-I",
    "agn": "AGN", "kn": "KN",
}
UNKNOWN = ("", "-", "none", "nan", "unknown", "unclassified")
_FILTER = re.compile(r"^(?:ztf)?[\s_\-]*([gri])$")
_FILE_SUFFIXES = (".csv", ".csv.gz", ".txt", ".dat")
COLUMNS = ("obsmjd", "filter", "ampl", "ampl.err", "magzp")


def fluxcal(ampl: np.ndarray, magzp: np.ndarray) -> np.ndarray:
    """``ampl`` (difference-image counts with zero point ``magzp``) on PLAsTiCC's FLUXCAL scale.

    mag = magzp - 2.5 log10(ampl) = 27.5 - 2.5 log10(flux), so flux = ampl * 10**(0.4 (27.5 - magzp)).
    Why: the transients model and its per-object ``log_flux_scale`` feature were made for PLAsTiCC
    FLUXCAL fluxes; on the same scale a ZTF curve of a given magnitude gets the same numbers. Being
    linear, the same factor converts ``ampl.err``.
    """
    return np.asarray(ampl, np.float64) * 10.0 ** (0.4 * (FLUXCAL_ZP - np.asarray(magzp, np.float64)))


def _open_text(path: Path):
    return gzip.open(path, "rt", errors="replace") if path.name.lower().endswith(".gz") else \
        path.open("r", errors="replace")


def _header(path: Path) -> tuple[dict[str, str], int]:
    """The ``#key=value`` lines at the top of ``path`` (keys lower-cased) and how many lines they take."""
    header: dict[str, str] = {}
    n = 0
    try:
        with _open_text(path) as fh:
            for line in fh:
                if not line.startswith("#"):
                    break
                n += 1
                key, eq, value = line[1:].partition("=")
                if eq:
                    header[key.strip().lower()] = value.strip()
    except (OSError, EOFError) as exc:
        raise DataError(f"{path}: cannot read: {first_line(exc)}") from exc
    return header, n


def is_forced_photometry(path: str | Path) -> bool:
    """True when ``path`` (a file, or every table file in a directory) starts with ``#key=value`` lines."""
    path = Path(path).expanduser()
    files = list_files(path, strict=False)[0] if path.is_dir() else [path]
    if not files:
        return False
    for f in files:
        try:
            header, _ = _header(f)
        except DataError:
            return False
        if not header:
            return False
    return True


def list_files(path: Path, strict: bool = True) -> tuple[list[Path], list[str]]:
    """Light-curve files of a directory (``.csv``, ``.csv.gz``, ``.txt``, ``.dat``) and the names ignored."""
    if path.is_file():
        return [path], []
    if not path.is_dir():
        raise DataError(f"{path}: no such file or directory; expected ZTF forced-photometry files")
    files, ignored = [], []
    for p in sorted(path.iterdir()):
        if p.is_file() and not p.name.startswith(".") and p.name.lower().endswith(_FILE_SUFFIXES):
            files.append(p)
        elif not p.name.startswith("."):
            ignored.append(p.name)
    if strict and not files:
        raise DataError(f"{path}: no ZTF forced-photometry files found; expected files ending "
                        f"{', '.join(_FILE_SUFFIXES)} with #key=value header lines")
    return files, ignored


class ForcedPhotometryTable(Table):
    """A forced-photometry file read as a :class:`Table`, its ``#key=value`` header kept in ``header``.

    The DataFrame index is shifted by the header lines, so ``where()`` names the file's real line.
    """

    def __init__(self, path: Path):
        header, n_header = _header(Path(path))
        super().__init__(Path(path), skiprows=n_header)
        self.header = header


def _bands(tab: ForcedPhotometryTable) -> np.ndarray:
    """Filter labels ('ZTF g', 'ZTF_g', 'g' ... any case) -> passband index; a DataError at the first other."""
    s = tab.df["filter"]
    text = s.astype("string").str.strip().str.lower().fillna("")
    letter = text.str.extract(_FILTER, expand=False)
    bad = letter.isna().to_numpy()
    if bad.any():
        pos = int(np.flatnonzero(bad)[0])
        raise tab.fail("filter", pos, f"expected a ZTF filter 'ZTF g', 'ZTF r' or 'ZTF i' (also written "
                                      f"'ZTF_g' or 'g'), got {show_value(s.iloc[pos])}", int(bad.sum()))
    return letter.map(BAND_INDEX).to_numpy(dtype=np.uint8)


def _read_file(path: Path, label_lut: dict[str, int] | None, map_plasticc: bool, require_label: bool):
    """One object: (name, mjd, flux, flux_err, band, label_text, z) with every value checked."""
    tab = ForcedPhotometryTable(path)
    tab.require(COLUMNS)
    if len(tab.df) == 0:
        raise DataError(f"{path}: the table has no rows; expected at least one observation")
    mjd = tab.numeric("obsmjd")
    tab.check_range("obsmjd", mjd, "a Modified Julian Date", *MJD_RANGE, note=" (days; a Julian Date is MJD + 2400000.5)")
    ampl = tab.numeric("ampl")
    err = tab.numeric("ampl.err")
    bad = err <= 0
    if bad.any():
        pos = int(np.flatnonzero(bad)[0])
        raise tab.fail("ampl.err", pos, f"expected a positive uncertainty, got {show_value(err[pos])}", int(bad.sum()))
    zp = tab.numeric("magzp")
    tab.check_range("magzp", zp, "a photometric zero point in mag", *MAGZP_RANGE)
    band = _bands(tab)
    flux, flux_err = fluxcal(ampl, zp), fluxcal(err, zp)
    from astroflax.data.lightcurves import FLUX_ABS_MAX

    for col, v, lo in (("ampl", flux, -FLUX_ABS_MAX), ("ampl.err", flux_err, F32_TINY)):
        tab.check_range(col, v, "a flux that is, on the FLUXCAL scale (ampl * 10**(0.4*(27.5 - magzp))),", lo,
                        FLUX_ABS_MAX, note=", i.e. not brighter than magnitude -30")
    h = tab.header
    name = h.get("name") or h.get("ztfid") or path.name.split("_")[0].split(".")[0]
    cls = h.get("bts_class", h.get("class", "")).strip()
    if cls.lower() in UNKNOWN:
        cls = ""
    if cls and map_plasticc:
        mapped = BTS_TO_PLASTICC.get(cls.lower())
        if mapped is None and require_label:
            raise cell_error(path, None, "header line #bts_class=",
                             f"class {cls!r} has no PLAsTiCC counterpart (data.class_names: plasticc); expected one "
                             f"of {sorted(set(BTS_TO_PLASTICC))}, or set data.class_names: data")
        cls = mapped or ""
    if cls and label_lut is not None and cls not in label_lut:
        if require_label:
            raise cell_error(path, None, "header line #bts_class=",
                             f"unknown class {cls!r}; expected one of {sorted(label_lut)}")
        cls = ""
    ztxt = h.get("bts_z", h.get("z", "")).strip()
    z = np.nan
    if ztxt.lower() not in UNKNOWN:
        try:
            z = float(ztxt)
        except ValueError:
            z = np.inf
        if not (Z_RANGE[0] <= z <= Z_RANGE[1]):
            raise cell_error(path, None, "header line #bts_z=",
                             f"expected a redshift in [{Z_RANGE[0]:g}, {Z_RANGE[1]:g}] or '-', got {ztxt!r}")
    return name, mjd, flux, flux_err, band, cls, z


def load_forced_photometry(path: str | Path, *, class_names: list[str] | None = None, map_plasticc: bool = False,
                           training: bool = True):
    """Read ZTF forced-photometry files (one object each) into a :class:`LightCurveSet`.

    ``class_names`` given (prediction): labels outside them become -1, as do unclassified
    objects. Otherwise the classes are the sorted distinct ``bts_class`` values (or their
    PLAsTiCC names when ``map_plasticc``: then every name of the 14 PLAsTiCC classes is kept).
    Returns the set (all objects, unclassified ones with label -1), a source description for
    ``info["source"]`` and the number of observation rows read.
    """
    from astroflax.data import lightcurves as lc

    path = Path(path).expanduser()
    files, ignored = list_files(path)
    lut = {c: i for i, c in enumerate(class_names)} if class_names is not None else None
    objs = [_read_file(f, lut, map_plasticc or (class_names is not None and class_names == lc.PLASTICC_CLASS_NAMES),
                       training and class_names is None) for f in files]
    names = [o[0] for o in objs]
    seen: dict[str, Path] = {}
    for f, n in zip(files, names):
        if n in seen:
            raise DataError(f"{f}: object name {n!r} also in {seen[n].name}; expected one file per object")
        seen[n] = f
    if class_names is None:
        class_names = list(lc.PLASTICC_CLASS_NAMES) if map_plasticc else sorted({o[5] for o in objs if o[5]})
        lut = {c: i for i, c in enumerate(class_names)}
    labels = np.array([lut[o[5]] if o[5] else -1 for o in objs], np.int32)
    lengths = np.array([len(o[1]) for o in objs], np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    order = [np.argsort(o[1], kind="stable") for o in objs]  # time order within each object
    cat = lambda k, dt: np.concatenate([o[k][s] for o, s in zip(objs, order)]).astype(dt)
    mjd, flux, ferr, band = cat(1, np.float64), cat(2, np.float32), cat(3, np.float32), cat(4, np.uint8)
    detected = (np.abs(flux.astype(np.float64)) / ferr >= lc.DETECTION_SNR).astype(np.uint8)
    z = np.array([o[6] for o in objs], np.float64)
    meta_missing = np.stack([np.isnan(z), np.isnan(z), np.ones(len(z), bool)], axis=1)
    meta = np.stack([np.nan_to_num(z), np.zeros(len(z)), np.zeros(len(z))], axis=1).astype(np.float32)
    object_id = np.arange(len(objs), dtype=np.int64)
    version = content_hash(offsets, mjd, flux, ferr, band, labels, meta, meta_missing, names, class_names, length=12)
    lcs = lc.LightCurveSet(
        object_id=object_id, offsets=offsets, mjd=mjd, flux=flux, flux_err=ferr, passband=band, detected=detected,
        labels=labels, meta=meta, meta_names=list(lc.META_COLUMNS), meta_missing=meta_missing, split=None,
        class_names=list(class_names), version=version, source=str(path),
        extra={"hostgal_specz": z.astype(np.float32)},
    )
    source = {"files": len(files), "ignored_files": ignored, "objects": len(objs),
              "flux": "FLUXCAL (zero point 27.5) = ampl * 10**(0.4*(27.5 - magzp))",
              "bands": "ZTF g -> LSST g (1), r -> r (2), i -> i (3)", "class_column": "#bts_class= header",
              "redshift": "#bts_z= header -> hostgal_photoz (error 0)"}
    return lcs, names, source, int(offsets[-1])


def drop_unlabelled(lcs, names: list[str], drops: DropLog, reason: str):
    """The objects with a label; the others recorded in ``drops`` with ``reason`` (their
    observation rows counted, the first objects named), so no row is dropped silently."""
    keep = np.flatnonzero(lcs.labels >= 0)
    gone = np.flatnonzero(lcs.labels < 0)
    if gone.size:
        drops.add(reason, [f"{names[i]} ({lcs.lengths[i]} observations)" for i in gone],
                  count=int(lcs.lengths[gone].sum()))
    return lcs.select(keep), [names[i] for i in keep]
