"""``photoz``: photometric redshifts with calibrated uncertainties from SDSS ugriz photometry.

Data: 9,988 real SDSS galaxies with spectroscopic redshifts (bundled, see
``astroflax/data/files/PROVENANCE_sdss_photoz.md``), or the user's catalogue (``data.path``,
any bands, magnitudes or fluxes; read by :func:`astroflax.data.photometry.read_catalogue`, see
``docs/user_data/photoz.md``); inputs are extinction-corrected magnitudes and the adjacent
colours (optionally log10 of the magnitude errors), plus one missing-band indicator per band
when some band is missing (missing entries are set to their training mean), with a fixed
70/10/20 split (stored in the bundled file; a ``split`` column or z-stratified for user data). During training the magnitudes are perturbed
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
import itertools
from pathlib import Path
from typing import Annotated, Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
from pydantic import Field

from astroflax.data import photometry as phot
from astroflax.data import tables
from astroflax.data.cache import content_hash
from astroflax.data.splits import indices_from_codes
from astroflax.errors import DataError
from astroflax.models.mlp import MLPRegressor
from astroflax.tasks import regress
from astroflax.tasks.base import Dataset, Section
from astroflax.tasks.builders import regression_task

RAW_ROWS = 10_000  # rows of the original FITS file (12 dropped, see PROVENANCE)
BUNDLED_SPLIT_SEED = 20240917  # the bundled split's seed; also the default for user data


class PhotozData(Section):
    path: str | None = Field(None, description="a catalogue (CSV/TSV, Parquet, FITS, HDF5, ECSV, VOTable) with "
                             "photometry and a spectroscopic redshift; null = the bundled SDSS set")
    hdu: int | str | None = Field(None, description="FITS HDU (or HDF5 path) of the table; null = the first table")
    target: str | None = Field(None, description="redshift column; null = the first of z, zspec, z_spec, specz, "
                               "spec_z, redshift that is not a band column")
    bands: list[str] = Field(list(phot.BANDS), min_length=2, description="band names, in wavelength order "
                             "(colours are differences of adjacent bands)")
    mag_columns: str | None = Field(None, description="magnitude columns, e.g. 'mag_{band}', or a vector column; "
                                    "null = try standard names (u, mag_u, u_mag, modelmag_u)")
    err_columns: str | None = Field(None, description="magnitude-error columns, e.g. 'magerr_{band}'")
    flux_columns: str | None = Field(None, description="flux columns instead of magnitudes, e.g. 'flux_{band}' "
                                     "or the SDSS vector column 'modelflux'")
    flux_err_columns: str | None = Field(None, description="1-sigma flux errors, e.g. 'fluxerr_{band}'")
    flux_ivar_columns: str | None = Field(None, description="flux inverse variances, e.g. 'modelflux_ivar'")
    flux_unit: str | None = Field(None, description="flux unit (nanomaggy, uJy, nJy, mJy, Jy, any astropy flux "
                                  "density); null = the file's unit (FITS TUNIT), nanomaggy for SDSS modelflux")
    zero_point: float | None = Field(None, description="AB magnitude of flux 1 (mag = zp - 2.5 log10 flux), "
                                     "instead of flux_unit")
    extinction_columns: str | None = Field(None, description="Galactic extinction (mag) subtracted from each band, "
                                           "e.g. 'extinction' (vector) or 'ext_{band}'; null = those names if present")
    id_column: str | None = Field(None, description="object id column; null = object_id/objid/id, else row number")
    sentinels: list[float] = Field(list(phot.DEFAULT_SENTINELS), description="'no data' codes: a band with one "
                                   "of these as value or error is masked, a redshift with one drops the row")
    min_bands: int = Field(3, ge=1, description="rows with fewer observed bands are dropped (training only)")
    use_mask: bool | None = Field(None, description="feed one missing-band indicator per band; null = only if "
                                  "some band is missing in the data")
    split_seed: int = Field(BUNDLED_SPLIT_SEED, description="seed of the stratified split (no 'split' column)")
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


def feature_names(use_errors: bool, bands=phot.BANDS, use_mask: bool = False) -> list[str]:
    b = list(bands)
    names = [f"mag_{x}" for x in b] + [f"{x}-{y}" for x, y in itertools.pairwise(b)]
    names += [f"log10_err_{x}" for x in b] if use_errors else []
    return names + ([f"missing_{x}" for x in b] if use_mask else [])


def features(mag, mag_err, use_errors: bool, xp=np):
    """Network inputs from magnitudes (numpy or jax): mags, colours [, log10 errors]."""
    parts = [mag, phot.colours(mag)]
    if use_errors:
        parts.append(xp.log10(xp.maximum(mag_err, 1e-4)))
    return xp.concatenate(parts, axis=-1)


def observed_features(observed, use_errors: bool, xp=np):
    """Which entries of :func:`features` are measured: a colour needs both of its bands."""
    parts = [observed, observed[..., :-1] & observed[..., 1:]] + ([observed] if use_errors else [])
    return xp.concatenate(parts, axis=-1)


def masked_features(mag, mag_err, observed, use_errors: bool, fill, xp=np):
    """Features with every unmeasured entry set to its training mean ``fill`` (0 once the model
    standardises them), then one indicator per band (1 = missing): the model sees the mask."""
    x = features(mag, mag_err, use_errors, xp)
    x = xp.where(observed_features(observed, use_errors, xp), x, xp.asarray(fill, x.dtype))
    return xp.concatenate([x, 1.0 - observed.astype(x.dtype)], axis=-1)


def _settings(cfg, info: dict) -> tuple[bool, bool]:
    """(use_errors, use_mask) as the data were made: from ``info`` (also for converted datasets)."""
    return bool(info.get("use_errors", cfg.data.use_errors)), bool(info.get("use_mask", False))


def make_forward_fn(cfg, info: dict):
    """``(model, batch, train, rng) -> mixture``: noise augmentation (training) then features."""
    d = cfg.data
    use_errors, use_mask = _settings(cfg, info)
    n_meas = len(info["input_mean"]) - (len(info["bands"]) if use_mask else 0)
    fill = np.asarray(info["input_mean"][:n_meas], np.float32)

    def forward(model: MLPRegressor, batch, train: bool, rng):
        mag = jnp.asarray(batch["mag"], jnp.float32)
        mag_err = jnp.asarray(batch["mag_err"], jnp.float32)
        drop_rng = None
        if train:
            noise_rng, drop_rng = jax.random.split(rng)
            if d.noise_augment:  # missing bands have mag_err 0: no noise there
                sigma = jnp.minimum(mag_err, d.max_noise_err)
                mag = mag + sigma * jax.random.normal(noise_rng, mag.shape, mag.dtype)
        if use_mask:
            x = masked_features(mag, mag_err, jnp.asarray(batch["mask"]) > 0.5, use_errors, fill, xp=jnp)
        else:
            x = features(mag, mag_err, use_errors, xp=jnp)
        return model(x, train=train, rng=drop_rng)

    return forward


def make_loss_fn(cfg, info: dict):
    """Mixture NLL (+ Huber on the mean, in units of the training z std) as configured."""
    m = cfg.model
    forward = make_forward_fn(cfg, info)
    loss = functools.partial(regress.distribution_loss, loss=m.loss, huber_weight=m.huber_weight,
                             huber_delta=m.huber_delta, scale=info["target_std"])
    return lambda model, batch, rng, train: loss(forward(model, batch, train, rng), batch["z"], batch)


def _train_stats(mag: np.ndarray, err: np.ndarray, z: np.ndarray, use_errors: bool,
                 observed: np.ndarray | None = None, bands=phot.BANDS) -> dict:
    x = features(mag.astype(np.float64), err.astype(np.float64), use_errors)
    if observed is None:
        mean, std = x.mean(0), x.std(0) + 1e-6
    else:  # moments of the measured entries only; indicators stay 0/1 (mean 0, std 1)
        seen = observed_features(observed, use_errors)
        empty = ~seen.any(axis=0)
        if empty.any():
            name = feature_names(use_errors, bands)[int(np.flatnonzero(empty)[0])]
            raise DataError(f"feature {name!r} is never measured in the training split; drop that band from data.bands")
        xm = np.where(seen, x, np.nan)
        mean, std = np.nanmean(xm, 0), np.nanstd(xm, 0) + 1e-6
        mean = np.concatenate([mean, np.zeros(observed.shape[1])])
        std = np.concatenate([std, np.ones(observed.shape[1])])
    return {"input_mean": mean.tolist(), "input_std": std.tolist(),
            "target_mean": float(z.mean()), "target_std": float(z.std())}


def _spec(d: PhotozData) -> phot.CatalogueSpec:
    return phot.CatalogueSpec(
        bands=tuple(d.bands), mag=d.mag_columns, err=d.err_columns, flux=d.flux_columns, flux_err=d.flux_err_columns,
        flux_ivar=d.flux_ivar_columns, flux_unit=d.flux_unit, zero_point=d.zero_point,
        extinction=d.extinction_columns, target=d.target, id_column=d.id_column, sentinels=tuple(d.sentinels),
        hdu=d.hdu)


def load_data(cfg) -> Dataset:
    return _load_user(cfg) if cfg.data.path else _load_bundled(cfg)


def _load_bundled(cfg) -> Dataset:
    dcfg = cfg.data
    raw = phot.load_bundled()
    arrays = {"mag": raw["mag"], "mag_err": raw["mag_err"], "z": raw["z"].astype(np.float32),
              "object_id": raw["object_id"]}
    parts = indices_from_codes(raw["split"])
    splits = {name: {k: v[idx] for k, v in arrays.items()} for name, idx in parts.items()}
    tr = splits["train"]
    gone = sorted(set(range(RAW_ROWS)) - set(raw["object_id"].tolist()))
    dropped = tables.DropLog()
    dropped.add("a non-positive MODELFLUX in some ugriz band (scripts/convert_sdss_photoz.py)",
                [f"row {r} (0-based)" for r in gone], count=len(gone))
    info: dict[str, Any] = {
        "target": "z",
        "redshift": True,
        "bands": list(phot.BANDS),
        "features": feature_names(dcfg.use_errors),
        "use_errors": dcfg.use_errors,
        "use_mask": False,
        **_train_stats(tr["mag"], tr["mag_err"], tr["z"], dcfg.use_errors),
        "source": tables.source_info(phot.BUNDLED, "npz (bundled SDSS, see PROVENANCE_sdss_photoz.md)", RAW_ROWS),
        "split_sizes": {k: len(v["z"]) for k, v in splits.items()},
        "split_method": "stratified on 20 equal-count z bins, seed "
                        f"{int(raw['split_seed'])} (astroflax.data.splits.stratified_split_codes)",
        "rows_dropped": RAW_ROWS - len(arrays["z"]),
        "dropped": dropped.to_info(),
    }
    return Dataset(splits=splits, info=info, version=f"sdss-photoz-v1-e{int(dcfg.use_errors)}")


def _load_user(cfg) -> Dataset:
    """The user's catalogue: missing bands masked, unusable rows dropped (and logged), split by z bins."""
    d: PhotozData = cfg.data
    cat = phot.read_catalogue(d.path, _spec(d), need_target=True, min_bands=d.min_bands)
    n = len(cat.z)
    if n == 0:
        raise DataError(f"{d.path}: no row left to train on ({cat.rows_read} read, all dropped: "
                        f"{'; '.join(e['reason'] for e in cat.dropped.to_info())})")
    any_missing = not cat.observed.all()
    # The mask inputs appear only when a band is missing (or data.use_mask asks for them): complete
    # photometry (the bundled set, most spectroscopic samples) then gives exactly the bundled
    # features and figures, and a model never trained with a missing band gets no indicator whose
    # value it has never seen; predict refuses missing bands for such a model instead.
    use_mask = any_missing if d.use_mask is None else d.use_mask
    if any_missing and not use_mask:
        j = int(np.flatnonzero(~cat.observed.all(axis=0))[0])
        raise DataError(f"{d.path}: band {d.bands[j]!r} is missing in {int((~cat.observed[:, j]).sum())} kept rows "
                        f"but data.use_mask is false; allow the mask, or set data.min_bands={len(d.bands)} to drop them")
    # 20 equal-count z bins as for the bundled set; fewer for small tables (>= 10 rows per bin).
    strata = phot.stratify_bins(cat.z, num_bins=int(np.clip(n // 10, 1, 20)))
    codes, method = tables.split_codes(None, strata, d.split_seed, split_values=cat.split)
    if cat.split is None:
        method = f"z stratified ({int(strata.max()) + 1} equal-count bins), " + method
    arrays: dict[str, np.ndarray] = {"mag": cat.mag, "mag_err": cat.mag_err, "z": cat.z.astype(np.float32),
                                     "object_id": cat.ids.astype(np.int64)}
    if use_mask:
        arrays["mask"] = cat.observed.astype(np.float32)
    parts = indices_from_codes(codes)
    splits = {name: {k: v[idx] for k, v in arrays.items()} for name, idx in parts.items()}
    sizes = {k: len(v["z"]) for k, v in splits.items()}
    if sizes["train"] == 0 or sizes["val"] == 0:
        raise DataError(f"{d.path}: split sizes {sizes} after {method}; training needs rows in train and val")
    tr = splits["train"]
    obs_tr = tr["mask"] > 0.5 if use_mask else None
    settings = d.model_dump(mode="json", exclude={"path"})
    info: dict[str, Any] = {
        "target": "z",
        "redshift": True,
        "bands": list(d.bands),
        "features": feature_names(d.use_errors, d.bands, use_mask),
        "use_errors": d.use_errors,
        "use_mask": use_mask,
        **_train_stats(tr["mag"], tr["mag_err"], tr["z"], d.use_errors, obs_tr, d.bands),
        "source": tables.source_info(d.path, cat.fmt, cat.rows_read, photometry=cat.kind, rows_kept=n,
                                     target_column=cat.target_column, columns=cat.spec.to_info()),
        # the configured patterns (None = standard names), which predict applies to new files
        "reader": _spec(d).to_info(),
        "split_sizes": sizes,
        "split_method": method,
        "rows_dropped": cat.dropped.total,
        "dropped": cat.dropped.to_info(),
        "masked_per_band": cat.masked_per_band,
        "masked": cat.masked.to_info(),
    }
    version = "photoz-user-" + content_hash(*(arrays[k] for k in sorted(arrays)), codes, settings)
    return Dataset(splits=splits, info=info, version=version)


def build_model(cfg, info: dict, rngs) -> MLPRegressor:
    m = cfg.model
    return MLPRegressor(
        info["input_mean"], info["input_std"], info["target_mean"], info["target_std"],
        hidden=m.hidden, activation=m.activation, dropout=m.dropout, layer_norm=m.layer_norm,
        head=m.head, num_components=m.num_components if m.head == "mixture" else 1, rngs=rngs,
    )


def load_inputs(cfg, info: dict, path: str | Path):
    """A catalogue in any accepted format, read with the column settings of the run's config
    (kept in ``info["reader"]``, also for runs on converted datasets; unset patterns = standard
    names, so a model trained on SDSS fluxes also reads a table of magnitudes). No redshift needed.
    ``astroflax predict`` streams table files through the same reader (astroflax.predict.tables);
    this whole-file read serves ``--mc-dropout`` and the Python API."""
    spec = phot.predict_spec(info)
    cat = phot.read_catalogue(path, spec, need_target=False)
    arrays = {"mag": cat.mag, "mag_err": cat.mag_err}
    if info.get("use_mask"):
        arrays["mask"] = cat.observed.astype(np.float32)
    elif not cat.observed.all():
        first = cat.masked.to_info()[0]
        raise DataError(f"{path}: {first['reason']} at {first['first'][0]} ({first['rows']} such rows): this model "
                        "was trained without missing bands and cannot use a mask; give every band, or retrain "
                        "with data.use_mask=true")
    return arrays, cat.ids


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
