"""Stellar spectra: Pickles templates, the model grid and a vectorised spectrum simulator.

The bundled templates (``files/pickles_dwarfs.npz``, see ``PROVENANCE_pickles.md``) sit on a
log-spaced "working" grid (3500-9500 A, 2048 pixels) so that a radial velocity is a shift and a
Gaussian line-spread function (LSF) of constant resolving power R is a convolution with a kernel
of constant width. :func:`simulate` turns (template pair, mix weight, RV, R, E(B-V), S/N) into
observed, continuum-normalised spectra on the model grid, for many spectra at once with numpy;
everything random comes from one ``numpy.random.Generator``, so a seed fixes the data set.

Spectral-type scale (``scale``): ``class_index + subtype / 10`` with O=0 B=1 A=2 F=3 G=4 K=5
M=6, so O5 = 0.5, G2 = 4.2, M6 = 6.6; one subtype = 0.1 on this scale.
"""

from __future__ import annotations

import dataclasses
import functools
import warnings
from pathlib import Path

import numpy as np
import scipy.fft

from astroflax.data import spectra_effects as fx
from astroflax.data.cache import content_hash

FILES = Path(__file__).parent / "files"
TEMPLATES_FILE = FILES / "pickles_dwarfs.npz"
CLASS_NAMES = tuple("OBAFGKM")
C_KMS = 299_792.458
R_V = 3.1
#: Accepted wavelengths (Angstrom): from the far UV (10 A) to the far infrared (1e7 A = 1 mm).
WAVE_RANGE = (10.0, 1e7)

__all__ = [
    "CLASS_NAMES",
    "Templates",
    "load_templates",
    "model_grid",
    "extinction_factor",
    "normalise_continuum",
    "simulate",
    "sample_mixtures",
    "spectral_type",
]


# ----------------------------------------------------------------------------- templates


@dataclasses.dataclass(frozen=True)
class Templates:
    """Template fluxes ``(T, P)`` on the log-spaced ``wavelength`` grid (Angstrom) and their labels."""

    wavelength: np.ndarray
    flux: np.ndarray
    name: np.ndarray
    class_index: np.ndarray
    subtype: np.ndarray
    scale: np.ndarray
    metallicity: np.ndarray
    digest: str

    def __len__(self) -> int:
        return len(self.name)

    @property
    def base_name(self) -> np.ndarray:
        """Names without the metallicity suffix (``G5V-ZPOOR`` -> ``G5V``)."""
        return np.array([n.split("-")[0] for n in self.name])


@functools.cache
def load_templates(path: str | Path = TEMPLATES_FILE) -> Templates:
    """The bundled Pickles dwarfs, each scaled to median flux 1 (so that mixes weight them equally)."""
    path = Path(path)
    with np.load(path, allow_pickle=False) as d:
        flux = d["flux"].astype(np.float32)
        flux = flux / np.median(flux, axis=1, keepdims=True)
        out = Templates(
            wavelength=d["wavelength"].astype(np.float64),
            flux=flux,
            name=d["name"].astype(str),
            class_index=d["class_index"].astype(np.int32),
            subtype=d["subtype"].astype(np.float32),
            scale=d["scale"].astype(np.float32),
            metallicity=d["metallicity"].astype(np.int8),
            digest=content_hash(path.read_bytes(), length=12),
        )
    return out


def model_grid(wave_min: float = 3800.0, wave_max: float = 9000.0, num_pixels: int = 1024) -> np.ndarray:
    """The model's input wavelengths: ``num_pixels`` log-spaced pixel centres (Angstrom)."""
    return np.exp(np.linspace(np.log(wave_min), np.log(wave_max), num_pixels))


def _pixel_edges(grid: np.ndarray) -> np.ndarray:
    """Edges of log-spaced pixels (geometric midpoints, extrapolated by half a pixel at both ends)."""
    ln = np.log(grid)
    half = 0.5 * (ln[1] - ln[0])
    return np.exp(np.concatenate([[ln[0] - half], 0.5 * (ln[1:] + ln[:-1]), [ln[-1] + half]]))


def spectral_type(scale: float, class_index: int | None = None) -> str:
    """``4.23 -> 'G2.3'``. With ``class_index`` the subtype is clipped into that class (0.0-9.9)."""
    cls = int(np.clip(np.floor(scale + 1e-6), 0, 6)) if class_index is None else int(class_index)
    sub = float(np.clip((scale - cls) * 10.0, 0.0, 9.9))
    return f"{CLASS_NAMES[cls]}{sub:.1f}"


# ----------------------------------------------------------------------------- physics


def extinction_factor(grid: np.ndarray, ebv: np.ndarray, r_v: np.ndarray | float = R_V) -> np.ndarray:
    """``10^(-0.4 A(lambda))`` ``(N, P)`` for E(B-V) ``ebv`` and R_V ``r_v`` (Fitzpatrick 1999 via
    ``dust_extinction``; A(lambda) = E(B-V) R_V k(lambda; R_V))."""
    ebv = np.atleast_1d(np.asarray(ebv, np.float64))
    r_v = np.broadcast_to(np.asarray(r_v, np.float64), ebv.shape)
    k = fx.extinction_curves(grid, r_v)
    return np.exp(-0.4 * np.log(10.0) * (ebv * r_v)[:, None] * k).astype(np.float32)


def normalise_continuum(flux: np.ndarray, wavelength: np.ndarray, method: str = "median",
                        mask: np.ndarray | None = None) -> np.ndarray:
    """Remove the flux scale (``median``: divide by the median) or the continuum shape too.

    ``mask`` (1 = covered): uncovered pixels are filled with the median of the covered ones
    before normalising and set to 1 (the continuum level) after, the convention the model's
    coverage channel is trained with, for simulated and user spectra alike.

    ``poly``: divide by a cubic in log-wavelength fitted to the upper envelope (three passes,
    each dropping pixels more than 1 sigma below the fit, i.e. absorption lines), vectorised over
    rows. ``median`` keeps the colour (temperature) information; ``poly`` keeps only lines.
    """
    flux = np.asarray(flux, dtype=np.float32)
    if mask is not None:
        covered = np.asarray(mask) > 0
        with np.errstate(invalid="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a row with no covered pixel stays NaN
            med_cov = np.nanmedian(np.where(covered, flux, np.nan), axis=-1, keepdims=True)
        out = normalise_continuum(np.where(covered, flux, med_cov), wavelength, method)
        return np.where(covered, out, 1.0).astype(np.float32)
    med = np.median(flux, axis=-1, keepdims=True)
    med = np.where(np.abs(med) > 0, med, 1.0)
    if method == "median":
        return (flux / med).astype(np.float32)
    if method != "poly":
        raise ValueError(f"normalisation method must be 'median' or 'poly', got {method!r}")
    f = (flux / med).astype(np.float64)
    t = np.linspace(-1.0, 1.0, flux.shape[-1])
    basis = np.polynomial.legendre.legvander(t, 3)  # (P, 4)
    w = np.ones_like(f)
    for _ in range(3):
        ata = np.einsum("np,pi,pj->nij", w, basis, basis) + 1e-9 * np.eye(4)
        atb = np.einsum("np,pi,np->ni", w, basis, f)
        fit = np.einsum("ni,pi->np", np.linalg.solve(ata, atb[..., None])[..., 0], basis)
        resid = f - fit
        sd = np.sqrt(np.sum(w * resid**2, axis=-1, keepdims=True) / np.maximum(w.sum(-1, keepdims=True), 1))
        w = (resid > -sd).astype(np.float64)
    fit = np.where(np.abs(fit) > 1e-3, fit, 1e-3)
    return (f / fit).astype(np.float32)


def simulate(
    templates: Templates | tuple[np.ndarray, np.ndarray],
    idx_a: np.ndarray,
    idx_b: np.ndarray,
    weight: np.ndarray,
    rv: np.ndarray,
    resolution: np.ndarray,
    ebv: np.ndarray,
    snr: np.ndarray,
    grid: np.ndarray,
    rng: np.random.Generator | None,
    normalise: str | None = "median",
    chunk: int = 1024,
    effects: fx.Effects | None = None,
) -> np.ndarray:
    """Observed spectra ``(N, len(grid))`` float32, one per entry of the parameter arrays.

    Per spectrum: mix ``(1 - weight) * T[idx_a] + weight * T[idx_b]`` on the log working grid;
    convolve with a Gaussian LSF of FWHM lambda/R times a box of one model pixel (pixel
    integration), both as one transfer function in Fourier space (edge-padded, so no wrap-around);
    Doppler shift by ``rv`` km/s (relativistic) while interpolating onto ``grid``; redden by
    ``ebv`` (F99 through ``dust_extinction``, R_V = 3.1 or the effects' R_V) at the observed
    wavelength; add Gaussian noise whose sigma follows photon statistics (sigma^2 ~ flux + 1% of
    the median) scaled so that median(flux / sigma) = ``snr`` exactly (``snr`` <= 0 or ``rng``
    None: no noise); finally :func:`normalise_continuum` (``normalise`` None: skip).

    ``effects`` (:mod:`astroflax.data.spectra_effects`) adds what a survey does on top: an LSF
    whose R changes across the window, a wavelength-calibration error, telluric bands, a smooth
    flux-calibration error (all before the noise), sky-line residuals (after it, in units of
    the noise), and uncovered pixels (``effects.mask``; set to 1 after normalising).
    """
    if isinstance(templates, Templates):
        wave, tflux = templates.wavelength, templates.flux
    else:
        wave, tflux = templates
    ln0 = np.log(wave[0])
    dln = (np.log(wave[-1]) - ln0) / (len(wave) - 1)
    grid = np.asarray(grid, dtype=np.float64)
    n, p = len(idx_a), len(grid)
    if effects is not None and (len(effects) != n or effects.mask.shape[1] != p):
        raise ValueError(f"effects are for {len(effects)} spectra of {effects.mask.shape[1]} pixels, "
                         f"not {n} of {p}")
    beta_max = float(np.max(np.abs(rv), initial=0.0)) / C_KMS
    shift_max = 0.0 if effects is None else float(np.max(np.abs(effects.wavecal).sum(axis=1), initial=0.0))
    if ((grid[0] - shift_max) / (1 - beta_max) < wave[0] * (1 + beta_max)
            or (grid[-1] + shift_max) * (1 + beta_max) > wave[-1] * (1 - beta_max)):
        raise ValueError(
            f"model grid {grid[0]:.0f}-{grid[-1]:.0f} A plus |RV| <= {beta_max * C_KMS:.0f} km/s "
            f"and wavelength errors <= {shift_max:.1f} A exceeds the templates' {wave[0]:.0f}-{wave[-1]:.0f} A"
        )
    out = np.empty((n, p), np.float32)
    pad = 96
    nfft = len(wave) + 2 * pad
    freq = np.fft.rfftfreq(nfft).astype(np.float32)  # cycles per working pixel
    pix_model = np.log(grid[-1] / grid[0]) / (p - 1) / dln  # model pixel in working pixels
    box = np.sinc(freq * pix_model).astype(np.float32)
    grid_pos = ((np.log(grid) - ln0) / dln).astype(np.float32)  # grid in working pixels
    # Where each working pixel lies across the window, 0 (blue end) to 1 (red end): the LSF blend.
    blend = np.clip((np.log(wave) - np.log(grid[0])) / np.log(grid[-1] / grid[0]), 0.0, 1.0).astype(np.float32)
    t_win = fx.legendre_t(p)
    calib_basis = np.polynomial.legendre.legvander(t_win, 3)[:, 1:]  # (P, 3): degrees 1-3
    tell = fx.telluric_log_transmission(grid).astype(np.float32)
    pixel_aa = grid * np.log(grid[-1] / grid[0]) / (p - 1)  # pixel width in Angstrom

    def smooth(spectra_fft: np.ndarray, sig: np.ndarray) -> np.ndarray:
        arg = (np.pi * sig.astype(np.float32))[:, None] * freq[None, :]
        return scipy.fft.irfft(spectra_fft * (np.exp(-2.0 * arg * arg) * box[None, :]), n=nfft, axis=1)[:, pad:-pad]

    for s in range(0, n, chunk):
        sl = slice(s, min(s + chunk, n))
        eff = None if effects is None else effects.take(sl)
        w = np.asarray(weight[sl], np.float32)[:, None]
        f = (1.0 - w) * tflux[idx_a[sl]] + w * tflux[idx_b[sl]]
        # LSF: FWHM = lambda / R  ->  sigma in ln(lambda) = 1 / (2.3548 R), in working pixels / dln.
        res = np.asarray(resolution[sl], np.float64)
        sigma = 1.0 / (2.0 * np.sqrt(2.0 * np.log(2.0)) * res) / dln
        fp = scipy.fft.rfft(np.pad(f.astype(np.float32), ((0, 0), (pad, pad)), mode="edge"), axis=1)
        if eff is not None and np.any(eff.lsf_tilt != 0):
            # R changes across the window: R_blue = R e^(-tilt/2), R_red = R e^(tilt/2), blended linearly.
            half = 0.5 * eff.lsf_tilt
            f = smooth(fp, sigma * np.exp(half)) * (1.0 - blend) + smooth(fp, sigma * np.exp(-half)) * blend
        else:
            f = smooth(fp, sigma)
        # Doppler: observed lambda on the grid came from rest lambda / (1 + z); a wavelength-
        # calibration error delta means the pixel labelled lambda saw lambda - delta.
        beta = np.asarray(rv[sl], np.float64) / C_KMS
        ln1z = 0.5 * np.log((1.0 + beta) / (1.0 - beta))
        if eff is not None and np.any(eff.wavecal != 0):
            delta = eff.wavecal[:, :1] + eff.wavecal[:, 1:] * t_win[None, :]
            pos = ((np.log(grid[None, :] - delta) - ln0) / dln - (ln1z / dln)[:, None]).astype(np.float32)
        else:
            pos = grid_pos[None, :] - (ln1z / dln).astype(np.float32)[:, None]
        i0 = np.clip(np.floor(pos).astype(np.int64), 0, len(wave) - 2)
        frac = (pos - i0).astype(np.float32)
        f = np.take_along_axis(f, i0, 1) * (1.0 - frac) + np.take_along_axis(f, i0 + 1, 1) * frac
        f = f * extinction_factor(grid, ebv[sl], R_V if eff is None else eff.r_v)
        if eff is not None:
            f = f * np.exp(eff.telluric.astype(np.float32)[:, None] * tell[None, :])
            f = f * np.exp(eff.fluxcal @ calib_basis.T).astype(np.float32)
        sn = np.asarray(snr[sl], np.float64)
        noisy = rng is not None
        med = np.median(f, axis=1, keepdims=True)
        raw = np.sqrt(np.maximum(f, 0.0) + 0.01 * np.abs(med))
        scale = np.median(f / raw, axis=1, keepdims=True) / np.where(noisy & (sn > 0), sn, 100.0)[:, None]
        noise_sigma = (raw * scale).astype(np.float32)
        if noisy:
            noise = rng.standard_normal(f.shape, dtype=np.float32) * noise_sigma
            f = f + np.where(sn[:, None] > 0, noise, 0.0)
        if eff is not None and np.any(eff.sky != 0):
            f = f + _sky_residuals(eff.sky, noise_sigma, grid, pixel_aa, res)
        if normalise is None:
            out[sl] = np.where(eff.mask, f, 1.0) if eff is not None else f
        else:
            out[sl] = normalise_continuum(f, grid, normalise, mask=None if eff is None else eff.mask)
    return out


def _sky_residuals(amp: np.ndarray, noise_sigma: np.ndarray, grid: np.ndarray, pixel_aa: np.ndarray,
                   resolution: np.ndarray) -> np.ndarray:
    """Sky-subtraction residuals ``(N, P)``: a Gaussian at each sky line (observed frame), FWHM =
    lambda / R but at least two pixels, peak ``amp`` times the noise sigma at the line."""
    out = np.zeros(noise_sigma.shape, np.float32)
    for j, line in enumerate(fx.SKY_LINES[:, 0]):
        if not grid[0] < line < grid[-1]:
            continue
        k = int(np.searchsorted(grid, line))
        fwhm = np.maximum(line / resolution, 2.0 * pixel_aa[k])
        sig = (fwhm / 2.3548)[:, None]
        lo, hi = np.searchsorted(grid, line - 5 * sig.max()), np.searchsorted(grid, line + 5 * sig.max())
        prof = np.exp(-0.5 * ((grid[None, lo:hi] - line) / sig) ** 2)
        out[:, lo:hi] += (amp[:, j:j + 1] * noise_sigma[:, k:k + 1] * prof).astype(np.float32)
    return out


def sample_mixtures(
    scales: np.ndarray, n: int, rng: np.random.Generator, mix_fraction: float = 0.5, classes: int = 7
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Template pairs between adjacent spectral-type levels: ``(idx_a, idx_b, weight, scale)``.

    Classes are drawn uniformly (balanced data), then a target scale uniformly within that
    class's part of the template range, bracketed by the nearest template levels (a level is a
    distinct scale; metallicity variants of one level are picked at random). With probability
    ``1 - mix_fraction`` the target snaps to the nearer level, i.e. a pure template. The label is
    the interpolated scale ``(1 - w) s_a + w s_b``; the class is its integer part.
    """
    scales = np.asarray(scales, np.float64)
    levels = np.unique(scales)
    present = np.unique(np.floor(levels + 1e-6).astype(int))
    cls = rng.choice(present, size=n)
    lo = np.maximum(cls, levels[0])
    hi = np.minimum(cls + 1.0 - 1e-6, levels[-1])
    target = lo + rng.random(n) * np.maximum(hi - lo, 0.0)
    k = np.clip(np.searchsorted(levels, target, side="right") - 1, 0, max(len(levels) - 2, 0))
    kb = np.minimum(k + 1, len(levels) - 1)
    la, lb = levels[k], levels[kb]
    w = np.where(lb > la, (target - la) / np.where(lb > la, lb - la, 1.0), 0.0)
    pure = rng.random(n) >= mix_fraction
    w = np.where(pure, np.round(w), w)
    # A random member (metallicity variant) of each chosen level, vectorised.
    order = np.argsort(scales, kind="stable")
    level_of = np.searchsorted(levels, scales[order])
    start = np.searchsorted(level_of, np.arange(len(levels)))
    count = np.bincount(level_of, minlength=len(levels))
    pick = lambda lev: order[start[lev] + (rng.random(len(lev)) * count[lev]).astype(np.int64)]  # noqa: E731
    idx_a, idx_b = pick(k), pick(kb)
    label = (1.0 - w) * scales[idx_a] + w * scales[idx_b]
    return idx_a, idx_b, w.astype(np.float32), label.astype(np.float32)
