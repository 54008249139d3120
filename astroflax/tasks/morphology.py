"""``morphology``: classify galaxy images into E, S0, Sa, Sb, Sc, Irr (g, r, i; 64x64 by default).

Data: rendered galaxies (:mod:`astroflax.data.galaxy_render`; no labelled real set of useful size
exists offline), generated once per generator config and cached under
``astroflax.runtime.cache_dir()/morphology/``. Half of the training images (``display_fraction``)
first pass through a survey-composite imitation (display stretch, blurred colour, 8-bit levels),
because real cutouts arrive that way. The 21 Galaxy Zoo cutouts bundled with the package are never
trained on or scored; the evaluation report runs them through the evaluated run as a real-image
smoke test: smooth (E/S0) vs featured (Sa/Sb/Sc/Irr) against the Galaxy Zoo vote majority.
User data (``data.path``, see ``docs/user_data/morphology.md``): an ImageFolder, a table of image
files with a label or vote-fraction columns (soft labels), or a Galaxy10-layout HDF5 file; read by
:func:`astroflax.data.images.load_user_images`, classes and bands from the data.
Model: :class:`~astroflax.models.cnn.SmallCNN` with BatchNorm, trained with on-device augmentation
from the step key (:func:`~astroflax.models.cnn.augment_images`): random 90-degree rotations and
flips (optionally small-angle rotations), per-band gains and random desaturation, so that colour
balance alone cannot decide the class. Presets: ``presets/morphology.yaml``.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
import optax
from pydantic import Field, model_validator

from astroflax.data import galaxy_render as gr
from astroflax.data import images as im
from astroflax.data.cache import content_hash
from astroflax.data.splits import indices_from_codes
from astroflax.errors import ConfigError
from astroflax.models.cnn import SmallCNN, augment_images
from astroflax.tasks import classify
from astroflax.tasks.base import Dataset, Section
from astroflax.tasks.builders import classification_task

SMOKE_NOTE = (
    "Smoke test of real-image input only, NOT a benchmark: the model was trained on rendered galaxies; "
    "the cutouts are few and Galaxy Zoo's smooth/featured question does not map exactly onto E/S0 vs "
    "Sa/Sb/Sc/Irr. Reference calls come from volunteer vote fractions ('volunteers') or from Zoobot-"
    "predicted fractions ('automated'); the 3 GZ2 JPEGs have no labels here."
)


class MorphologyData(Section):
    path: str | None = Field(
        None, description="user images: an ImageFolder (one subfolder per class, optionally under train/val/test), a "
        "table (CSV/TSV/Parquet/FITS...) of image files with a label or vote columns, or a Galaxy10 HDF5 file; "
        "null = rendered galaxies")
    image_size: int = Field(64, ge=16, le=256, description="rendered/model image side in pixels (square, 3 bands g, r, i)")
    split_seed: int = Field(20240612, description="seed of the stratified 70/10/20 split of user images without a split")
    label_column: str = Field("label", description="user table: column with each image's class")
    file_column: str = Field("file", description="user table: column with each image's file (relative to the table "
                             "or data.image_dir)")
    vote_columns: list[str] = Field(
        [], description="user table: vote counts/fractions, one column per class (soft labels; class = argmax)")
    class_names: list[str] = Field(
        [], description="user data: class names for integer labels (index = label) or the class order of text "
        "labels / folders; with vote_columns, one name per vote column")
    image_dir: str | None = Field(None, description="user table: folder that relative file names are read from")
    skip_unreadable: bool = Field(
        False, description="drop (and record) unreadable/invalid user image files instead of failing on the first")
    train_per_class: int = Field(1500, ge=8, description="rendered training galaxies per class")
    val_per_class: int = Field(150, ge=2, description="rendered validation galaxies per class")
    test_per_class: int = Field(300, ge=2, description="rendered test galaxies per class")
    seed: int = Field(20240611, description="seed of the rendered set (same seed + config = same pixels)")
    psf: Literal["gaussian", "moffat", "kolmogorov", "mixed"] = Field(
        "mixed", description="PSF profile (GalSim); mixed = Moffat or Kolmogorov, half each")
    psf_fwhm_min: float = Field(0.5, gt=0, description="smallest PSF FWHM, in pixels at image_size 64 (scaled with size)")
    psf_fwhm_max: float = Field(1.2, gt=0, description="largest PSF FWHM, in pixels at image_size 64 (scaled with size); "
                                "0.5-1.2 matches, by eye, the stars in the bundled Galaxy Zoo cutouts shrunk to 64 px")
    depth: float = Field(23.5, description="deepest 5-sigma point-source depth (r mag, zero point 22.5); g 0.6 mag deeper, i 0.5 shallower (DECaLS-like)")
    depth_spread: float = Field(0.5, ge=0, description="each image's depth is uniform in [depth - depth_spread, depth]")
    mag_min: float = Field(13.0, description="brightest total r magnitude")
    mag_max: float = Field(17.0, description="faintest total r magnitude (the bundled Galaxy Zoo DECaLS cutouts, inverted "
                           "through their display stretch, are r = 13.7-16.8, a lower bound on their brightness)")
    size_min: float = Field(0.03, gt=0, le=0.5, description="smallest galaxy (Petrosian) half-light radius, as a fraction of "
                            "the image side (one range for every class: cutouts are framed on the galaxy; Galaxy Zoo DECaLS: at most 0.059, "
                            "the bundled cutouts 0.03-0.06)")
    size_max: float = Field(0.06, gt=0, le=0.5, description="largest galaxy half-light radius, as a fraction of the image side")
    stars_per_image: float = Field(
        2.5, ge=0, description="mean number of field stars per image (Poisson, up to 8); survey cutouts are often crowded"
    )
    background_galaxies: float = Field(
        12.0, ge=0, le=40, description="mean number of faint background galaxies per image (Poisson, r 18.5 to depth + 0.5, "
        "steep number counts): real cutouts are full of them")
    softening: float = Field(0.1, gt=0, le=10, description="asinh softening of the per-image stretch (relative to the core)")
    softening_jitter: float = Field(
        0.7, ge=0, le=3, description="training images use softening * exp(U(-j, j)) so the model tolerates other stretches (e.g. survey PNGs)"
    )
    display_fraction: float = Field(
        0.5, ge=0, le=1, description="share of training images passed through a survey-PNG-like display stretch + 8-bit quantisation"
    )
    crop: float = Field(1.0, gt=0, le=1, description="centre-crop fraction of the shorter side for real images before resizing")
    cache: bool = Field(True, description="cache the rendered set on disk under the user cache dir")

    @model_validator(mode="after")
    def _ranges(self) -> MorphologyData:
        if self.psf_fwhm_min > self.psf_fwhm_max:
            raise ValueError(f"psf_fwhm_min = {self.psf_fwhm_min} must be <= psf_fwhm_max = {self.psf_fwhm_max}")
        if self.size_min > self.size_max:
            raise ValueError(f"size_min = {self.size_min} must be <= size_max = {self.size_max}")
        if self.mag_min > self.mag_max:
            raise ValueError(f"mag_min = {self.mag_min} must be <= mag_max = {self.mag_max}")
        return self


class MorphologyModel(Section):
    widths: list[Annotated[int, Field(ge=1)]] = Field(
        [16, 32, 64, 96], min_length=1, max_length=6, description="conv channels per stage (2x2 pooling between stages)")
    blocks: int = Field(1, ge=1, le=4, description="conv+BatchNorm+ReLU blocks per stage")
    dropout: float = Field(0.1, ge=0, lt=1, description="dropout before the classifier")
    augment: bool = Field(True, description="random 90-degree rotations and flips in training")
    desaturate: float = Field(0.5, ge=0, le=1, description="probability that a training image is blended towards grey by a random amount")
    colour_jitter: float = Field(
        0.15, ge=0, le=1, description="training images get per-band gains exp(N(0, x)): colour balance must not decide the class"
    )
    rotate_degrees: float = Field(0.0, ge=0, le=45, description="extra random rotation in [-x, x] degrees in training (0 = off)")
    bn_momentum: float = Field(0.9, gt=0, lt=1, description="BatchNorm running-average momentum")
    space_to_depth: int = Field(2, ge=1, le=4, description="fold f x f pixel blocks into channels first (lossless; ~f^2 cheaper)")


def render_config(d: MorphologyData) -> gr.RenderConfig:
    """The generator config of the data section (PSF widths are given at size 64 and scale with it)."""
    scale = d.image_size / 64
    return gr.RenderConfig(
        image_size=d.image_size, psf=d.psf, psf_fwhm=(d.psf_fwhm_min * scale, d.psf_fwhm_max * scale),
        depth=d.depth, depth_spread=d.depth_spread, mag_range=(d.mag_min, d.mag_max), stars_per_image=d.stars_per_image,
        background_galaxies=d.background_galaxies, size_range=(d.size_min, d.size_max),
    )


def load_data(cfg) -> Dataset:
    d = cfg.data
    if d.path:
        return _load_user(d)
    per_class = {"train": d.train_per_class, "val": d.val_per_class, "test": d.test_per_class}
    splits, key = gr.rendered_splits(render_config(d), per_class, d.seed, d.softening, d.softening_jitter,
                                     d.display_fraction, cache=d.cache)
    k = len(gr.CLASS_NAMES)
    info = {
        "class_names": list(gr.CLASS_NAMES),
        "num_classes": k,
        "smooth_classes": list(gr.SMOOTH_CLASSES),
        "bands": list(gr.BANDS),
        "image_size": d.image_size,
        "softening": d.softening,
        "crop": d.crop,
        "render_config": dataclasses.asdict(render_config(d)),
        "render_key": key,
        "split_sizes": {s: len(a["label"]) for s, a in splits.items()},
        "class_counts": {s: np.bincount(a["label"], minlength=k).tolist() for s, a in splits.items()},
    }
    return Dataset(splits=splits, info=info, version=f"render-{key}")


def _load_user(d: MorphologyData) -> Dataset:
    """The user's images, normalised like rendered ones; vote fractions become ``soft_label``."""
    u = im.load_user_images(d.path, im.options_from(d))
    with np.errstate(over="ignore", invalid="ignore"):
        images = im.normalise(u.images, d.softening)
    im.require_finite(images, u.ids)
    codes, info = im.split_user_images(u, d.path, d.split_seed)
    arrays = {"image": images, "label": u.labels, "object_id": u.rows}
    if u.soft is not None:
        arrays["soft_label"] = u.soft
    splits = {name: {k: v[idx] for k, v in arrays.items()} for name, idx in indices_from_codes(codes).items()}
    info.update({
        "class_names": u.class_names,
        "num_classes": len(u.class_names),
        "channels": u.channels,
        "bands": im.band_names(u),
        "image_size": d.image_size,
        "softening": d.softening,
        "crop": d.crop,
        "soft_labels": u.soft is not None,
    })
    settings = d.model_dump(mode="json", exclude={"path"})
    version = content_hash(images, u.labels, u.soft if u.soft is not None else b"", codes, settings)
    return Dataset(splits=splits, info=info, version=f"user-{version}")


def build_model(cfg, info: dict, rngs) -> SmallCNN:
    m = cfg.model
    if info["image_size"] % m.space_to_depth:
        raise ConfigError(
            f"config key 'model.space_to_depth' = {m.space_to_depth}: must divide data.image_size = {info['image_size']}"
        )
    return SmallCNN(info.get("channels", 3), info["num_classes"], widths=tuple(m.widths), blocks=m.blocks, dropout=m.dropout,
                    bn_momentum=m.bn_momentum, space_to_depth=m.space_to_depth, rngs=rngs)


def make_augment_fn(cfg) -> Callable[[jax.Array, jax.Array], jax.Array]:
    """``(images, rng) -> training view``, with the configured augmentation bound."""
    m = cfg.model
    return functools.partial(augment_images, dihedral=m.augment, rotate_degrees=m.rotate_degrees,
                             desaturate=m.desaturate, colour_jitter=m.colour_jitter)


def make_logits_fn(cfg, info: dict):
    """``(model, batch, train, rng) -> logits``: augmentation (training only), then the CNN."""
    augment = make_augment_fn(cfg)

    def logits(model: SmallCNN, batch, train: bool, rng):
        x = batch["image"]
        if train:
            x = augment(x, rng)
        return model(x, train=train, rng=jax.random.fold_in(rng, 13) if train else None)

    return logits


def make_predict_stochastic_fn(cfg, info: dict):
    """MC-dropout passes: the head's dropout on, BatchNorm on its running averages, no augmentation."""
    if cfg.model.dropout <= 0:
        return None
    return lambda model, batch, rng: jax.nn.softmax(model(batch["image"], rng=rng, mc_dropout=True), axis=-1)


def make_loss_fn(cfg, info: dict):
    """Cross-entropy against the normalised vote fractions (``soft_label``) when the data have
    them, else the usual weighted cross-entropy on the hard label; accuracy uses the hard label."""
    forward = make_logits_fn(cfg, info)

    def loss_fn(model, batch, rng, train):
        logits = forward(model, batch, train, rng)
        if "soft_label" not in batch:
            return classify.weighted_cross_entropy(logits, batch)
        targets = batch["soft_label"]
        smoothing = batch.get("_label_smoothing", 0.0)
        if smoothing:
            targets = optax.smooth_labels(targets, smoothing)
        per_example = optax.softmax_cross_entropy(logits, targets)
        w = jnp.broadcast_to(jnp.asarray(batch.get("_weight", 1.0), jnp.float32), per_example.shape)
        loss = jnp.sum(per_example * w) / jnp.maximum(jnp.sum(w), 1e-9)
        accuracy = jnp.mean((jnp.argmax(logits, -1) == batch["label"]).astype(jnp.float32))
        return loss, {"accuracy": accuracy}

    return loss_fn


def smooth_probability(probs: np.ndarray, info: dict) -> np.ndarray:
    idx = [info["class_names"].index(c) for c in info["smooth_classes"]]
    return probs[:, idx].sum(axis=-1)


def galaxy_zoo_section(probs: np.ndarray, gz_index: np.ndarray, info: dict) -> dict[str, Any]:
    """Per real cutout: model class and smooth/featured call vs the Galaxy Zoo majority; agreement fractions."""
    gz = im.load_galaxy_zoo_smoke()
    p_smooth = smooth_probability(probs, info)
    rows, agree_all, agree_vol = [], [], []
    for p, ps, i in zip(probs, p_smooth, gz_index):
        sf, ff, af = (float(gz[k][i]) for k in ("smooth_fraction", "featured_fraction", "artifact_fraction"))
        call = "smooth" if ps >= 0.5 else "featured"
        ref = None if np.isnan(sf) else ("smooth" if sf >= ff else "featured")
        agree = None if ref is None else call == ref
        src = str(gz["label_source"][i])
        if agree is not None:
            agree_all.append(agree)
            if src == "volunteers":
                agree_vol.append(agree)
        rows.append({
            "id": str(gz["id"][i]), "survey": str(gz["survey"][i]), "label_source": src,
            "predicted_class": info["class_names"][int(np.argmax(p))], "p_smooth": float(ps), "model_call": call,
            "reference_call": ref, "agree": agree,
            "smooth_fraction": None if np.isnan(sf) else sf, "featured_fraction": None if np.isnan(ff) else ff,
            "artifact_fraction": None if np.isnan(af) else af,
            "artifact_majority": bool(af > max(sf, ff)) if ref is not None else None,
            "total_votes": int(gz["total_votes"][i]) if gz["total_votes"][i] >= 0 else None,
        })
    frac = lambda a: float(np.mean(a)) if a else None
    refs = [r["reference_call"] for r in rows if r["reference_call"] is not None]
    labelled = [r for r in rows if r["featured_fraction"] is not None]
    rho = None
    if len(labelled) >= 3:
        from scipy.stats import spearmanr

        rho = float(spearmanr([1 - r["p_smooth"] for r in labelled], [r["featured_fraction"] for r in labelled]).statistic)
        rho = rho if np.isfinite(rho) else None
    return {
        "note": SMOKE_NOTE,
        "n_cutouts": len(rows),
        "n_labelled": len(agree_all),
        "agreement": frac(agree_all),
        "n_volunteer_labelled": len(agree_vol),
        "agreement_volunteers": frac(agree_vol),
        "model_smooth_fraction": float(np.mean(p_smooth >= 0.5)) if len(rows) else None,
        # What always giving the commoner reference call would score: the set is small and unbalanced.
        "constant_call_agreement": max(refs.count("smooth"), refs.count("featured")) / len(refs) if refs else None,
        # Rank correlation of the model's P(featured) with the featured vote fraction: uses the
        # graded votes, not only the majority call (None when the model gives every cutout one value).
        "spearman_featured": rho,
        "cutouts": rows,
    }


def galaxy_zoo_inputs(info: dict) -> dict[str, np.ndarray]:
    """The bundled real cutouts as model inputs (prepared exactly like ``predict`` prepares user files)."""
    gz = im.load_galaxy_zoo_smoke()
    return {"image": im.prepare_real(gz["image_rgb"], info["image_size"], info.get("crop", 1.0), info["softening"])}


def report(probs: np.ndarray, arrays: dict, info: dict, out_dir: Path, run: Any = None) -> dict[str, Any]:
    """The classification report, plus the Galaxy Zoo smoke test predicted by ``run`` (when given)."""
    rep = classify.report(probs, arrays, info, out_dir)
    if "smooth_classes" not in info:  # the user's own classes: the Galaxy Zoo smooth/featured test does not apply
        rep["data"] = f"user images: {info['source']['path']} ({info['source']['format']})"
        return rep
    rep["data"] = "rendered galaxies (astroflax.data.galaxy_render)"
    if run is None:
        rep["galaxy_zoo_smoke"] = {"note": SMOKE_NOTE, "skipped": "no run to predict the cutouts with"}
        return rep
    gz_probs = run.predict(galaxy_zoo_inputs(info))
    section = galaxy_zoo_section(gz_probs, np.arange(len(gz_probs)), info)
    section["checkpoint_step"] = run.step
    rep["galaxy_zoo_smoke"] = section
    return rep


def load_inputs(cfg, info: dict, path: str | Path):
    """Images in any training layout (a file, a folder, an ImageFolder, a table, a Galaxy10 HDF5
    file; labels optional) -> model inputs prepared as in training; ids are the files (or rows)."""
    opt, user = _input_options(cfg, info)
    return _input_arrays(im.load_user_images(path, opt), info, user)


def input_batches(cfg, info: dict, path: str | Path, size: int):
    """A plain folder of images, ``size`` files at a time (each image is stretched on its own, so
    a batch gives exactly the rows of a whole read); None for other inputs (read whole)."""
    path = Path(path)
    if not path.is_dir() or any(p.is_dir() and not p.name.startswith(".") for p in path.iterdir()):
        return None  # an ImageFolder of classes (labels optional) is read whole
    opt, user = _input_options(cfg, info)
    files = im.list_image_files(path)

    def batches():
        for start in range(0, len(files), size):
            chunk = files[start:start + size]
            u = im.load_user_images(path, opt, files=chunk)
            yield _input_arrays(u, info, user)

    return batches()


def _input_options(cfg, info: dict):
    d = cfg.data if cfg is not None else MorphologyData()
    user = "channels" in info  # trained on user data: its bands; the rendered model reads g, r, i (grey repeated)
    opt = im.options_from(d, size=info["image_size"], crop=info.get("crop", 1.0), labels_required=False,
                          class_names=tuple(info["class_names"]) if user else (), channels=info.get("channels", 3),
                          replicate_grey=not user, skip_unreadable=False)
    return opt, user


def _input_arrays(u, info: dict, user: bool):
    with np.errstate(over="ignore", invalid="ignore"):
        images = im.normalise(u.images, info["softening"])
    im.require_finite(images, u.ids)
    labels = u.labels if u.labels is not None and user else np.zeros(len(u.ids), np.int32)
    return {"image": images, "label": labels}, np.array(u.ids)


def format_predictions(probs: np.ndarray, ids: np.ndarray, info: dict) -> list[dict[str, Any]]:
    """Class rows with the smooth/featured call up front (E + S0 probability >= 0.5 = smooth)."""
    rows = classify.format_predictions(probs, ids, info, id_name="file")
    if "smooth_classes" not in info:
        return rows
    for row, ps in zip(rows, smooth_probability(probs, info)):
        row["smooth_or_featured"] = "smooth" if ps >= 0.5 else "featured"
        row["p_smooth"] = float(ps)
    return [{k: r[k] for k in ("file", "predicted_class", "smooth_or_featured", "p_smooth")} | r for r in rows]


TASK = classification_task(
    "morphology",
    "galaxy morphology (E/S0/Sa/Sb/Sc/Irr) from g,r,i images; trained on rendered galaxies, CNN + BatchNorm",
    data_config=MorphologyData,
    model_config=MorphologyModel,
    load_data=load_data,
    build_model=build_model,
    make_logits_fn=make_logits_fn,
    make_predict_stochastic_fn=make_predict_stochastic_fn,  # MC-dropout with BatchNorm's running averages
    report=report,
    make_loss_fn=make_loss_fn,
    load_inputs=load_inputs,
    input_batches=input_batches,
    format_predictions=format_predictions,
    targets={"accuracy": (">=", 0.90), "ece": ("<=", 0.03)},
)
