"""``transients``: classify PLAsTiCC-like multi-band light curves into 14 classes.

Data: the PLAsTiCC training set bundled with the package, or the user's own curves via
``data.path`` (PLAsTiCC-layout tables or ZTF forced-photometry files: ``docs/user_data/transients.md``); model: :class:`~astroflax.models.lightcurve.TransientClassifier`; loss:
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
from astroflax.data import redshift_augment
from astroflax.data.cache import content_hash
from astroflax.data.splits import indices_from_codes
from astroflax.data.tables import DropLog, split_codes
from astroflax.errors import ConfigError
from astroflax.models.lightcurve import (
    LightCurveModelConfig,
    TransientClassifier,
    build_classifier,
)
from astroflax.tasks import classify
from astroflax.tasks.base import Arrays, Dataset, Section
from astroflax.tasks.builders import classification_task

POSITIVE_CLASS_ID = 90  # SN Ia


class TransientsData(Section):
    path: str | None = Field(None, description="user data: a directory with lightcurves + metadata tables (PLAsTiCC "
                             "layout) or of ZTF forced-photometry files; null = bundled PLAsTiCC")
    format: Literal["auto", "plasticc", "ztf_fp"] = Field(
        "auto", description="format of data.path: auto = ztf_fp for files with #key=value header lines, else plasticc")
    class_names: Literal["data", "plasticc"] = Field(
        "data", description="ZTF files: classes = the distinct bts_class values (data) or mapped onto the 14 PLAsTiCC "
        "class names (plasticc: SN Ic, Ic-BL, Ib -> SN Ibc ...)")
    max_len: int = Field(256, ge=8, le=4096, description="observations kept per object (cut around the peak)")
    use_metadata: bool = Field(True, description="feed host photo-z, its error, MW E(B-V) and flux scale to the head")
    class_weighting: Literal["balanced", "none"] = Field("balanced", description="loss weight per class")
    split_seed: int = Field(20181001, description="seed of the stratified split for user data")
    redshift_augment: int = Field(0, ge=0, le=50, description="copies of each extragalactic training object "
                                  "re-observed at other redshifts (astroflax.data.redshift_augment); 0 = off")
    redshift_max: float = Field(3.0, gt=0, le=10, description="highest redshift of an augmented copy")
    augment_seed: int = Field(2019, description="seed of the redshift augmentation")


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


def _user_data(dcfg: TransientsData) -> tuple[lc.LightCurveSet, dict[str, np.ndarray], dict]:
    """The user's curves (labelled objects only; the others recorded as dropped) and their split."""
    lcs, ids, source = lc.load_user_data(dcfg.path, dcfg.format, map_plasticc=dcfg.class_names == "plasticc")
    drops = DropLog()
    keep = np.flatnonzero(lcs.labels >= 0)
    if keep.size == 0:
        raise ConfigError(f"data.path = {dcfg.path!r}: no object has a class (PLAsTiCC layout: the metadata "
                          "'target' column; ZTF files: the #bts_class= header); training needs labels")
    gone = np.flatnonzero(lcs.labels < 0)
    if gone.size:
        drops.add("object without a class (empty 'target' or #bts_class=-): kept for predict, not trained on",
                  [f"object {ids[i]} ({lcs.lengths[i]} observations)" for i in gone], count=int(lcs.lengths[gone].sum()))
        lcs = lcs.select(keep)
    codes, method = split_codes(None, lcs.labels, dcfg.split_seed, split_values=lcs.split)
    if lcs.split is not None:
        method = "the 'split' column of the metadata table"
    info = {"source": source, "split_method": method, "dropped": drops.to_info(),
            "rows_used": int(lcs.offsets[-1]), "objects": len(lcs)}
    if "ztf_fp" in source["format"]:
        info["object_names"] = [ids[i] for i in keep]
    return lcs, indices_from_codes(codes), info


def load_data(cfg) -> Dataset:
    dcfg: TransientsData = cfg.data
    extra_info: dict = {}
    if dcfg.path:
        lcs, parts, extra_info = _user_data(dcfg)
    else:
        lcs = lc.load_bundled_plasticc()
        parts = lc.split_indices(lcs)
    if dcfg.redshift_augment:
        before = len(lcs)
        lcs, added = redshift_augment.augment(lcs, parts["train"], dcfg.redshift_augment,
                                              np.random.default_rng(dcfg.augment_seed), z_max=dcfg.redshift_max)
        parts = {**parts, "train": np.concatenate([parts["train"], added])}
        extra_info["redshift_augment"] = {"copies": dcfg.redshift_augment, "objects_added": len(added),
                                          "objects_before": before, "z_max": dcfg.redshift_max}
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
        "split_sizes": {k: len(v["label"]) for k, v in splits.items()},
        "class_counts": {k: np.bincount(v["label"], minlength=num_classes).tolist() for k, v in splits.items()},
        "positive_class": positive if positive in lcs.class_names else None,
        "positive_key": "auc_snia",
        **extra_info,
    }
    version = f"{lcs.version}-L{dcfg.max_len}-m{int(dcfg.use_metadata)}"
    if dcfg.redshift_augment:
        version += f"-za{dcfg.redshift_augment}-{dcfg.redshift_max:g}-{dcfg.augment_seed}"
    if dcfg.path:  # every data setting (format, classes, split seed, weighting) changes the user data's version
        version = content_hash(lcs.version, dcfg.model_dump(mode="json", exclude={"path"}),
                               *[parts[k] for k in sorted(parts)], length=16)
    return Dataset(splits=splits, info=info, version=version)


def build_model(cfg, info: dict, rngs: nnx.Rngs) -> TransientClassifier:
    return build_classifier(cfg.model, info["num_classes"], meta_dim=info["meta_dim"], rngs=rngs)


def make_logits_fn(cfg, info: dict):
    """The classifier reads its inputs (time, flux, flux_err, band, mask, meta) from the batch."""
    return lambda model, batch, train, rng: model(batch, train=train, rng=rng)


def load_inputs(cfg, info: dict, path: str | Path) -> tuple[Arrays, np.ndarray]:
    """User curves in any accepted format (labels optional), padded and standardised as in training."""
    fmt = cfg.data.format if cfg.data.path else "auto"
    lcs, ids, _ = lc.load_user_data(path, fmt, class_names=info["class_names"], training=False)
    arrays = _to_arrays(lcs, info["max_len"], cfg.data.use_metadata, info["meta_mean"], info["meta_std"])
    arrays["sample_weight"] = np.ones(len(arrays["label"]), np.float32)
    return arrays, np.asarray(ids)


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
