"""``transients``: classify PLAsTiCC-like multi-band light curves into 14 classes.

Data: the PLAsTiCC training set bundled with the package (or the user's own tables via
``data.path``); model: :class:`~astroflax.models.lightcurve.TransientClassifier`; loss:
class-weighted softmax cross-entropy (PLAsTiCC's metric weights classes equally, so the loss
does too by default); metrics: accuracy, flat-weighted log-loss, SN Ia one-vs-rest AUC.
MC-dropout runs the model with ``train=True``: dropout, and also ``model.obs_dropout`` /
``flux_jitter`` when they are non-zero (then it is MC-dropout plus test-time augmentation).

Presets: ``presets/transients.yaml``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
from flax import nnx
from pydantic import Field

from astroflax.data import lightcurves as lc
from astroflax.data.splits import stratified_split
from astroflax.errors import ConfigError
from astroflax.models.lightcurve import LightCurveModelConfig, TransientClassifier, build_classifier
from astroflax.tasks import classify
from astroflax.tasks.base import Arrays, Dataset, Section
from astroflax.tasks.builders import classification_task

POSITIVE_CLASS_ID = 90  # SN Ia


class TransientsData(Section):
    path: str | None = Field(None, description="directory with lightcurves + metadata tables; null = bundled PLAsTiCC")
    max_len: int = Field(256, ge=8, le=4096, description="observations kept per object (cut around the peak)")
    use_metadata: bool = Field(True, description="feed host photo-z, its error, MW E(B-V) and flux scale to the head")
    class_weighting: Literal["balanced", "none"] = Field("balanced", description="loss weight per class")
    split_seed: int = Field(20181001, description="seed of the stratified split for user data")


def _to_arrays(lcs: lc.LightCurveSet, max_len: int, use_meta: bool, meta_mean=None, meta_std=None) -> Arrays:
    """Model arrays of padded curves; metadata standardised with the training split's moments."""
    padded = lc.pad_lightcurves(lcs, max_len)
    meta = padded["meta"].astype(np.float32)
    if meta_mean is not None:
        meta = (meta - np.asarray(meta_mean, np.float32)) / np.asarray(meta_std, np.float32)
    arrays = {k: padded[k] for k in ("time", "flux", "flux_err", "band", "mask")}
    arrays["meta"] = meta if use_meta else np.zeros((len(meta), 0), np.float32)
    arrays["label"] = padded["label"].astype(np.int32)
    arrays["object_id"] = padded["object_id"].astype(np.int64)
    return arrays


def load_data(cfg) -> Dataset:
    dcfg: TransientsData = cfg.data
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
    splits = {name: {k: v[idx] for k, v in arrays.items()} for name, idx in parts.items()}
    num_classes = len(lcs.class_names)
    if dcfg.class_weighting == "balanced":
        weights = classify.balanced_class_weights(splits["train"]["label"], num_classes)
    else:
        weights = np.ones(num_classes)
    for split in splits.values():
        split["sample_weight"] = weights[split["label"]].astype(np.float32)
    positive = lc.PLASTICC_CLASSES.get(POSITIVE_CLASS_ID)
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
        "positive_class": positive if positive in lcs.class_names else None,
        "positive_key": "auc_snia",
    }
    return Dataset(splits=splits, info=info, version=f"{lcs.version}-L{dcfg.max_len}-m{int(dcfg.use_metadata)}")


def build_model(cfg, info: dict, rngs: nnx.Rngs) -> TransientClassifier:
    return build_classifier(cfg.model, info["num_classes"], meta_dim=info["meta_dim"], rngs=rngs)


def make_logits_fn(cfg, info: dict):
    """The classifier reads its inputs (time, flux, flux_err, band, mask, meta) from the batch."""
    return lambda model, batch, train, rng: model(batch, train=train, rng=rng)


def load_inputs(cfg, info: dict, path: str | Path) -> tuple[Arrays, np.ndarray]:
    """A directory of light-curve + metadata tables, padded and standardised as in training."""
    lcs = lc.load_user_lightcurves(path, class_names=info["class_names"])
    arrays = _to_arrays(lcs, info["max_len"], cfg.data.use_metadata, info["meta_mean"], info["meta_std"])
    arrays["sample_weight"] = np.ones(len(arrays["label"]), np.float32)
    return arrays, arrays["object_id"]


TASK = classification_task(
    "transients",
    "PLAsTiCC transient/variable classification from multi-band light curves (14 classes, transformer)",
    data_config=TransientsData,
    model_config=LightCurveModelConfig,
    load_data=load_data,
    build_model=build_model,
    make_logits_fn=make_logits_fn,
    stochastic=True,  # MC-dropout: the encoder has dropout and no batch norm
    id_name="object_id",
    load_inputs=load_inputs,
    normalisation_keys=("meta_mean", "meta_std"),
    targets={"flat_weighted_log_loss": ("<=", 0.9), "auc_positive": (">=", 0.93), "ece": ("<=", 0.03)},
)
