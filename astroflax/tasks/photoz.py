"""``photoz``: photometric redshifts with calibrated uncertainties from SDSS ugriz photometry.

Data: 9,988 real SDSS galaxies with spectroscopic redshifts (bundled, see
``astroflax/data/files/PROVENANCE_sdss_photoz.md``); inputs are extinction-corrected model
magnitudes and the four adjacent colours (optionally log10 of the magnitude errors), with a
fixed 70/10/20 split stored in the data file. During training the magnitudes are perturbed
on device with Gaussian noise of their reported errors (capped at ``data.max_noise_err``), so
the model sees the measurement scatter it will meet at prediction time.

Model: :class:`~astroflax.models.mlp.MLPRegressor`, an MLP with a heteroscedastic Gaussian
head or a K-component mixture density head, predicting z directly (in units of the training
z standard deviation internally). Loss: Gaussian/mixture NLL, optionally + a Huber term on
the mean (the NLL still trains sigma). Validation ``loss`` = mean NLL of z.

Presets: ``presets/photoz.yaml``. Both use the mixture head: on this data the Gaussian head
reaches the same sigma_NMAD but is slightly under-confident (test coverage_68 0.715-0.72 vs
0.66-0.68 for K=3, two seeds each).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Annotated, Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
from pydantic import Field

from astroflax.data import photometry as phot
from astroflax.data.splits import indices_from_codes
from astroflax.models.mlp import MLPRegressor
from astroflax.tasks import regress
from astroflax.tasks.base import Dataset, Section
from astroflax.tasks.builders import regression_task

RAW_ROWS = 10_000  # rows of the original FITS file (12 dropped, see PROVENANCE)


class PhotozData(Section):
    noise_augment: bool = Field(True, description="perturb magnitudes with their reported errors during training")
    max_noise_err: float = Field(1.0, gt=0, description="cap (mag) on the error used for the training noise")
    use_errors: bool = Field(False, description="also feed log10(magnitude error) of each band to the network")


class PhotozModel(Section):
    hidden: list[Annotated[int, Field(ge=1)]] = Field([128, 128, 128], min_length=1, description="widths of the MLP hidden layers")
    activation: Literal["gelu", "relu", "silu", "tanh"] = Field("gelu", description="hidden activation")
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout rate after each hidden layer")
    layer_norm: bool = Field(False, description="LayerNorm after each hidden Dense layer")
    head: Literal["gaussian", "mixture"] = Field(
        "gaussian", description="gaussian: mean + log sigma; mixture: K Gaussians (mixture density network)"
    )
    num_components: int = Field(3, ge=1, le=32, description="Gaussians of the mixture head (head=mixture only)")
    loss: Literal["nll", "huber"] = Field("nll", description="nll, or huber = NLL + huber_weight * Huber(mean - z)")
    huber_weight: float = Field(1.0, ge=0, description="weight of the Huber term (loss=huber)")
    huber_delta: float = Field(0.5, gt=0, description="Huber threshold in units of the training z std")


def feature_names(use_errors: bool) -> list[str]:
    b = phot.BANDS
    names = [f"mag_{x}" for x in b] + [f"{x}-{y}" for x, y in zip(b[:-1], b[1:])]
    return names + ([f"log10_err_{x}" for x in b] if use_errors else [])


def features(mag, mag_err, use_errors: bool, xp=np):
    """Network inputs from magnitudes (numpy or jax): mags, colours [, log10 errors]."""
    parts = [mag, phot.colours(mag)]
    if use_errors:
        parts.append(xp.log10(xp.maximum(mag_err, 1e-4)))
    return xp.concatenate(parts, axis=-1)


def make_forward_fn(cfg, info: dict):
    """``(model, batch, train, rng) -> mixture``: noise augmentation (training) then features."""
    d = cfg.data

    def forward(model: MLPRegressor, batch, train: bool, rng):
        mag = jnp.asarray(batch["mag"], jnp.float32)
        mag_err = jnp.asarray(batch["mag_err"], jnp.float32)
        drop_rng = None
        if train:
            noise_rng, drop_rng = jax.random.split(rng)
            if d.noise_augment:
                sigma = jnp.minimum(mag_err, d.max_noise_err)
                mag = mag + sigma * jax.random.normal(noise_rng, mag.shape, mag.dtype)
        return model(features(mag, mag_err, d.use_errors, xp=jnp), train=train, rng=drop_rng)

    return forward


def make_loss_fn(cfg, info: dict):
    """Mixture NLL (+ Huber on the mean, in units of the training z std) as configured."""
    m = cfg.model
    forward = make_forward_fn(cfg, info)
    loss = functools.partial(regress.distribution_loss, loss=m.loss, huber_weight=m.huber_weight,
                             huber_delta=m.huber_delta, scale=info["target_std"])
    return lambda model, batch, rng, train: loss(forward(model, batch, train, rng), batch["z"], batch)


def _train_stats(mag: np.ndarray, err: np.ndarray, z: np.ndarray, use_errors: bool) -> dict:
    x = features(mag.astype(np.float64), err.astype(np.float64), use_errors)
    return {"input_mean": x.mean(0).tolist(), "input_std": (x.std(0) + 1e-6).tolist(),
            "target_mean": float(z.mean()), "target_std": float(z.std())}


def load_data(cfg) -> Dataset:
    dcfg = cfg.data
    raw = phot.load_bundled()
    arrays = {"mag": raw["mag"], "mag_err": raw["mag_err"], "z": raw["z"].astype(np.float32),
              "object_id": raw["object_id"]}
    parts = indices_from_codes(raw["split"])
    splits = {name: {k: v[idx] for k, v in arrays.items()} for name, idx in parts.items()}
    tr = splits["train"]
    info: dict[str, Any] = {
        "target": "z",
        "redshift": True,
        "bands": list(phot.BANDS),
        "features": feature_names(dcfg.use_errors),
        "use_errors": dcfg.use_errors,
        **_train_stats(tr["mag"], tr["mag_err"], tr["z"], dcfg.use_errors),
        "split_sizes": {k: int(len(v["z"])) for k, v in splits.items()},
        "split_method": "stratified on 20 equal-count z bins, seed "
                        f"{int(raw['split_seed'])} (astroflax.data.splits.stratified_split_codes)",
        "rows_dropped": RAW_ROWS - int(len(arrays["z"])),
    }
    return Dataset(splits=splits, info=info, version=f"sdss-photoz-v1-e{int(dcfg.use_errors)}")


def build_model(cfg, info: dict, rngs) -> MLPRegressor:
    m = cfg.model
    return MLPRegressor(
        info["input_mean"], info["input_std"], info["target_mean"], info["target_std"],
        hidden=m.hidden, activation=m.activation, dropout=m.dropout, layer_norm=m.layer_norm,
        head=m.head, num_components=m.num_components if m.head == "mixture" else 1, rngs=rngs,
    )


def load_inputs(cfg, info: dict, path: str | Path):
    """A CSV/FITS table of ugriz magnitudes or fluxes; see :mod:`astroflax.data.photometry`."""
    p = phot.read_photometry(path)
    return {"mag": p.mag, "mag_err": p.mag_err}, p.ids


TASK = regression_task(
    "photoz",
    "SDSS photometric redshifts with calibrated uncertainty (MLP, Gaussian or mixture head)",
    data_config=PhotozData,
    model_config=PhotozModel,
    load_data=load_data,
    build_model=build_model,
    make_forward_fn=make_forward_fn,
    make_loss_fn=make_loss_fn,
    num_components=lambda cfg: cfg.model.num_components if cfg.model.head == "mixture" else 1,
    target="z",
    normalisation_keys=("input_mean", "input_std", "target_mean", "target_std"),
    targets={"sigma_nmad": ("<=", 0.02), "outlier_fraction": ("<=", 0.01),
             "coverage_68": ("between", (0.65, 0.71)), "coverage_95": ("between", (0.93, 0.97))},
    stochastic=lambda cfg: cfg.model.dropout > 0,  # MC-dropout needs dropout (the MLP has no batch norm)
    load_inputs=load_inputs,
)
