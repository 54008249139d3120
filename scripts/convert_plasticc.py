"""One-off converter: PLAsTiCC training set (CSV) -> astroflax/data/files/plasticc_train.npz.

Usage::

    python scripts/convert_plasticc.py [--src DIR] [--out FILE]

Input (``--src``, default ``/work/shared/data/plasticc_train``):

* ``plasticc_train_lightcurves.csv.gz`` -- object_id, mjd, passband (0-5 = ugrizy),
  flux, flux_err, detected_bool; 1,421,705 rows.
* ``plasticc_train_metadata.csv`` -- 7,848 objects (values padded with leading
  spaces, hence ``skipinitialspace=True``).

Output: ONE ``np.savez_compressed`` file (no object arrays; loads with
``allow_pickle=False``) holding a ragged representation, objects sorted by
object_id and observations sorted by mjd inside each object:

==================  ========  ======  =====================================================
key                 dtype     shape   meaning
==================  ========  ======  =====================================================
object_id           int64     (N,)    PLAsTiCC object id
offsets             int64     (N+1,)  object i owns flat rows offsets[i]:offsets[i+1]
mjd_delta_1e4       int32     (T,)    MJD in units of 1e-4 day, delta-encoded over the
                                      flat array (first value absolute). Decode exactly:
                                      ``mjd = np.cumsum(d, dtype=np.int64) / 1e4``
flux                float32   (T,)
flux_err            float32   (T,)
passband            uint8     (T,)    0..5 = u g r i z y
detected            uint8     (T,)    detected_bool
target              int16     (N,)    PLAsTiCC class id (6, 15, ..., 95)
hostgal_photoz      float32   (N,)
hostgal_photoz_err  float32   (N,)
hostgal_specz       float32   (N,)
distmod             float32   (N,)    -9 for galactic objects (as in the source)
mwebv               float32   (N,)
ddf                 uint8     (N,)    1 = Deep Drilling Field
split               uint8     (N,)    0 train, 1 val, 2 test
version             <U12      ()      first 12 hex digits of the sha256 of the content
==================  ========  ======  =====================================================

The source MJDs have exactly 4 decimals, so the 1e-4-day integer encoding is
lossless (checked below); it is ~1.2 MB smaller than float64 after compression.
The ``true_*`` simulation columns, ``ra``/``decl``, ``libid_cadence`` and
``tflux_*`` are deliberately NOT copied (they leak the truth or are unused).

Split algorithm (by object, stratified by class, seed 20181001)::

    rng = np.random.default_rng(20181001)
    for cls in sorted(unique(target)):                   # ascending class id
        idx = indices of objects of class cls, in ascending object_id order
        idx = rng.permutation(idx)
        n_val  = max(1, round(0.10 * len(idx)))
        n_test = max(1, round(0.20 * len(idx)))
        split[idx[:n_val]] = 1                           # val
        split[idx[n_val:n_val + n_test]] = 2             # test
        split[idx[n_val + n_test:]] = 0                  # train

(``round`` is Python's round-half-to-even.) One Generator is consumed in class
order, so the split is a pure function of the data and the seed.
"""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

import numpy as np
import pandas as pd

from astroflax.data.splits import stratified_split_codes

SEED = 20181001
SPLIT_FRACTIONS = {"val": 0.10, "test": 0.20}
REPO = Path(__file__).resolve().parents[1]
DEFAULT_SRC = Path("/work/shared/data/plasticc_train")
DEFAULT_OUT = REPO / "astroflax" / "data" / "files" / "plasticc_train.npz"

# Order matters for the content hash.
CONTENT_KEYS = (
    "object_id", "offsets", "mjd_delta_1e4", "flux", "flux_err", "passband", "detected",
    "target", "hostgal_photoz", "hostgal_photoz_err", "hostgal_specz", "distmod", "mwebv",
    "ddf", "split",
)


def stratified_split(target: np.ndarray, seed: int = SEED) -> np.ndarray:
    """Return uint8 split codes (0 train / 1 val / 2 test); see module docstring."""
    return stratified_split_codes(target, SPLIT_FRACTIONS["val"], SPLIT_FRACTIONS["test"], seed)


def content_version(arrays: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for k in CONTENT_KEYS:
        a = np.ascontiguousarray(arrays[k])
        h.update(k.encode())
        h.update(str(a.dtype).encode())
        h.update(str(a.shape).encode())
        h.update(a.tobytes())
    return h.hexdigest()[:12]


def convert(src: Path, out: Path) -> dict[str, np.ndarray]:
    lc = pd.read_csv(
        src / "plasticc_train_lightcurves.csv.gz",
        dtype={"object_id": np.int64, "mjd": np.float64, "passband": np.int64,
               "flux": np.float64, "flux_err": np.float64, "detected_bool": np.int64},
    )
    meta = pd.read_csv(src / "plasticc_train_metadata.csv", skipinitialspace=True)

    # --- sanity checks on the source --------------------------------------
    assert lc[["mjd", "flux", "flux_err"]].notna().all().all(), "NaN in light curves"
    assert (lc.flux_err >= 0).all(), "negative flux_err"
    assert lc.passband.between(0, 5).all(), "passband outside 0..5"
    assert lc.detected_bool.isin([0, 1]).all(), "detected_bool not 0/1"
    assert meta.object_id.is_unique, "duplicate object_id in metadata"
    assert set(lc.object_id.unique()) == set(meta.object_id), "object sets differ"

    # --- sort: objects by id, observations by mjd (stable) ----------------
    lc = lc.sort_values(["object_id", "mjd"], kind="stable").reset_index(drop=True)
    meta = meta.sort_values("object_id", kind="stable").reset_index(drop=True)

    object_id = meta.object_id.to_numpy(np.int64)
    lc_ids = lc.object_id.to_numpy(np.int64)
    starts = np.searchsorted(lc_ids, object_id, side="left")
    ends = np.searchsorted(lc_ids, object_id, side="right")
    assert np.array_equal(starts[1:], ends[:-1]) and starts[0] == 0 and ends[-1] == len(lc)
    offsets = np.concatenate([starts, ends[-1:]]).astype(np.int64)

    mjd = lc.mjd.to_numpy(np.float64)
    ticks = np.rint(mjd * 1e4).astype(np.int64)
    assert np.array_equal(ticks / 1e4, mjd), "mjd is not exactly representable in 1e-4 day"
    delta = np.diff(ticks, prepend=0)
    assert np.abs(delta).max() < 2**31 - 1
    delta = delta.astype(np.int32)
    assert np.array_equal(np.cumsum(delta, dtype=np.int64), ticks)

    target = meta.target.to_numpy(np.int64)
    arrays: dict[str, np.ndarray] = {
        "object_id": object_id,
        "offsets": offsets,
        "mjd_delta_1e4": delta,
        "flux": lc.flux.to_numpy(np.float32),
        "flux_err": lc.flux_err.to_numpy(np.float32),
        "passband": lc.passband.to_numpy(np.uint8),
        "detected": lc.detected_bool.to_numpy(np.uint8),
        "target": target.astype(np.int16),
        "hostgal_photoz": meta.hostgal_photoz.to_numpy(np.float32),
        "hostgal_photoz_err": meta.hostgal_photoz_err.to_numpy(np.float32),
        "hostgal_specz": meta.hostgal_specz.to_numpy(np.float32),
        "distmod": meta.distmod.to_numpy(np.float32),
        "mwebv": meta.mwebv.to_numpy(np.float32),
        "ddf": meta.ddf_bool.to_numpy(np.uint8),
        "split": stratified_split(target),
    }
    arrays["version"] = np.array(content_version(arrays))  # 0-d '<U12'

    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out, **arrays)

    # --- round-trip check --------------------------------------------------
    with np.load(out, allow_pickle=False) as z:
        for k, v in arrays.items():
            assert np.array_equal(z[k], v), k
    return arrays


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--src", type=Path, default=DEFAULT_SRC)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args()
    arrays = convert(args.src, args.out)
    n = len(arrays["object_id"])
    counts = np.bincount(arrays["split"], minlength=3)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.2f} MB), {n} objects, "
          f"{arrays['offsets'][-1]} observations, version {arrays['version']}")
    print(f"split train/val/test = {counts.tolist()} = {(counts / n).round(4).tolist()}")


if __name__ == "__main__":
    main()
