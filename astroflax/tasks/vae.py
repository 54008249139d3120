"""``vae``: class-conditional variational auto-encoder on 5,000 real MNIST digits.

Data: the bundled digits (:mod:`astroflax.data.digits`; 360 train / 40 val / 100 test per
class). Model: :class:`~astroflax.models.vae.ConditionalVAE`. Loss: Bernoulli negative
log-likelihood of the pixels + ``beta`` x KL to the prior (a learned Gaussian per class by
default, ``model.prior``), with an optional linear ramp of the KL weight. Evaluation: test
ELBO in nats per image and the *conditional accuracy*: the fraction of digits generated for
a requested class that an independently trained CNN (the ``digits`` task) assigns to it.

User data (``data.path``, see ``docs/user_data/vae.md``): the image layouts of the ``morphology``
task (ImageFolder, table of image files, Galaxy10 HDF5) with the class as the condition, or a
table of pixel rows plus a label (the MNIST CSV layout); images are converted to ``data.image_size``
and ``data.channels`` and scaled to [0, 1]. The digit judge only scores 28x28 digit data (classes 0-9).

Prediction derives its random keys from each image's ``example_id``, so evaluation is
deterministic and needs no RNG state. Presets: ``presets/vae.yaml``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
from pydantic import Field

from astroflax.data import images as im
from astroflax.data.cache import content_hash
from astroflax.data.digits import (
    CLASS_NAMES,
    IMAGE_SHAPE,
    NUM_CLASSES,
    NUM_PIXELS,
    flat_pixels,
    is_headerless,
    load_bundled_mnist,
    read_digit_csv,
    read_pixel_table,
    write_digit_grid,
)
from astroflax.data.splits import indices_from_codes
from astroflax.data.tables import DropLog
from astroflax.errors import DataError
from astroflax.models.vae import ConditionalVAE, bernoulli_nll, gaussian_kl, log_normal
from astroflax.tasks.base import Dataset, LossFn, PredictFn, Section
from astroflax.tasks.builders import task

EVAL_KEY_SEED = 20140101  # base key of the prediction; folded with each example_id
OUT_COLUMNS = ("recon", "kl", "nll_iwae")  # leading columns of the prediction; then the sample
CLASSIFIER_DIR = "digit_classifier"  # <run_dir>/eval/<this>/classifier.json: the judge that scored the run


class VAEData(Section):
    path: str | None = Field(
        None, description="user images with a conditioning label: ImageFolder, table of image files, Galaxy10 HDF5, "
        "or a table of pixel rows + label (MNIST CSV layout); null = the bundled MNIST digits")
    image_size: int = Field(28, ge=8, le=128, description="user images: side in pixels the images are resized to")
    channels: Literal[1, 3] = Field(1, description="user images: 1 = grey (mean of the bands), 3 = three bands")
    crop: float = Field(1.0, gt=0, le=1, description="user images: centre-crop fraction of the shorter side before resizing")
    label_column: str = Field("label", description="user table: the conditioning label column")
    file_column: str = Field("file", description="user table of image files: the file column")
    class_names: list[str] = Field([], description="user data: names of integer labels (index = label) or the "
                                   "order of text labels / folders")
    image_dir: str | None = Field(None, description="user table: folder that relative file names are read from")
    skip_unreadable: bool = Field(False, description="drop (and record) unreadable user image files instead of failing")
    split_seed: int = Field(20140102, description="seed of the stratified 70/10/20 split of user data without a split")
    binarize: Literal["threshold", "none"] = Field(
        "threshold", description="threshold: pixel >= 128 -> 1 (a proper Bernoulli likelihood, ELBO in nats); "
        "none: grey levels / 255 as soft targets")


class VAEModel(Section):
    latent_dim: int = Field(16, ge=1, le=512, description="size of the latent vector z")
    hidden: list[Annotated[int, Field(ge=1)]] = Field([512, 256], min_length=1, description="encoder MLP widths (decoder mirrors them)")
    prior: Literal["class", "standard"] = Field(
        "class", description="class: a learned Gaussian p(z|y) per class; standard: N(0, I) for every class")
    beta: float = Field(1.0, ge=0, description="weight of the KL term in the training loss (1 = the true ELBO)")
    kl_warmup_steps: int = Field(
        0, ge=0, description="KL weight ramps linearly from model.beta_start to model.beta over this many steps (0 = off)")
    beta_start: float = Field(
        0.0, ge=0, description="KL weight at step 0 of the ramp: 0 = classic warm-up; > beta = start compressed")
    eval_importance_samples: int = Field(
        8, ge=1, le=256, description="posterior samples per image for the test ELBO and importance-weighted bound")
    eval_classifier_steps: int = Field(800, ge=1, description="training steps of the CNN that judges generated digits (batch 128)")
    eval_classifier_seed: int = Field(0, description="seed of that classifier (init and shuffling)")


def _arrays(images: np.ndarray, labels: np.ndarray, ids: np.ndarray, binarize: str) -> dict[str, np.ndarray]:
    return {"x": flat_pixels(images, binarize), "label": labels.astype(np.int32), "example_id": ids.astype(np.int32)}


def _pixel_table_images(path: Path, opt: im.ImageOptions) -> im.UserImages | None:
    """A table of pixel rows (headerless MNIST layout, or a header with a label column and one
    column per pixel) as grey 8-bit images at model size; None when ``path`` is not one."""
    from astroflax.data.tables import Table, parse_split, table_suffix

    if not path.is_file() or not table_suffix(path) or path.name.lower().endswith(im.HDF5_SUFFIXES):
        return None
    split = None
    if table_suffix(path) in (".csv", ".csv.gz") and is_headerless(path):
        images, raw = read_digit_csv(path)
        labels, names, _ = im.class_index(raw, opt.class_names, lambda pos, msg, nb: DataError(
            f"{path}: row {pos + 1}, column {NUM_PIXELS + 1} (label): {msg}"))
        fmt = "CSV of pixel rows (MNIST layout: 784 pixels then the label, no header)"
    else:
        tab = Table(path)
        if opt.file_column.lower() in tab.df.columns or any(a in tab.df.columns for a in im.FILE_ALIASES):
            return None
        images, raw, _ = read_pixel_table(tab, opt.label_column)
        lc = opt.label_column.lower()
        labels, names, _ = im.class_index(raw, opt.class_names, lambda pos, msg, nb: tab.fail(lc, pos, msg, nb))
        split = parse_split(tab)
        fmt = f"table of pixel rows ({table_suffix(path).lstrip('.')}, label column {opt.label_column!r})"
    n = len(labels)
    x = np.stack([im.to_model_size(a[..., None].astype(np.float32), opt.size, opt.crop) for a in images])
    return im.UserImages(images=x, full_scale=np.full(n, 255.0), labels=labels, soft=None, class_names=names,
                         ids=[f"row {i + 1}" for i in range(n)], rows=np.arange(n, dtype=np.int64), split=split,
                         split_source="the 'split' column" if split is not None else None, fmt=fmt, rows_read=n,
                         dropped=DropLog())


def _read_user(path: str | Path, opt: im.ImageOptions) -> im.UserImages:
    return _pixel_table_images(Path(path), opt) or im.load_user_images(path, opt)


def _user_pixels(u: im.UserImages, d: VAEData) -> tuple[np.ndarray, list[int]]:
    """Images -> flat [0, 1] pixels with ``data.channels`` bands (grey = mean of the bands), binarized as configured."""
    x = im.unit_scale(u.images, u.full_scale)
    c = x.shape[-1]
    if d.channels == 1 and c > 1:
        x = x.mean(axis=-1, keepdims=True)
    elif d.channels == 3 and c == 1:
        x = np.repeat(x, 3, axis=-1)
    elif c != d.channels:
        raise DataError(f"{u.ids[0]}: image has {c} bands; data.channels = {d.channels} needs 1 or 3 bands")
    shape = [d.image_size, d.image_size] + ([3] if d.channels == 3 else [])
    flat = x.reshape(len(x), -1)
    return ((flat > 0.5).astype(np.float32) if d.binarize == "threshold" else flat.astype(np.float32)), shape


def _load_user(d: VAEData) -> Dataset:
    u = _read_user(d.path, im.options_from(d))
    x, shape = _user_pixels(u, d)
    codes, info = im.split_user_images(u, d.path, d.split_seed)
    arrays = {"x": x, "label": u.labels.astype(np.int32), "example_id": u.rows.astype(np.int32)}
    splits = {name: {k: v[idx] for k, v in arrays.items()} for name, idx in indices_from_codes(codes).items()}
    info.update({"class_names": u.class_names, "num_classes": len(u.class_names), "image_shape": shape,
                 "num_pixels": int(x.shape[1]), "binarize": d.binarize})
    version = content_hash(x, arrays["label"], codes, d.model_dump(mode="json", exclude={"path"}))
    return Dataset(splits=splits, info=info, version=f"user-{version}")


def load_data(cfg: Any) -> Dataset:
    if cfg.data.path:
        return _load_user(cfg.data)
    binarize = cfg.data.binarize
    d = load_bundled_mnist()
    splits = {name: _arrays(d["image"][idx], d["label"][idx], d["source_row"][idx], binarize)
              for name, idx in indices_from_codes(d["split"]).items()}
    info = {
        "class_names": CLASS_NAMES,
        "num_classes": NUM_CLASSES,
        "image_shape": list(IMAGE_SHAPE),
        "binarize": binarize,
        "data_version": str(d["version"]),
        "split_sizes": {k: len(v["label"]) for k, v in splits.items()},
        "class_counts": {k: np.bincount(v["label"], minlength=NUM_CLASSES).tolist() for k, v in splits.items()},
    }
    return Dataset(splits=splits, info=info, version=f"mnist5k-{d['version']}-{binarize}")


def build_model(cfg, info: dict, rngs) -> ConditionalVAE:
    m = cfg.model
    return ConditionalVAE(info.get("num_pixels", NUM_PIXELS), info["num_classes"], latent_dim=m.latent_dim, hidden=m.hidden,
                          prior=m.prior, rngs=rngs)


def kl_weight(m: VAEModel, batch: dict) -> jax.Array:
    """KL weight: ``beta_start`` -> ``beta`` linearly over ``kl_warmup_steps``, read from the
    trainer's ``_step`` (the loss gets no step argument); plain ``beta`` without a step (evaluation)."""
    step = batch.get("_step")
    if m.kl_warmup_steps <= 0 or step is None:
        return jnp.float32(m.beta)
    # Not optax.linear_schedule: it leaves the weight 1 ulp off beta after the ramp (XLA turns
    # its division into a reciprocal multiply); clipping the fraction ends exactly at beta.
    frac = jnp.clip((jnp.asarray(step, jnp.float32) + 1.0) / m.kl_warmup_steps, 0.0, 1.0)
    return jnp.float32(m.beta_start) + (jnp.float32(m.beta) - jnp.float32(m.beta_start)) * frac


def make_loss_fn(cfg, info: dict) -> LossFn:
    """beta-weighted negative ELBO per image, averaged with the eval pad weights ``_weight``."""
    m = cfg.model

    def loss_fn(model: ConditionalVAE, batch: dict, rng: jax.Array, train: bool):
        x = batch["x"]
        logits, mean, logvar, _ = model(x, batch["label"], rng)
        recon = bernoulli_nll(logits, x)
        kl = gaussian_kl(mean, logvar, *model.prior(batch["label"]))
        w = jnp.broadcast_to(jnp.asarray(batch.get("_weight", 1.0), jnp.float32), recon.shape)
        denom = jnp.maximum(jnp.sum(w), 1e-9)
        recon_m, kl_m = jnp.sum(recon * w) / denom, jnp.sum(kl * w) / denom
        beta = kl_weight(m, batch)
        return recon_m + beta * kl_m, {"recon": recon_m, "kl": kl_m, "beta": beta}

    return loss_fn


def make_predict_fn(cfg, info: dict) -> PredictFn:
    """Per image: [recon, kl, -log p(x) importance bound, one generated digit of its class (784)].

    ``recon`` is averaged over ``model.eval_importance_samples`` posterior draws; ``recon + kl``
    is the negative ELBO. The importance-weighted bound (Burda et al. 2016) uses the same draws.
    The generated digit (Bernoulli means, z ~ p(z | y)) lets evaluation measure conditional
    accuracy without reloading the model. All keys come from ``example_id``: reproducible.
    """
    k = cfg.model.eval_importance_samples

    def predict_fn(model: ConditionalVAE, batch: dict) -> jax.Array:
        x, y = batch["x"], batch["label"]
        base = jax.random.key(EVAL_KEY_SEED)
        keys = jax.vmap(lambda i: jax.random.fold_in(base, i))(batch["example_id"].astype(jnp.uint32))
        b, d = x.shape[0], model.latent_dim
        mean, logvar = model.encode(x, y)
        eps = jax.vmap(lambda kk: jax.random.normal(jax.random.fold_in(kk, 0), (k, d)))(keys)  # (B, K, D)
        z = mean[:, None] + jnp.exp(0.5 * logvar)[:, None] * eps
        logits = model.generate(z.reshape(b * k, d), jnp.repeat(y, k))
        recon_k = bernoulli_nll(logits, jnp.repeat(x, k, axis=0)).reshape(b, k)
        p_mean, p_logvar = model.prior(y)
        kl = gaussian_kl(mean, logvar, p_mean, p_logvar)
        log_w = -recon_k + log_normal(z, p_mean[:, None], p_logvar[:, None]) - log_normal(z, mean[:, None], logvar[:, None])
        nll_iwae = -(jax.nn.logsumexp(log_w, axis=1) - jnp.log(k))
        eps0 = jax.vmap(lambda kk: jax.random.normal(jax.random.fold_in(kk, 1), (d,)))(keys)
        sample = jax.nn.sigmoid(model.generate(p_mean + jnp.exp(0.5 * p_logvar) * eps0, y))
        return jnp.concatenate([recon_k.mean(axis=1)[:, None], kl[:, None], nll_iwae[:, None], sample], axis=-1)

    return predict_fn


def output_columns(cfg, info: dict) -> list[str]:
    return [*OUT_COLUMNS, *(f"sample_{i}" for i in range(info.get("num_pixels", NUM_PIXELS)))]


def combine(outputs: list[np.ndarray], info: dict) -> np.ndarray:
    """Several models (an ensemble) read as their equal-weight mixture ``p(x) = mean_m p_m(x)``.

    ``nll_iwae``: ``-log mean_m exp(-nll_m)``, still an upper bound on the mixture's -log p(x)
    (each member's bound is one on its own). ``recon`` / ``kl``: member means, so ``recon + kl``
    is the mean member negative ELBO (also an upper bound on the mixture's, by Jensen). The
    sample of row ``i`` is member ``i mod M``'s: a draw from the mixture (averaging the
    members' pixels would blur different digits into one, which no member generates).
    """
    stacked = np.stack([np.asarray(o, np.float64) for o in outputs])  # (M, N, C)
    m, n = stacked.shape[:2]
    out = stacked.mean(axis=0)
    nll = stacked[:, :, OUT_COLUMNS.index("nll_iwae")]
    out[:, OUT_COLUMNS.index("nll_iwae")] = -(np.logaddexp.reduce(-nll, axis=0) - np.log(m))
    out[:, len(OUT_COLUMNS):] = stacked[np.arange(n) % m, np.arange(n), len(OUT_COLUMNS):]
    return out.astype(np.asarray(outputs[0]).dtype)


def image_shape_of(num_pixels: int) -> tuple[int, ...]:
    """(s, s) for s*s pixels (grey), else (s, s, 3): the shape of a model's generated images."""
    s = math.isqrt(num_pixels)
    if s * s == num_pixels:
        return (s, s)
    s = math.isqrt(num_pixels // 3)
    return (s, s, 3)


def sample_digits(model: ConditionalVAE, labels: np.ndarray, seed: int = 0) -> np.ndarray:
    """Generated images (Bernoulli means in [0, 1]) for each requested label: (N, 28, 28) for digits."""
    labels = jnp.asarray(labels, jnp.int32)
    z = model.sample_latent(labels, jax.random.key(seed))
    return np.asarray(jax.nn.sigmoid(model.generate(z, labels))).reshape(-1, *image_shape_of(model.num_pixels))


def _split_outputs(outputs: np.ndarray, info: dict | None = None) -> dict[str, np.ndarray]:
    cols = {name: outputs[:, i].astype(np.float64) for i, name in enumerate(OUT_COLUMNS)}
    shape = tuple((info or {}).get("image_shape", IMAGE_SHAPE))
    cols["samples"] = outputs[:, len(OUT_COLUMNS):].reshape(-1, *shape)
    return cols


def score(outputs: np.ndarray, arrays: dict, info: dict) -> dict[str, Any]:
    """``loss`` = mean negative ELBO (beta = 1) per image on the split, in nats."""
    o = _split_outputs(outputs, info)
    return {"loss": float(np.mean(o["recon"] + o["kl"])), "recon": float(np.mean(o["recon"])),
            "kl": float(np.mean(o["kl"])), "nll_iwae": float(np.mean(o["nll_iwae"]))}


def report(outputs: np.ndarray, arrays: dict, info: dict, out_dir: Path, run: Any = None) -> dict[str, Any]:
    """Test ELBO, conditional accuracy of generated digits (judged by the ``digits`` CNN with the
    run's ``model.eval_classifier_*`` settings; their defaults without a run) and a grid of
    generated digits."""
    from astroflax.evaluate import classification as clf
    from astroflax.tasks import digits as digits_task

    m = run.cfg.model if run is not None else VAEModel()
    o = _split_outputs(outputs, info)
    labels = np.asarray(arrays["label"])
    out_dir.mkdir(parents=True, exist_ok=True)
    if list(info.get("image_shape", IMAGE_SHAPE)) != list(IMAGE_SHAPE) or list(info["class_names"]) != CLASS_NAMES:
        return _report_without_judge(o, labels, info, out_dir)
    judge, note = digits_task.judge(m.eval_classifier_steps, m.eval_classifier_seed, out_dir.parent / CLASSIFIER_DIR)
    probs = judge.predict({"image": o["samples"].astype(np.float32)})
    cond_acc = float(np.mean(probs.argmax(-1) == labels))
    # The judge's view of the generated digits as a classification report over the requested
    # classes: "accuracy" there is the conditional accuracy.
    rep = clf.classification_report(probs, labels, info["class_names"])
    neg_elbo = o["recon"] + o["kl"]
    present = [(c, name) for c, name in enumerate(info["class_names"]) if np.any(labels == c)]
    per_class = {name: {"elbo": float(-np.mean(neg_elbo[labels == c])),
                        "conditional_accuracy": float(np.mean(probs[labels == c].argmax(-1) == c)),
                        "samples": int(np.sum(labels == c))} for c, name in present}
    grid = write_digit_grid([o["samples"][labels == c][:10] for c, _ in present], out_dir / "samples.png")
    units = "binarized (>= 128)" if info.get("binarize") == "threshold" else "grey-level / 255"
    rep.update({
        "elbo": float(-np.mean(neg_elbo)),
        "elbo_std": float(np.std(neg_elbo)),
        "recon": float(np.mean(o["recon"])),
        "kl": float(np.mean(o["kl"])),
        "log_likelihood_iwae": float(-np.mean(o["nll_iwae"])),
        "elbo_units": f"nats per image (Bernoulli likelihood of the {units} pixels)",
        "num_images": len(labels),
        "conditional_accuracy": cond_acc,
        "samples_per_class": {k: v["samples"] for k, v in per_class.items()},
        "per_class_generative": per_class,
        "classifier_test_accuracy": float(note["test_accuracy"]),
        "classifier": dict(note),
        "figures": {"samples": str(grid)},
    })
    return rep


def _report_without_judge(o: dict, labels: np.ndarray, info: dict, out_dir: Path) -> dict[str, Any]:
    """User data that are not 28x28 digits 0-9: the ELBO figures and a sample grid; no conditional
    accuracy (the digit judge cannot judge other images, and none is trained for them)."""
    neg_elbo = o["recon"] + o["kl"]
    present = [(c, name) for c, name in enumerate(info["class_names"]) if np.any(labels == c)]
    grid = write_digit_grid([o["samples"][labels == c][:10] for c, _ in present], out_dir / "samples.png")
    return {
        "elbo": float(-np.mean(neg_elbo)), "elbo_std": float(np.std(neg_elbo)), "recon": float(np.mean(o["recon"])),
        "kl": float(np.mean(o["kl"])), "log_likelihood_iwae": float(-np.mean(o["nll_iwae"])),
        "elbo_units": "nats per image (Bernoulli likelihood of the pixels scaled to [0, 1])",
        "num_images": len(labels),
        "samples_per_class": {name: int(np.sum(labels == c)) for c, name in present},
        "per_class_generative": {name: {"elbo": float(-np.mean(neg_elbo[labels == c])), "samples": int(np.sum(labels == c))}
                                 for c, name in present},
        "conditional_accuracy_skipped": "the digit judge scores 28x28 digits 0-9 only",
        "figures": {"samples": str(grid)},
    }


def load_inputs(cfg, info: dict, path: str | Path) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Images with their class in any layout the run was trained from (the MNIST CSV layout for
    the bundled digits): the ELBO needs the conditioning label, so it is required."""
    if "source" in info:  # trained on user data: the same readers and conversion
        d = cfg.data
        u = _read_user(path, im.options_from(d, class_names=tuple(info["class_names"]), skip_unreadable=False))
        x, _ = _user_pixels(u, d)
        ids = np.asarray(u.rows, np.int64) + 1
        return {"x": x, "label": u.labels.astype(np.int32), "example_id": ids.astype(np.int32)}, ids
    images, labels = read_digit_csv(path)
    ids = np.arange(1, len(labels) + 1, dtype=np.int64)  # 1-based row numbers
    return _arrays(images, labels, ids, info.get("binarize", "threshold")), ids


def format_predictions(outputs: np.ndarray, ids: np.ndarray, info: dict) -> list[dict[str, Any]]:
    """One row per image: its row, the negative ELBO and its parts (high = unusual for its class)."""
    o = _split_outputs(outputs, info)
    return [{"row": int(i), "neg_elbo": float(r + k), "recon": float(r), "kl": float(k), "nll_iwae": float(b)}
            for i, r, k, b in zip(ids, o["recon"], o["kl"], o["nll_iwae"])]


TASK = task(
    "vae",
    "class-conditional VAE on 5,000 real MNIST digits (ELBO, conditional sample accuracy)",
    kind="generative", output_columns=output_columns, combine=combine,
    data_config=VAEData, model_config=VAEModel, load_data=load_data, build_model=build_model,
    make_loss_fn=make_loss_fn, make_predict_fn=make_predict_fn, score=score, report=report,
    load_inputs=load_inputs, format_predictions=format_predictions,
    # Samples follow the requested class (quick: 0.984), judged by a CNN that is itself reliable.
    targets={"conditional_accuracy": (">=", 0.95), "classifier_test_accuracy": (">=", 0.95)},
)
