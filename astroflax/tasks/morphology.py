"""``morphology``: classify galaxy images into E, S0, Sa, Sb, Sc, Irr (g, r, i; 64x64 by default).

Data: rendered galaxies (:mod:`astroflax.data.galaxy_render`; no labelled real set of useful size
exists offline), generated once per generator config and cached under
``astroflax.runtime.cache_dir()/morphology/``. Half of the training images (``display_fraction``)
first pass through a survey-composite imitation (display stretch, blurred colour, 8-bit levels),
because real cutouts arrive that way. The 21 Galaxy Zoo cutouts bundled with the package are never
trained on or scored; the evaluation report runs them through the evaluated run as a real-image
smoke test: smooth (E/S0) vs featured (Sa/Sb/Sc/Irr) against the Galaxy Zoo vote majority.
Model: :class:`~astroflax.models.cnn.SmallCNN` with BatchNorm, trained with on-device augmentation
from the step key: random 90-degree rotations and flips (optionally small-angle rotations),
per-band gains and random desaturation, so that colour balance alone cannot decide the class.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from pydantic import BaseModel, ConfigDict, Field, model_validator

from astroflax.data import galaxy_render as gr
from astroflax.data import images as im
from astroflax.errors import ConfigError
from astroflax.models.cnn import SmallCNN, dihedral_augment, rotate_small_angle
from astroflax.tasks import classify, register
from astroflax.tasks.base import Dataset, Task

GZ_FILE = "galaxy_zoo_smoke.npz"
SMOKE_NOTE = (
    "Smoke test of real-image input only, NOT a benchmark: the model was trained on rendered galaxies; "
    "the cutouts are few and Galaxy Zoo's smooth/featured question does not map exactly onto E/S0 vs "
    "Sa/Sb/Sc/Irr. Reference calls come from volunteer vote fractions ('volunteers') or from Zoobot-"
    "predicted fractions ('automated'); the 3 GZ2 JPEGs have no labels here."
)


class MorphologyData(BaseModel):
    model_config = ConfigDict(extra="forbid")

    image_size: int = Field(64, ge=16, le=256, description="rendered/model image side in pixels (square, 3 bands g, r, i)")
    train_per_class: int = Field(1500, ge=8, description="rendered training galaxies per class")
    val_per_class: int = Field(150, ge=2, description="rendered validation galaxies per class")
    test_per_class: int = Field(300, ge=2, description="rendered test galaxies per class")
    seed: int = Field(20240611, description="seed of the rendered set (same seed + config = same pixels)")
    psf: Literal["gaussian", "moffat", "mixed"] = Field("mixed", description="PSF profile; mixed = half each")
    psf_fwhm_min: float = Field(1.3, gt=0, description="smallest PSF FWHM, in pixels at image_size 64 (scaled with size)")
    psf_fwhm_max: float = Field(2.6, gt=0, description="largest PSF FWHM, in pixels at image_size 64 (scaled with size)")
    depth: float = Field(23.5, description="deepest 5-sigma point-source depth (r mag, zero point 22.5); g and i 0.3 mag shallower")
    depth_spread: float = Field(0.5, ge=0, description="each image's depth is uniform in [depth - depth_spread, depth]")
    mag_min: float = Field(14.5, description="brightest total r magnitude")
    mag_max: float = Field(18.0, description="faintest total r magnitude")
    stars_per_image: float = Field(
        2.5, ge=0, description="mean number of field stars per image (Poisson, up to 8); survey cutouts are often crowded"
    )
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
    def _ranges(self) -> "MorphologyData":
        if self.psf_fwhm_min > self.psf_fwhm_max:
            raise ValueError(f"psf_fwhm_min = {self.psf_fwhm_min} must be <= psf_fwhm_max = {self.psf_fwhm_max}")
        if self.mag_min > self.mag_max:
            raise ValueError(f"mag_min = {self.mag_min} must be <= mag_max = {self.mag_max}")
        return self


class MorphologyModel(BaseModel):
    model_config = ConfigDict(extra="forbid")

    widths: list[int] = Field([16, 32, 64, 96], min_length=1, max_length=6, description="conv channels per stage (2x2 pooling between stages)")
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
    scale = d.image_size / 64
    return gr.RenderConfig(
        image_size=d.image_size, psf=d.psf, psf_fwhm=(d.psf_fwhm_min * scale, d.psf_fwhm_max * scale),
        depth=d.depth, depth_spread=d.depth_spread, mag_range=(d.mag_min, d.mag_max), stars_per_image=d.stars_per_image,
    )


def _cache_key(d: MorphologyData) -> str:
    keys = ("train_per_class", "val_per_class", "test_per_class", "seed", "softening", "softening_jitter", "display_fraction")
    payload = json.dumps({"render": render_config(d).key(), **{k: getattr(d, k) for k in keys}}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def _render_splits(d: MorphologyData) -> dict[str, dict[str, np.ndarray]]:
    rcfg = render_config(d)
    seeds = np.random.SeedSequence(d.seed).generate_state(4, np.uint64)
    out = {}
    for i, (name, count) in enumerate((("train", d.train_per_class), ("val", d.val_per_class), ("test", d.test_per_class))):
        flux, labels = gr.render_set(count, rcfg, int(seeds[i]))
        soft = np.full(len(labels), d.softening, np.float32)
        if name == "train":
            rng = np.random.default_rng(int(seeds[3]))
            if d.softening_jitter > 0:
                soft = soft * np.exp(rng.uniform(-d.softening_jitter, d.softening_jitter, len(labels))).astype(np.float32)
            shown = rng.random(len(labels)) < d.display_fraction
            if shown.any():
                flux[shown] = gr.survey_display(flux[shown], int(rng.integers(2**31)))
        out[name] = {"image": im.normalise(flux, soft).astype(np.float16), "label": labels}
    return out


def rendered_splits(d: MorphologyData) -> tuple[dict[str, dict[str, np.ndarray]], str]:
    """Rendered, normalised splits (float16 images) and their cache key; from the disk cache if present."""
    from astroflax.runtime import cache_dir

    key = _cache_key(d)
    path = cache_dir() / "morphology" / f"rendered-{key}.npz"
    if d.cache and path.is_file():
        try:
            with np.load(path, allow_pickle=False) as z:
                return {s: {"image": z[f"{s}_image"], "label": z[f"{s}_label"]} for s in ("train", "val", "test")}, key
        except (OSError, KeyError, ValueError):
            pass  # unreadable cache (e.g. interrupted write by an old version): render again
    splits = _render_splits(d)
    if d.cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npz")
        np.savez(tmp, **{f"{s}_{k}": v for s, arr in splits.items() for k, v in arr.items()})
        os.replace(tmp, path)
    return splits, key


def load_galaxy_zoo_smoke() -> dict[str, np.ndarray]:
    """The bundled real cutouts: RGB uint8 (21, 128, 128, 3), ids, vote fractions (see PROVENANCE_galaxy_zoo.md)."""
    ref = resources.files("astroflax.data") / "files" / GZ_FILE
    with resources.as_file(ref) as p, np.load(p, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def prepare_real(rgb_or_bands: np.ndarray, size: int, crop: float, softening: float, rgb: bool = True) -> np.ndarray:
    """Real images (N, H, W, 3) -> model inputs, exactly as ``predict`` prepares user files."""
    x = np.asarray(rgb_or_bands, np.float32)
    if rgb:
        x = x[..., ::-1]  # R, G, B -> g, r, i order (see astroflax.data.images)
    return im.normalise(np.stack([im.to_model_size(a, size, crop) for a in x]), softening)


def load_data(cfg) -> Dataset:
    d = MorphologyData.model_validate(cfg.data)
    splits, key = rendered_splits(d)
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
        "split_sizes": {s: int(len(a["label"])) for s, a in splits.items()},
        "class_counts": {s: np.bincount(a["label"], minlength=k).tolist() for s, a in splits.items()},
    }
    return Dataset(splits=splits, info=info, version=f"render-{key}")


class MorphologyNet(nnx.Module):
    """The CNN plus its (static) training-time augmentation settings, so ``loss_fn`` needs only the model."""

    def __init__(self, cnn: SmallCNN, augment: bool, rotate_degrees: float, desaturate: float = 0.0, colour_jitter: float = 0.0):
        self.cnn = cnn
        self.augment = bool(augment)
        self.rotate_degrees = float(rotate_degrees)
        self.desaturate = float(desaturate)
        self.colour_jitter = float(colour_jitter)

    def augmented(self, images: jax.Array, rng: jax.Array) -> jax.Array:
        """Training-time view of a batch. Colour is weakened, never scrambled: a band permutation
        would turn red bulges blue and blue knots red, i.e. teach unphysical colour gradients."""
        x = images.astype(jnp.float32)
        b = x.shape[0]
        if self.colour_jitter > 0:
            # Survey composites differ in colour balance: random per-band gains (median gain 1).
            gain = jnp.exp(self.colour_jitter * jax.random.normal(jax.random.fold_in(rng, 9), (b, 1, 1, x.shape[-1])))
            x = x * gain
        if self.desaturate > 0:
            # Blend a share of images towards their band mean, so that shape, not colour gradients
            # alone, decides the class (survey composites can be nearly grey after per-band scaling).
            k_on, k_t = jax.random.split(jax.random.fold_in(rng, 10))
            on = jax.random.bernoulli(k_on, self.desaturate, (b, 1, 1, 1))
            t = jnp.where(on, jax.random.uniform(k_t, (b, 1, 1, 1)), 0.0)
            x = (1 - t) * x + t * x.mean(axis=-1, keepdims=True)
        if self.augment:
            x = dihedral_augment(x, jax.random.fold_in(rng, 11))
        if self.rotate_degrees > 0:
            x = rotate_small_angle(x, jax.random.fold_in(rng, 12), self.rotate_degrees)
        return x


def build_model(cfg, info: dict, rngs) -> MorphologyNet:
    m = MorphologyModel.model_validate(cfg.model)
    if any(w < 1 for w in m.widths):
        raise ConfigError(f"config key 'model.widths' = {m.widths}: every width must be >= 1")
    if info["image_size"] % m.space_to_depth:
        raise ConfigError(
            f"config key 'model.space_to_depth' = {m.space_to_depth}: must divide data.image_size = {info['image_size']}"
        )
    cnn = SmallCNN(3, info["num_classes"], widths=tuple(m.widths), blocks=m.blocks, dropout=m.dropout,
                   bn_momentum=m.bn_momentum, space_to_depth=m.space_to_depth, rngs=rngs)
    return MorphologyNet(cnn, m.augment, m.rotate_degrees, m.desaturate, m.colour_jitter)


def loss_fn(model: MorphologyNet, batch, rng, train: bool):
    x = batch["image"]
    if train:
        x = model.augmented(x, rng)
    logits = model.cnn(x, train=train, rng=jax.random.fold_in(rng, 13) if train else None)
    return classify.weighted_cross_entropy(logits, batch)


def predict_fn(model: MorphologyNet, batch) -> jax.Array:
    return jax.nn.softmax(model.cnn(batch["image"], train=False), axis=-1)


def smooth_probability(probs: np.ndarray, info: dict) -> np.ndarray:
    idx = [info["class_names"].index(c) for c in info["smooth_classes"]]
    return probs[:, idx].sum(axis=-1)


def galaxy_zoo_section(probs: np.ndarray, gz_index: np.ndarray, info: dict) -> dict[str, Any]:
    """Per real cutout: model class and smooth/featured call vs the Galaxy Zoo majority; agreement fractions."""
    gz = load_galaxy_zoo_smoke()
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
    frac = lambda a: float(np.mean(a)) if a else None  # noqa: E731
    refs = [r["reference_call"] for r in rows if r["reference_call"] is not None]
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
        "cutouts": rows,
    }


def report(probs: np.ndarray, arrays: dict, info: dict, out_dir: Path) -> dict[str, Any]:
    rep = classify.report(probs, arrays, info, out_dir)
    rep["data"] = "rendered galaxies (astroflax.data.galaxy_render)"
    rep["galaxy_zoo_smoke"] = _smoke_from_run_dir(out_dir, info)
    return rep


def galaxy_zoo_inputs(info: dict) -> dict[str, np.ndarray]:
    """The bundled real cutouts as model inputs (prepared exactly like ``predict`` prepares user files)."""
    gz = load_galaxy_zoo_smoke()
    return {"image": prepare_real(gz["image_rgb"], info["image_size"], info.get("crop", 1.0), info["softening"])}


def _smoke_from_run_dir(out_dir: Path, info: dict) -> dict[str, Any]:
    """Predict the real cutouts with the run being evaluated.

    ``report`` receives no model, so this reopens the run: the evaluation writes into
    ``RUN_DIR/eval/<split>``, and the checkpoint evaluated by default is ``best``.
    """
    from astroflax.runs import load_run

    run_dir = Path(out_dir).parents[1] if len(Path(out_dir).parents) > 1 else None
    if run_dir is None or not (run_dir / "config.yaml").is_file():
        return {"note": SMOKE_NOTE, "skipped": f"no run directory above {out_dir}"}
    run = load_run(run_dir, "best")
    probs = run.predict(galaxy_zoo_inputs(info))
    section = galaxy_zoo_section(probs, np.arange(len(probs)), info)
    section["checkpoint_step"] = run.step
    return section


def load_inputs(cfg, info: dict, path: str | Path):
    """PNG/JPEG/FITS file or folder -> model inputs; ids are the file names."""
    images, names = im.load_images(path, info["image_size"], info.get("crop", 1.0), info["softening"])
    n = len(names)
    arrays = {"image": images, "label": np.zeros(n, np.int32)}
    return arrays, np.array(names)


def format_predictions(probs: np.ndarray, ids: np.ndarray, info: dict) -> list[dict[str, Any]]:
    rows = classify.format_predictions(probs, ids, info, id_name="file")
    for row, ps in zip(rows, smooth_probability(probs, info)):
        row["smooth_or_featured"] = "smooth" if ps >= 0.5 else "featured"
        row["p_smooth"] = float(ps)
    return [{k: r[k] for k in ("file", "predicted_class", "smooth_or_featured", "p_smooth")} | r for r in rows]


# Sized from measured step rates on 2 CPU cores (see the final report / README).
QUICK = {
    "data": {"image_size": 48, "train_per_class": 1200, "val_per_class": 100, "test_per_class": 200},
    "model": {"widths": [24, 48, 64], "dropout": 0.1, "space_to_depth": 2},
    "optim": {"lr": 3e-3, "weight_decay": 1e-4},
    "schedule": {"warmup_steps": 100},
    "train": {"steps": 2500, "batch_size": 64, "eval_every": 250, "log_every": 100},
    "checkpoint": {"every": 250, "keep_latest": 2, "keep_best": 1},
}

FULL = {
    "data": {"image_size": 64, "train_per_class": 2500, "val_per_class": 200, "test_per_class": 400},
    "model": {"widths": [24, 48, 96, 128], "blocks": 2, "dropout": 0.2, "rotate_degrees": 15.0, "space_to_depth": 2},
    "optim": {"lr": 2e-3, "weight_decay": 1e-4},
    "schedule": {"warmup_steps": 200},
    "train": {"steps": 6000, "batch_size": 64, "eval_every": 300, "log_every": 100,
              "early_stopping": {"patience": 8}},
    "checkpoint": {"every": 300, "keep_latest": 2, "keep_best": 1},
}

TASK = register(
    Task(
        name="morphology",
        description="galaxy morphology (E/S0/Sa/Sb/Sc/Irr) from g,r,i images; trained on rendered galaxies, CNN + BatchNorm",
        data_config=MorphologyData,
        model_config=MorphologyModel,
        defaults={
            "train": {"steps": 1000, "early_stopping": {"metric": "val_loss", "mode": "min"}},
            "checkpoint": {"metric": "val_loss", "mode": "min"},
        },
        presets={"quick": QUICK, "full": FULL},
        load_data=load_data,
        build_model=build_model,
        loss_fn=loss_fn,
        predict_fn=predict_fn,
        score=classify.score,
        report=report,
        load_inputs=load_inputs,
        format_predictions=format_predictions,
    )
)
