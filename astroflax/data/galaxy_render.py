"""Batched, seeded renderer of synthetic multi-band galaxy images (E, S0, Sa, Sb, Sc, Irr).

No labelled real morphology set of useful size exists offline, so the ``morphology`` task
trains on rendered galaxies. Each galaxy is a Sérsic bulge plus an exponential disk whose
bulge-to-total ratio depends on the class; disks carry logarithmic spiral arms (pitch angle
and strength by class) and, for Irr (and faintly Sc), clumpy star-forming knots. Every
component has its own g, r, i colour. The galaxy is inclined and rotated, convolved with a
Gaussian or Moffat PSF (via FFT, so total flux is conserved exactly), optionally joined by
field stars, and Gaussian sky noise is added at a 5-sigma point-source depth.

Everything is numpy, vectorised over a chunk of galaxies (no Python loop over pixels or
galaxies). Images are float32 ``(N, H, W, 3)`` in nanomaggies (zero point 22.5) per pixel,
bands ordered g, r, i. :func:`rendered_splits` makes the ``morphology`` training, validation
and test sets from a generator config and keeps them in the disk cache
(:func:`astroflax.data.cache.cached_arrays`), since rendering takes up to a minute.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import numpy as np

from astroflax.data import images as im
from astroflax.data.cache import cached_arrays, content_hash

CLASS_NAMES: tuple[str, ...] = ("E", "S0", "Sa", "Sb", "Sc", "Irr")
SMOOTH_CLASSES: tuple[str, ...] = ("E", "S0")  # Galaxy Zoo "smooth"; the rest are "featured"
BANDS: tuple[str, ...] = ("g", "r", "i")
ZEROPOINT = 22.5  # nanomaggies
GENERATOR_VERSION = 4  # bump whenever the rendered pixels change for the same config

# Per class (E, S0, Sa, Sb, Sc, Irr): ranges drawn uniformly per galaxy.
_BT = np.array([[0.85, 1.0], [0.45, 0.7], [0.3, 0.45], [0.12, 0.28], [0.0, 0.1], [0.0, 0.04]])
_SERSIC_N = np.array([[3.5, 5.0], [2.5, 4.0], [2.0, 3.5], [1.5, 3.0], [1.0, 2.0], [1.0, 1.5]])
_PITCH_DEG = np.array([[0, 0], [0, 0], [6.0, 12.0], [12.0, 20.0], [20.0, 32.0], [0, 0]])
_ARM_AMP = np.array([[0, 0], [0, 0], [0.3, 0.5], [0.5, 0.75], [0.7, 0.95], [0, 0]])
_KNOT_FRAC = np.array([[0, 0], [0, 0], [0, 0], [0.0, 0.05], [0.05, 0.15], [0.3, 0.55]])  # disk light in knots
_N_KNOTS = np.array([[0, 0], [0, 0], [0, 0], [0, 3], [3, 8], [8, 20]])
# Colours g-r, r-i (mag) of bulge, disk, knots.
_BULGE_COL = np.array([0.78, 0.40])
_DISK_COL = np.array([[0.75, 0.38], [0.70, 0.36], [0.62, 0.32], [0.52, 0.27], [0.42, 0.22], [0.30, 0.15]])
_KNOT_COL = np.array([0.10, 0.0])
MAX_KNOTS = 20
MAX_STARS = 8


@dataclasses.dataclass(frozen=True)
class RenderConfig:
    """Generator settings; :meth:`key` hashes them (plus the generator version) for the disk cache."""

    image_size: int = 64
    psf: Literal["gaussian", "moffat", "mixed"] = "mixed"
    psf_fwhm: tuple[float, float] = (1.3, 2.6)  # pixels
    moffat_beta: tuple[float, float] = (2.5, 4.5)
    depth: float = 23.5  # deepest 5-sigma point-source magnitude (r); g and i 0.3 mag shallower
    depth_spread: float = 0.5  # each image's depth is uniform in [depth - spread, depth]
    mag_range: tuple[float, float] = (14.5, 18.0)  # total r magnitude
    size_range: tuple[float, float] = (0.045, 0.11)  # disk scale length / image size
    stars_per_image: float = 1.0  # mean number of field sources (Poisson, at most MAX_STARS)
    noise_band_correlation: float = 0.9  # per image, band-to-band noise correlation is uniform in [0, this]

    def key(self) -> str:
        return content_hash({**dataclasses.asdict(self), "version": GENERATOR_VERSION})


def _colour_ratios(gr: np.ndarray, ri: np.ndarray) -> np.ndarray:
    """Flux in (g, r, i) relative to r for colours g-r and r-i (mag); shape (..., 3)."""
    return np.stack([10 ** (-0.4 * gr), np.ones_like(gr), 10 ** (0.4 * ri)], axis=-1)


def pixel_noise_sigma(depth: float, psf_fwhm: np.ndarray | float, zeropoint: float = ZEROPOINT) -> np.ndarray:
    """Per-pixel sky sigma for which a point source of magnitude ``depth`` has S/N = 5.

    Optimal (PSF-weighted) S/N of a Gaussian PSF of width s in pixels is F / (sigma * sqrt(4 pi s^2)).
    """
    s = np.asarray(psf_fwhm, np.float64) / 2.3548
    flux = 10 ** (-0.4 * (depth - zeropoint))
    return flux / (5.0 * np.sqrt(4 * np.pi) * s)


def psf_kernels(size: int, fwhm: np.ndarray, kind: np.ndarray, beta: np.ndarray) -> np.ndarray:
    """Unit-sum PSF images (N, size, size) centred on pixel (0, 0) (FFT convention).

    ``kind`` is 0 for Gaussian, 1 for Moffat (with index ``beta``).
    """
    d = np.fft.fftfreq(size, 1.0 / size).astype(np.float32)  # 0, 1, ..., -1: distance with wrap
    r2 = d[None, :, None] ** 2 + d[None, None, :] ** 2
    fwhm = fwhm[:, None, None]
    sigma = fwhm / 2.3548
    gauss = np.exp(-0.5 * r2 / sigma**2)
    b = beta[:, None, None]
    alpha = fwhm / (2 * np.sqrt(2 ** (1 / b) - 1))
    moffat = (1 + r2 / alpha**2) ** (-b)
    k = np.where(kind[:, None, None] == 1, moffat, gauss)
    return (k / k.sum(axis=(1, 2), keepdims=True)).astype(np.float32)


def convolve_fft(images: np.ndarray, kernels: np.ndarray) -> np.ndarray:
    """Circular convolution of (N, H, W, C) images with (N, H, W) unit-sum kernels; keeps total flux."""
    fk = np.fft.rfft2(kernels)[..., None]
    fi = np.fft.rfft2(images, axes=(1, 2))
    return np.fft.irfft2(fi * fk, s=images.shape[1:3], axes=(1, 2)).astype(np.float32)


def _unit(img: np.ndarray) -> np.ndarray:
    return img / np.maximum(img.sum(axis=(1, 2), keepdims=True), 1e-30)


def _deposit(n: int, size: int, x: np.ndarray, y: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Point sources (N, K) at float pixel positions, bilinearly deposited into (N, size, size)."""
    out = np.zeros((n, size, size), np.float32)
    x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
    fx, fy = x - x0, y - y0
    gal = np.broadcast_to(np.arange(n)[:, None], x.shape)
    for dx, dy, ww in ((0, 0, (1 - fx) * (1 - fy)), (1, 0, fx * (1 - fy)), (0, 1, (1 - fx) * fy), (1, 1, fx * fy)):
        xi, yi = x0 + dx, y0 + dy
        ok = (xi >= 0) & (xi < size) & (yi >= 0) & (yi < size) & (w > 0)
        np.add.at(out, (gal[ok], yi[ok], xi[ok]), (w * ww)[ok])
    return out


def _uniform(rng: np.random.Generator, ranges: np.ndarray, labels: np.ndarray) -> np.ndarray:
    lo, hi = ranges[labels, 0], ranges[labels, 1]
    return lo + (hi - lo) * rng.random(len(labels))


def render_galaxies(
    labels: np.ndarray, cfg: RenderConfig, seed: int, noise: bool = True, return_params: bool = False
):
    """Render one galaxy per label (class index into :data:`CLASS_NAMES`); deterministic from ``seed``.

    Returns float32 ``(N, H, W, 3)`` flux images (g, r, i), and with ``return_params`` a dict of
    per-galaxy parameters (for tests: true fluxes, PSF width, noise sigma...).
    """
    labels = np.asarray(labels, np.int64)
    n, size = len(labels), cfg.image_size
    rng = np.random.default_rng(seed)
    f32 = np.float32

    # Global parameters.
    mag = rng.uniform(*cfg.mag_range, n)
    flux_r = 10 ** (-0.4 * (mag - ZEROPOINT))
    h = rng.uniform(*cfg.size_range, n) * size  # disk scale length (px)
    bt = _uniform(rng, _BT, labels)
    n_s = _uniform(rng, _SERSIC_N, labels)
    re_bulge = h * rng.uniform(0.35, 0.7, n)
    re_bulge = np.where(labels == 0, h * rng.uniform(1.0, 1.8, n), re_bulge)  # ellipticals: Re ~ 1.7 h
    q_bulge = np.where(labels == 0, rng.uniform(0.55, 1.0, n), rng.uniform(0.75, 1.0, n))
    cos_i = rng.uniform(0.25, 1.0, n)  # disk inclination
    pa = rng.uniform(0, np.pi, n)
    centre = (size - 1) / 2 + rng.normal(0, 0.6, (n, 2))
    pitch = np.deg2rad(_uniform(rng, _PITCH_DEG, labels))
    arm_amp = _uniform(rng, _ARM_AMP, labels)
    m_arms = np.where(rng.random(n) < 0.7, 2, 3)
    arm_phase = rng.uniform(0, 2 * np.pi, n)
    arm_width = rng.uniform(2.0, 4.0, n)  # exponent sharpening the arm profile
    chirality = np.where(rng.random(n) < 0.5, -1.0, 1.0)
    knot_frac = _uniform(rng, _KNOT_FRAC, labels)
    n_knots = np.round(_uniform(rng, _N_KNOTS, labels)).astype(int)
    irr = labels == 5
    # Irregulars: lopsided, off-centre disks.
    lopsided = np.where(irr, rng.uniform(0.3, 0.7, n), 0.0)
    lop_phase = rng.uniform(0, 2 * np.pi, n)

    # Pixel grid in each galaxy's frame: rotate by PA, deproject the disk.
    yy, xx = np.mgrid[0:size, 0:size].astype(f32)
    dx = xx[None] - centre[:, 0, None, None].astype(f32)
    dy = yy[None] - centre[:, 1, None, None].astype(f32)
    c, s = np.cos(pa).astype(f32)[:, None, None], np.sin(pa).astype(f32)[:, None, None]
    u = dx * c + dy * s  # along the major axis
    v = -dx * s + dy * c  # along the minor axis

    # Sérsic bulge (softened at r=0 so the cusp stays finite before the PSF).
    qb = q_bulge.astype(f32)[:, None, None]
    rb = np.sqrt(u**2 + (v / qb) ** 2 + 0.25)
    ns = n_s.astype(f32)[:, None, None]
    bn = 2 * ns - 1 / 3 + 4 / (405 * ns)
    bulge = _unit(np.exp(-bn * ((rb / re_bulge.astype(f32)[:, None, None]) ** (1 / ns) - 1)))

    # Exponential disk with logarithmic spiral arms.
    vd = v / cos_i.astype(f32)[:, None, None]
    rd = np.sqrt(u**2 + vd**2 + 0.25)
    theta = np.arctan2(vd, u)
    hh = h.astype(f32)[:, None, None]
    disk = np.exp(-rd / hh)
    spiral = pitch > 0
    tan_p = np.where(spiral, np.tan(np.maximum(pitch, 1e-3)), 1.0).astype(f32)[:, None, None]
    phase = m_arms[:, None, None] * (chirality[:, None, None] * theta - np.log(rd / hh + 1e-3) / tan_p) + arm_phase[:, None, None]
    arm_profile = ((1 + np.cos(phase)) / 2) ** arm_width.astype(f32)[:, None, None]
    arm_profile = arm_profile / arm_profile.mean(axis=(1, 2), keepdims=True).clip(1e-6)
    taper = 1 - np.exp(-((rd / (0.8 * hh)) ** 2))  # no arms inside the bulge region
    amp = (arm_amp * spiral).astype(f32)[:, None, None] * taper
    disk = disk * ((1 - amp) + amp * arm_profile)
    disk = disk * (1 + lopsided.astype(f32)[:, None, None] * np.cos(theta - lop_phase[:, None, None]) * (rd / hh).clip(0, 2) / 2)
    disk = _unit(np.clip(disk, 0, None))

    # Star-forming knots: points in the disk plane (exponential radii), projected and deposited.
    k = MAX_KNOTS
    kr = rng.gamma(2.0, 1.0, (n, k)) * h[:, None] * np.where(irr, 0.9, 1.0)[:, None]
    kt = rng.uniform(0, 2 * np.pi, (n, k))
    ku, kv = kr * np.cos(kt), kr * np.sin(kt) * cos_i[:, None]
    kx = centre[:, 0, None] + ku * np.cos(pa)[:, None] - kv * np.sin(pa)[:, None]
    ky = centre[:, 1, None] + ku * np.sin(pa)[:, None] + kv * np.cos(pa)[:, None]
    kw = rng.lognormal(0, 0.6, (n, k)) * (np.arange(k)[None] < n_knots[:, None])
    knots = _unit(_deposit(n, size, kx, ky, kw))
    has_knots = (n_knots > 0) & (knot_frac > 0)
    knot_frac = np.where(has_knots, knot_frac, 0.0)

    # Colours (with scatter) and component fluxes in r.
    # Scatter about the class means as wide as real galaxies' (~0.1 mag in g-r within a Hubble type:
    # red spirals and blue early types exist), so colour overlaps between neighbouring classes.
    col_b = _colour_ratios(_BULGE_COL[0] + rng.normal(0, 0.08, n), _BULGE_COL[1] + rng.normal(0, 0.05, n))
    col_d = _colour_ratios(_DISK_COL[labels, 0] + rng.normal(0, 0.12, n), _DISK_COL[labels, 1] + rng.normal(0, 0.07, n))
    col_k = _colour_ratios(_KNOT_COL[0] + rng.normal(0, 0.12, n), _KNOT_COL[1] + rng.normal(0, 0.07, n))
    f_bulge = flux_r * bt
    f_knots = flux_r * (1 - bt) * knot_frac
    f_disk = flux_r * (1 - bt) - f_knots
    img = (
        bulge[..., None] * (f_bulge[:, None] * col_b)[:, None, None, :]
        + disk[..., None] * (f_disk[:, None] * col_d)[:, None, None, :]
        + knots[..., None] * (f_knots[:, None] * col_k)[:, None, None, :]
    ).astype(f32)
    galaxy_flux = img.sum(axis=(1, 2))

    # Field stars (point sources, PSF-convolved below).
    ms = MAX_STARS
    n_stars = np.minimum(rng.poisson(cfg.stars_per_image, n), ms)
    smag = rng.uniform(mag - 1.0, 22.5, (ms, n)).T
    sx, sy = rng.uniform(0, size - 1, (n, ms)), rng.uniform(0, size - 1, (n, ms))
    sw = 10 ** (-0.4 * (smag - ZEROPOINT)) * (np.arange(ms)[None] < n_stars[:, None])
    stars = _deposit(n, size, sx, sy, sw)
    star_col = _colour_ratios(rng.uniform(0.3, 1.4, n), rng.uniform(0.1, 0.6, n))
    img = img + stars[..., None] * star_col[:, None, None, :].astype(f32)

    # PSF.
    fwhm = rng.uniform(*cfg.psf_fwhm, n)
    kind = {"gaussian": np.zeros(n, int), "moffat": np.ones(n, int), "mixed": rng.integers(0, 2, n)}[cfg.psf]
    beta = rng.uniform(*cfg.moffat_beta, n)
    img = convolve_fft(img, psf_kernels(size, fwhm, kind, beta))

    # Sky noise: per-image depth; g and i 0.3 mag shallower than r.
    depth = cfg.depth - cfg.depth_spread * rng.random(n)
    sigma = pixel_noise_sigma(depth[:, None] + np.array([-0.3, 0.0, -0.3])[None, :], fwhm[:, None])
    # Noise partly shared between bands (rho ~ U(0, max)): survey colour composites often show grey noise.
    rho = rng.uniform(0, cfg.noise_band_correlation, n).astype(f32)[:, None, None, None]
    if noise:
        common = rng.standard_normal(img.shape[:3] + (1,), dtype=f32)
        own = rng.standard_normal(img.shape, dtype=f32)
        img = img + (np.sqrt(rho) * common + np.sqrt(1 - rho) * own) * sigma[:, None, None, :].astype(f32)
    if return_params:
        return img, {
            "flux_r": flux_r, "galaxy_flux": galaxy_flux, "psf_fwhm": fwhm, "psf_kind": kind, "noise_sigma": sigma, "depth": depth,
            "bt": bt, "disk_scale": h, "bulge_re": re_bulge, "centre": centre, "n_stars": n_stars,
        }
    return img


def render_set(counts_per_class: int, cfg: RenderConfig, seed: int, chunk: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """A class-balanced, shuffled set: (images float32 (N, H, W, 3), labels int32). Chunked to bound memory."""
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.repeat(np.arange(len(CLASS_NAMES)), counts_per_class)).astype(np.int32)
    seeds = rng.integers(0, 2**63 - 1, -(-len(labels) // chunk))
    parts = [render_galaxies(labels[i * chunk:(i + 1) * chunk], cfg, int(s)) for i, s in enumerate(seeds)]
    return np.concatenate(parts, axis=0), labels


SPLITS: tuple[str, ...] = ("train", "val", "test")


def render_splits(
    cfg: RenderConfig, per_class: dict[str, int], seed: int, softening: float,
    softening_jitter: float = 0.0, display_fraction: float = 0.0,
) -> dict[str, dict[str, np.ndarray]]:
    """Class-balanced train/val/test sets, normalised (float16 images) as the model sees them.

    Training images get a per-image softening ``softening * exp(U(-j, j))`` and a
    ``display_fraction`` share pass through :func:`survey_display`, because real cutouts arrive
    stretched and quantised; validation and test images are the plain rendering.
    """
    seeds = np.random.SeedSequence(seed).generate_state(4, np.uint64)
    out = {}
    for i, name in enumerate(SPLITS):
        flux, labels = render_set(per_class[name], cfg, int(seeds[i]))
        soft = np.full(len(labels), softening, np.float32)
        if name == "train":
            rng = np.random.default_rng(int(seeds[3]))
            if softening_jitter > 0:
                soft = soft * np.exp(rng.uniform(-softening_jitter, softening_jitter, len(labels))).astype(np.float32)
            shown = rng.random(len(labels)) < display_fraction
            if shown.any():
                flux[shown] = survey_display(flux[shown], int(rng.integers(2**31)))
        out[name] = {"image": im.normalise(flux, soft).astype(np.float16), "label": labels}
    return out


def rendered_splits(
    cfg: RenderConfig, per_class: dict[str, int], seed: int, softening: float,
    softening_jitter: float = 0.0, display_fraction: float = 0.0, cache: bool = True,
) -> tuple[dict[str, dict[str, np.ndarray]], str]:
    """:func:`render_splits` from the disk cache (``<cache>/morphology/rendered-<key>.npz``) when present; and the key."""
    spec = {"render": cfg.key(), **{f"{s}_per_class": int(per_class[s]) for s in SPLITS}, "seed": seed,
            "softening": softening, "softening_jitter": softening_jitter, "display_fraction": display_fraction}

    def make() -> dict[str, np.ndarray]:
        splits = render_splits(cfg, per_class, seed, softening, softening_jitter, display_fraction)
        return {f"{s}_{k}": v for s, arrays in splits.items() for k, v in arrays.items()}

    flat, key = cached_arrays("morphology", spec, make, enabled=cache, prefix="rendered-")
    return {s: {"image": flat[f"{s}_image"], "label": flat[f"{s}_label"]} for s in SPLITS}, key


def concentration(images: np.ndarray, radius: float, band: int = 1) -> np.ndarray:
    """Fraction of the (noise-free) light within ``radius`` px of the image centre: a bulge-dominance proxy."""
    size = images.shape[1]
    yy, xx = np.mgrid[0:size, 0:size]
    r = np.hypot(xx - (size - 1) / 2, yy - (size - 1) / 2)
    img = images[..., band]
    return (img * (r <= radius)).sum(axis=(1, 2)) / img.sum(axis=(1, 2))


def survey_display(images: np.ndarray, seed: int) -> np.ndarray:
    """Mimic a survey's colour-composite PNG/JPEG: per-image asinh display stretch, clipping, 8-bit levels.

    Real cutouts (e.g. Galaxy Zoo's) arrive already stretched and quantised; training on a share of
    images passed through this makes the model tolerate that. Like a JPEG (4:2:0 chroma subsampling)
    the composite keeps full-resolution brightness but blurred colour, so pixel noise comes out nearly
    grey, as in real survey cutouts. Output is in display units (0..255), bands still g, r, i.
    """
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    n, size = images.shape[0], images.shape[1]
    x = images - np.median(images.reshape(n, -1, 3), axis=1)[:, None, None, :]
    q = size // 4
    s = np.percentile(x[:, q:size - q, q:size - q].reshape(n, -1, 3), 99, axis=1)[:, None, None, :]
    s = s * np.exp(rng.normal(0, 0.15, (n, 1, 1, 3)))  # colour balance of the composite
    a = np.exp(rng.uniform(np.log(0.02), np.log(0.3), n))[:, None, None, None]
    y = np.arcsinh(x / (a * np.maximum(s, 1e-12))) / np.arcsinh(1 / a)
    gain = rng.uniform(0.6, 1.0, n)[:, None, None, None]
    offset = rng.uniform(0.0, 0.15, n)[:, None, None, None]
    luma = y.mean(axis=-1, keepdims=True)
    chroma = y - luma
    blur = rng.uniform(0.7, 2.0, n) * size / 64  # chroma smoothing (px at size 64)
    chroma = np.stack([gaussian_filter(c, (blur[i], blur[i], 0)) for i, c in enumerate(chroma)])
    y = luma + chroma
    return np.round(np.clip(y * gain + offset, 0, 1) * 255).astype(np.float32)
