"""Redshift augmentation of extragalactic light curves: each training object re-observed farther away.

The PLAsTiCC training set was chosen for spectroscopic follow-up, so it is bright and nearby;
the objects a survey finds are mostly fainter and farther. avocado (Boone 2019, AJ 158, 257),
the challenge winner, gained most from re-simulating each training object at other redshifts.
:func:`augment` does the same for a :class:`~astroflax.data.lightcurves.LightCurveSet`:

1. a new redshift ``z'`` per copy, log-uniform in ``1 + z`` between ``0.95 z`` and the smaller of
   ``z + 1.5`` and ``1.5 (1 + z) - 1``, capped at ``z_max`` (mostly farther, a little nearer);
2. the object is observed with its own cadence and bands: an observation at time ``t`` in band
   ``b`` sees the rest-frame light emitted at ``t0 + (t - t0) / s`` (time dilation, ``s = (1 +
   z') / (1 + z)``, ``t0`` the time of the peak) and wavelength ``lambda_b / s``;
3. that light is read off the original curve by interpolation: linearly in time within each band,
   then linearly in log wavelength between the two bands that bracket ``lambda_b / s``. An
   observation whose source time or wavelength falls outside what was observed is dropped;
4. fluxes are scaled by ``(d_L(z) / d_L(z'))^2`` (flat LambdaCDM, H0 = 70, Omega_m = 0.3;
   astropy), then noise is added so that each observation keeps the original epoch's flux error
   (the survey's depth); ``detected`` is recomputed as S/N > 5;
5. host photo-z and its error are redrawn around ``z'`` with the object's relative error.

Why interpolation and not avocado's Gaussian process: the 2-D GP (time x wavelength) is fitted
per object and per copy; linear interpolation between observed points is a few milliseconds
for all copies of an object in numpy, needs no hyperparameters, and cannot invent structure
between epochs. What it cannot do is extrapolate blueward of u or beyond the first and last
epochs; those observations are dropped rather than guessed.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

from astroflax.data.lightcurves import LightCurveSet

__all__ = ["LSST_WAVELENGTH", "augment", "draw_redshifts", "reobserve"]

#: Effective wavelengths of LSST's u g r i z y (Angstrom), the passbands 0-5 of PLAsTiCC.
LSST_WAVELENGTH = np.array([3671.0, 4827.0, 6223.0, 7546.0, 8691.0, 9712.0])
DETECTION_SNR = 5.0


@functools.lru_cache(maxsize=1)
def _distance_table() -> tuple[np.ndarray, np.ndarray]:
    from astropy.cosmology import FlatLambdaCDM

    z = np.concatenate([[1e-4], np.geomspace(1e-3, 10.0, 2000)])
    return z, FlatLambdaCDM(H0=70.0, Om0=0.3).luminosity_distance(z).value  # Mpc


def luminosity_distance(z: np.ndarray) -> np.ndarray:
    """Luminosity distance in Mpc (tabulated from astropy's flat LambdaCDM, log-interpolated)."""
    zt, dl = _distance_table()
    return np.exp(np.interp(np.log(np.maximum(z, 1e-4)), np.log(zt), np.log(dl)))


def draw_redshifts(z: float, n: int, rng: np.random.Generator, z_max: float = 3.0) -> np.ndarray:
    """``n`` new redshifts for an object at ``z``: log-uniform in 1 + z (see the module docstring)."""
    lo = 0.95 * z
    hi = min(z + 1.5, 1.5 * (1.0 + z) - 1.0, z_max)
    hi = max(hi, lo)
    return np.exp(rng.uniform(np.log1p(lo), np.log1p(hi), n)) - 1.0


def reobserve(mjd: np.ndarray, flux: np.ndarray, flux_err: np.ndarray, band: np.ndarray, z: float, z_new: float,
              rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One object's curve seen at ``z_new`` with its own cadence: ``(mjd, flux, flux_err, band,
    detected)`` of the observations that could be interpolated (possibly none)."""
    s = (1.0 + z_new) / (1.0 + z)
    snr = flux / np.maximum(flux_err, 1e-12)
    t0 = mjd[int(np.argmax(snr))]
    t_src = t0 + (mjd - t0) / s
    lam_src = LSST_WAVELENGTH[band] / s
    loglam = np.log(LSST_WAVELENGTH)
    pos = np.interp(np.log(lam_src), loglam, np.arange(len(loglam)), left=-1.0, right=np.inf)
    keep = (pos >= 0) & np.isfinite(pos)
    lo = np.clip(np.floor(np.where(keep, pos, 0.0)).astype(np.int64), 0, len(loglam) - 1)
    hi = np.minimum(lo + 1, len(loglam) - 1)
    w = np.where(keep, pos - lo, 0.0)
    f_src = np.zeros(len(mjd))
    e_src = np.zeros(len(mjd))
    for side, weight in ((lo, 1.0 - w), (hi, w)):
        for b in np.unique(side[keep]):
            rows = keep & (side == b) & (weight > 0)
            sel = band == b
            if not rows.any():
                continue
            if sel.sum() < 2:
                keep &= ~rows
                continue
            tb = mjd[sel]
            inside = (t_src[rows] >= tb[0]) & (t_src[rows] <= tb[-1])
            idx = np.flatnonzero(rows)
            keep[idx[~inside]] = False
            f_src[idx] += weight[idx] * np.interp(t_src[idx], tb, flux[sel])
            e_src[idx] += weight[idx] * np.interp(t_src[idx], tb, flux_err[sel])
    scale = (luminosity_distance(np.array([z]))[0] / luminosity_distance(np.array([z_new]))[0]) ** 2
    f_new = f_src[keep] * scale
    e_scaled = e_src[keep] * scale
    e_obs = flux_err[keep]
    extra = np.sqrt(np.maximum(e_obs**2 - e_scaled**2, 0.0))
    f_new = f_new + rng.standard_normal(len(f_new)) * extra
    e_new = np.maximum(e_obs, e_scaled)
    detected = (np.abs(f_new) / np.maximum(e_new, 1e-12) > DETECTION_SNR).astype(np.uint8)
    return mjd[keep], f_new.astype(np.float32), e_new.astype(np.float32), band[keep], detected


def augment(lcs: LightCurveSet, index: np.ndarray, copies: int, rng: np.random.Generator, *, z_max: float = 3.0,
            min_detected: int = 2) -> tuple[LightCurveSet, np.ndarray]:
    """``lcs`` with up to ``copies`` re-observed copies of each extragalactic object of ``index``
    appended (labels and split kept), and the indices of the appended objects.

    The redshift is ``extra['hostgal_specz']`` where known (> 0), else the host photo-z; objects
    at z = 0 (galactic) are not copied, nor copies with fewer than ``min_detected`` detections.
    """
    specz = lcs.extra.get("hostgal_specz")
    photoz = lcs.meta[:, lcs.meta_names.index("hostgal_photoz")] if "hostgal_photoz" in lcs.meta_names else None
    if photoz is None and specz is None:
        return lcs, np.zeros(0, np.int64)
    pz_col = lcs.meta_names.index("hostgal_photoz") if photoz is not None else None
    pe_col = lcs.meta_names.index("hostgal_photoz_err") if "hostgal_photoz_err" in lcs.meta_names else None
    parts: dict[str, list] = {k: [] for k in ("mjd", "flux", "flux_err", "passband", "detected")}
    lengths, source, new_z = [], [], []
    for i in np.asarray(index, np.int64):
        z = float(specz[i]) if specz is not None and specz[i] > 0 else float(photoz[i]) if photoz is not None else 0.0
        if not z > 0:
            continue
        rows = slice(int(lcs.offsets[i]), int(lcs.offsets[i + 1]))
        curve = (lcs.mjd[rows], lcs.flux[rows].astype(np.float64), lcs.flux_err[rows].astype(np.float64),
                 lcs.passband[rows].astype(np.int64))
        for z_new in draw_redshifts(z, copies, rng, z_max):
            t, f, e, b, d = reobserve(*curve, z, float(z_new), rng)
            if int(d.sum()) < min_detected:
                continue
            for key, v in zip(("mjd", "flux", "flux_err", "passband", "detected"), (t, f, e, b.astype(np.uint8), d)):
                parts[key].append(v)
            lengths.append(len(t))
            source.append(i)
            new_z.append(z_new)
    if not source:
        return lcs, np.zeros(0, np.int64)
    src = np.asarray(source, np.int64)
    z_arr = np.asarray(new_z)
    meta = lcs.meta[src].copy()
    if pz_col is not None:
        old = meta[:, pz_col].astype(np.float64)
        rel = (meta[:, pe_col] / np.maximum(1.0 + old, 1e-6)) if pe_col is not None else np.zeros(len(src))
        err = rel * (1.0 + z_arr)
        meta[:, pz_col] = np.maximum(z_arr + rng.standard_normal(len(src)) * err, 1e-3)
        if pe_col is not None:
            meta[:, pe_col] = err
    n0 = len(lcs)
    first_id = int(lcs.object_id.max(initial=0)) + 1
    extra = {k: np.concatenate([v, v[src]]) for k, v in lcs.extra.items()}
    if "hostgal_specz" in extra:
        extra["hostgal_specz"][n0:] = z_arr
    if "distmod" in extra:
        extra["distmod"][n0:] = 5.0 * np.log10(luminosity_distance(z_arr) * 1e5)
    out = dataclasses.replace(
        lcs,
        object_id=np.concatenate([lcs.object_id, first_id + np.arange(len(src), dtype=np.int64)]),
        offsets=np.concatenate([lcs.offsets, lcs.offsets[-1] + np.cumsum(lengths)]).astype(np.int64),
        mjd=np.concatenate([lcs.mjd, *parts["mjd"]]),
        flux=np.concatenate([lcs.flux, *parts["flux"]]).astype(np.float32),
        flux_err=np.concatenate([lcs.flux_err, *parts["flux_err"]]).astype(np.float32),
        passband=np.concatenate([lcs.passband, *parts["passband"]]).astype(np.uint8),
        detected=np.concatenate([lcs.detected, *parts["detected"]]).astype(np.uint8),
        labels=np.concatenate([lcs.labels, lcs.labels[src]]),
        meta=np.concatenate([lcs.meta, meta]).astype(np.float32),
        meta_missing=np.concatenate([lcs.meta_missing, lcs.meta_missing[src]]),
        split=None if lcs.split is None else np.concatenate([lcs.split, lcs.split[src]]),
        extra=extra,
    )
    return out, n0 + np.arange(len(src), dtype=np.int64)
