"""Simulated multi-band light curves of periodic variable stars in an LSST-like survey.

Why simulate: labelled, multi-band, irregularly sampled variable-star light curves are not
available offline in any quantity (the bundled real MACHO/ASAS curves are 17 objects, a smoke
test only). The generator is vectorised numpy; 12k objects x 128 observations take ~1-2 s.

Classes and the distributions used (approximate literature values; amplitudes are peak-to-peak):

* ``RRab`` -- real Sesar et al. (2010, ApJ 708, 717) ugriz templates (type ab); P ~ N(0.6, 0.1) d
  clipped to 0.45-0.9 d; A_r ~ U(0.3, 1.0) mag (Sesar 2010, Fig. 9 range).
* ``RRc`` -- Sesar 2010 type-c templates; P ~ U(0.25, 0.45) d; A_r ~ U(0.15, 0.45) mag.
* ``Cepheid`` (classical) -- log-uniform P in 2-50 d; A_V ~ U(0.3, 1.2) mag; asymmetric
  (fast rise, rise fraction 0.25-0.4) waveform (e.g. Soszynski et al. 2008, OGLE-III).
* ``EB_detached`` -- log-uniform P in 1-20 d; narrow eclipses, total width in phase
  w = w1 * P^(-2/3) with w1 ~ U(0.05, 0.12) (Kepler's law at fixed radii), clipped to 0.01-0.15;
  primary depth U(0.1, 1.0) mag, secondary 0-0.9 of it; 30% eccentric (secondary at 0.5 +- 0.1).
* ``EB_contact`` (W UMa) -- P ~ U(0.25, 0.7) d; continuous variation with two nearly equal
  minima per cycle; depth U(0.1, 0.75) mag (Rucinski 1993, PASP 105, 1433).
* ``delta_Scuti`` -- log-uniform P in 0.02-0.25 d; small amplitudes, log-uniform A_V in
  0.02-0.3 mag (Breger 2000, ASPC 210, 3); half of them with a first overtone
  (P1/P0 = 0.773) at 20-60% of the fundamental amplitude.
* ``Mira`` -- P ~ U(100, 500) d; A_V ~ U(2.5, 6) mag (GCVS definition: > 2.5 mag in V), much
  smaller in the red (ratios below); cycle-to-cycle mean-magnitude scatter 0.15 mag.
* ``non_variable`` -- constant stars.

Band amplitude ratios (relative to V, or to r for the RR Lyrae templates) are assumed round
values of the size seen in multi-band surveys (pulsators: larger in the blue; Miras: much
smaller in the red; eclipses: nearly grey). Colours: g-r drawn per class (RR Lyrae 0.05-0.4,
Cepheids 0.4-1.0, delta Scuti -0.1-0.3, Miras 1.2-1.8 with r-i 1.2-2.5, others 0-1.4), other
colours from a linearised stellar locus (Covey et al. 2007, AJ 134, 2398).

Survey: ``years`` long (default 3), each object observable ``season_days`` (240 d, ~8 months)
per year starting at a random day (its RA), at most one visit per night at a random time
within +-0.15 d of midnight, a random band per visit (bands are never simultaneous), and a
random number of visits per object. Photometric errors follow Ivezic et al. (2019, ApJ 873,
111, eq. 4-5): sigma_rand^2 = (0.04 - gamma) x + gamma x^2, x = 10^(0.4 (m - m5)), with the
LSST single-visit depths m5 jittered per visit by 0.25 mag, plus a 0.005 mag systematic floor.
Visits with sigma > ``max_err`` count as non-detections and are dropped (mask False).

:func:`cached_simulation` keeps a simulated set in the disk cache (``astroflax.data.cache``).
"""

from __future__ import annotations

import dataclasses
from importlib import resources

import numpy as np

from astroflax.data.cache import cached_arrays, content_hash

__all__ = ["BANDS", "CLASSES", "Survey", "RRTemplates", "cached_simulation", "load_real", "load_templates", "simulate"]

CLASSES: tuple[str, ...] = (
    "RRab", "RRc", "Cepheid", "EB_detached", "EB_contact", "delta_Scuti", "Mira", "non_variable",
)
BANDS = "ugriz"
#: LSST single-visit 5-sigma depths and gamma (Ivezic et al. 2019, Table 2).
M5 = np.array([23.78, 24.81, 24.35, 23.92, 23.34])
GAMMA = np.array([0.037, 0.038, 0.039, 0.039, 0.039])
SIGMA_SYS = 0.005

# amplitude ratio per band (u, g, r, i, z)
_RATIO_RR = np.array([1.33, 1.33, 1.0, 0.8, 0.75])  # relative to A_r (templates are per band)
_RATIO_PULS = np.array([1.5, 1.2, 0.85, 0.65, 0.55])  # relative to A_V
_RATIO_MIRA = np.array([1.1, 1.05, 0.8, 0.5, 0.35])  # relative to A_V
_RATIO_EB = np.array([1.05, 1.03, 1.0, 0.98, 0.97])  # relative to depth in r
_GR = {  # g-r range per class
    "RRab": (0.15, 0.4), "RRc": (0.05, 0.25), "Cepheid": (0.4, 1.0), "EB_detached": (0.0, 1.3),
    "EB_contact": (0.2, 0.9), "delta_Scuti": (-0.1, 0.3), "Mira": (1.2, 1.8), "non_variable": (0.0, 1.4),
}
_FILE = "variable_stars.npz"
_CACHE_FORMAT = 1  # bump when simulate() changes its output for the same arguments


@dataclasses.dataclass(frozen=True)
class Survey:
    """Cadence and depth of the simulated survey."""

    years: float = 3.0
    season_days: float = 240.0
    max_obs: int = 128  # visits per object at most (= padded length)
    min_obs: int = 30
    band_probs: tuple[float, ...] = (0.1, 0.25, 0.3, 0.25, 0.1)
    mag_range: tuple[float, float] = (16.0, 23.0)  # mean r magnitude, uniform
    max_err: float = 0.5
    night_jitter: float = 0.15

    def check(self) -> None:
        nights = int(self.years * 365.25)
        seasons = self.years * min(self.season_days, 365.25)
        if not 1 <= self.min_obs <= self.max_obs:
            raise ValueError(f"need 1 <= min_obs <= max_obs, got {self.min_obs}, {self.max_obs}")
        if self.max_obs > 0.9 * min(seasons, nights):
            raise ValueError(f"max_obs={self.max_obs} visits do not fit in {seasons:.0f} observable nights")
        if len(self.band_probs) != len(BANDS) or abs(sum(self.band_probs) - 1) > 1e-6:
            raise ValueError(f"band_probs must be {len(BANDS)} probabilities summing to 1")


@dataclasses.dataclass(frozen=True)
class RRTemplates:
    """Sesar 2010 templates as a (K, 5, 501) table: rows = template ids, ab first then c.

    A template id missing in a band (e.g. 'u' has 11 of the 21 ab templates) takes the same
    star's template from the nearest band that has it (a shape approximation).
    """

    table: np.ndarray  # float32 (K, 5, 501), 0 = maximum light, 1 = minimum
    ids: np.ndarray  # int32 (K,)
    is_rrc: np.ndarray  # bool (K,)


def _bundled() -> dict[str, np.ndarray]:
    ref = resources.files("astroflax.data").joinpath("files", _FILE)
    with resources.as_file(ref) as path, np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def load_templates(raw: dict[str, np.ndarray] | None = None) -> RRTemplates:
    raw = raw if raw is not None else _bundled()
    per_band = [{int(i): t for i, t in zip(raw[f"sesar_{b}_id"], raw[f"sesar_{b}"])} for b in BANDS]
    rrc = {int(i) for b in BANDS for i, c in zip(raw[f"sesar_{b}_id"], raw[f"sesar_{b}_rrc"]) if c}
    ids = sorted({i for d in per_band for i in d}, key=lambda i: (i in rrc, i))
    table = np.zeros((len(ids), len(BANDS), raw["sesar_g"].shape[1]), np.float32)
    for k, tid in enumerate(ids):
        for b in range(len(BANDS)):
            src = min((abs(b2 - b), b2) for b2 in range(len(BANDS)) if tid in per_band[b2])[1]
            table[k, b] = per_band[src][tid]
    return RRTemplates(table, np.array(ids, np.int32), np.array([i in rrc for i in ids]))


def load_real(raw: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """The bundled real MACHO + ASAS curves as flat arrays (see scripts/convert_variable_stars.py)."""
    return {k: v for k, v in (raw if raw is not None else _bundled()).items() if k.startswith(("macho_", "asas_"))}


# ----------------------------------------------------------------------------- waveforms
def _pulse(phase: np.ndarray, rise: np.ndarray) -> np.ndarray:
    """Asymmetric pulsation in magnitudes, 0 at maximum light, 1 at minimum: rise in ``rise`` of a cycle."""
    up = phase < rise
    x = np.where(up, phase / rise, (phase - rise) / (1 - rise))
    return np.where(up, 0.5 + 0.5 * np.cos(np.pi * x), 0.5 - 0.5 * np.cos(np.pi * x))


def _eclipse(dphase: np.ndarray, width: np.ndarray) -> np.ndarray:
    """Eclipse profile in [0, 1] at phase distance ``dphase`` from mid-eclipse (total width ``width``)."""
    d = np.abs((dphase + 0.5) % 1.0 - 0.5)
    z = np.clip(1 - (2 * d / width) ** 2, 0, None)
    return np.sqrt(z)


def _colours(gr: np.ndarray, ri_mira: np.ndarray, is_mira: np.ndarray) -> np.ndarray:
    """Mean-magnitude offsets (N, 5) relative to r from g-r (linearised stellar locus)."""
    ug = np.where(is_mira, 2.5, 1.0 + 0.5 * gr)
    ri = np.where(is_mira, ri_mira, 0.4 * gr)
    iz = 0.5 * ri
    return np.stack([ug + gr, gr, 0 * gr, -ri, -ri - iz], axis=1)


# ----------------------------------------------------------------------------- cadence
def _cadence(n: int, survey: Survey, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Visit times (N, L) sorted, bands (N, L) and a mask of the first n_obs visits."""
    L = survey.max_obs
    nights = np.arange(int(survey.years * 365.25), dtype=np.float64)
    start = rng.uniform(0, 365.25, n)
    observable = ((nights[None, :] - start[:, None]) % 365.25) < survey.season_days
    keys = np.where(observable, rng.random((n, len(nights))), 2.0)
    pick = np.argpartition(keys, L - 1, axis=1)[:, :L]
    pick = np.take_along_axis(pick, np.argsort(np.take_along_axis(keys, pick, 1), axis=1), 1)
    n_obs = rng.integers(survey.min_obs, L + 1, n)
    mask = np.arange(L)[None, :] < n_obs[:, None]
    t = nights[pick] + rng.uniform(-survey.night_jitter, survey.night_jitter, (n, L))
    t = np.where(mask, t, np.inf)
    order = np.argsort(t, axis=1)
    t, mask = np.take_along_axis(t, order, 1), np.take_along_axis(mask, order, 1)
    band = rng.choice(len(BANDS), size=(n, L), p=np.asarray(survey.band_probs))
    return np.where(mask, t, 0.0), band.astype(np.int32), mask


# ----------------------------------------------------------------------------- simulate
def simulate(
    n_per_class: int,
    seed: int,
    survey: Survey = Survey(),
    templates: RRTemplates | None = None,
    classes: tuple[str, ...] = CLASSES,
    noiseless: bool = False,
) -> dict[str, np.ndarray]:
    """Simulate ``n_per_class`` objects of each class in ``classes`` (deterministic for a seed).

    Returns padded arrays (first axis = object, shuffled): ``time`` float64 (N, L) days since
    the object's first visit; ``mag``, ``mag_true``, ``mag_err`` float32 (N, L); ``band`` int32
    (N, L) index into :data:`BANDS`; ``mask`` bool (N, L), real visits left-aligned in time order;
    ``label`` int32 (N,) index into :data:`CLASSES`; ``period`` (d, 0 for non-variables),
    ``amplitude`` (nominal peak-to-peak in r; primary eclipse depth for binaries), ``mean_r`` float32 (N,).
    With ``noiseless`` the observed magnitudes equal the true ones (errors are still reported).
    """
    survey.check()
    unknown = set(classes) - set(CLASSES)
    if unknown:
        raise ValueError(f"unknown classes {sorted(unknown)}; choose from {CLASSES}")
    templates = templates if templates is not None else load_templates()
    rng = np.random.default_rng(seed)
    label = np.repeat(np.array([CLASSES.index(c) for c in classes], np.int32), n_per_class)
    label = label[rng.permutation(len(label))]
    n, L = len(label), survey.max_obs
    t, band, mask = _cadence(n, survey, rng)
    u = rng.random((n, 8))  # per-object uniforms for the class parameters
    is_ = {c: label == CLASSES.index(c) for c in CLASSES}

    def loguni(lo, hi, x):
        return np.exp(np.log(lo) + (np.log(hi) - np.log(lo)) * x)

    period = np.zeros(n)
    period = np.where(is_["RRab"], np.clip(rng.normal(0.6, 0.1, n), 0.45, 0.9), period)
    period = np.where(is_["RRc"], 0.25 + 0.2 * u[:, 0], period)
    period = np.where(is_["Cepheid"], loguni(2, 50, u[:, 0]), period)
    period = np.where(is_["EB_detached"], loguni(1, 20, u[:, 0]), period)
    period = np.where(is_["EB_contact"], 0.25 + 0.45 * u[:, 0], period)
    period = np.where(is_["delta_Scuti"], loguni(0.02, 0.25, u[:, 0]), period)
    period = np.where(is_["Mira"], 100 + 400 * u[:, 0], period)
    t0 = rng.random(n)  # phase at the first visit
    safe_p = np.where(period > 0, period, 1.0)
    phase = (t / safe_p[:, None] + t0[:, None]) % 1.0
    bidx = band

    dm = np.zeros((n, L))  # magnitude change (positive = fainter)
    # RR Lyrae: real templates, mean-subtracted
    rr = is_["RRab"] | is_["RRc"]
    if rr.any():
        ab = np.flatnonzero(~templates.is_rrc)
        c = np.flatnonzero(templates.is_rrc)
        tid = np.where(is_["RRab"], ab[rng.integers(0, len(ab), n)], c[rng.integers(0, len(c), n)])
        amp_r = np.where(is_["RRab"], 0.3 + 0.7 * u[:, 1], 0.15 + 0.3 * u[:, 1])
        tab = templates.table - templates.table.mean(axis=2, keepdims=True)
        g = phase * (tab.shape[2] - 1)
        i0 = np.minimum(g.astype(np.int64), tab.shape[2] - 2)
        f = g - i0
        tt = tid[:, None]
        val = tab[tt, bidx, i0] * (1 - f) + tab[tt, bidx, i0 + 1] * f
        dm = np.where(rr[:, None], amp_r[:, None] * _RATIO_RR[bidx] * val, dm)
    # Cepheids and delta Scuti: asymmetric pulsation (+ overtone for half the delta Scuti)
    ceph, dsct = is_["Cepheid"], is_["delta_Scuti"]
    rise = np.where(ceph, 0.25 + 0.15 * u[:, 2], 0.4 + 0.1 * u[:, 2])
    amp_v = np.where(ceph, 0.3 + 0.9 * u[:, 1], loguni(0.02, 0.3, u[:, 1]))
    puls = _pulse(phase, rise[:, None]) - 0.5
    overtone = (u[:, 3] < 0.5) & dsct
    ph1 = (t / (0.773 * safe_p[:, None]) + u[:, 4:5]) % 1.0
    puls = puls + np.where(overtone, 0.2 + 0.4 * u[:, 5], 0)[:, None] * 0.5 * np.cos(2 * np.pi * ph1)
    dm = np.where((ceph | dsct)[:, None], amp_v[:, None] * _RATIO_PULS[bidx] * puls, dm)
    # Miras: big asymmetric pulsation, per-cycle mean-magnitude scatter
    mira = is_["Mira"]
    mira_p = np.where(mira, safe_p, 1e9)  # cycle count only for Miras (delta Scuti have ~5e4 cycles)
    cycle = np.floor(t / mira_p[:, None] + t0[:, None]).astype(np.int64)
    n_cyc = int(cycle.max()) + 1 if n else 1
    cyc_off = rng.normal(0, 0.15, (n, n_cyc))
    mira_amp = 2.5 + 3.5 * u[:, 1]
    mira_dm = mira_amp[:, None] * _RATIO_MIRA[bidx] * (
        _pulse(phase, (0.35 + 0.15 * u[:, 2])[:, None]) - 0.5
    ) + np.take_along_axis(cyc_off, np.minimum(cycle, n_cyc - 1), 1)
    dm = np.where(mira[:, None], mira_dm, dm)
    # contact binaries: two nearly equal minima per orbit
    wuma = is_["EB_contact"]
    depth = 0.1 + 0.65 * u[:, 1]
    second = depth * 0.15 * u[:, 2]
    wuma_dm = (depth[:, None] * 0.5 * (1 - np.cos(4 * np.pi * phase)) + second[:, None] * 0.5 * (1 + np.cos(2 * np.pi * phase)))
    dm = np.where(wuma[:, None], _RATIO_EB[bidx] * wuma_dm, dm)
    # detached binaries: narrow eclipses
    det = is_["EB_detached"]
    width = np.clip((0.05 + 0.07 * u[:, 2]) * safe_p ** (-2 / 3), 0.01, 0.15)
    d1 = 0.1 + 0.9 * u[:, 1]
    d2 = d1 * 0.9 * u[:, 3]
    sec_phase = 0.5 + np.where(u[:, 4] < 0.3, 0.2 * u[:, 5] - 0.1, 0.0)
    det_dm = d1[:, None] * _eclipse(phase, width[:, None]) + d2[:, None] * _eclipse(phase - sec_phase[:, None], width[:, None])
    dm = np.where(det[:, None], _RATIO_EB[bidx] * det_dm, dm)

    # nominal peak-to-peak amplitude in r (primary eclipse depth for binaries)
    amplitude = np.select(
        [rr, ceph | dsct, mira, wuma, det],
        [amp_r if rr.any() else 0 * u[:, 1], amp_v * _RATIO_PULS[2], mira_amp * _RATIO_MIRA[2], depth + second, d1],
        0.0,
    )

    # mean magnitudes, colours, errors
    gr = np.zeros(n)
    for c, (lo, hi) in _GR.items():
        gr = np.where(is_[c], lo + (hi - lo) * u[:, 6], gr)
    mean_r = rng.uniform(*survey.mag_range, n)
    offs = _colours(gr, 1.2 + 1.3 * u[:, 7], mira)
    m_true = mean_r[:, None] + np.take_along_axis(offs, bidx, 1) + dm
    m5 = M5[bidx] + rng.normal(0, 0.25, (n, L))
    x = 10 ** (0.4 * (m_true - m5))
    gamma = GAMMA[bidx]
    sigma = np.sqrt(SIGMA_SYS**2 + (0.04 - gamma) * x + gamma * x**2)
    m_obs = m_true if noiseless else m_true + sigma * rng.standard_normal((n, L))
    mask = mask & (sigma <= survey.max_err)
    # re-pack: kept visits left-aligned, in time order
    order = np.argsort(~mask, axis=1, kind="stable")
    take = lambda a: np.take_along_axis(a, order, 1)  # noqa: E731
    mask = take(mask)
    t = take(t)
    first = np.where(mask.any(1), t[:, 0], 0.0)
    zero = lambda a, v=0: np.where(mask, take(a), v)  # noqa: E731
    return {
        "time": np.where(mask, t - first[:, None], 0.0),
        "mag": zero(m_obs).astype(np.float32),
        "mag_true": zero(m_true).astype(np.float32),
        "mag_err": zero(sigma).astype(np.float32),
        "band": zero(band).astype(np.int32),
        "mask": mask,
        "label": label,
        "period": period.astype(np.float32),
        "amplitude": amplitude.astype(np.float32),
        "mean_r": mean_r.astype(np.float32),
    }


def bundle_version() -> str:
    """Hash of the bundled file (templates + real curves): simulations depend on its content."""
    return content_hash(resources.files("astroflax.data").joinpath("files", _FILE).read_bytes(), length=12)


def cached_simulation(n_per_class: int, seed: int, *, max_len: int, min_obs: int, years: float,
                      season_days: float, max_err: float) -> tuple[dict[str, np.ndarray], str]:
    """:func:`simulate` for a :class:`Survey` of these settings, from ``cache_dir()/variables/sim-<hash>.npz``.

    Generation takes seconds; returns the arrays and the hash of everything deciding them.
    ``min_obs`` is capped at ``max_len``. Raises ValueError for a survey that cannot be simulated.
    """
    spec = {"n_per_class": n_per_class, "seed": seed, "max_len": max_len, "min_obs": min_obs, "years": years,
            "season_days": season_days, "max_err": max_err, "format": _CACHE_FORMAT, "bundle": bundle_version()}
    survey = Survey(years=years, season_days=season_days, max_obs=max_len, min_obs=min(min_obs, max_len), max_err=max_err)
    return cached_arrays("variables", spec, lambda: simulate(n_per_class, seed, survey), prefix="sim-")
