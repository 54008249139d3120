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
from pathlib import Path

import numpy as np
import scipy.fft

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
    "ccm89_extinction",
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


def ccm89_extinction(wavelength: np.ndarray, r_v: float = R_V) -> np.ndarray:
    """A(lambda) / A(V) of Cardelli, Clayton & Mathis (1989, ApJ 345, 245), eqs. 2-3.

    Implemented for the infrared (0.3 <= x < 1.1 per micron) and optical/NIR (1.1 <= x <= 3.3)
    pieces, x = 1 / lambda[micron], i.e. 3030-33000 A; outside that range a DataError-free
    extrapolation of the nearest piece is used. A(lambda) = E(B-V) * R_V * (a + b / R_V).
    """
    x = 1.0e4 / np.asarray(wavelength, dtype=np.float64)
    a = np.empty_like(x)
    b = np.empty_like(x)
    ir = x < 1.1
    a[ir] = 0.574 * x[ir] ** 1.61
    b[ir] = -0.527 * x[ir] ** 1.61
    y = x[~ir] - 1.82
    a[~ir] = np.polyval([0.32999, -0.77530, 0.01979, 0.72085, -0.02427, -0.50447, 0.17699, 1.0], y)
    b[~ir] = np.polyval([-2.09002, 5.30260, -0.62251, -5.38434, 1.07233, 2.28305, 1.41338, 0.0], y)
    return a + b / r_v


def normalise_continuum(flux: np.ndarray, wavelength: np.ndarray, method: str = "median") -> np.ndarray:
    """Remove the flux scale (``median``: divide by the median) or the continuum shape too.

    ``poly``: divide by a cubic in log-wavelength fitted to the upper envelope (three passes,
    each dropping pixels more than 1 sigma below the fit, i.e. absorption lines), vectorised over
    rows. ``median`` keeps the colour (temperature) information; ``poly`` keeps only lines.
    """
    flux = np.asarray(flux, dtype=np.float32)
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
) -> np.ndarray:
    """Observed spectra ``(N, len(grid))`` float32, one per entry of the parameter arrays.

    Per spectrum: mix ``(1 - weight) * T[idx_a] + weight * T[idx_b]`` on the log working grid;
    convolve with a Gaussian LSF of FWHM lambda/R times a box of one model pixel (pixel
    integration), both as one transfer function in Fourier space (edge-padded, so no wrap-around);
    Doppler shift by ``rv`` km/s (relativistic) while interpolating onto ``grid``; redden by
    ``ebv`` with CCM89, R_V = 3.1, at the observed wavelength; add Gaussian noise whose
    sigma follows photon statistics (sigma^2 ~ flux + 1% of the median) scaled so that
    median(flux / sigma) = ``snr`` exactly (``snr`` <= 0 or ``rng`` None: no noise); finally
    :func:`normalise_continuum` (``normalise`` None: skip).
    """
    if isinstance(templates, Templates):
        wave, tflux = templates.wavelength, templates.flux
    else:
        wave, tflux = templates
    ln0 = np.log(wave[0])
    dln = (np.log(wave[-1]) - ln0) / (len(wave) - 1)
    grid = np.asarray(grid, dtype=np.float64)
    beta_max = float(np.max(np.abs(rv), initial=0.0)) / C_KMS
    if grid[0] / (1 - beta_max) < wave[0] * (1 + beta_max) or grid[-1] * (1 + beta_max) > wave[-1] * (1 - beta_max):
        raise ValueError(
            f"model grid {grid[0]:.0f}-{grid[-1]:.0f} A plus |RV| <= {beta_max * C_KMS:.0f} km/s "
            f"exceeds the templates' {wave[0]:.0f}-{wave[-1]:.0f} A"
        )
    n = len(idx_a)
    out = np.empty((n, len(grid)), np.float32)
    pad = 96
    nfft = len(wave) + 2 * pad
    freq = np.fft.rfftfreq(nfft).astype(np.float32)  # cycles per working pixel
    pix_model = np.log(grid[-1] / grid[0]) / (len(grid) - 1) / dln  # model pixel in working pixels
    box = np.sinc(freq * pix_model).astype(np.float32)
    # 10^(-0.4 A) = exp(-0.4 ln10 E(B-V) R_V k(lambda))
    red_curve = (-0.4 * np.log(10.0) * R_V * ccm89_extinction(grid)).astype(np.float32)
    grid_pos = ((np.log(grid) - ln0) / dln).astype(np.float32)  # grid in working pixels
    for s in range(0, n, chunk):
        sl = slice(s, min(s + chunk, n))
        w = np.asarray(weight[sl], np.float32)[:, None]
        f = (1.0 - w) * tflux[idx_a[sl]] + w * tflux[idx_b[sl]]
        # LSF: FWHM = lambda / R  ->  sigma in ln(lambda) = 1 / (2.3548 R), in working pixels / dln.
        sigma = 1.0 / (2.0 * np.sqrt(2.0 * np.log(2.0)) * np.asarray(resolution[sl], np.float64)) / dln
        arg = (np.pi * sigma.astype(np.float32))[:, None] * freq[None, :]
        transfer = np.exp(-2.0 * arg * arg) * box[None, :]
        fp = np.pad(f.astype(np.float32), ((0, 0), (pad, pad)), mode="edge")
        f = scipy.fft.irfft(scipy.fft.rfft(fp, axis=1) * transfer, n=nfft, axis=1)[:, pad:-pad]
        # Doppler: observed lambda on the grid came from rest lambda / (1 + z).
        beta = np.asarray(rv[sl], np.float64) / C_KMS
        ln1z = 0.5 * np.log((1.0 + beta) / (1.0 - beta))
        pos = grid_pos[None, :] - (ln1z / dln).astype(np.float32)[:, None]
        i0 = np.clip(np.floor(pos).astype(np.int64), 0, len(wave) - 2)
        frac = (pos - i0).astype(np.float32)
        f = np.take_along_axis(f, i0, 1) * (1.0 - frac) + np.take_along_axis(f, i0 + 1, 1) * frac
        f = f * np.exp(np.asarray(ebv[sl], np.float32)[:, None] * red_curve[None, :])
        if rng is not None:
            sn = np.asarray(snr[sl], np.float64)
            med = np.median(f, axis=1, keepdims=True)
            raw = np.sqrt(np.maximum(f, 0.0) + 0.01 * np.abs(med))
            scale = np.median(f / raw, axis=1, keepdims=True) / np.where(sn > 0, sn, 1.0)[:, None]
            noise = rng.standard_normal(f.shape, dtype=np.float32) * (raw * scale).astype(np.float32)
            f = f + np.where(sn[:, None] > 0, noise, 0.0)
        out[sl] = f if normalise is None else normalise_continuum(f, grid, normalise)
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
