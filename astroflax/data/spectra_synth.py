"""The ``spectra`` training, validation and test sets, simulated from the Pickles templates.

Leave templates out: whole spectral types, with all their metallicity variants, are held out
for validation and test (:func:`template_split`); training spectra come only from the remaining
templates and mixtures of adjacent ones (:func:`astroflax.data.spectra.sample_mixtures`).
Observing conditions (radial velocity, resolving power, reddening, S/N) and survey effects
(:mod:`astroflax.data.spectra_effects`: flux calibration, LSF, wavelength calibration,
telluric bands, sky residuals, masked ranges, R_V) are drawn per training and validation
spectrum; the test split is clean of survey effects and uses fixed S/N values so that accuracy
can be reported per S/N. The *stress* sets (:func:`build_stress`) put the test templates through
one effect at a time at a realistic strength, then all together. Each split has its own random
stream from ``seed``, so the same settings give the same spectra.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Protocol

import numpy as np

from astroflax.data import spectra as sp
from astroflax.data import spectra_effects as fx
from astroflax.errors import ConfigError

Arrays = dict[str, np.ndarray]


class SimulationSettings(Protocol):
    """What the simulation reads (the ``spectra`` task's data section satisfies it)."""

    wave_min: float
    wave_max: float
    num_pixels: int
    normalise: str
    num_train: int
    val_per_type: int
    test_per_snr: int
    test_snr: Sequence[float]
    snr_min: float
    snr_max: float
    rv_max: float
    resolution_min: float
    resolution_max: float
    ebv_max: float
    mix_fraction: float
    effects: object  # strengths with the fields of spectra_effects.Strengths, plus r_v_min / r_v_max
    stress_per_snr: int
    val_types: Sequence[str]
    test_types: Sequence[str]
    seed: int


def _select(templates: sp.Templates, types: Sequence[str], key: str) -> np.ndarray:
    base = templates.base_name
    unknown = [t for t in types if t not in set(base)]
    if unknown:
        raise ConfigError(f"config key 'data.{key}': unknown spectral type(s) {unknown}; choose from {sorted(set(base))}")
    return np.flatnonzero(np.isin(base, types))


def template_split(templates: sp.Templates, val_types: Sequence[str], test_types: Sequence[str]) -> dict[str, np.ndarray]:
    """Template indices per split; held-out types take all their metallicity variants."""
    val = _select(templates, val_types, "val_types")
    test = _select(templates, test_types, "test_types")
    both = sorted(set(templates.name[val]) & set(templates.name[test]))
    if both:
        raise ConfigError(f"config keys 'data.val_types' and 'data.test_types' share {both}")
    train = np.setdiff1d(np.arange(len(templates)), np.concatenate([val, test]))
    missing = [sp.CLASS_NAMES[c] for c in range(7) if not np.any(templates.class_index[train] == c)]
    if missing:
        raise ConfigError(f"data.val_types/test_types leave class(es) {missing} without training templates")
    return {"train": train, "val": val, "test": test}


def draw_conditions(d: SimulationSettings, n: int, rng: np.random.Generator) -> Arrays:
    """Per-spectrum RV (uniform), resolving power and S/N (log-uniform) and E(B-V) (uniform)."""
    log_u = lambda lo, hi: np.exp(rng.uniform(np.log(lo), np.log(hi), n))  # noqa: E731
    return {
        "rv": rng.uniform(-d.rv_max, d.rv_max, n),
        "resolution": log_u(d.resolution_min, d.resolution_max),
        "ebv": rng.uniform(0.0, d.ebv_max, n),
        "snr": log_u(d.snr_min, d.snr_max),
    }


def mask_channel(d: SimulationSettings) -> bool:
    """Whether the model reads a coverage mask: when training draws masked ranges."""
    return d.effects.mask > 0


def draw_effects(d: SimulationSettings, strengths: fx.Strengths, n: int, rng: np.random.Generator,
                 r_v: tuple[float, float] | None = None) -> fx.Effects:
    """Effect parameters of ``n`` spectra (R_V from ``r_v`` or the configured range)."""
    r_v = r_v or (d.effects.r_v_min, d.effects.r_v_max)
    return fx.draw(strengths, n, d.num_pixels, rng, r_v=r_v)


def make_split(d: SimulationSettings, templates: sp.Templates, grid: np.ndarray, a, b, w, scale, cond: Arrays,
               rng: np.random.Generator, first_id: int = 0, effects: fx.Effects | None = None) -> Arrays:
    """Simulated spectra of template pairs ``(a, b)`` mixed by ``w``, with labels and their conditions
    (and the coverage ``mask`` when the model reads one)."""
    flux = sp.simulate(templates, a, b, w, cond["rv"], cond["resolution"], cond["ebv"], cond["snr"], grid, rng,
                       d.normalise, effects=effects)
    extra = {}
    if mask_channel(d):
        extra["mask"] = (np.ones(flux.shape, np.float32) if effects is None else effects.mask.astype(np.float32))
    return {
        "flux": flux,
        **extra,
        "label": np.floor(np.asarray(scale) + 1e-6).astype(np.int32),
        "subtype": np.asarray(scale, np.float32),
        "object_id": np.arange(first_id, first_id + len(a), dtype=np.int64),  # unique across splits
        "template": np.asarray(a, np.int32),
        "template_b": np.asarray(b, np.int32),
        "mix_weight": np.asarray(w, np.float32),
        **{k: np.asarray(v, np.float32) for k, v in cond.items()},
    }


def build_splits(d: SimulationSettings, templates: sp.Templates) -> tuple[dict[str, Arrays], dict[str, np.ndarray]]:
    """Simulated spectra for train (mixtures of training templates), val and test (held-out templates)."""
    grid = sp.model_grid(d.wave_min, d.wave_max, d.num_pixels)
    parts = template_split(templates, d.val_types, d.test_types)
    streams = {name: np.random.default_rng([d.seed, i]) for i, name in enumerate(("train", "val", "test"))}

    strengths = fx.Strengths.of(d.effects)
    rng = streams["train"]
    tr = parts["train"]
    a, b, w, scale = sp.sample_mixtures(templates.scale[tr], d.num_train, rng, d.mix_fraction)
    cond = draw_conditions(d, d.num_train, rng)
    splits = {"train": make_split(d, templates, grid, tr[a], tr[b], w, scale, cond, rng,
                                  effects=draw_effects(d, strengths, d.num_train, rng))}

    rng = streams["val"]
    idx = np.repeat(parts["val"], d.val_per_type)
    cond = draw_conditions(d, len(idx), rng)
    splits["val"] = make_split(
        d, templates, grid, idx, idx, np.zeros(len(idx)), templates.scale[idx], cond, rng,
        first_id=d.num_train, effects=draw_effects(d, strengths, len(idx), rng),
    )

    rng = streams["test"]
    idx = np.repeat(parts["test"], d.test_per_snr * len(d.test_snr))
    cond = draw_conditions(d, len(idx), rng)
    cond["snr"] = np.tile(np.repeat(np.asarray(d.test_snr, np.float64), d.test_per_snr), len(parts["test"]))
    splits["test"] = make_split(d, templates, grid, idx, idx, np.zeros(len(idx)), templates.scale[idx], cond, rng,
                                first_id=d.num_train + len(splits["val"]["label"]))
    return splits, parts


STRESS_SNR = (20.0, 50.0)


def build_stress(d: SimulationSettings, templates: sp.Templates) -> dict[str, Arrays]:
    """The stress sets: the held-out test templates at S/N 20 and 50 (``stress_per_snr`` each),
    through one survey effect at a time at a realistic strength (:data:`spectra_effects.STRESS`),
    then all of them together. ``reddening`` and ``all`` draw E(B-V) in 0.3-1.0 and R_V in
    2.5-5.0; the other sets redden as the test split does (E(B-V) up to ``ebv_max``, R_V 3.1).
    A model without a coverage input (``data.effects.mask = 0``) gets no masked ranges.
    """
    if d.stress_per_snr <= 0:
        return {}
    grid = sp.model_grid(d.wave_min, d.wave_max, d.num_pixels)
    test = template_split(templates, d.val_types, d.test_types)["test"]
    rng = np.random.default_rng([d.seed, 3])
    out: dict[str, Arrays] = {}
    first_id = 10**9  # apart from the ids of the other splits
    for name, strengths in fx.STRESS.items():
        if not mask_channel(d):
            if name == "mask":
                continue
            strengths = dataclasses.replace(strengths, mask=0.0)
        idx = np.repeat(test, d.stress_per_snr * len(STRESS_SNR))
        n = len(idx)
        cond = draw_conditions(d, n, rng)
        cond["snr"] = np.tile(np.repeat(np.asarray(STRESS_SNR), d.stress_per_snr), len(test))
        reddened = name in ("reddening", "all")
        if reddened:
            cond["ebv"] = rng.uniform(*fx.STRESS_EBV, n)
        effects = fx.draw(strengths, n, d.num_pixels, rng, r_v=fx.STRESS_RV if reddened else (sp.R_V, sp.R_V))
        arrays = make_split(d, templates, grid, idx, idx, np.zeros(n), templates.scale[idx], cond, rng,
                            first_id=first_id, effects=effects)
        out[name] = arrays
        first_id += n
    return out
