"""What a real survey does to a stellar spectrum, drawn per spectrum for the simulator.

The Pickles templates are clean, flux-calibrated averages; a survey spectrum is not. A model
trained on templates with only noise, RV, resolution and reddening learns the templates' exact
continuum slopes and line shapes, and failed on real survey spectra (K stars called G, M stars
called K: 41% class accuracy on an independent check). Each effect below is drawn per
spectrum from one ``numpy.random.Generator`` (a seed fixes the data set) and applied by
:func:`astroflax.data.spectra.simulate`:

- ``fluxcal``: a smooth multiplicative flux-calibration error, ``exp(sum_k c_k P_k(t))`` with
  Legendre polynomials of degree 1-3 over the window; ``fluxcal`` is the RMS of its logarithm
  (0.15: deviations of 15% RMS, larger towards the ends, where the polynomials peak).
- ``lsf``: the resolving power changes across the window by a factor up to ``exp(lsf)`` from
  the blue to the red end (either way), as spectrograph optics do.
- ``wavecal``: a wavelength-calibration error ``a + b t`` Angstrom (zero point and stretch, each
  with sigma ``wavecal``), on top of the radial velocity (which is a shift in log-wavelength).
- ``telluric``: uncorrected or partly corrected O2 (A, B, gamma) and H2O bands, depth up to
  ``telluric`` times a nominal depth at airmass ~1.2 seen at low resolution.
- ``sky``: residuals of sky emission lines after sky subtraction (the [O I] 5577/6300/6364,
  Na D and the strongest OH lines), each of either sign with amplitude up to ``sky`` times the
  noise sigma at the line, as wide as the line-spread function.
- ``mask``: masked or missing ranges (a blue and/or red end not covered, and bad-column or
  chip-gap gaps), with probability ``mask``; the model reads the coverage mask, as for user data.
- reddening with a random R_V (the simulator's ``ebv`` and ``r_v`` through ``dust_extinction``'s
  F99 law; ``r_v`` is drawn here).

Training draws each effect with probability ``prob`` and a strength uniform in [0, max];
the *stress* split (:data:`STRESS`) applies one effect at a time (or all together) at a fixed,
realistic strength to held-out templates, which is how robustness is measured.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

__all__ = ["STRESS", "STRESS_SPLITS", "Strengths", "Effects", "draw", "telluric_log_transmission",
           "SKY_LINES", "extinction_curves"]

#: Sky emission lines (air, Angstrom) whose subtraction residuals the ``sky`` effect adds, with
#: a relative strength: [O I] 5577 is the brightest optical line; Na D, [O I] 6300/6364 and OH
#: bands of the red follow (Osterbrock et al. 1996 night-sky atlas).
SKY_LINES = np.array([
    (5577.34, 1.0), (5889.95, 0.5), (5895.92, 0.4), (6300.30, 0.7), (6363.78, 0.3), (6863.96, 0.3),
    (7276.41, 0.3), (7316.28, 0.4), (7340.89, 0.4), (7369.25, 0.3), (7750.64, 0.4), (7794.11, 0.4),
    (7821.50, 0.3), (7913.71, 0.4), (7993.33, 0.5), (8344.60, 0.6), (8399.17, 0.6), (8430.17, 0.5),
    (8465.36, 0.5), (8827.10, 0.7), (8885.85, 0.7), (8919.64, 0.6), (8943.40, 0.6), (8958.10, 0.7),
    (8988.38, 0.7),
])

#: Telluric bands (Angstrom): start, end, nominal depth (1 - transmission at low resolution,
#: airmass ~1.2, moderate water vapour). O2 gamma, B and A bands; H2O bands at 7200, 8200, 9300.
TELLURIC_BANDS = np.array([
    (6276.0, 6300.0, 0.06), (6866.0, 6890.0, 0.30), (7160.0, 7340.0, 0.12), (7594.0, 7630.0, 0.65),
    (7630.0, 7690.0, 0.20), (8130.0, 8350.0, 0.15), (8950.0, 9800.0, 0.30),
])


@dataclasses.dataclass(frozen=True)
class Strengths:
    """Largest strength of each effect (0 turns it off) and how often each is drawn."""

    fluxcal: float = 0.0
    lsf: float = 0.0
    wavecal: float = 0.0
    telluric: float = 0.0
    sky: float = 0.0
    mask: float = 0.0
    prob: float = 1.0  # probability that a spectrum gets a given (enabled) effect
    fixed: bool = False  # True: every spectrum gets each enabled effect at its full strength (stress split)

    @classmethod
    def of(cls, settings: object, **overrides: object) -> Strengths:
        """From a config section with the same field names (``data.effects``)."""
        values = {f.name: getattr(settings, f.name) for f in dataclasses.fields(cls) if hasattr(settings, f.name)}
        return cls(**{**values, **overrides})


#: The stress split: one effect at a time at a realistic strength, then all of them together.
#: Reddening is drawn from ``STRESS_EBV`` with R_V uniform in ``STRESS_RV``.
STRESS: dict[str, Strengths] = {
    "fluxcal": Strengths(fluxcal=0.15, fixed=True),
    "lsf": Strengths(lsf=float(np.log(2.0)), fixed=True),
    "wavecal": Strengths(wavecal=2.0, fixed=True),
    "telluric": Strengths(telluric=1.0, fixed=True),
    "sky": Strengths(sky=5.0, fixed=True),
    "mask": Strengths(mask=1.0, fixed=True),
    "reddening": Strengths(fixed=True),
    "all": Strengths(fluxcal=0.15, lsf=float(np.log(2.0)), wavecal=2.0, telluric=1.0, sky=5.0, mask=1.0, fixed=True),
}
STRESS_SPLITS = tuple(STRESS)
STRESS_EBV = (0.3, 1.0)
STRESS_RV = (2.5, 5.0)


@dataclasses.dataclass
class Effects:
    """Per-spectrum effect parameters (first axis = spectrum) and the coverage mask they imply."""

    fluxcal: np.ndarray  # (N, 3) Legendre coefficients of ln(calibration error), degrees 1-3
    lsf_tilt: np.ndarray  # (N,) ln(R_red / R_blue)
    wavecal: np.ndarray  # (N, 2) zero point and stretch (Angstrom)
    telluric: np.ndarray  # (N,) depth scale of TELLURIC_BANDS
    sky: np.ndarray  # (N, len(SKY_LINES)) residual amplitudes in noise sigmas
    mask: np.ndarray  # (N, P) bool, True where the pixel is covered
    r_v: np.ndarray  # (N,) R_V of the extinction law

    def __len__(self) -> int:
        return len(self.r_v)

    def take(self, sl: slice | np.ndarray) -> Effects:
        return Effects(**{f.name: getattr(self, f.name)[sl] for f in dataclasses.fields(self)})

    @classmethod
    def none(cls, n: int, num_pixels: int, r_v: float = 3.1) -> Effects:
        """No effect at all: full coverage, R_V = 3.1 (the same spectra as ``effects=None``)."""
        z = np.zeros(n)
        return cls(np.zeros((n, 3)), z, np.zeros((n, 2)), z.copy(), np.zeros((n, len(SKY_LINES))),
                   np.ones((n, num_pixels), bool), np.full(n, r_v))


def _coverage(n: int, p: int, rng: np.random.Generator, present: np.ndarray, fixed: bool) -> np.ndarray:
    """Coverage masks: a lost blue end and/or red end (up to 15% of the window each) and 0-2 gaps
    of 4-40 pixels per 1024 (bad columns, chip gaps); at least 60% of the window stays covered."""
    mask = np.ones((n, p), bool)
    pix = np.arange(p)
    lo_cut = np.where(rng.random(n) < (1.0 if fixed else 0.5), rng.uniform(0.02, 0.15, n), 0.0)
    hi_cut = np.where(rng.random(n) < (1.0 if fixed else 0.5), rng.uniform(0.02, 0.15, n), 0.0)
    mask &= pix[None, :] >= (lo_cut * p)[:, None]
    mask &= pix[None, :] < ((1.0 - hi_cut) * p)[:, None]
    for g in range(2):
        has = rng.random(n) < (0.8 if g == 0 else 0.4)
        width = rng.uniform(4, 40, n) * p / 1024.0
        start = rng.uniform(0, p, n)
        gap = (pix[None, :] >= start[:, None]) & (pix[None, :] < (start + width)[:, None]) & has[:, None]
        mask &= ~gap
    return np.where(present[:, None], mask, True)


def draw(strengths: Strengths, n: int, num_pixels: int, rng: np.random.Generator,
         r_v: tuple[float, float] = (3.1, 3.1)) -> Effects:
    """Effect parameters for ``n`` spectra (``r_v``: the range R_V is drawn from, uniformly)."""
    s = strengths

    def present(strength: float) -> np.ndarray:
        if strength <= 0:
            return np.zeros(n, bool)
        return np.ones(n, bool) if s.fixed else rng.random(n) < s.prob

    def amount(strength: float) -> np.ndarray:
        on = present(strength)
        size = np.full(n, strength) if s.fixed else rng.uniform(0.0, strength, n)
        return np.where(on, size, 0.0)

    # Flux calibration: Legendre coefficients with the RMS of ln(error) over the window = amount.
    coef = rng.standard_normal((n, 3))
    degrees = np.arange(1, 4)
    rms = np.sqrt(np.sum(coef**2 / (2 * degrees + 1), axis=1))  # RMS over t in [-1, 1]
    fluxcal = coef / np.maximum(rms, 1e-9)[:, None] * amount(s.fluxcal)[:, None]
    sign = lambda: rng.choice([-1.0, 1.0], n)  # noqa: E731
    lsf_tilt = sign() * amount(s.lsf)
    wave_size = amount(s.wavecal)
    if s.fixed:  # a zero-point error of the full size, a stretch half as large
        wavecal = np.stack([sign() * wave_size, 0.5 * sign() * wave_size], axis=1)
    else:
        wavecal = rng.standard_normal((n, 2)) * wave_size[:, None]
    telluric = amount(s.telluric)
    sky_amp = amount(s.sky)
    sky = rng.uniform(-1.0, 1.0, (n, len(SKY_LINES))) * sky_amp[:, None]
    if s.fixed:
        sky = np.sign(sky) * sky_amp[:, None]
    sky = sky * SKY_LINES[:, 1][None, :]
    mask = _coverage(n, num_pixels, rng, present(s.mask), s.fixed)
    r_v_drawn = rng.uniform(r_v[0], r_v[1], n)
    return Effects(fluxcal, lsf_tilt, wavecal, telluric, sky, mask, r_v_drawn)


def telluric_log_transmission(wavelength: np.ndarray) -> np.ndarray:
    """ln(transmission) of :data:`TELLURIC_BANDS` at ``wavelength`` (band edges smoothed over ~4 A)."""
    w = np.asarray(wavelength, np.float64)[:, None]
    lo, hi, depth = (TELLURIC_BANDS[:, i][None, :] for i in range(3))
    edge = 2.0
    profile = 0.25 * (1 + np.tanh((w - lo) / edge)) * (1 + np.tanh((hi - w) / edge))
    return np.sum(np.log1p(-depth * profile), axis=1)


def legendre_t(num_pixels: int) -> np.ndarray:
    """Position across the window in [-1, 1] (pixel index scaled), the argument of the flux-calibration polynomial."""
    return np.linspace(-1.0, 1.0, num_pixels)


@functools.lru_cache(maxsize=8)
def _curves_cached(grid_key: bytes, r_v_grid: tuple[float, ...]) -> np.ndarray:
    import astropy.units as u
    from dust_extinction.parameter_averages import F99

    grid = np.frombuffer(grid_key, np.float64)
    return np.stack([F99(Rv=rv)(grid * u.AA) for rv in r_v_grid]).astype(np.float64)


#: R_V values F99 is tabulated at; per-spectrum curves interpolate linearly between them.
R_V_GRID = tuple(np.round(np.arange(2.0, 6.0001, 0.25), 2).tolist())


def extinction_curves(grid: np.ndarray, r_v: np.ndarray) -> np.ndarray:
    """A(lambda) / A(V) of Fitzpatrick (1999) through ``dust_extinction``, ``(N, P)``, one per R_V.

    F99 is evaluated once per grid at R_V = 2.0, 2.25, ..., 6.0 and interpolated linearly in R_V
    (the curve is smooth in R_V; interpolation error < 0.2% of A(lambda), checked in the tests).
    """
    grid = np.ascontiguousarray(grid, np.float64)
    table = _curves_cached(grid.tobytes(), R_V_GRID)
    r = np.clip(np.asarray(r_v, np.float64), R_V_GRID[0], R_V_GRID[-1])
    pos = (r - R_V_GRID[0]) / 0.25
    i0 = np.clip(np.floor(pos).astype(int), 0, len(R_V_GRID) - 2)
    frac = (pos - i0)[:, None]
    return table[i0] * (1.0 - frac) + table[i0 + 1] * frac
