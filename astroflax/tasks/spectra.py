"""``spectra``: MK spectral class (O B A F G K M) and subtype of dwarf stars from 1-D spectra.

Data: spectra simulated from the 44 real Pickles (1998) dwarf templates bundled with the
package (:mod:`astroflax.data.spectra`): mixtures of adjacent subtypes, radial velocity, a
Gaussian line-spread function, CCM89 reddening, photon-like noise at a given S/N and continuum
normalisation, on a log-spaced instrument grid (default 3800-9000 A, 1024 pixels).

Labels: the class (7-way softmax) and the type scale ``class_index + subtype / 10``
(O5 = 0.5, G2 = 4.2, M6 = 6.6), regressed by a second head. One subtype = 0.1 scale units;
subtype errors are reported in subtypes.

Split (leave templates out): whole spectral types, with all their metallicity variants, are
held out for validation (``data.val_types``) and test (``data.test_types``); training spectra
come only from the remaining templates and mixtures of adjacent ones. Defaults hold out one
interior type per class for test (O9V, B3V, A3V, F5V, G5V, K3V, M3V: 10 templates) and one per
class but O for validation (B8V, A5V, F2V, G2V, K5V, M1V: 6 templates); 28 templates train,
and every class keeps training templates (O only O5V, plus O5V-B0V mixtures).

Loss: cross-entropy + ``model.subtype_weight`` * Huber (or MSE) of the scale error in subtypes.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
import optax
from pydantic import BaseModel, ConfigDict, Field, model_validator

from astroflax.data import spectra as sp
from astroflax.errors import ConfigError
from astroflax.models.spectra import SpectrumCNN, SpectrumMLP
from astroflax.tasks import classify, register
from astroflax.tasks.base import Dataset, Task

HOST_KEYS = ("object_id", "template", "template_b", "mix_weight", "snr", "rv", "resolution", "ebv")
DEFAULT_VAL = ["B8V", "A5V", "F2V", "G2V", "K5V", "M1V"]
DEFAULT_TEST = ["O9V", "B3V", "A3V", "F5V", "G5V", "K3V", "M3V"]
TARGET_ACCURACY = 0.95  # at S/N >= 20
TARGET_MAE_SUBTYPES = 1.5


class SpectraData(BaseModel):
    model_config = ConfigDict(extra="forbid")

    wave_min: float = Field(3800.0, ge=3510.0, description="blue end of the instrument window (Angstrom)")
    wave_max: float = Field(9000.0, le=9490.0, description="red end of the instrument window (Angstrom)")
    num_pixels: int = Field(1024, ge=64, le=8192, description="log-spaced model pixels across the window")
    normalise: Literal["median", "poly"] = Field(
        "median", description="continuum normalisation: divide by the median (keeps colour) or by a cubic envelope fit"
    )
    num_train: int = Field(20000, ge=64, description="pre-generated training spectra (fixed, seeded)")
    val_per_type: int = Field(150, ge=1, description="validation spectra per held-out template")
    test_per_snr: int = Field(100, ge=1, description="test spectra per held-out template and per test S/N")
    test_snr: list[float] = Field([5.0, 10.0, 20.0, 50.0, 100.0], min_length=1, description="fixed test S/N values")
    snr_min: float = Field(5.0, gt=0, description="lowest training/validation S/N (log-uniform)")
    snr_max: float = Field(100.0, gt=0, description="highest training/validation S/N")
    rv_max: float = Field(300.0, ge=0, le=1500, description="radial velocities uniform in +-rv_max km/s")
    resolution_min: float = Field(500.0, gt=50, description="lowest resolving power R (log-uniform)")
    resolution_max: float = Field(5000.0, gt=50, description="highest resolving power R")
    ebv_max: float = Field(0.5, ge=0, le=3, description="E(B-V) uniform in [0, ebv_max] (CCM89, R_V = 3.1)")
    mix_fraction: float = Field(0.5, ge=0, le=1, description="fraction of training spectra mixing two adjacent types")
    val_types: list[str] = Field(DEFAULT_VAL, description="spectral types held out for validation (all variants)")
    test_types: list[str] = Field(DEFAULT_TEST, description="spectral types held out for test (all variants)")
    seed: int = Field(1998, description="seed of the simulated spectra (each split has its own stream)")

    @model_validator(mode="after")
    def _ranges(self) -> "SpectraData":
        for lo, hi in (("wave_min", "wave_max"), ("snr_min", "snr_max"), ("resolution_min", "resolution_max")):
            if getattr(self, lo) >= getattr(self, hi):
                raise ValueError(f"{lo} = {getattr(self, lo)} must be below {hi} = {getattr(self, hi)}")
        return self


class SpectraModel(BaseModel):
    model_config = ConfigDict(extra="forbid")

    arch: Literal["cnn", "mlp"] = Field("cnn", description="cnn: SpectralConvolution stages; mlp: dense + BatchNorm")
    channels: list[int] = Field([8, 16, 32, 32], min_length=1, description="cnn channels per stage (one 2x pool each)")
    kernel_size: int = Field(5, ge=1, description="cnn kernel width in pixels")
    hidden: int = Field(128, ge=4, description="cnn dense width before the heads")
    mlp_hidden: list[int] = Field([512, 256], min_length=1, description="mlp layer widths")
    dropout: float = Field(0.2, ge=0, lt=1, description="dropout rate")
    subtype_weight: float = Field(1.0, ge=0, description="lambda: weight of the subtype loss next to cross-entropy")
    subtype_loss: Literal["huber", "mse"] = Field("huber", description="subtype loss on the error in subtypes")
    huber_delta: float = Field(1.0, gt=0, description="Huber transition, in subtypes")


# ----------------------------------------------------------------------------- data


def _select(templates: sp.Templates, types: list[str], key: str) -> np.ndarray:
    base = templates.base_name
    unknown = [t for t in types if t not in set(base)]
    if unknown:
        raise ConfigError(f"config key 'data.{key}': unknown spectral type(s) {unknown}; choose from {sorted(set(base))}")
    return np.flatnonzero(np.isin(base, types))


def template_split(templates: sp.Templates, val_types: list[str], test_types: list[str]) -> dict[str, np.ndarray]:
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


def _draw_conditions(d: SpectraData, n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    log_u = lambda lo, hi: np.exp(rng.uniform(np.log(lo), np.log(hi), n))  # noqa: E731
    return {
        "rv": rng.uniform(-d.rv_max, d.rv_max, n),
        "resolution": log_u(d.resolution_min, d.resolution_max),
        "ebv": rng.uniform(0.0, d.ebv_max, n),
        "snr": log_u(d.snr_min, d.snr_max),
    }


def _make_split(d: SpectraData, templates: sp.Templates, grid: np.ndarray, a, b, w, scale, cond, rng,
                first_id: int = 0) -> dict:
    flux = sp.simulate(templates, a, b, w, cond["rv"], cond["resolution"], cond["ebv"], cond["snr"], grid, rng, d.normalise)
    return {
        "flux": flux,
        "label": np.floor(np.asarray(scale) + 1e-6).astype(np.int32),
        "subtype": np.asarray(scale, np.float32),
        "object_id": np.arange(first_id, first_id + len(a), dtype=np.int64),  # unique across splits
        "template": np.asarray(a, np.int32),
        "template_b": np.asarray(b, np.int32),
        "mix_weight": np.asarray(w, np.float32),
        **{k: np.asarray(v, np.float32) for k, v in cond.items()},
    }


def build_splits(d: SpectraData, templates: sp.Templates) -> tuple[dict[str, dict], dict[str, np.ndarray]]:
    """Simulated spectra for train (mixtures of training templates), val and test (held-out templates)."""
    grid = sp.model_grid(d.wave_min, d.wave_max, d.num_pixels)
    parts = template_split(templates, d.val_types, d.test_types)
    streams = {name: np.random.default_rng([d.seed, i]) for i, name in enumerate(("train", "val", "test"))}

    rng = streams["train"]
    tr = parts["train"]
    a, b, w, scale = sp.sample_mixtures(templates.scale[tr], d.num_train, rng, d.mix_fraction)
    splits = {"train": _make_split(d, templates, grid, tr[a], tr[b], w, scale, _draw_conditions(d, d.num_train, rng), rng)}

    rng = streams["val"]
    idx = np.repeat(parts["val"], d.val_per_type)
    splits["val"] = _make_split(
        d, templates, grid, idx, idx, np.zeros(len(idx)), templates.scale[idx], _draw_conditions(d, len(idx), rng), rng,
        first_id=d.num_train,
    )

    rng = streams["test"]
    idx = np.repeat(parts["test"], d.test_per_snr * len(d.test_snr))
    cond = _draw_conditions(d, len(idx), rng)
    cond["snr"] = np.tile(np.repeat(np.asarray(d.test_snr, np.float64), d.test_per_snr), len(parts["test"]))
    splits["test"] = _make_split(d, templates, grid, idx, idx, np.zeros(len(idx)), templates.scale[idx], cond, rng,
                                 first_id=d.num_train + len(splits["val"]["label"]))
    return splits, parts


def load_data(cfg) -> Dataset:
    d = SpectraData.model_validate(cfg.data)
    m = SpectraModel.model_validate(cfg.model)
    templates = sp.load_templates()
    splits, parts = build_splits(d, templates)
    info = {
        "class_names": list(sp.CLASS_NAMES),
        "num_classes": len(sp.CLASS_NAMES),
        "scale": "class_index + subtype/10 with O=0 B=1 A=2 F=3 G=4 K=5 M=6; one subtype = 0.1",
        "wave_min": d.wave_min,
        "wave_max": d.wave_max,
        "num_pixels": d.num_pixels,
        "normalise": d.normalise,
        "template_names": templates.name.tolist(),
        "split_templates": {k: templates.name[v].tolist() for k, v in parts.items()},
        "subtype_weight": m.subtype_weight,
        "subtype_loss": m.subtype_loss,
        "huber_delta": m.huber_delta,
        "split_sizes": {k: int(len(v["label"])) for k, v in splits.items()},
        "class_counts": {k: np.bincount(v["label"], minlength=7).tolist() for k, v in splits.items()},
    }
    key = json.dumps([templates.digest, d.model_dump(mode="json")], sort_keys=True)
    return Dataset(splits=splits, info=info, version="pickles-" + hashlib.sha256(key.encode()).hexdigest()[:12])


# ----------------------------------------------------------------------------- model / loss


def build_model(cfg, info: dict, rngs):
    m = SpectraModel.model_validate(cfg.model)
    if m.arch == "cnn":
        if info["num_pixels"] % (2 ** len(m.channels)):
            raise ConfigError(
                f"config key 'data.num_pixels' = {info['num_pixels']}: must be divisible by 2**{len(m.channels)} "
                f"(one pooling per entry of model.channels)"
            )
        model = SpectrumCNN(info["num_pixels"], info["num_classes"], m.channels, m.kernel_size, m.hidden, m.dropout, rngs=rngs)
    else:
        model = SpectrumMLP(info["num_pixels"], info["num_classes"], m.mlp_hidden, m.dropout, rngs=rngs)
    model.loss_settings = (float(m.subtype_weight), m.subtype_loss, float(m.huber_delta))  # static, used by loss_fn
    return model


def _subtype_term(err_subtypes, kind: str, delta: float):
    if kind == "mse":
        return err_subtypes**2
    a = abs(err_subtypes)
    return (a <= delta) * 0.5 * err_subtypes**2 + (a > delta) * delta * (a - 0.5 * delta)


def loss_fn(model, batch, rng, train: bool):
    logits, scale = model(batch["flux"], train=train, rng=rng)
    ce, metrics = classify.weighted_cross_entropy(logits, batch)
    lam, kind, delta = model.loss_settings
    err = (scale - batch["subtype"]) * 10.0
    weight = batch.get("_weight", jnp.ones_like(err))
    norm = jnp.maximum(jnp.sum(weight), 1e-9)
    if kind == "huber":
        term = optax.huber_loss(err, delta=delta)
    else:
        term = err**2
    sub = jnp.sum(term * weight) / norm
    metrics["cross_entropy"] = ce
    metrics["subtype_mae"] = jnp.sum(jnp.abs(err) * weight) / norm
    return ce + lam * sub, metrics


def predict_fn(model, batch) -> jax.Array:
    """(B, K + 1): class probabilities, then the type scale."""
    logits, scale = model(batch["flux"], train=False)
    return jnp.concatenate([jax.nn.softmax(logits, axis=-1), scale[:, None]], axis=-1)


# ----------------------------------------------------------------------------- scores


def _split_outputs(outputs: np.ndarray, info: dict) -> tuple[np.ndarray, np.ndarray]:
    k = info["num_classes"]
    probs = np.clip(np.asarray(outputs[:, :k], np.float64), 0.0, None)
    return probs / probs.sum(axis=1, keepdims=True), np.asarray(outputs[:, k], np.float64)


def score(outputs: np.ndarray, arrays: dict, info: dict) -> dict[str, Any]:
    """``loss`` = flat-weighted log-loss + lambda * mean subtype loss (Huber/MSE in subtypes)."""
    from astroflax.evaluate import classification as clf

    probs, scale = _split_outputs(outputs, info)
    labels = arrays["label"]
    err = (scale - arrays["subtype"]) * 10.0
    term = float(np.mean(_subtype_term(err, info["subtype_loss"], info["huber_delta"])))
    flat = clf.flat_weighted_log_loss(probs, labels, info["num_classes"])
    return {
        "loss": flat + info["subtype_weight"] * term,
        "log_loss": clf.log_loss(probs, labels),
        "accuracy": float(np.mean(probs.argmax(-1) == labels)),
        "subtype_mae": float(np.mean(np.abs(err))),
    }


def _group_metrics(mask: np.ndarray, pred: np.ndarray, labels: np.ndarray, err: np.ndarray) -> dict[str, Any]:
    return {
        "n": int(mask.sum()),
        "accuracy": float(np.mean(pred[mask] == labels[mask])),
        "subtype_mae": float(np.mean(np.abs(err[mask]))),
    }


def _plot_types(true: np.ndarray, pred: np.ndarray, snr: np.ndarray, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 5), layout="constrained")
    sc = ax.scatter(true + np.random.default_rng(0).normal(0, 0.02, len(true)), pred, c=np.log10(snr), s=3, alpha=0.4)
    ax.plot([0, 7], [0, 7], color="grey", lw=1, ls="--")
    ax.set_xticks(np.arange(7) + 0.5, list(sp.CLASS_NAMES), minor=False)
    ax.set_xlabel("true type (class + subtype/10)")
    ax.set_ylabel("predicted type")
    fig.colorbar(sc, label="log10 S/N")
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def report(outputs: np.ndarray, arrays: dict, info: dict, out_dir: Path) -> dict[str, Any]:
    """Classification report + subtype errors overall, per S/N and per held-out template."""
    probs, scale = _split_outputs(outputs, info)
    rep = classify.report(probs, arrays, info, out_dir)
    labels = arrays["label"]
    pred = probs.argmax(-1)
    err = (scale - arrays["subtype"]) * 10.0
    snr = np.asarray(arrays["snr"], np.float64)
    rep["subtype_mae"] = float(np.mean(np.abs(err)))
    rep["subtype_mae_units"] = "subtypes (0.1 on the class_index + subtype/10 scale)"
    rep["subtype_rmse"] = float(np.sqrt(np.mean(err**2)))
    rep["subtype_bias"] = float(np.mean(err))
    levels = np.unique(snr)
    if len(levels) <= 12:  # fixed test S/N values
        groups = {f"{v:g}": snr == v for v in levels}
    else:
        edges = [0, 10, 20, 50, np.inf]
        groups = {f"{lo:g}-{hi:g}": (snr >= lo) & (snr < hi) for lo, hi in zip(edges[:-1], edges[1:])}
    rep["per_snr"] = {k: _group_metrics(m, pred, labels, err) for k, m in groups.items() if m.any()}
    names = np.asarray(info["template_names"])
    rep["per_template"] = {}
    for t in np.unique(arrays["template"]):
        m = (arrays["template"] == t) & (arrays["template_b"] == t)
        if m.any():
            row = _group_metrics(m, pred, labels, err)
            row["median_predicted_type"] = sp.spectral_type(float(np.median(scale[m])))
            rep["per_template"][str(names[t])] = row
    hi = snr >= 20
    rep["targets"] = {
        "accuracy_snr_ge_20": float(np.mean(pred[hi] == labels[hi])) if hi.any() else None,
        "accuracy_target": TARGET_ACCURACY,
        "subtype_mae_subtypes": rep["subtype_mae"],
        "subtype_mae_target_subtypes": TARGET_MAE_SUBTYPES,
    }
    rep["figures"]["types"] = str(_plot_types(arrays["subtype"], scale, snr, out_dir / "types.png"))
    return rep


# ----------------------------------------------------------------------------- user data


def load_inputs(cfg, info: dict, path: str | Path):
    grid = sp.model_grid(info["wave_min"], info["wave_max"], info["num_pixels"])
    flux, names = sp.load_user_spectra(path, grid, info["normalise"])
    n = len(names)
    arrays = {
        "flux": flux,
        "label": np.zeros(n, np.int32),
        "subtype": np.zeros(n, np.float32),
        "object_id": np.arange(n, dtype=np.int64),
    }
    return arrays, np.array(names)


def format_predictions(outputs: np.ndarray, ids: np.ndarray, info: dict) -> list[dict[str, Any]]:
    """Per file: predicted class, type string (subtype from the regression head, kept inside the
    predicted class), the raw type scale and every class probability."""
    probs, scale = _split_outputs(outputs, info)
    base = classify.format_predictions(probs, ids, info, id_name="file")
    rows = []
    for row, p, s in zip(base, probs, scale):
        cls = int(np.argmax(p))
        out = {"file": row.pop("file"), "predicted_class": row.pop("predicted_class")}
        out["spectral_type"] = sp.spectral_type(float(s), cls)
        out["type_scale"] = round(float(s), 4)
        out.update(row)
        rows.append(out)
    return rows


QUICK = {
    "data": {"num_train": 12000, "val_per_type": 100, "test_per_snr": 60},
    "model": {"arch": "cnn", "channels": [8, 16, 32, 32], "hidden": 128, "dropout": 0.2},
    "optim": {"lr": 2e-3, "weight_decay": 1e-4},
    "schedule": {"warmup_steps": 50},
    "train": {"steps": 1000, "batch_size": 64, "eval_every": 200, "log_every": 50},
    "checkpoint": {"every": 200, "keep_latest": 2, "keep_best": 1},
}

FULL = {
    "data": {"num_train": 40000, "val_per_type": 200, "test_per_snr": 200},
    "model": {"arch": "cnn", "channels": [8, 16, 32, 32], "hidden": 128, "dropout": 0.2},
    "optim": {"lr": 1.5e-3, "weight_decay": 1e-4},
    "schedule": {"warmup_steps": 200},
    "train": {"steps": 8000, "batch_size": 64, "eval_every": 400, "log_every": 100,
              "early_stopping": {"patience": 8}},
    "checkpoint": {"every": 400, "keep_latest": 2, "keep_best": 1},
}

TASK = register(
    Task(
        name="spectra",
        description="MK class (OBAFGKM) and subtype of dwarf stars from 1-D spectra (Pickles templates, CNN)",
        data_config=SpectraData,
        model_config=SpectraModel,
        defaults={
            "train": {"early_stopping": {"metric": "val_loss", "mode": "min"}},
            "checkpoint": {"metric": "val_loss", "mode": "min"},
        },
        presets={"quick": QUICK, "full": FULL},
        load_data=load_data,
        build_model=build_model,
        loss_fn=loss_fn,
        predict_fn=predict_fn,
        score=score,
        report=report,
        load_inputs=load_inputs,
        format_predictions=format_predictions,
        host_keys=HOST_KEYS,
    )
)
