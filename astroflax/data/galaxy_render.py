"""Seeded renderer of synthetic multi-band galaxy cutouts (E, S0, Sa, Sb, Sc, Irr), built on GalSim.

No labelled real morphology set of useful size exists offline, so the ``morphology`` task
trains on rendered galaxies, made to look like survey (DECaLS-like) cutouts:

- a Sérsic bulge and an inclined exponential disk of finite thickness (GalSim's ``Sersic`` and
  ``InclinedExponential``), bulge-to-total by class; Irr disks are lopsided;
- logarithmic spiral arms (pitch and strength by class) as chains of Gaussian segments, and
  clumpy star-forming knots (Irr, faintly Sb/Sc);
- colour gradients: a red bulge, a disk coloured by class, bluer arms and blue knots;
- a seeing PSF (GalSim ``Moffat`` or ``Kolmogorov``, slightly elliptical) whose width scales as
  lambda^-0.2 from band to band;
- field stars and faint background galaxies with survey-like number counts;
- sky noise at a 5-sigma point-source depth, partly correlated between bands.

Per galaxy, GalSim draws the bulge, disk and PSF transforms on one k-grid; the arms, knots and
field sources are added there as closed-form Gaussian transforms, and one inverse FFT per band
gives the image on a 2x finer grid, summed into pixels (flux is kept exactly). Random parameters
are drawn up front with numpy, so the pixels follow from the seed. Images are float32
``(N, H, W, 3)`` in nanomaggies (zero point 22.5) per pixel, bands g, r, i.
:func:`survey_display` turns them into the colour composites Galaxy Zoo showed (DECaLS's
stretch, or SDSS-style Lupton JPEGs).
:func:`rendered_splits` makes the ``morphology`` training, validation and test sets and keeps
them in the disk cache (:func:`astroflax.data.cache.cached_arrays`): the full preset's set
takes a few minutes to render.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Literal

import numpy as np

from astroflax.data import images as im
from astroflax.data.cache import cached_arrays, content_hash

CLASS_NAMES: tuple[str, ...] = ("E", "S0", "Sa", "Sb", "Sc", "Irr")
SMOOTH_CLASSES: tuple[str, ...] = ("E", "S0")  # Galaxy Zoo "smooth"; the rest are "featured"
BANDS: tuple[str, ...] = ("g", "r", "i")
ZEROPOINT = 22.5  # nanomaggies
GENERATOR_VERSION = 7  # bump whenever the rendered pixels change for the same config

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
BAND_DEPTH = np.array([0.6, 0.0, -0.5])  # g, r, i point-source depth relative to r (mag)
MAX_KNOTS = 20
MAX_STARS = 8
MAX_ARM_BLOBS = 48
MAX_BACKGROUND = 40


@dataclasses.dataclass(frozen=True)
class RenderConfig:
    """Generator settings; :meth:`key` hashes them (plus the generator version) for the disk cache."""

    image_size: int = 64
    psf: Literal["gaussian", "moffat", "kolmogorov", "mixed"] = "mixed"  # mixed: Moffat or Kolmogorov
    psf_fwhm: tuple[float, float] = (0.5, 1.2)  # pixels
    moffat_beta: tuple[float, float] = (2.5, 4.5)
    depth: float = 23.5  # deepest 5-sigma point-source magnitude (r); g 0.6 mag deeper, i 0.5 shallower
    depth_spread: float = 0.5  # each image's depth is uniform in [depth - spread, depth]
    mag_range: tuple[float, float] = (13.0, 17.0)  # total r magnitude
    size_range: tuple[float, float] = (0.03, 0.06)  # galaxy Petrosian half-light radius / image size, any class
    stars_per_image: float = 1.0  # mean number of field stars (Poisson, at most MAX_STARS)
    background_galaxies: float = 0.0  # mean number of faint background galaxies (Poisson, at most MAX_BACKGROUND)
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


def _uniform(rng: np.random.Generator, ranges: np.ndarray, labels: np.ndarray) -> np.ndarray:
    lo, hi = ranges[labels, 0], ranges[labels, 1]
    return lo + (hi - lo) * rng.random(len(labels))


def _power_law_mags(rng: np.random.Generator, lo: np.ndarray, hi: np.ndarray, slope: float, shape: tuple) -> np.ndarray:
    """Magnitudes with number counts dN/dm ∝ 10^(slope m) in [lo, hi] (inverse CDF), per row."""
    u = rng.random(shape)
    a, b = 10 ** (slope * lo[:, None]), 10 ** (slope * hi[:, None])
    return np.log10(a + u * (b - a)) / slope


@functools.lru_cache(maxsize=256)
def _unit_profile(kind: str, index: float):
    """A GalSim profile of unit size (half-light radius or FWHM 1 px), cached per quantised index.

    GalSim computes a Sersic's or Moffat's Hankel-transform tables once per index: building a
    fresh profile per galaxy (a new n each time) cost ~4 ms in maxk alone; ``dilate`` reuses them.
    """
    import galsim

    gsp = _gsparams()
    if kind == "sersic":
        return galsim.Sersic(n=index, half_light_radius=1.0, gsparams=gsp)
    if kind == "moffat":
        return galsim.Moffat(beta=index, fwhm=1.0, gsparams=gsp)
    if kind == "kolmogorov":
        return galsim.Kolmogorov(fwhm=1.0, gsparams=gsp)
    return galsim.Gaussian(fwhm=1.0, gsparams=gsp)


@functools.lru_cache(maxsize=4096)
def _unit_disk(inclination_deg: float, h_over_r: float):
    """GalSim's inclined exponential disk of unit scale length, cached per quantised inclination and
    thickness (its maxk is computed per instance: ~2 ms each when every galaxy made a new one)."""
    import galsim

    return galsim.InclinedExponential(inclination_deg * galsim.degrees, scale_radius=1.0, scale_h_over_r=h_over_r,
                                      gsparams=_gsparams())


@functools.lru_cache(maxsize=1)
def _gsparams():
    import galsim

    return galsim.GSParams(folding_threshold=2e-3, maximum_fft_size=8192)


def _quantise(x: float, step: float) -> float:
    return round(round(float(x) / step) * step, 6)


OVERSAMPLE = 2  # the scene is composed on a grid twice as fine, then summed 2x2 into pixels


def _k_grid(size: int) -> np.ndarray:
    """Wavenumbers (rad/px) of GalSim's ``drawKImage(nx=N, ny=N, scale=2 pi / size)`` grid, N = 2 size.

    Sampling at dk = 2 pi / size makes the scene periodic with the image (as an FFT convolution
    is); reaching k = 2 pi (twice the pixel Nyquist) keeps the PSF-convolved scene unaliased.
    """
    nk = OVERSAMPLE * size
    return (np.arange(nk) - nk // 2) * (2 * np.pi / size)


def _blobs_k(k: np.ndarray, x: np.ndarray, y: np.ndarray, sigma: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Fourier transform (ky, kx) of round Gaussians (sigma 0 = points) of fluxes ``w`` at (x, y) px.

    Written out rather than as a GalSim ``Sum``: a round Gaussian's transform factorises in kx and
    ky, so J blobs cost one (N, J) @ (J, N) product; as a GalSim Sum of shifted Gaussians each
    blob was evaluated on the whole k-grid (measured ~2 ms per blob per band).
    """
    g = np.exp(-0.5 * (sigma[:, None] * k[None]) ** 2)
    ax = w[:, None] * g * np.exp(-1j * x[:, None] * k[None])
    ay = g * np.exp(-1j * y[:, None] * k[None])
    return ay.T @ ax


def _ellipses_k(k: np.ndarray, x, y, sigma, q, pa, w) -> np.ndarray:
    """Fourier transform (J, ky, kx) of elliptical Gaussians (axis ratio q, position angle pa).

    The phase and the axis-aligned part factorise in kx and ky; only the cross term needs a
    full-grid exponential per object (3x faster than evaluating the quadratic form directly).
    """
    c, s = np.cos(pa)[:, None], np.sin(pa)[:, None]
    s2, q2 = sigma[:, None] ** 2, q[:, None] ** 2
    kk = k[None] ** 2
    ex = w[:, None] * np.exp(-0.5 * s2 * (c**2 + q2 * s**2) * kk - 1j * x[:, None] * k[None])
    ey = np.exp(-0.5 * s2 * (s**2 + q2 * c**2) * kk - 1j * y[:, None] * k[None])
    cross = np.exp(-(s2 * c * s * (1 - q2))[:, :, None] * (k[:, None] * k[None, :])[None])
    return ey[:, :, None] * ex[:, None, :] * cross


def _to_pixels(fk: np.ndarray, size: int, offset: tuple[float, float] = (0.0, 0.0)) -> np.ndarray:
    """k-image (..., ky, kx) on the :func:`_k_grid` of a scene centred at the origin -> (..., size, size)
    pixel fluxes, with the origin moved to ``offset`` (x, y) px from the image centre.

    The image centre is the corner shared by the four central pixels (pixel index (size - 1) / 2),
    x runs along columns and y along rows. The transform is multiplied by the response of a
    fine-grid (half-pixel) box, so each fine sample is the flux in that box; 2x2 of them make a
    pixel. Total flux is kept exactly (it is F(0)).
    """
    k = _k_grid(size)
    box = np.sinc(k / (2 * np.pi * OVERSAMPLE))
    # Fine sample j is centred at (j - N/2) / OVERSAMPLE, so pixel p spans [p - size/2 - 1/4, p - size/2 + 3/4]
    # (OVERSAMPLE 2): shifting the scene by minus half a fine sample puts pixel edges at integers from the centre.
    dx, dy = offset[0] - 0.5 / OVERSAMPLE, offset[1] - 0.5 / OVERSAMPLE
    fk = fk * (box[None, :] * box[:, None]) * np.exp(-1j * (dx * k[None, :] + dy * k[:, None]))
    img = np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(fk, axes=(-2, -1)), axes=(-2, -1)), axes=(-2, -1)).real
    return img.reshape(*img.shape[:-2], size, OVERSAMPLE, size, OVERSAMPLE).sum(axis=(-3, -1))


def render_galaxies(
    labels: np.ndarray, cfg: RenderConfig, seed: int, noise: bool = True, return_params: bool = False
):
    """Render one galaxy per label (class index into :data:`CLASS_NAMES`); deterministic from ``seed``.

    All random parameters are drawn up front with numpy (vectorised, seeded); GalSim then builds
    and draws each galaxy's profile. Returns float32 ``(N, H, W, 3)`` flux images (g, r, i), and
    with ``return_params`` a dict of per-galaxy parameters (for tests: true fluxes, PSF width,
    noise sigma...).
    """
    import galsim

    labels = np.asarray(labels, np.int64)
    n, size = len(labels), cfg.image_size
    # Separate streams for the galaxy, the field, the PSF and the noise: changing how crowded the
    # field is (a Poisson count draws a variable number of variates) must not change the galaxy.
    rng, field_rng, psf_rng, noise_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(4))
    px = size / 64  # sizes below are given at 64 px and scale with the image

    # The galaxy.
    mag = rng.uniform(*cfg.mag_range, n)
    flux_r = 10 ** (-0.4 * (mag - ZEROPOINT))
    h = rng.uniform(0.045, 0.11, n) * size  # disk scale length (px), before the framing below
    bt = _uniform(rng, _BT, labels)
    n_s = _uniform(rng, _SERSIC_N, labels)
    re_bulge = h * rng.uniform(0.35, 0.7, n)
    re_bulge = np.where(labels == 0, h * rng.uniform(1.0, 1.8, n), re_bulge)  # ellipticals: Re ~ 1.7 h
    # Framing: cutout services scale each cutout to the galaxy. Galaxy Zoo DECaLS asked for a pixel
    # scale of max(min(0.04 R50, 0.02 R90), 0.1 arcsec) over 424 px (github.com/zooniverse/decals,
    # NSA Petrosian radii), so the side is 17 Petrosian R50 (0.04 R50 is the smaller whenever R90/R50 > 2,
    # as for every real profile) except for galaxies small enough to hit the 0.1 arcsec floor:
    # R50 = 0.059 of the side whatever the class. Rescale every galaxy so that
    # its approximate, light-weighted Petrosian R50 is drawn from one range for all classes (a
    # Petrosian R50 is ~0.7 Re for a de Vaucouleurs profile, 1.0 for an exponential; linear in n).
    petro = 1.0 - 0.1 * (n_s - 1)
    r50 = bt * re_bulge * petro + (1 - bt) * 1.678 * h
    frame = rng.uniform(*cfg.size_range, n) * size / r50
    h, re_bulge = h * frame, re_bulge * frame
    q_bulge = np.where(labels == 0, rng.uniform(0.55, 1.0, n), rng.uniform(0.75, 1.0, n))
    cos_i = rng.uniform(0.25, 1.0, n)  # disk inclination
    h_over_r = rng.uniform(0.08, 0.2, n)  # disk thickness (GalSim's InclinedExponential)
    pa = rng.uniform(0, np.pi, n)
    centre = rng.normal(0, 0.6 * px, (n, 2))  # offset from the image centre (px)
    pitch = np.deg2rad(_uniform(rng, _PITCH_DEG, labels))
    arm_amp = _uniform(rng, _ARM_AMP, labels)
    m_arms = np.where(rng.random(n) < 0.7, 2, 3)
    arm_phase = rng.uniform(0, 2 * np.pi, n)
    chirality = np.where(rng.random(n) < 0.5, -1.0, 1.0)
    knot_frac = _uniform(rng, _KNOT_FRAC, labels)
    n_knots = np.round(_uniform(rng, _N_KNOTS, labels)).astype(int)
    irr = labels == 5
    lopsided = np.where(irr, rng.uniform(0.3, 0.7, n), 0.0)  # Irr: part of the disk off-centre
    lop_phase = rng.uniform(0, 2 * np.pi, n)
    # Arm segments: Gaussian blobs along m logarithmic spirals in the disk plane.
    ka = MAX_ARM_BLOBS
    a_r = h[:, None] * (0.5 + rng.gamma(2.0, 0.8, (n, ka)))
    a_arm = rng.integers(0, 3, (n, ka)) % m_arms[:, None]
    tan_p = np.tan(np.maximum(pitch, 1e-3))[:, None]
    a_t = (arm_phase[:, None] + 2 * np.pi * a_arm / m_arms[:, None]
           + chirality[:, None] * np.log(a_r / h[:, None]) / tan_p + rng.normal(0, 0.12, (n, ka)))
    a_w = rng.lognormal(0, 0.4, (n, ka)) * ((pitch > 0) & (arm_amp > 0))[:, None]
    a_sig = h[:, None] * rng.uniform(0.2, 0.4, (n, ka))
    # Star-forming knots: exponential-ish radii in the disk plane; Irr knots follow the lopsided side.
    kk = MAX_KNOTS
    k_r = rng.gamma(2.0, 1.0, (n, kk)) * h[:, None] * np.where(irr, 0.9, 1.0)[:, None]
    k_t = rng.uniform(0, 2 * np.pi, (n, kk))
    k_w = rng.lognormal(0, 0.6, (n, kk)) * (np.arange(kk)[None] < n_knots[:, None])
    k_sig = rng.uniform(0.3, 0.7, (n, kk)) * px
    # Irr: 60% of the knots crowd towards the lopsided side.
    k_t = np.where(irr[:, None] & (rng.random((n, kk)) < 0.6), lop_phase[:, None] + rng.normal(0, 0.8, (n, kk)), k_t)
    knot_frac = np.where((n_knots > 0) & (knot_frac > 0), knot_frac, 0.0)

    # Colours (with scatter as wide as real galaxies' within a Hubble type) and component fluxes in r.
    # The bulge is redder than the disk, arms and knots bluer: colour gradients as in real spirals.
    col_b = _colour_ratios(_BULGE_COL[0] + rng.normal(0, 0.08, n), _BULGE_COL[1] + rng.normal(0, 0.05, n))
    disk_gr = _DISK_COL[labels, 0] + rng.normal(0, 0.12, n)
    disk_ri = _DISK_COL[labels, 1] + rng.normal(0, 0.07, n)
    col_d = _colour_ratios(disk_gr, disk_ri)
    col_k = _colour_ratios(_KNOT_COL[0] + rng.normal(0, 0.12, n), _KNOT_COL[1] + rng.normal(0, 0.07, n))
    col_a = _colour_ratios(0.5 * (disk_gr + _KNOT_COL[0]), 0.5 * (disk_ri + _KNOT_COL[1]))
    arm_frac = 0.6 * arm_amp * (pitch > 0)
    f_bulge = flux_r * bt
    f_knots = flux_r * (1 - bt) * knot_frac
    f_arms = (flux_r * (1 - bt) - f_knots) * arm_frac
    f_disk = flux_r * (1 - bt) - f_knots - f_arms

    # Field: stars (r from mag - 1 to 23, flat-ish counts) and faint background galaxies (steep counts).
    ms, mg = MAX_STARS, MAX_BACKGROUND
    n_stars = np.minimum(field_rng.poisson(cfg.stars_per_image, n), ms)
    s_mag = _power_law_mags(field_rng, mag - 1.0, np.full(n, 23.0), 0.15, (n, ms))
    s_xy = field_rng.uniform(-0.5, 0.5, (n, ms, 2)) * size
    s_col = _colour_ratios(field_rng.uniform(0.3, 1.4, (n, ms)), field_rng.uniform(0.1, 0.6, (n, ms)))
    n_bg = np.minimum(field_rng.poisson(cfg.background_galaxies, n), mg)
    b_mag = _power_law_mags(field_rng, np.full(n, 18.5), np.full(n, cfg.depth + 0.5), 0.35, (n, mg))
    b_xy = field_rng.uniform(-0.5, 0.5, (n, mg, 2)) * size
    b_hlr = field_rng.uniform(0.5, 1.6, (n, mg)) * 10 ** (-0.1 * (b_mag - 20)) * px
    field_rng.uniform(0.8, 4.0, (n, mg))  # unused Sersic indices: kept so that the shipped model's pixels reproduce
    b_q = field_rng.uniform(0.3, 1.0, (n, mg))
    b_pa = field_rng.uniform(0, np.pi, (n, mg))
    b_col = _colour_ratios(field_rng.uniform(0.3, 1.6, (n, mg)), field_rng.uniform(0.1, 0.8, (n, mg)))

    # PSF: Moffat or Kolmogorov (atmospheric seeing), slightly elliptical; seeing FWHM scales as
    # lambda^-0.2, so g is ~5% wider and i ~4% narrower than r (DECam g, r, i: 475, 620, 750 nm).
    fwhm = psf_rng.uniform(*cfg.psf_fwhm, n)
    kind = {"gaussian": np.zeros(n, int), "moffat": np.ones(n, int), "kolmogorov": np.full(n, 2),
            "mixed": psf_rng.integers(1, 3, n)}[cfg.psf]
    beta = psf_rng.uniform(*cfg.moffat_beta, n)
    psf_g = psf_rng.uniform(0.0, 0.06, n)
    psf_beta = psf_rng.uniform(0, np.pi, n)
    band_fwhm = fwhm[:, None] * (np.array([620 / 475, 1.0, 620 / 750]) ** 0.2)[None]

    k = _k_grid(size)
    dk = 2 * np.pi / size
    out = np.zeros((n, size, size, 3), np.float32)
    galaxy_flux = np.zeros((n, 3))
    for i in range(n):
        ang = float(pa[i]) * galsim.radians
        draw = lambda prof: prof.drawKImage(nx=len(k), ny=len(k), scale=dk).array  # noqa: E731
        bulge = _unit_profile("sersic", _quantise(n_s[i], 0.05)).dilate(float(re_bulge[i])).shear(q=float(q_bulge[i]), beta=ang)
        unit_disk = _unit_disk(_quantise(np.degrees(np.arccos(cos_i[i])), 0.5), _quantise(h_over_r[i], 0.02))
        disk = unit_disk.dilate(float(h[i]))
        if irr[i]:  # lopsided: part of the disk light in a smaller disk shifted along lop_phase
            off = lopsided[i] * h[i] * np.array([np.cos(lop_phase[i]), np.sin(lop_phase[i]) * cos_i[i]])
            side = unit_disk.dilate(float(0.7 * h[i])).shift(*off)
            disk = galsim.Add([disk.withFlux(1 - lopsided[i]), side.withFlux(lopsided[i])])
        disk = disk.rotate(ang)
        cp, sp = np.cos(pa[i]), np.sin(pa[i])

        def sky(r, t):  # disk-plane polar -> image offsets
            u, v = r * np.cos(t), r * np.sin(t) * cos_i[i]
            return u * cp - v * sp, u * sp + v * cp

        comps = [draw(bulge), draw(disk)]
        weights = [f_bulge[i] * col_b[i], f_disk[i] * col_d[i]]
        for r, t, w, sg, f, col in ((a_r, a_t, a_w, a_sig, f_arms, col_a), (k_r, k_t, k_w, k_sig, f_knots, col_k)):
            if f[i] > 0 and w[i].sum() > 0:
                comps.append(_blobs_k(k, *sky(r[i], t[i]), sg[i], w[i] / w[i].sum()))
                weights.append(f[i] * col[i])
        scene = np.tensordot(np.asarray(weights).T, np.stack(comps), axes=1)  # (3, ky, kx)
        galaxy_flux[i] = np.sum(weights, axis=0)
        # Field: stars (points) and background galaxies (elliptical Gaussians), each with its own colour.
        js = np.arange(n_stars[i])
        s_f = 10 ** (-0.4 * (s_mag[i, js] - ZEROPOINT))[:, None] * s_col[i, js]
        for b in range(3):
            scene[b] += _blobs_k(k, s_xy[i, js, 0] - centre[i, 0], s_xy[i, js, 1] - centre[i, 1], np.zeros(len(js)), s_f[:, b])
        jb = np.arange(n_bg[i])
        if len(jb):
            e = _ellipses_k(k, b_xy[i, jb, 0] - centre[i, 0], b_xy[i, jb, 1] - centre[i, 1], b_hlr[i, jb] / 1.1774,
                            b_q[i, jb], b_pa[i, jb], np.ones(len(jb)))
            b_f = 10 ** (-0.4 * (b_mag[i, jb] - ZEROPOINT))[:, None] * b_col[i, jb]
            scene += np.tensordot(b_f.T, e, axes=1)
        psf = _unit_profile(("gaussian", "moffat", "kolmogorov")[kind[i]], _quantise(beta[i], 0.25))
        psf_k = np.stack([draw(psf.dilate(float(band_fwhm[i, b])).shear(g=float(psf_g[i]), beta=float(psf_beta[i]) * galsim.radians))
                          for b in range(3)])
        out[i] = np.moveaxis(_to_pixels(scene * psf_k, size, tuple(centre[i])), 0, -1)

    # Sky noise: per-image depth; g 0.6 mag deeper and i 0.5 shallower than r, as DECaLS's g, r, z
    # (median 5-sigma depths 24.0, 23.4, 22.5) with i between r and z.
    depth = cfg.depth - cfg.depth_spread * noise_rng.random(n)
    sigma = pixel_noise_sigma(depth[:, None] + BAND_DEPTH[None, :], fwhm[:, None])
    # Noise partly shared between bands (rho ~ U(0, max)): survey colour composites often show grey noise.
    rho = noise_rng.uniform(0, cfg.noise_band_correlation, n).astype(np.float32)[:, None, None, None]
    if noise:
        common = noise_rng.standard_normal(out.shape[:3] + (1,), dtype=np.float32)
        own = noise_rng.standard_normal(out.shape, dtype=np.float32)
        out = out + (np.sqrt(rho) * common + np.sqrt(1 - rho) * own) * sigma[:, None, None, :].astype(np.float32)
    if return_params:
        return out, {
            "flux_r": flux_r, "galaxy_flux": galaxy_flux, "psf_fwhm": fwhm, "psf_kind": kind, "noise_sigma": sigma,
            "depth": depth, "bt": bt, "disk_scale": h, "bulge_re": re_bulge, "centre": centre, "n_stars": n_stars,
            "n_background": n_bg,
        }
    return out


def render_set(counts_per_class: int, cfg: RenderConfig, seed: int, chunk: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """A class-balanced, shuffled set: (images float32 (N, H, W, 3), labels int32). Chunked to bound memory.

    Serial on purpose: a thread pool was measured slower (600 images at 48 px: 5.9 s with two
    threads, 3.8 s in one; GalSim's Python side holds the GIL).
    """
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


# Galaxy Zoo DECaLS's colour composite (``dr2_style_rgb`` in github.com/zooniverse/decals, by Dustin
# Lang): each band in nanomaggies divided by a scale (g 0.008, r 0.014, z 0.019; our i stands in
# for z), arcsinh, black and white at arcsinh(-0.5) and arcsinh(300), clipped, drawn 424 px wide.
DECALS_SCALES = np.array([0.008, 0.014, 0.019])
DECALS_RANGE = (-0.5, 300.0)
DECALS_SIDE = 424


def survey_display(images: np.ndarray, seed: int, lupton_fraction: float = 0.3) -> np.ndarray:
    """Turn flux images into survey colour composites as Galaxy Zoo shows them (display units 0..255).

    Two real pipelines, chosen per image:

    - **Galaxy Zoo DECaLS** (``1 - lupton_fraction``): the ``dr2_style_rgb`` stretch above, which
      works on absolute fluxes, so sky noise shows as grey speckle and bright cores saturate. It is
      applied per display pixel (424 across the frame) and the result averaged down to our
      pixels, as the bundled cutouts were: the mean of the clipped arcsinh over the sub-pixel
      noise is taken by Gauss-Hermite quadrature, with the per-display-pixel noise
      ``sqrt(A)`` times our pixel's (A display pixels per pixel, noise from the image's MAD).
      Band scales and the white point vary per image (calibration, our i for their z).
    - **SDSS / Galaxy Zoo 2** (``lupton_fraction``): astropy's
      :func:`~astropy.visualization.make_lupton_rgb` (Lupton et al. 2004) with a random stretch
      and Q on per-band core-scaled fluxes, saved as JPEG by Pillow at quality 70-95 with 4:2:0
      chroma subsampling (the GZ2 cutouts are JPEGs).

    Both end as 8-bit levels; bands stay g, r, i.
    """
    import io

    from astropy.visualization import LuptonAsinhStretch, make_lupton_rgb
    from PIL import Image

    rng = np.random.default_rng(seed)
    n, size = images.shape[0], images.shape[1]
    lupton = rng.random(n) < lupton_fraction
    out = np.empty(images.shape, np.float32)

    # Galaxy Zoo DECaLS.
    area = (DECALS_SIDE / size) ** 2
    x = images.astype(np.float64)
    sky = np.median(x.reshape(n, -1, 3), axis=1)[:, None, None, :]
    noise = 1.4826 * np.median(np.abs(x - sky).reshape(n, -1, 3), axis=1)[:, None, None, :]
    mean_flux = x / area  # per display pixel
    sigma_d = noise / np.sqrt(area)  # per display pixel (our pixel's noise is the mean of A of them)
    scales = DECALS_SCALES * np.exp(rng.normal(0, 0.15, (n, 3)))
    white = np.exp(rng.uniform(np.log(150.0), np.log(600.0), n))
    lo = np.arcsinh(DECALS_RANGE[0])
    hi = np.arcsinh(white) - lo
    z, w = np.polynomial.hermite_e.hermegauss(12)
    w = w / w.sum()
    disp = np.zeros_like(x)
    for zk, wk in zip(z, w):
        v = (np.arcsinh((mean_flux + zk * sigma_d) / scales[:, None, None, :]) - lo) / hi[:, None, None, None]
        disp += wk * np.clip(v, 0.0, 1.0)
    out[:] = np.round(disp * 255)

    # SDSS-like Lupton composites, JPEG-compressed.
    q = size // 4
    core = np.percentile((x - sky)[:, q:size - q, q:size - q].reshape(n, -1, 3), 99, axis=1)
    balance = np.exp(rng.normal(0, 0.15, (n, 3)))
    stretch = np.exp(rng.uniform(np.log(0.1), np.log(1.0), n))  # linear-to-log turnover, in units of the core
    soft_q = rng.uniform(3.0, 12.0, n)
    quality = rng.integers(70, 96, n)
    for i in np.flatnonzero(lupton):
        bands = (x[i] - sky[i, 0, 0]) * (balance[i] / np.maximum(core[i], 1e-12))
        rgb = make_lupton_rgb(bands[..., 2], bands[..., 1], bands[..., 0],
                              stretch_object=LuptonAsinhStretch(stretch=float(stretch[i]), Q=float(soft_q[i])))
        buf = io.BytesIO()
        Image.fromarray(rgb).save(buf, format="JPEG", quality=int(quality[i]), subsampling=2)
        buf.seek(0)
        out[i] = np.asarray(Image.open(buf).convert("RGB"), np.float32)[..., ::-1]
    return out
