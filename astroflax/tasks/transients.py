"""``transients``: classify PLAsTiCC-like multi-band light curves into 14 classes.

Data: the PLAsTiCC training set bundled with the package (or the user's own tables via
``data.path``); model: :class:`~astroflax.models.lightcurve.TransientClassifier`; loss:
class-weighted softmax cross-entropy (PLAsTiCC's metric weights classes equally, so the loss
does too by default); metrics: accuracy, flat-weighted log-loss, SN Ia one-vs-rest AUC.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import jax
import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from astroflax.data import lightcurves as lc
from astroflax.data.splits import stratified_split
from astroflax.errors import ConfigError
from astroflax.models.lightcurve import TransientClassifier
from astroflax.tasks import classify, register
from astroflax.tasks.base import Dataset, Task

MODEL_INPUTS = ("time", "flux", "flux_err", "band", "mask", "meta")
POSITIVE_CLASS_ID = 90  # SN Ia


class TransientsData(BaseModel):
    model_config = ConfigDict(extra="forbid")

    path: str | None = Field(None, description="directory with lightcurves + metadata tables; null = bundled PLAsTiCC")
    max_len: int = Field(256, ge=8, le=4096, description="observations kept per object (cut around the peak)")
    use_metadata: bool = Field(True, description="feed host photo-z, its error, MW E(B-V) and flux scale to the head")
    class_weighting: Literal["balanced", "none"] = Field("balanced", description="loss weight per class")
    split_seed: int = Field(20181001, description="seed of the stratified split for user data")


class TransientsModel(BaseModel):
    model_config = ConfigDict(extra="forbid")

    d_model: int = Field(64, ge=8, description="width of the transformer")
    num_heads: int = Field(4, ge=1, description="attention heads")
    num_layers: int = Field(2, ge=1, description="transformer encoder layers")
    mlp_ratio: int = Field(2, ge=1, description="MLP width as a multiple of d_model")
    dropout: float = Field(0.1, ge=0, lt=1, description="dropout rate")
    attention: Literal["full", "induced"] = Field(
        "full", description="full: masked self-attention, O(L^2); induced: via learned latents, O(L) (Set Transformer)"
    )
    num_inducing: int = Field(16, ge=1, description="latent vectors of the induced attention")
    obs_dropout: float = Field(0.0, ge=0, lt=1, description="training: fraction of observations dropped at random")
    flux_jitter: float = Field(0.0, ge=0, description="training: flux noise added, in units of flux_err")


def _to_arrays(lcs: lc.LightCurveSet, max_len: int, use_meta: bool, meta_mean=None, meta_std=None) -> dict:
    padded = lc.pad_lightcurves(lcs, max_len)
    meta = padded["meta"].astype(np.float32)
    if meta_mean is not None:
        meta = (meta - np.asarray(meta_mean, np.float32)) / np.asarray(meta_std, np.float32)
    arrays = {k: padded[k] for k in ("time", "flux", "flux_err", "band", "mask")}
    arrays["meta"] = meta if use_meta else np.zeros((len(meta), 0), np.float32)
    arrays["label"] = padded["label"].astype(np.int32)
    arrays["object_id"] = padded["object_id"].astype(np.int64)
    return arrays


def _take(arrays: dict, idx: np.ndarray) -> dict:
    return {k: v[idx] for k, v in arrays.items()}


def load_data(cfg) -> Dataset:
    dcfg = TransientsData.model_validate(cfg.data)
    if dcfg.path:
        lcs = lc.load_user_lightcurves(dcfg.path)
        if np.any(lcs.labels < 0):
            raise ConfigError(f"data.path = {dcfg.path!r}: training needs a 'target' column for every object")
        parts = (
            lc.split_indices(lcs) if lcs.split is not None else stratified_split(lcs.labels, 0.1, 0.2, dcfg.split_seed)
        )
    else:
        lcs = lc.load_bundled_plasticc()
        parts = lc.split_indices(lcs)
    raw = _to_arrays(lcs, dcfg.max_len, use_meta=True)
    train_meta = raw["meta"][parts["train"]]
    meta_mean = train_meta.mean(axis=0)
    meta_std = train_meta.std(axis=0) + 1e-6
    arrays = _to_arrays(lcs, dcfg.max_len, dcfg.use_metadata, meta_mean, meta_std)
    splits = {name: _take(arrays, idx) for name, idx in parts.items()}
    num_classes = len(lcs.class_names)
    if dcfg.class_weighting == "balanced":
        weights = classify.balanced_class_weights(splits["train"]["label"], num_classes)
    else:
        weights = np.ones(num_classes)
    for split in splits.values():
        split["sample_weight"] = weights[split["label"]].astype(np.float32)
    info = {
        "class_names": list(lcs.class_names),
        "num_classes": num_classes,
        "meta_dim": int(arrays["meta"].shape[1]),
        "meta_names": list(getattr(lcs, "meta_names", [])) if dcfg.use_metadata else [],
        "meta_mean": meta_mean.tolist(),
        "meta_std": meta_std.tolist(),
        "max_len": dcfg.max_len,
        "class_weights": weights.tolist(),
        "split_sizes": {k: int(len(v["label"])) for k, v in splits.items()},
        "class_counts": {k: np.bincount(v["label"], minlength=num_classes).tolist() for k, v in splits.items()},
        "positive_class": _positive_name(list(lcs.class_names)),
        "positive_key": "auc_snia",
    }
    return Dataset(splits=splits, info=info, version=f"{lcs.version}-L{dcfg.max_len}-m{int(dcfg.use_metadata)}")


def _positive_name(class_names: list[str]) -> str | None:
    name = lc.PLASTICC_CLASSES.get(POSITIVE_CLASS_ID)
    return name if name in class_names else None


def build_model(cfg, info: dict, rngs) -> TransientClassifier:
    m = TransientsModel.model_validate(cfg.model)
    if m.d_model % m.num_heads:
        raise ConfigError(f"config key 'model.d_model' = {m.d_model}: must be divisible by model.num_heads = {m.num_heads}")
    return TransientClassifier(
        info["num_classes"],
        d_model=m.d_model,
        num_heads=m.num_heads,
        num_layers=m.num_layers,
        mlp_ratio=m.mlp_ratio,
        dropout=m.dropout,
        meta_dim=info["meta_dim"],
        attention=m.attention,
        num_inducing=m.num_inducing,
        obs_dropout=m.obs_dropout,
        flux_jitter=m.flux_jitter,
        rngs=rngs,
    )


def _inputs(batch: dict) -> dict:
    return {k: batch[k] for k in MODEL_INPUTS}


def loss_fn(model, batch, rng, train: bool):
    return classify.weighted_cross_entropy(model(_inputs(batch), train=train, rng=rng), batch)


def predict_fn(model, batch) -> jax.Array:
    return jax.nn.softmax(model(_inputs(batch), train=False), axis=-1)


def predict_stochastic_fn(model, batch, rng) -> jax.Array:
    """Like predict_fn with dropout active (MC-dropout). train=True also applies model.obs_dropout /
    flux_jitter when they are non-zero (then it is MC-dropout plus test-time augmentation)."""
    return jax.nn.softmax(model(_inputs(batch), train=True, rng=rng), axis=-1)


def load_inputs(cfg, info: dict, path: str | Path):
    dcfg = TransientsData.model_validate(cfg.data)
    lcs = lc.load_user_lightcurves(path, class_names=info["class_names"])
    arrays = _to_arrays(lcs, info["max_len"], dcfg.use_metadata, info["meta_mean"], info["meta_std"])
    arrays["sample_weight"] = np.ones(len(arrays["label"]), np.float32)
    return arrays, arrays["object_id"]


def format_predictions(probs: np.ndarray, ids: np.ndarray, info: dict) -> list[dict[str, Any]]:
    return classify.format_predictions(probs, ids, info, id_name="object_id")


# quick: about 3 minutes on 2 CPU cores. full: about 40 minutes; see the README for figures.
# Sized from benchmarks/train_step.py on a 2-core machine (quick: 3.7 steps/s with full
# attention, 5.9 with induced attention) so that train + evaluation + report stay under 5 minutes.
QUICK = {
    "data": {"max_len": 128},
    "model": {"d_model": 48, "num_heads": 4, "num_layers": 2, "dropout": 0.1, "attention": "induced"},
    "optim": {"lr": 2e-3, "weight_decay": 1e-4},
    "schedule": {"warmup_steps": 60},
    "train": {"steps": 1000, "batch_size": 64, "eval_every": 200, "log_every": 50},
    "checkpoint": {"every": 200, "keep_latest": 2, "keep_best": 1},
}

FULL = {
    "data": {"max_len": 192},
    "model": {"d_model": 64, "num_heads": 4, "num_layers": 2, "dropout": 0.2, "obs_dropout": 0.2, "flux_jitter": 1.0},
    "optim": {"lr": 1.5e-3, "weight_decay": 0.05},
    "schedule": {"warmup_steps": 200},
    "train": {"steps": 6000, "batch_size": 64, "eval_every": 300, "log_every": 100,
              "early_stopping": {"patience": 8}},
    "checkpoint": {"every": 300, "keep_latest": 2, "keep_best": 1},
}

TASK = register(
    Task(
        name="transients",
        description="PLAsTiCC transient/variable classification from multi-band light curves (14 classes, transformer)",
        data_config=TransientsData,
        model_config=TransientsModel,
        defaults={
            "train": {"early_stopping": {"metric": "val_loss", "mode": "min"}},
            "checkpoint": {"metric": "val_loss", "mode": "min"},
        },
        presets={"quick": QUICK, "full": FULL},
        load_data=load_data,
        build_model=build_model,
        loss_fn=loss_fn,
        predict_fn=predict_fn,
        score=classify.score,
        report=classify.report,
        load_inputs=load_inputs,
        format_predictions=format_predictions,
        predict_stochastic_fn=predict_stochastic_fn,
    )
)
