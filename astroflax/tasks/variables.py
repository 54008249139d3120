"""``variables``: classify periodic variable stars from irregular multi-band light curves.

Data: a fixed, seeded set of simulated ugriz light curves of 8 classes (RRab, RRc, classical
Cepheids, detached and contact eclipsing binaries, delta Scuti, Miras, non-variables; see
:mod:`astroflax.data.variable_sim` for the literature distributions), with an LSST-like
3-year cadence with seasonal gaps. The RR Lyrae shapes are the real Sesar et al. (2010)
templates. Model: the shared :class:`~astroflax.models.lightcurve.TransientClassifier` with 5
bands and a time encoding reaching down to 0.02 d periods. Loss/score/report: ``classify``.
Model inputs (relative magnitudes per band, see :mod:`astroflax.data.visits`) are the same
for simulated curves, the real ones and the user's visit tables.

User data (``data.path``, ``astroflax train variables --data PATH``): a visits table plus labels,
class names from the data; see ``docs/user_data/variables.md`` and
:func:`astroflax.data.visits.load_labelled`. The simulated set and the real smoke rows are then
not used.

Real-data smoke test (not a performance measure -- 17 objects): the val and test splits also
carry the 10 bundled MACHO curves (no labels) and 7 ASAS curves (Mira, Classical Cepheid,
W UMa). They have weight 0, are excluded from every metric, and ``report`` lists their
predictions under ``real_smoke``. Band mapping onto the model's ugriz indices: MACHO B -> g,
MACHO R -> r, ASAS V -> g (V lies between g and r; MACHO magnitudes are instrumental, which is
why the default normalisation removes each band's median).

Presets: ``presets/variables.yaml``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np
from flax import nnx
from pydantic import Field

from astroflax.data import variable_sim as vs
from astroflax.data import visits
from astroflax.data.cache import content_hash
from astroflax.data.checks import show_value
from astroflax.data.splits import indices_from_codes, stratified_split
from astroflax.errors import ConfigError
from astroflax.models.lightcurve import (
    LightCurveModelConfig,
    TransientClassifier,
    build_classifier,
)
from astroflax.tasks import classify
from astroflax.tasks.base import Arrays, Dataset, Section
from astroflax.tasks.builders import classification_task

CLASSES = list(vs.CLASSES)


class VariablesData(Section):
    path: str | None = Field(None, description="user data: a visits table with a class column, or a directory with a "
                             "visits table and a labels table (object_id, class[, split]); null = simulated curves")
    split_seed: int = Field(2010, description="seed of the stratified split of user data (without a split column)")
    n_per_class: int = Field(1500, ge=10, le=100_000, description="simulated objects per class (8 classes)")
    seed: int = Field(2010, description="seed of the simulated set and its train/val/test split")
    max_len: int = Field(128, ge=16, le=1024, description="visits per object at most (padded length)")
    min_obs: int = Field(30, ge=5, description="fewest simulated visits per object (before dropping non-detections)")
    years: float = Field(3.0, gt=0.5, le=20, description="simulated survey length in years; real curves are cut to it")
    season_days: float = Field(240.0, ge=60, le=365.25, description="observing season per year in days")
    max_err: float = Field(0.5, gt=0, description="visits with a larger mag error are dropped (S/N ~ 2)")
    normalise: Literal["per_band", "per_object"] = Field(
        "per_band",
        description="subtract each band's median mag (robust to uncalibrated photometry, drops colours) "
        "or the object's overall median (keeps colours)",
    )
    val_fraction: float = Field(0.1, gt=0, lt=0.5, description="fraction of each class in val")
    test_fraction: float = Field(0.2, gt=0, lt=0.5, description="fraction of each class in test")
    real_smoke: bool = Field(True, description="append the 17 real MACHO/ASAS curves (weight 0) to val/test")


class VariablesModel(LightCurveModelConfig):
    """The light-curve model with this task's defaults: narrower, induced attention, short periods."""

    d_model: int = Field(48, ge=8, description="width of the transformer")
    attention: Literal["full", "induced"] = Field(
        "induced", description="full: masked self-attention, O(L^2); induced: via learned latents, O(L)"
    )
    num_frequencies: int = Field(32, ge=2, description="sinusoidal time-encoding frequencies")
    min_period: float = Field(0.02, gt=0, description="shortest time-encoding period in days (delta Scuti ~0.02 d)")


def _user_data(d: VariablesData) -> Dataset:
    """The user's labelled visits (see :func:`astroflax.data.visits.load_labelled`); no real smoke rows."""
    arrays, codes, extra = visits.load_labelled(
        d.path, max_len=d.max_len, years=d.years, max_err=d.max_err, mode=d.normalise,
        val_fraction=d.val_fraction, test_fraction=d.test_fraction, split_seed=d.split_seed)
    parts = indices_from_codes(codes)
    splits = {name: {k: v[idx] for k, v in arrays.items()} for name, idx in parts.items()}
    names = extra.pop("class_names")
    k = len(names)
    info = {
        "class_names": names, "num_classes": k, "num_bands": len(vs.BANDS), "bands": vs.BANDS, "meta_dim": 0,
        "max_len": d.max_len, "years": d.years, "max_err": d.max_err, "normalise": d.normalise,
        "positive_class": None,
        "split_sizes": {s: len(idx) for s, idx in parts.items()},
        "class_counts": {s: np.bincount(arrays["label"][idx], minlength=k).tolist() for s, idx in parts.items()},
        "real_objects": [],
        **extra,
    }
    settings = d.model_dump(mode="json", exclude={"path", "n_per_class", "seed", "min_obs", "season_days", "real_smoke"})
    version = content_hash(*(arrays[key] for key in sorted(arrays)), codes, names, settings, length=16)
    return Dataset(splits=splits, info=info, version=version)


def load_data(cfg) -> Dataset:
    d: VariablesData = cfg.data
    if d.path:
        return _user_data(d)
    try:
        sim, h = vs.cached_simulation(d.n_per_class, d.seed, max_len=d.max_len, min_obs=d.min_obs, years=d.years,
                                      season_days=d.season_days, max_err=d.max_err)
    except ValueError as exc:
        raise ConfigError(f"data: cannot simulate this survey: {exc}") from exc
    arrays = visits.model_arrays(sim["time"], sim["mag"], sim["mag_err"], sim["band"], sim["mask"], d.normalise)
    n = len(sim["label"])
    arrays.update({
        "label": sim["label"].astype(np.int32), "object_id": np.arange(n, dtype=np.int64),
        "sample_weight": np.ones(n, np.float32), "real_source": np.zeros(n, np.int8),
        "real_label": np.full(n, -1, np.int32),
    })
    parts = stratified_split(sim["label"], d.val_fraction, d.test_fraction, d.seed)
    splits = {name: {k: v[idx] for k, v in arrays.items()} for name, idx in parts.items()}
    real_objects: list[dict[str, Any]] = []
    if d.real_smoke:
        real, real_objects = visits.real_smoke_arrays(d.max_len, d.years, d.max_err, d.normalise)
        for name in ("val", "test"):
            splits[name] = {k: np.concatenate([splits[name][k], real[k]]) for k in splits[name]}
    k = len(CLASSES)
    info = {
        "class_names": CLASSES,
        "num_classes": k,
        "num_bands": len(vs.BANDS),
        "bands": vs.BANDS,
        "meta_dim": 0,
        "max_len": d.max_len,
        "years": d.years,
        "max_err": d.max_err,
        "normalise": d.normalise,
        "positive_class": None,
        "split_sizes": {s: len(idx) for s, idx in parts.items()},
        "class_counts": {s: np.bincount(sim["label"][idx], minlength=k).tolist() for s, idx in parts.items()},
        "real_objects": real_objects,
    }
    version = f"vs{h[:10]}-{d.normalise}-r{int(d.real_smoke)}-{d.val_fraction}-{d.test_fraction}"
    return Dataset(splits=splits, info=info, version=version)


def build_model(cfg, info: dict, rngs: nnx.Rngs) -> TransientClassifier:
    return build_classifier(cfg.model, info["num_classes"], num_bands=info["num_bands"], rngs=rngs)


def make_logits_fn(cfg, info: dict):
    """The classifier reads its inputs (time, flux, flux_err, band, mask) from the batch."""
    return lambda model, batch, train, rng: model(batch, train=train, rng=rng)


# ----------------------------------------------------------------------------- scores
def _synthetic(probs: np.ndarray, arrays: Arrays) -> tuple[np.ndarray, Arrays]:
    if "real_source" not in arrays:
        return probs, arrays
    sel = arrays["real_source"] == 0
    return probs[sel], {k: v[sel] for k, v in arrays.items()}


def score(probs: np.ndarray, arrays: Arrays, info: dict) -> dict[str, Any]:
    """``classify.score`` on the simulated objects only (real smoke-test rows are excluded)."""
    return classify.score(*_synthetic(probs, arrays), info)


def real_smoke(probs: np.ndarray, arrays: Arrays, info: dict) -> dict[str, Any] | None:
    """Per-object predictions on the real MACHO/ASAS curves, and the ASAS agreement."""
    if "real_source" not in arrays or not (arrays["real_source"] > 0).any():
        return None
    by_id = {o["object_id"]: o for o in info.get("real_objects", [])}
    names = info["class_names"]
    rows, hits = [], []
    for i in np.flatnonzero(arrays["real_source"] > 0):
        obj = dict(by_id.get(int(arrays["object_id"][i]), {"object_id": int(arrays["object_id"][i])}))
        j = int(np.argmax(probs[i]))
        obj.update(predicted_class=names[j], p_predicted=float(probs[i, j]))
        if obj.get("label"):
            obj["p_label"] = float(probs[i, names.index(obj["label"])])
            obj["agrees"] = obj["label"] == names[j]
            hits.append(obj["agrees"])
        rows.append(obj)
    return {
        "note": "SMOKE TEST ONLY: 17 real curves (10 MACHO without labels, 7 ASAS with labels) run through a "
                "model trained on simulated ugriz data; band mapping MACHO B->g, R->r, ASAS V->g. "
                "Far too few objects to measure performance.",
        "objects": rows,
        "asas_n": len(hits),
        "asas_agreement": float(np.mean(hits)) if hits else None,
        "asas_correct": int(np.sum(hits)),
    }


def report(probs: np.ndarray, arrays: Arrays, info: dict, out_dir: Path, run: Any = None) -> dict[str, Any]:
    """``classify.report`` (accuracy, confusion matrix, figures) on simulated objects + ``real_smoke``."""
    rep = classify.report(*_synthetic(probs, arrays), info, out_dir, run)
    smoke = real_smoke(probs, arrays, info)
    if smoke is not None:
        rep["real_smoke"] = smoke
    return rep


def load_inputs(cfg, info: dict, path: str | Path) -> tuple[Arrays, np.ndarray]:
    """Model arrays for a visits table (see :func:`astroflax.data.visits.read_table`), or the visits
    table of a directory laid out as for training (labels optional, ignored), and its object ids."""
    rows, ids = visits.read_table(visits.find_visits(path)[0])
    names = [f"object_id {show_value(x)} in {path}" for x in ids]
    p = visits.pad_ragged(rows["offsets"], rows["time"], rows["mag"], rows["err"], rows["band"],
                          info["max_len"], info["years"], info["max_err"], names)
    arrays = visits.model_arrays(p["time"], p["mag"], p["err"], p["band"], p["mask"], cfg.data.normalise)
    n = len(ids)
    arrays.update({"label": np.zeros(n, np.int32), "object_id": np.arange(n, dtype=np.int64),
                   "sample_weight": np.ones(n, np.float32)})
    return arrays, ids


TASK = classification_task(
    "variables",
    "periodic variable stars (8 classes) from irregular multi-band light curves; real MACHO/ASAS smoke test",
    data_config=VariablesData,
    model_config=VariablesModel,
    load_data=load_data,
    build_model=build_model,
    make_logits_fn=make_logits_fn,
    stochastic=True,  # MC-dropout: the encoder has dropout and no batch norm
    id_name="object_id",
    score=score,
    report=report,
    load_inputs=load_inputs,
    targets={"ece": ("<=", 0.03)},
)
