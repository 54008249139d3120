"""Convert the SDSS galaxy test set (kcorrect) into ``astroflax/data/files/sdss_photoz.npz``.

Run once from the repository root:  ``python scripts/convert_sdss_photoz.py [FITS]``.

Keeps what photometric redshifts need: extinction-corrected ugriz model magnitudes, their
errors (from the inverse variances), the extinction itself, the spectroscopic redshift, the
original row number (the id) and RA/Dec, plus a fixed 70/10/20 split stratified on redshift bins.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from astropy.io import fits

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from astroflax.data.photometry import flux_to_mag, stratify_bins  # noqa: E402
from astroflax.data.splits import stratified_split_codes  # noqa: E402

SOURCE = Path("/work/shared/data/sdss_galaxies_specz/gst_tests_small.fits")
OUT = REPO / "astroflax" / "data" / "files" / "sdss_photoz.npz"
SPLIT_SEED = 20240917


def main(src: Path = SOURCE) -> None:
    with fits.open(src, memmap=False) as hdul:
        d = hdul[1].data
        flux = np.asarray(d["MODELFLUX"], np.float64)
        ivar = np.asarray(d["MODELFLUX_IVAR"], np.float64)
        ext = np.asarray(d["EXTINCTION"], np.float64)
        z = np.asarray(d["Z"], np.float64)
        ra = np.asarray(d["RA"], np.float64)
        dec = np.asarray(d["DEC"], np.float64)
    n_all = len(z)
    good = np.all((flux > 0) & (ivar > 0) & np.isfinite(flux) & np.isfinite(ivar), axis=1)
    good &= np.all(np.isfinite(ext), axis=1) & np.isfinite(z)
    print(f"{n_all} rows read; dropped {n_all - good.sum()} with a non-positive or non-finite flux/ivar; "
          f"{good.sum()} kept")
    mag, mag_err = flux_to_mag(flux[good], ivar[good])
    mag = mag - ext[good]  # Galactic-extinction corrected
    z = z[good]
    codes = stratified_split_codes(stratify_bins(z), val=0.1, test=0.2, seed=SPLIT_SEED)
    arrays = {
        "mag": mag.astype(np.float32),
        "mag_err": mag_err.astype(np.float32),
        "extinction": ext[good].astype(np.float32),
        "z": z.astype(np.float32),
        "object_id": np.flatnonzero(good).astype(np.int64),  # row number in the original FITS
        "ra": ra[good],
        "dec": dec[good],
        "split": codes,
        "split_seed": np.asarray(SPLIT_SEED, np.int64),
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(OUT, **arrays)
    counts = np.bincount(codes, minlength=3)
    print(f"wrote {OUT} ({OUT.stat().st_size / 1e6:.2f} MB): train/val/test = {counts.tolist()}, "
          f"z in [{z.min():.4f}, {z.max():.4f}]")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else SOURCE)
