"""morphology: renderer physics, augmentation, image input errors, and a short real CLI run."""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from astroflax.data import galaxy_render as gr
from astroflax.data import images as im
from astroflax.errors import DataError
from astroflax.models.cnn import dihedral_augment, max_pool_2x2
from conftest import run_cli, set_args

CFG = gr.RenderConfig(image_size=48)


def test_render_shapes_and_determinism():
    labels = np.arange(6).repeat(3)
    a = gr.render_galaxies(labels, CFG, seed=7)
    b = gr.render_galaxies(labels, CFG, seed=7)
    c = gr.render_galaxies(labels, CFG, seed=8)
    assert a.shape == (18, 48, 48, 3) and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    imgs, labs = gr.render_set(4, CFG, seed=3)
    assert imgs.shape == (24, 48, 48, 3)
    assert np.bincount(labs).tolist() == [4] * 6


def test_concentration_follows_the_hubble_sequence():
    """R90/R50 (scale-free): de Vaucouleurs-like ellipticals ~4-5, exponential disks ~2.2-2.4."""
    labels = np.repeat(np.arange(6), 30)
    cfg = gr.RenderConfig(image_size=64, stars_per_image=0.0, background_galaxies=0.0)
    imgs = gr.render_galaxies(labels, cfg, seed=1, noise=False)
    c = _light_radius(imgs, 0.9) / _light_radius(imgs, 0.5)
    med = [float(np.median(c[labels == k])) for k in range(6)]
    assert med[0] > med[1] > med[2] > med[4], med
    assert med[0] > 3.5 and med[4] < 2.6, med


def _light_radius(imgs: np.ndarray, fraction: float) -> np.ndarray:
    """Radius (px, about the image centre) holding ``fraction`` of each image's r-band light."""
    size = imgs.shape[1]
    r = np.hypot(*(np.mgrid[0:size, 0:size] - (size - 1) / 2)).ravel()
    order = np.argsort(r)
    light = imgs[..., 1].reshape(len(imgs), -1)[:, order]
    cum = np.cumsum(light, axis=1) / light.sum(axis=1, keepdims=True)
    return r[order][np.argmax(cum >= fraction, axis=1)]


def test_galaxies_are_framed_like_cutouts_whatever_the_class():
    """Cutouts are framed on the galaxy: the half-light radius follows size_range for every class,
    not a size per class (ellipticals come out larger in Re, as their Petrosian R50 is ~0.7 Re)."""
    labels = np.repeat(np.arange(6), 30)
    radii = {}
    for lo, hi in ((0.03, 0.04), (0.06, 0.08)):
        cfg = gr.RenderConfig(image_size=64, stars_per_image=0.0, background_galaxies=0.0, size_range=(lo, hi))
        r50 = _light_radius(gr.render_galaxies(labels, cfg, seed=3, noise=False), 0.5) / 64
        radii[lo] = r50
        per_class = np.array([np.median(r50[labels == c]) for c in range(6)])
        assert np.all(per_class > 0.6 * lo) and np.all(per_class < 2.0 * hi), per_class
        disks = per_class[2:5]  # Sa, Sb, Sc: Petrosian R50 = Re, so they share the range
        assert disks.max() / disks.min() < 1.25, per_class
    ratio = np.median(radii[0.06] / radii[0.03])
    assert 1.7 < ratio < 2.3, ratio  # twice the range, twice the size: the framing drives it


def test_flux_is_kept_and_noise_matches_depth():
    cfg = gr.RenderConfig(image_size=48, stars_per_image=0.0, background_galaxies=0.0, depth_spread=0.0)
    clean, par = gr.render_galaxies(np.arange(6).repeat(4), cfg, seed=2, noise=False, return_params=True)
    np.testing.assert_allclose(clean.sum(axis=(1, 2)), par["galaxy_flux"], rtol=1e-4)  # PSF and pixels keep flux
    noisy, par = gr.render_galaxies(np.arange(6).repeat(4), cfg, seed=2, return_params=True)
    resid = (noisy - clean)[:, :, :, 1].reshape(24, -1)  # noise-only difference, r band
    ratio = resid.std(axis=1) / par["noise_sigma"][:, 1]
    np.testing.assert_allclose(ratio, 1.0, atol=0.08)
    expected = gr.pixel_noise_sigma(cfg.depth, par["psf_fwhm"])
    np.testing.assert_allclose(par["noise_sigma"][:, 1], expected, rtol=1e-6)
    np.testing.assert_allclose(gr.pixel_noise_sigma(25.0, 2.0) * 10 ** 0.8, gr.pixel_noise_sigma(23.0, 2.0), rtol=1e-9)
    # g is deeper than r, i shallower (DECaLS-like): the per-pixel noise orders g < r < i.
    assert np.all(par["noise_sigma"][:, 0] < par["noise_sigma"][:, 1]) and np.all(par["noise_sigma"][:, 2] > par["noise_sigma"][:, 1])


@pytest.mark.parametrize("size", [32, 48])
def test_k_space_composition_places_and_sizes_sources(size):
    """A Gaussian of width s at offset (dx, dy) from the centre lands there (x = column, y = row),
    keeps its flux and has variance s^2 + 1/12 (the pixel box); a point at the centre splits evenly
    between the four central pixels."""
    k = gr._k_grid(size)
    fk = gr._blobs_k(k, np.array([3.0]), np.array([-2.0]), np.array([1.5]), np.array([2.0]))
    img = gr._to_pixels(fk, size, offset=(0.5, 0.25))
    yy, xx = np.mgrid[0:size, 0:size]
    cx, cy = (img * xx).sum() / img.sum(), (img * yy).sum() / img.sum()
    assert img.sum() == pytest.approx(2.0, rel=1e-9)
    assert cx - (size - 1) / 2 == pytest.approx(3.5, abs=1e-6) and cy - (size - 1) / 2 == pytest.approx(-1.75, abs=1e-6)
    assert (img * (xx - cx) ** 2).sum() / img.sum() == pytest.approx(1.5**2 + 1 / 12, rel=1e-4)
    point = gr._to_pixels(gr._blobs_k(k, np.zeros(1), np.zeros(1), np.zeros(1), np.ones(1)), size)
    c = size // 2
    centre = point[c - 1:c + 1, c - 1:c + 1]
    np.testing.assert_allclose(centre, centre[0, 0], rtol=1e-9)
    assert centre[0, 0] == pytest.approx(point.max(), rel=1e-9)
    # An elliptical Gaussian along the x axis (pa 0, axis ratio 0.5): twice as wide in x as in y.
    e = gr._ellipses_k(k, np.zeros(1), np.zeros(1), np.array([2.0]), np.array([0.5]), np.zeros(1), np.ones(1))
    img = gr._to_pixels(e[0], size)
    vx = (img * (xx - (size - 1) / 2) ** 2).sum() - 1 / 12
    vy = (img * (yy - (size - 1) / 2) ** 2).sum() - 1 / 12
    assert vx == pytest.approx(4.0, rel=1e-3) and vy == pytest.approx(1.0, rel=1e-3)


def test_psf_width_follows_the_band_and_the_config():
    """A point-like galaxy imaged through a Gaussian PSF of FWHM 3 px: its measured width in r is the
    configured one, g is ~5% wider and i ~4% narrower (seeing ~ lambda^-0.2), through the whole renderer."""
    cfg = gr.RenderConfig(image_size=64, psf="gaussian", psf_fwhm=(3.0, 3.0), stars_per_image=0.0,
                          background_galaxies=0.0, size_range=(0.002, 0.002))
    imgs = gr.render_galaxies(np.full(6, 4), cfg, seed=1, noise=False)  # Sc: no de Vaucouleurs wings
    yy, xx = np.mgrid[0:64, 0:64]
    widths = []
    for b in range(3):
        img = imgs[..., b] / imgs[..., b].sum(axis=(1, 2), keepdims=True)
        cx = (img * xx).sum(axis=(1, 2))[:, None, None]
        cy = (img * yy).sum(axis=(1, 2))[:, None, None]
        var = 0.5 * (img * ((xx - cx) ** 2 + (yy - cy) ** 2)).sum(axis=(1, 2)) - 1 / 12  # minus the pixel box
        widths.append(np.sqrt(var) * 2.3548)
    g, r, i = (np.median(w) for w in widths)
    assert r == pytest.approx(3.0, rel=0.03)
    assert g / r == pytest.approx((620 / 475) ** 0.2, rel=0.01) and i / r == pytest.approx((620 / 750) ** 0.2, rel=0.01)


def test_background_galaxies_add_faint_sources_only():
    """The field adds flux (never removes it) and does not change the galaxy; its count is Poisson."""
    labels = np.arange(6).repeat(20)
    base = gr.RenderConfig(image_size=48, stars_per_image=0.0, background_galaxies=0.0)
    crowded = dataclasses.replace(base, background_galaxies=15.0)
    a, pa = gr.render_galaxies(labels, base, seed=4, noise=False, return_params=True)
    b, pb = gr.render_galaxies(labels, crowded, seed=4, noise=False, return_params=True)
    np.testing.assert_array_equal(pa["galaxy_flux"], pb["galaxy_flux"])
    extra = (b - a).sum(axis=(1, 2, 3))
    assert np.all(extra > 0) and (b - a).min() > -1e-3 * np.abs(a).max()
    assert pa["n_background"].sum() == 0 and 12 < pb["n_background"].mean() < 18
    # Faint: each background galaxy is fainter than r = 18.5, far below the main galaxy.
    assert np.all((b - a)[..., 1].sum(axis=(1, 2)) < pb["n_background"] * 10 ** (-0.4 * (18.5 - gr.ZEROPOINT)) * 1.01)


def test_dihedral_augment_is_rotation_or_flip():
    x = jax.random.normal(jax.random.key(0), (64, 12, 12, 3))
    y = np.asarray(jax.jit(dihedral_augment)(x, jax.random.key(1)))
    assert y.shape == x.shape
    xs = np.asarray(x)
    seen = set()
    for i in range(len(xs)):
        variants = [np.rot90(xs[i], r, axes=(0, 1)) for r in range(4)]
        variants += [v[:, ::-1] for v in variants]
        match = [j for j, v in enumerate(variants) if np.array_equal(v, y[i])]
        assert match, f"example {i} is not a rotation/flip of its input"
        seen.add(match[0])
    assert len(seen) == 8  # all eight symmetries are drawn, not only rotations or the identity


@pytest.mark.parametrize("shape", [(3, 8, 8, 5), (2, 7, 9, 4)])
def test_max_pool_2x2_matches_flax_pooling_and_its_gradient(shape):
    from flax import nnx

    x = jax.random.normal(jax.random.key(3), shape)  # continuous values: no ties within a window
    ref = lambda v: nnx.max_pool(v, (2, 2), strides=(2, 2))  # noqa: E731
    np.testing.assert_array_equal(np.asarray(max_pool_2x2(x)), np.asarray(ref(x)))
    w = jax.random.normal(jax.random.key(4), ref(x).shape)
    grad = lambda f: jax.grad(lambda v: jnp.sum(f(v) * w))(x)  # noqa: E731
    np.testing.assert_array_equal(np.asarray(grad(max_pool_2x2)), np.asarray(grad(ref)))


def test_normalise_same_for_scaled_images():
    imgs = gr.render_galaxies(np.array([0, 3]), CFG, seed=4)
    a = im.normalise(imgs)
    b = im.normalise(imgs * 37.0 + 5.0)  # other units and sky level: same stretched image
    np.testing.assert_allclose(a, b, atol=2e-3)
    assert a.shape == imgs.shape and np.isfinite(a).all()


def test_image_input_errors(tmp_path: Path):
    from astropy.io import fits
    from PIL import Image

    bad_ext = tmp_path / "galaxy.tiff"
    bad_ext.write_bytes(b"\x00" * 10)
    with pytest.raises(DataError, match="unsupported extension"):
        im.read_image(bad_ext)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png at all")
    with pytest.raises(DataError, match="broken.png: cannot read"):
        im.read_image(broken)
    cube = tmp_path / "cube4.fits"
    fits.PrimaryHDU(np.ones((4, 20, 20), np.float32)).writeto(cube)
    with pytest.raises(DataError, match=r"cube4.fits: FITS image has shape \(4, 20, 20\)"):
        im.read_image(cube)
    nan = tmp_path / "nan.fits"
    fits.PrimaryHDU(np.full((20, 20), np.nan, np.float32)).writeto(nan)
    with pytest.raises(DataError, match="NaN"):
        im.read_image(nan)
    const = tmp_path / "flat.png"
    Image.fromarray(np.full((20, 20), 7, np.uint8)).save(const)
    with pytest.raises(DataError, match="constant"):
        im.read_image(const)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("x")
    with pytest.raises(DataError, match="no image files"):
        im.list_image_files(empty)
    # Grayscale PNG -> replicated; RGB -> channels reversed (B, G, R = g, r, i).
    gray = tmp_path / "gray.png"
    Image.fromarray(np.arange(400, dtype=np.uint8).reshape(20, 20)).save(gray)
    g = im.read_image(gray)
    assert g.shape == (20, 20, 3) and np.array_equal(g[..., 0], g[..., 2])
    rgb = np.zeros((20, 20, 3), np.uint8)
    rgb[..., 0] = 200  # red only
    rgb[0, 0] = 1
    Image.fromarray(rgb).save(tmp_path / "red.png")
    r = im.read_image(tmp_path / "red.png")
    assert r[5, 5].tolist() == [0.0, 0.0, 200.0]  # red = i band (last channel)


def _write_user_images(folder: Path) -> None:
    from astropy.io import fits
    from PIL import Image

    flux = gr.render_galaxies(np.array([0, 4]), gr.RenderConfig(image_size=80), seed=11)
    png = im.normalise(flux[0])[..., ::-1]  # g, r, i -> R=i, G=r, B=g
    Image.fromarray((np.clip(png, 0, 1) * 255).astype(np.uint8)).save(folder / "elliptical.png")
    fits.PrimaryHDU(np.moveaxis(flux[1], -1, 0)).writeto(folder / "spiral.fits")  # (3, H, W) cube


def test_cli_train_evaluate_predict(tmp_path: Path):
    run_dir = tmp_path / "run"
    overrides = [
        "data.image_size=32", "data.train_per_class=40", "data.val_per_class=8", "data.test_per_class=10",
        "data.cache=false", "model.widths=[8,16]", "train.steps=10", "train.batch_size=16",
        "train.eval_every=10", "train.log_every=5", "checkpoint.every=10", "schedule.warmup_steps=2",
        "train.progress=false",
    ]
    proc = run_cli("train", "morphology", "--run-dir", str(run_dir), *set_args(overrides))
    assert proc.returncode == 0, proc.stderr[-3000:]
    rep = json.loads((run_dir / "eval" / "test.json").read_text())
    assert rep["n"] == 60 and len(rep["confusion_matrix"]) == 6
    assert 0.0 <= rep["accuracy"] <= 1.0
    gz = rep["galaxy_zoo_smoke"]
    assert "not a benchmark" in gz["note"].lower()
    assert gz["n_cutouts"] == 21 and gz["n_labelled"] == 18 and gz["n_volunteer_labelled"] == 12
    calls = [c["model_call"] for c in gz["cutouts"]]
    assert set(calls) <= {"smooth", "featured"}
    agree = [c["agree"] for c in gz["cutouts"] if c["agree"] is not None]
    assert gz["agreement"] == pytest.approx(np.mean(agree))
    refs = [c["reference_call"] for c in gz["cutouts"] if c["reference_call"] is not None]
    assert gz["constant_call_agreement"] == pytest.approx(max(refs.count("smooth"), refs.count("featured")) / 18)
    from scipy.stats import spearmanr

    lab = [c for c in gz["cutouts"] if c["featured_fraction"] is not None]
    rho = spearmanr([1 - c["p_smooth"] for c in lab], [c["featured_fraction"] for c in lab]).statistic
    assert gz["spearman_featured"] == (None if np.isnan(rho) else pytest.approx(rho))
    html = (run_dir / "report" / "index.html").read_text()  # the report shows every cutout's call
    assert "<h4>galaxy_zoo_smoke</h4>" in html and all(c["id"] in html for c in gz["cutouts"])
    assert {c["reference_call"] for c in gz["cutouts"][:12]} == {"smooth", "featured"}

    inputs = tmp_path / "inputs"
    inputs.mkdir()
    _write_user_images(inputs)
    (inputs / "README.txt").write_text("ignored")
    out = tmp_path / "pred.csv"
    proc = run_cli("predict", str(run_dir), "--input", str(inputs), "--output", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = list(csv.DictReader(out.open()))
    assert [r["file"] for r in rows] == ["elliptical.png", "spiral.fits"]
    for r in rows:
        assert r["predicted_class"] in gr.CLASS_NAMES
        assert r["smooth_or_featured"] in ("smooth", "featured")
        probs = [float(r[f"p_{c}"]) for c in gr.CLASS_NAMES]
        assert sum(probs) == pytest.approx(1.0, abs=1e-4)
        assert (r["smooth_or_featured"] == "smooth") == (float(r["p_smooth"]) >= 0.5)

    # A bad file in the predict path: one-line DataError naming the file (the CLI prints it, exit 2).
    from astropy.io import fits

    from astroflax.tasks import get_task

    bad = tmp_path / "bad.fits"
    fits.PrimaryHDU(np.ones((2, 3, 20, 20), np.float32)).writeto(bad)
    with pytest.raises(DataError, match=r"bad.fits: FITS image has shape \(2, 3, 20, 20\); expected 2-D"):
        get_task("morphology").load_inputs(None, {"image_size": 32, "softening": 0.1}, bad)


def _tiny_morphology_model(**model):
    from types import SimpleNamespace

    from flax import nnx

    from astroflax.tasks import morphology as m

    task = m.TASK
    cfg = SimpleNamespace(data=m.MorphologyData(),
                          model=m.MorphologyModel(widths=[8, 16], dropout=0.0, space_to_depth=1, **model))
    info = {"image_size": 16, "num_classes": 6}
    return task, task.build_model(cfg, info, nnx.Rngs(0)), cfg, info


def test_trainer_updates_batch_stats_and_eval_freezes_them():
    """The real train step (merge with copy=True inside jax.grad) updates BatchNorm running averages
    with no per-task workaround; evaluation uses them frozen (an example's output ignores its batch)."""
    from flax import nnx

    from astroflax.config import OptimConfig, ScheduleConfig
    from astroflax.train.optim import build_optimizer
    from astroflax.train.state import create_state
    from astroflax.train.step import init_accumulator, make_predict_step, make_train_step

    task, model, cfg, info = _tiny_morphology_model(augment=False, desaturate=0.0, colour_jitter=0.0)
    loss_fn, predict_fn = task.make_loss_fn(cfg, info), task.make_predict_fn(cfg, info)
    tx, schedule = build_optimizer(OptimConfig(), ScheduleConfig(name="constant"), 10)
    graphdef, state = create_state(model, tx, 0)
    r = np.random.default_rng(0)
    batch = {"image": (2.0 + 3.0 * r.normal(size=(8, 16, 16, 3))).astype(np.float32),
             "label": r.integers(0, 6, 8).astype(np.int32)}

    def bn0(st):
        m = nnx.merge(graphdef, st.params, st.model_state)
        return m, np.asarray(m.norms[0].mean[...]), np.asarray(m.norms[0].var[...])

    m0, mean0, var0 = bn0(state)
    np.testing.assert_array_equal(mean0, 0.0)
    np.testing.assert_array_equal(var0, 1.0)
    h = np.asarray(m0.convs[0](jnp.asarray(batch["image"])))  # first conv output with the step's params
    step = jax.jit(make_train_step(graphdef, tx, loss_fn, schedule))
    names = [k for k in jax.eval_shape(step, state, init_accumulator([]), batch)[1] if k != "count"]
    state1, acc = step(state, init_accumulator(names), batch)
    assert np.isfinite(float(acc["loss"]))
    _, mean1, var1 = bn0(state1)
    # momentum 0.9: running = 0.9 * old + 0.1 * this batch's statistic
    np.testing.assert_allclose(mean1, 0.1 * h.mean(axis=(0, 1, 2)), rtol=1e-3, atol=1e-5)
    np.testing.assert_allclose(var1, 0.9 + 0.1 * h.var(axis=(0, 1, 2)), rtol=1e-3, atol=1e-5)
    state2, _ = step(state1, init_accumulator(names), batch)
    assert not np.allclose(bn0(state2)[1], mean1)  # and keep moving step after step

    predict = jax.jit(make_predict_step(graphdef, predict_fn))
    full = np.asarray(predict(state2.params, state2.model_state, {"image": batch["image"]}))
    alone = np.asarray(predict(state2.params, state2.model_state, {"image": batch["image"][:1]}))
    np.testing.assert_allclose(alone[0], full[0], rtol=1e-4, atol=1e-6)
    m2 = nnx.merge(graphdef, state2.params, state2.model_state)
    loss_fn(m2, {**batch, "_weight": np.ones(8, np.float32)}, jax.random.key(0), False)  # eval-mode loss
    np.testing.assert_array_equal(np.asarray(m2.norms[0].mean[...]), bn0(state2)[1])


def test_colour_augmentation_keeps_band_order_and_weakens_colour():
    """Per-band gains are one factor per (image, band); desaturation pulls bands together; no band swap."""
    from astroflax.tasks.morphology import make_augment_fn

    augmented = make_augment_fn(_tiny_morphology_model(augment=False, desaturate=0.0, colour_jitter=0.3)[2])
    r = np.random.default_rng(1)
    x = np.abs(r.normal(size=(64, 16, 16, 3))).astype(np.float32) + 0.1
    x[..., 0] += 2.0  # a strongly "blue" (g-bright) batch
    y = np.asarray(jax.jit(augmented)(jnp.asarray(x), jax.random.key(3)))
    gain = y / x
    np.testing.assert_allclose(gain, np.broadcast_to(gain[:, :1, :1, :], gain.shape), rtol=1e-5)  # constant over pixels
    g = gain[:, 0, 0, :]
    assert 0.15 < np.log(g).std() < 0.45 and not np.allclose(g[:, 0], g[:, 1])
    assert (y[..., 0].mean(axis=(1, 2)) > y[..., 1].mean(axis=(1, 2))).mean() > 0.95  # g stays brightest
    grey = make_augment_fn(_tiny_morphology_model(augment=False, desaturate=1.0, colour_jitter=0.0)[2])
    z = np.asarray(jax.jit(grey)(jnp.asarray(x), jax.random.key(4)))
    spread_in, spread_out = x.std(axis=-1).mean(axis=(1, 2)), z.std(axis=-1).mean(axis=(1, 2))
    assert (spread_out <= spread_in + 1e-5).all() and (spread_out < 0.8 * spread_in).mean() > 0.5
    np.testing.assert_allclose(z.mean(axis=-1), x.mean(axis=-1), rtol=1e-5)  # brightness kept


def test_real_cutouts_take_the_user_file_path(tmp_path: Path):
    """The bundled Galaxy Zoo cutouts become model inputs exactly as the same pixels read from PNG files."""
    from PIL import Image

    from astroflax.tasks import morphology as m

    gz = im.load_galaxy_zoo_smoke()
    for i in range(3):
        Image.fromarray(gz["image_rgb"][i]).save(tmp_path / f"gz{i}.png")
    info = {"image_size": 32, "softening": 0.1, "crop": 1.0}
    from_files, names = im.load_images(tmp_path, 32, 1.0, 0.1)
    bundled = m.galaxy_zoo_inputs(info)["image"][:3]
    assert names == ["gz0.png", "gz1.png", "gz2.png"]
    np.testing.assert_array_equal(from_files, bundled)


def test_survey_display_is_stretched_quantised_and_nearly_grey_noise():
    """SDSS-style composites (Lupton + JPEG): 8-bit levels, and colour blurred by the JPEG's 4:2:0
    chroma subsampling (grey pixel noise)."""
    cfg = gr.RenderConfig(image_size=48, stars_per_image=0.0, background_galaxies=0.0, noise_band_correlation=0.0)
    flux = gr.render_galaxies(np.array([0, 0, 4, 4, 5, 5]), cfg, seed=5)
    disp = gr.survey_display(flux, seed=1, lupton_fraction=1.0)
    assert disp.shape == flux.shape and disp.min() >= 0 and disp.max() <= 255
    np.testing.assert_array_equal(disp, np.round(disp))
    lin, shown = im.normalise(flux), im.normalise(disp)
    border = np.hypot(*np.mgrid[0:48, 0:48] - 23.5) > 20

    def colour_noise(x):
        b = x[:, border]
        return (b - b.mean(-1, keepdims=True)).std(), b.mean(-1).std()

    c_lin, l_lin = colour_noise(lin)
    c_disp, l_disp = colour_noise(shown)
    assert c_lin > 0.8 * l_lin  # independent noise per band: strongly coloured
    assert c_disp < 0.65 * (c_lin / l_lin) * l_disp  # composite: relative colour noise cut by > 1/3


def test_decals_display_matches_the_bundled_cutouts_sky_and_cores():
    """Galaxy Zoo DECaLS's stretch on rendered galaxies at the default depth and brightness: the sky
    sits at the dark grey of the real bundled cutouts (their black point is -0.5 x the band scale),
    cores come near the real cutouts' peak, and an image 4x brighter is displayed brighter, not rescaled
    to look the same."""
    gz = im.load_galaxy_zoo_smoke()
    real = np.stack([im.to_model_size(a.astype(np.float32), 64, 1.0) for a in gz["image_rgb"][:12]])
    real_sky = np.median(real.reshape(12, -1, 3), axis=1).mean()
    flux = gr.render_galaxies(np.arange(6).repeat(4), gr.RenderConfig(), seed=2)
    disp = gr.survey_display(flux, seed=3, lupton_fraction=0.0)
    np.testing.assert_array_equal(disp, np.round(disp))
    sky = np.median(disp.reshape(24, -1, 3), axis=1).mean()
    assert 0.5 * real_sky < sky < 2.0 * real_sky, (sky, real_sky)
    real_peak = np.median(real.reshape(12, -1).max(axis=1))
    assert real_peak > 200 and np.median(disp.reshape(24, -1).max(axis=1)) > 0.8 * real_peak  # bright cores, as real
    brighter = gr.survey_display(4 * flux, seed=3, lupton_fraction=0.0)
    q = slice(24, 40)
    assert brighter[:, q, q].mean() > disp[:, q, q].mean() + 10


def test_mc_dropout_passes_drop_the_head_and_keep_batchnorm_frozen():
    """MC-dropout on a BatchNorm CNN: passes differ with the key and repeat with it, the running
    averages are used (a row's pass ignores what else is in its batch) and are not updated, and
    no augmentation is applied (a 90-degree rotation of the input changes the output)."""
    from flax import nnx

    task, model, cfg, info = _tiny_morphology_model()
    cfg.model = cfg.model.model_copy(update={"dropout": 0.5})
    model = task.build_model(cfg, info, nnx.Rngs(0))
    fn = task.make_predict_stochastic_fn(cfg, info)
    assert fn is not None
    assert task.make_predict_stochastic_fn(SimpleCfg(cfg, dropout=0.0), info) is None
    r = np.random.default_rng(1)
    x = (2.0 + 3.0 * r.normal(size=(8, 16, 16, 3))).astype(np.float32)
    k1, k2 = jax.random.key(1), jax.random.key(2)
    a, b = np.asarray(fn(model, {"image": x}, k1)), np.asarray(fn(model, {"image": x}, k2))
    np.testing.assert_allclose(a.sum(-1), 1.0, atol=1e-5)
    assert not np.allclose(a, b, atol=1e-4)
    np.testing.assert_array_equal(np.asarray(fn(model, {"image": x}, k1)), a)
    other = x.copy()
    other[1:] = r.normal(size=other[1:].shape)  # the rest of the batch changes, row 0 does not
    np.testing.assert_allclose(np.asarray(fn(model, {"image": other}, k1))[0], a[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(model.norms[0].mean[...]), 0.0)
    assert not np.allclose(np.asarray(fn(model, {"image": np.rot90(x, axes=(1, 2)).copy()}, k1)), a, atol=1e-4)


def SimpleCfg(cfg, **model):
    from types import SimpleNamespace

    return SimpleNamespace(data=cfg.data, model=cfg.model.model_copy(update=model))
