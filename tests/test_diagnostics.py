"""``astroflax check``: real diagnostics on the transients task, checks that can fail, the checklist."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from astroflax.diagnostics import checklist as cl
from astroflax.diagnostics import checks
from astroflax.tasks.base import Dataset
from conftest import run_main, set_args
from test_export import shared_trained_run

# A model still smaller than the tiny training config: the model checks compile in seconds.
TINY_CHECK = ["data.max_len=32", "model.d_model=16", "model.num_heads=2", "model.num_layers=1", "model.attention=full"]


# ------------------------------------------------------------------------ the command


def test_check_transients_passes_and_prints_tables(tmp_path, capsys):
    report = tmp_path / "check.json"
    code, out, _ = run_main(["check", "transients", *set_args(TINY_CHECK), "--json", str(report)], capsys)
    assert code == 0, out
    for title in ("model summary", "gradient check", "gradient health", "overfit one batch", "class balance",
                  "NaN / Inf", "value ranges", "duplicates across splits", "All checks passed"):
        assert title in out, title
    assert "encoder.layers.0.attn.qkv.kernel" in out and "total (trainable)" in out  # dotted, as --freeze takes them
    results = {c["name"]: c for c in json.loads(report.read_text())["checks"]}
    assert all(c["status"] in ("pass", "warn") for c in results.values())
    assert results["gradient check"]["value"] < checks.GRADCHECK_TOL
    assert len(results["gradient check"]["rows"]) == 16
    overfit = results["overfit one batch"]["value"]
    assert 0 < overfit["best"] <= overfit["initial"] / 10 and overfit["steps"] <= 200
    assert results["duplicates across splits"]["value"] == 0
    assert results["model summary"]["value"] > 1000


def test_check_exits_1_when_the_overfit_check_fails(capsys):
    # A learning rate of 1e6 makes Adam jump far off on the first step: the loss never falls 10x.
    argv = ["check", "transients", *set_args(TINY_CHECK + ["optim.lr=1e6"]), "--overfit-steps", "20", "--grad-samples", "4"]
    code, out, _ = run_main(argv, capsys)
    assert code == 1, out
    assert "FAILED: overfit one batch" in out
    assert "likely causes" in out and "learning rate too high" in out


@pytest.mark.parametrize("target, fragment", [("no/such/run", "no such run directory"), ("galaxies", "galaxies")])
def test_check_rejects_an_unknown_target_in_one_line(target, fragment, capsys):
    code, _, err = run_main(["check", target], capsys)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and fragment in lines[0], err


# ------------------------------------------------------------------- checks that fail


def _linear_problem():
    model = nnx.Linear(3, 2, rngs=nnx.Rngs(params=0))
    graphdef, params, state = nnx.split(model, nnx.Param, ...)
    x = np.random.default_rng(0).normal(size=(8, 3)).astype(np.float32)
    return graphdef, params, state, {"x": x, "y": np.ones((8, 2), np.float32)}


@jax.custom_vjp
def _wrong_square(x):
    return x**2


_wrong_square.defvjp(lambda x: (x**2, x), lambda x, g: (g * 3.0 * x,))  # the true derivative is 2x


def test_gradient_check_catches_a_wrong_gradient():
    graphdef, params, state, batch = _linear_problem()

    def good(model, b, rng, train):
        return jnp.mean((model(b["x"]) - b["y"]) ** 2), {}

    def bad(model, b, rng, train):
        return jnp.mean(_wrong_square(model(b["x"]) - b["y"])), {}

    ok = checks.gradient_check(graphdef, params, state, good, batch, num=6)
    wrong = checks.gradient_check(graphdef, params, state, bad, batch, num=6)
    assert ok.status == "pass" and ok.value < 1e-6
    assert wrong.status == "fail" and wrong.value > 0.1  # 3x vs 2x: relative error 1/3


def test_gradient_check_warns_instead_of_failing_when_the_model_computes_in_float32():
    graphdef, params, state, batch = _linear_problem()

    def float32_inside(model, b, rng, train):
        return jnp.mean((model(b["x"]).astype(jnp.float32) - b["y"]) ** 2), {}

    res = checks.gradient_check(graphdef, params, state, float32_inside, batch, num=6)
    assert res.status == "warn" and res.value > checks.GRADCHECK_TOL
    assert "float32" in res.notes[0] and "lower precision 1 time" in res.summary


def test_gradient_health_flags_nan_exploding_and_vanishing():
    graphdef, params, state, batch = _linear_problem()
    rng = jax.random.key(0)

    def loss_scaled(scale):
        return lambda model, b, r, t: (scale * jnp.mean((model(b["x"]) - b["y"]) ** 2), {})

    def loss_nan(model, b, r, t):
        return jnp.mean(jnp.sqrt(model(b["x"]) * 0.0)), {}  # d sqrt(0) = inf -> NaN gradients

    assert checks.gradient_health(graphdef, params, state, loss_scaled(1.0), batch, rng).status == "pass"
    exploding = checks.gradient_health(graphdef, params, state, loss_scaled(1e6), batch, rng)
    assert exploding.status == "fail" and "exploding" in exploding.rows[0][4]
    vanishing = checks.gradient_health(graphdef, params, state, loss_scaled(1e-12), batch, rng)
    assert vanishing.status == "warn" and "vanishing" in vanishing.rows[0][4]
    nan = checks.gradient_health(graphdef, params, state, loss_nan, batch, rng)
    assert nan.status == "fail" and nan.rows[0][4] == "NaN/Inf"


def test_overfit_fails_when_the_labels_cannot_be_fitted():
    # Two identical inputs with opposite targets: no model can cut this loss 10x.
    graphdef, params, state, _ = _linear_problem()
    x = np.ones((2, 3), np.float32)
    batch = {"x": x, "y": np.array([[1.0, 1.0], [-1.0, -1.0]], np.float32)}

    def loss(model, b, rng, train):
        return jnp.mean((model(b["x"]) - b["y"]) ** 2), {}

    res = checks.overfit_one_batch(graphdef, params, state, loss, batch, optax.adam(3e-2), steps=60)
    assert res.status == "fail" and res.value["ratio"] < 10
    assert "bug in the labels or the masking" in res.notes[0]


def test_overfit_handles_losses_that_go_negative():
    # A Gaussian NLL with a learned spread: memorising the batch drives it far below zero.
    graphdef, params, state, batch = _linear_problem()
    batch = {"x": batch["x"][:3], "y": np.array([[0.0], [1.0], [2.0]], np.float32)}  # 3 points: fitted exactly

    def nll(model, b, rng, train):  # minus 10 nats: negative from the start
        out = model(b["x"])
        mean, log_sigma = out[:, :1], out[:, 1:]
        return jnp.mean(log_sigma + 0.5 * ((b["y"] - mean) * jnp.exp(-log_sigma)) ** 2) - 10.0, {}

    res = checks.overfit_one_batch(graphdef, params, state, nll, batch, optax.adam(3e-2), steps=200)
    initial, best = res.value["initial"], res.value["best"]
    assert initial < 0 and res.value["steps"] > 0  # initial / 10 > initial must not count as a success
    assert res.status == "pass" and best <= initial - 0.9 * abs(initial)


def test_data_checks_find_nans_duplicates_and_class_imbalance():
    rng = np.random.default_rng(1)

    def split(n, labels):
        flux = rng.normal(size=(n, 5)).astype(np.float32)
        mask = np.ones((n, 5), bool)
        mask[:, -1] = False
        flux[:, -1] = np.nan  # padding may hold anything: not counted
        return {"flux": flux, "mask": mask, "label": np.asarray(labels, np.int32)}

    splits = {"train": split(6, [0, 0, 0, 0, 0, 1]), "val": split(3, [0, 1, 2]), "test": split(2, [0, 1])}
    data = Dataset(splits, {"num_classes": 3, "class_names": ["a", "b", "c"]}, "v")
    results = {r.name: r for r in checks.data_checks(data)}
    assert results["NaN / Inf"].status == "pass"
    assert results["duplicates across splits"].status == "pass"
    assert results["class balance"].status == "warn" and "['c']" in results["class balance"].notes[0]
    assert results["class balance"].value == 5.0

    for arrays in splits.values():  # ids numbered per split: shared ids, different objects
        arrays["object_id"] = np.arange(len(arrays["label"]))
    dup = {r.name: r for r in checks.data_checks(Dataset(splits, data.info, "v1"))}["duplicates across splits"]
    assert dup.status == "warn" and dup.value == 0 and "7 shared object_id" in dup.summary  # 3 + 2 + 2

    splits["val"]["flux"][1, 2] = np.inf  # inside the mask: counted
    splits["test"] = {k: v[[0, 1]].copy() for k, v in splits["train"].items()}  # rows copied from train
    results = {r.name: r for r in checks.data_checks(Dataset(splits, data.info, "v2"))}
    assert results["NaN / Inf"].status == "fail" and results["NaN / Inf"].value == 1
    dup = results["duplicates across splits"]
    assert dup.status == "fail" and dup.value == 2 and "2 identical rows" in dup.summary


# ---------------------------------------------------------------- deployment checklist


def test_checklist_items_from_the_training_history():
    flat = [{"split": "train", "step": i, "loss": 1.0 + 0.001 * (i % 2), "nonfinite": 0.0} for i in range(20)]
    falling = [{"split": "train", "step": i, "loss": 10.0 / (i + 1), "nonfinite": 0.0} for i in range(20)]
    assert cl.converged(flat)["status"] == "pass"
    assert cl.converged(falling)["status"] == "fail"
    assert cl.converged(flat[:1])["status"] == "n/a"
    broken = falling[:5] + [{"split": "train", "step": 5, "loss": None, "nonfinite": 2.0}]
    assert cl.no_nonfinite(flat)["status"] == "pass"
    item = cl.no_nonfinite(broken)
    assert item["status"] == "fail" and item["value"] == 3


@pytest.fixture(scope="module")
def evaluated_run(tmp_path_factory):
    return shared_trained_run(tmp_path_factory)  # trained + evaluated on test once per session


def test_check_on_a_run_directory_prints_the_deployment_checklist(evaluated_run, tmp_path, capsys):
    report = tmp_path / "check.json"
    argv = ["check", str(evaluated_run), "--overfit-steps", "20", "--grad-samples", "4", "--json", str(report)]
    code, out, _ = run_main(argv, capsys)
    assert "Deployment checklist" in out and "inference latency" in out
    payload = json.loads(report.read_text())
    items = payload["checklist"]
    assert code == (1 if payload["failed"] else 0)
    assert [i["name"] for i in items if i["status"] == "fail"] == [f for f in payload["failed"] if f in
                                                                   {i["name"] for i in items}]
    by_id = {it["id"]: it for it in items}
    assert list(by_id) == ["converged", "no_nonfinite", "better_than_chance", "calibrated", "evaluated",
                           "reload", "latency", "memory", "tuned"]
    for it in items:
        assert it["status"] in ("pass", "fail", "n/a") and it["detail"], it
    assert by_id["no_nonfinite"]["status"] == "pass"
    assert by_id["tuned"]["status"] == "fail" and "astroflax tune" in by_id["tuned"]["detail"]  # a preset run
    assert by_id["evaluated"]["status"] == "pass"  # train evaluates the best checkpoint on test
    assert by_id["reload"]["status"] == "pass" and by_id["reload"]["value"] is True
    assert by_id["better_than_chance"]["status"] in ("pass", "fail") and 0 <= by_id["better_than_chance"]["value"] <= 1
    assert 0 <= by_id["calibrated"]["value"] <= 1
    lat = by_id["latency"]["value"]
    assert by_id["latency"]["status"] == "pass"
    assert lat["batch_1_ms_per_object"] > 0 and lat["batch_256_ms_per_object"] > 0
    mem = by_id["memory"]["value"]
    assert mem["host_peak_rss_mb"] > 0 and mem["xla_buffers_batch_256_mb"] > mem["params_mb"] > 0
