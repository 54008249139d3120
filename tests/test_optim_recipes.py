"""Optimisation recipes: each config key does what docs/optimisation.md says (checked on values)."""

from __future__ import annotations

import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from astroflax.config import LossScaleConfig, OptimConfig, ScheduleConfig, build_config
from astroflax.errors import ConfigError
from astroflax.tasks import classify
from astroflax.train.optim import build_optimizer, build_schedule, flat_params, lr_curve
from astroflax.train.state import create_state
from astroflax.train.step import init_accumulator, make_train_step

from conftest import TINY_TRANSIENTS, run_main


class Toy(nnx.Module):
    """embed -> 3 stacked layers -> LayerNorm -> head; no dropout, no batch norm."""

    def __init__(self, rngs: nnx.Rngs, batch_norm: bool = False):
        self.embed = nnx.Linear(3, 4, rngs=rngs)
        self.layers = nnx.List([nnx.Linear(4, 4, rngs=rngs) for _ in range(3)])
        self.norm = nnx.LayerNorm(4, rngs=rngs)
        self.bn = nnx.BatchNorm(4, momentum=0.9, rngs=rngs) if batch_norm else None
        self.head = nnx.Linear(4, 2, rngs=rngs)

    def __call__(self, x, train: bool = True):
        h = self.embed(x)
        for layer in self.layers:
            h = jnp.tanh(layer(h))
        if self.bn is not None:
            h = self.bn(h, use_running_average=not train)
        return self.head(self.norm(h))


def mse_loss(model, batch, rng, train):
    out = model(batch["x"], train)
    return jnp.mean((out.astype(jnp.float32) - batch["y"]) ** 2), {"compute_bf16": jnp.float32(out.dtype == jnp.bfloat16)}


def sum_loss(model, batch, rng, train):
    """Gradient 1 for every parameter: sgd then makes the same update every step."""
    return sum(jnp.sum(x) for x in jax.tree.leaves(nnx.state(model, nnx.Param))), {}


def data(n: int, seed: int = 0) -> dict:
    r = np.random.default_rng(seed)
    return {"x": r.normal(size=(n, 3)).astype(np.float32), "y": r.normal(size=(n, 2)).astype(np.float32)}


def trainer(loss=mse_loss, sched=None, steps=100, model=None, **optim):
    optim.setdefault("clip_norm", None)
    cfg = OptimConfig(**optim)
    sched = sched or ScheduleConfig(name="constant")
    tx, schedule = build_optimizer(cfg, sched, steps)
    graphdef, state = create_state(model or Toy(nnx.Rngs(0)), tx, 0)
    step = make_train_step(graphdef, tx, loss, schedule, cfg)
    jit_step = jax.jit(step, donate_argnums=(0, 1))

    def run(batches):
        nonlocal state
        logs = []
        names = [k for k in jax.eval_shape(step, state, init_accumulator([]), batches[0])[1] if k != "count"]
        for b in batches:
            state, acc = jit_step(state, init_accumulator(names), b)
            logs.append({k: float(v) for k, v in acc.items()})
        return state, logs

    return state, run


def host(tree) -> dict[str, np.ndarray]:
    return {k: np.asarray(v) for k, v in flat_params(jax.device_get(tree)).items()}


# ----------------------------------------------------------------------------- schedules


@pytest.mark.parametrize("name", ["linear", "cosine", "exponential", "piecewise"])
def test_warmup_joined_to_each_decay_equals_optax(name):
    sched = ScheduleConfig(name=name, warmup_steps=10, warmup_start_factor=0.1, end_factor=0.05, decay_rate=0.5,
                           transition_steps=20, boundaries=[30, 60], scales=[0.5, 0.2])
    peak, total = 0.01, 100
    decay = {
        "linear": optax.linear_schedule(peak, peak * 0.05, 90),
        "cosine": optax.cosine_decay_schedule(peak, 90, alpha=0.05),
        "exponential": optax.exponential_decay(peak, 20, 0.5, end_value=peak * 0.05),
        "piecewise": optax.piecewise_constant_schedule(peak, {20: 0.5, 50: 0.2}),
    }[name]
    expected = optax.join_schedules([optax.linear_schedule(peak * 0.1, peak, 10), decay], [10])
    got = build_schedule(sched, peak, total)
    for s in [0, 5, 10, 11, 29, 30, 31, 59, 60, 61, 99]:
        assert float(got(s)) == pytest.approx(float(expected(s)), rel=1e-6), (name, s)
    if name == "piecewise":  # absolute boundaries: the lr changes at step 30 and 60
        assert float(got(29)) == pytest.approx(peak) and float(got(30)) == pytest.approx(peak * 0.5)
        assert float(got(60)) == pytest.approx(peak * 0.1)


def test_default_schedules_unchanged():
    wc = build_schedule(ScheduleConfig(), 2e-3, 1200)
    ref = optax.warmup_cosine_decay_schedule(0.0, 2e-3, 100, 1200, 2e-5)
    assert all(float(wc(s)) == float(ref(s)) for s in (0, 50, 100, 600, 1199))
    assert float(build_schedule(ScheduleConfig(name="constant"), 0.3, 10)(7)) == pytest.approx(0.3)


def test_logged_lr_is_the_one_used_under_accumulation():
    sched = ScheduleConfig(name="linear", warmup_steps=0, end_factor=0.0, decay_steps=10)
    _, run = trainer(sched=sched, steps=20, name="sgd", lr=0.1, momentum=0.0, accumulate_steps=2)
    _, logs = run([data(4, i) for i in range(6)])
    expected = [0.1 * (1 - (s // 2) / 10) for s in range(6)]
    assert [log["lr"] for log in logs] == pytest.approx(expected, rel=1e-6)
    assert lr_curve(OptimConfig(lr=0.1, accumulate_steps=2), sched, 6) == pytest.approx(expected, rel=1e-6)


def test_schedule_spans_the_updates_not_the_micro_batches_under_accumulation():
    # 40 train steps with k=4 are 10 updates: the decay must end at end_factor * peak, as without accumulation.
    sched = ScheduleConfig(name="linear", warmup_steps=0, end_factor=0.01)
    plain = lr_curve(OptimConfig(lr=0.1), sched, 10)
    accumulated = lr_curve(OptimConfig(lr=0.1, accumulate_steps=4), sched, 40)
    assert accumulated[::4] == pytest.approx(plain, rel=1e-6)
    _, schedule = build_optimizer(OptimConfig(lr=0.1, accumulate_steps=4), sched, 40)
    assert float(schedule(10)) == pytest.approx(0.1 * 0.01, rel=1e-6)


# --------------------------------------------------------------------------- optimisers


@pytest.mark.parametrize("name", ["sgd", "adam", "adamw", "rmsprop", "lamb", "lion", "adafactor"])
def test_each_optimizer_matches_its_optax_alias(name):
    cfg = OptimConfig(name=name, lr=0.01, clip_norm=None, decay_mask="all", nesterov=name == "sgd", momentum=0.9)
    ref = {
        "sgd": optax.sgd(0.01, momentum=0.9, nesterov=True),
        "adam": optax.adam(0.01),
        "adamw": optax.adamw(0.01, weight_decay=1e-4),
        "rmsprop": optax.rmsprop(0.01, decay=0.9, momentum=0.9),
        "lamb": optax.lamb(0.01, eps=1e-8, weight_decay=1e-4),
        "lion": optax.lion(0.01, b2=0.999, weight_decay=1e-4),
        "adafactor": optax.adafactor(0.01, weight_decay_rate=1e-4),
    }[name]
    tx, _ = build_optimizer(cfg, ScheduleConfig(name="constant"), 10)
    params = {"w": jnp.linspace(-1, 1, 12).reshape(3, 4), "b": jnp.ones(4)}

    @jax.jit
    def three_steps(params):
        s1, s2, p1, p2 = tx.init(params), ref.init(params), params, params
        for i in range(3):
            g = jax.tree.map(lambda x: jnp.sin(x * (i + 1)), p1)
            u1, s1 = tx.update(g, s1, p1)
            u2, s2 = ref.update(g, s2, p2)
            p1, p2 = optax.apply_updates(p1, u1), optax.apply_updates(p2, u2)
        return p1, p2

    p1, p2 = three_steps(params)
    for k in params:
        np.testing.assert_allclose(p1[k], p2[k], rtol=1e-6, atol=1e-7)


def test_default_optimizer_keeps_adamw_state_layout():
    """Old checkpoints restore: the masked decay does not change optax.adamw's state tree."""
    tx, _ = build_optimizer(OptimConfig(), ScheduleConfig(), 100)
    params = {"w": jnp.ones((2, 2)), "b": jnp.ones(2)}
    ref = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(optax.constant_schedule(1e-3), weight_decay=1e-4))
    assert jax.tree.structure(tx.init(params)) == jax.tree.structure(ref.init(params))


def test_lookahead_equals_optax_lookahead():
    tx, _ = build_optimizer(OptimConfig(name="sgd", lr=0.1, clip_norm=None, lookahead={"enabled": True, "sync_period": 3,
                                        "slow_step_size": 0.5}), ScheduleConfig(name="constant"), 10)
    ref = optax.lookahead(optax.sgd(0.1, momentum=0.9), 3, 0.5)
    p = {"w": jnp.array([1.0, -2.0])}
    lp = optax.LookaheadParams.init_synced(p)
    s1, s2 = tx.init(p), ref.init(lp)
    for i in range(7):
        g = jax.tree.map(lambda x: x * x + i, p)
        u1, s1 = tx.update(g, s1, p)
        u2, s2 = ref.update(jax.tree.map(lambda x: x * x + i, lp.fast), s2, lp)
        p, lp = optax.apply_updates(p, u1), optax.apply_updates(lp, u2)
        np.testing.assert_allclose(p["w"], lp.fast["w"], rtol=1e-6)
    np.testing.assert_allclose(s1[-1].slow["w"], lp.slow["w"], rtol=1e-6)


# -------------------------------------------------------------------- gradient transforms


def test_clip_by_value_bounds_every_update():
    state, run = trainer(loss=lambda m, b, r, t: (1e4 * mse_loss(m, b, r, t)[0], {}), name="sgd", lr=1.0, momentum=0.0,
                         clip_value=0.01)
    before = host(state.params)
    state, _ = run([data(4)])
    deltas = [np.abs(host(state.params)[k] - before[k]).max() for k in before]
    assert max(deltas) <= 0.01 + 1e-7 and max(deltas) > 0.009


def test_masked_weight_decay_leaves_biases_and_norm_scales():
    zero = lambda m, b, r, t: (0.0 * mse_loss(m, b, r, t)[0], {})  # noqa: E731  (zero gradients)
    state, run = trainer(loss=zero, name="adamw", lr=0.1, weight_decay=0.5)
    before = host(state.params)
    state, _ = run([data(4)])
    after = host(state.params)
    for k in before:
        if k.endswith(("bias", "scale")):
            assert np.array_equal(after[k], before[k]), k
        else:  # decayed: p <- p - lr * wd * p
            np.testing.assert_allclose(after[k], before[k] * (1 - 0.1 * 0.5), rtol=1e-6)


def test_accumulated_micro_batches_equal_one_big_batch():
    big = data(32)
    micro = [{k: v[i * 8:(i + 1) * 8] for k, v in big.items()} for i in range(4)]
    s_acc, run_acc = trainer(name="adamw", lr=0.01, accumulate_steps=4, clip_norm=1.0)
    s_one, run_one = trainer(name="adamw", lr=0.01, clip_norm=1.0)
    p0 = host(s_acc.params)
    s_acc, _ = run_acc(micro[:3])
    assert all(np.array_equal(v, p0[k]) for k, v in host(s_acc.params).items())  # no update mid-accumulation
    s_acc, _ = run_acc(micro[3:])
    s_one, _ = run_one([big])
    a, b = host(s_acc.params), host(s_one.params)
    assert any(not np.array_equal(a[k], p0[k]) for k in a)
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- averaging


def test_ema_and_swa_equal_closed_form_with_constant_update():
    from astroflax.train.averaging import averaged_params

    n, lr, d, start = 6, 0.1, 0.8, 2
    state, run = trainer(loss=sum_loss, name="sgd", lr=lr, momentum=0.0, ema={"decay": d}, swa={"start_step": start})
    p0 = host(state.params)
    state, _ = run([data(4)] * n)
    ema, swa = host(averaged_params(state.opt_state, "ema")), host(averaged_params(state.opt_state, "swa"))
    for k, x0 in p0.items():
        traj = [x0 - t * lr for t in range(n + 1)]  # params after t updates
        expected = x0.astype(np.float64)
        for t in range(1, n + 1):
            expected = d * expected + (1 - d) * traj[t]
        np.testing.assert_allclose(ema[k], expected, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(swa[k], np.mean(traj[start:], axis=0), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(host(state.params)[k], traj[n], rtol=1e-6, atol=1e-6)


def test_swa_recomputes_batch_norm_statistics():
    from astroflax.train.averaging import has_batch_stats, recompute_batch_stats

    model = Toy(nnx.Rngs(0), batch_norm=True)
    graphdef, params, model_state = nnx.split(model, nnx.Param, ...)
    assert has_batch_stats(model_state)
    batches = [data(16, i) for i in range(3)]
    new = recompute_batch_stats(graphdef, params, model_state, mse_loss, batches, jax.random.key(0))
    # expected: mean over batches of each batch's mean of the features entering the BN layer
    m = nnx.merge(graphdef, params, model_state)

    def features(x):
        h = m.embed(x)
        for layer in m.layers:
            h = jnp.tanh(layer(h))
        return np.asarray(h)

    expected_mean = np.mean([features(b["x"]).mean(0) for b in batches], axis=0)
    expected_var = np.mean([features(b["x"]).var(0) for b in batches], axis=0)
    got = flat_params(new)
    np.testing.assert_allclose(got["bn.mean"], expected_mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got["bn.var"], expected_var, rtol=1e-4, atol=1e-6)


# ------------------------------------------------------------------- per-parameter rules


def test_frozen_params_get_zero_updates_and_no_moments():
    state, run = trainer(name="adamw", lr=0.05, freeze=[r"^layers\.1\."], clip_norm=1.0)
    before = host(state.params)
    state, _ = run([data(8, i) for i in range(3)])
    after = host(state.params)
    for k in before:
        if k.startswith("layers.1."):
            assert np.array_equal(after[k], before[k]), k
        else:
            assert not np.array_equal(after[k], before[k]), k
    opt_paths = list(flat_params(state.opt_state))
    assert any("mu.layers.0.kernel" in p for p in opt_paths)  # moments exist for trained params...
    assert not [p for p in opt_paths if "layers.1." in p]  # ...and none for frozen ones


def test_train_only_freezes_everything_else():
    state, run = trainer(name="sgd", lr=0.1, train_only=["^head"])
    before = host(state.params)
    state, _ = run([data(8)])
    changed = {k for k, v in host(state.params).items() if not np.array_equal(v, before[k])}
    assert changed == {"head.kernel", "head.bias"}


def sgd_deltas(**extra) -> dict[str, np.ndarray]:
    state, run = trainer(name="sgd", lr=0.1, momentum=0.0, **extra)
    before = host(state.params)
    state, _ = run([data(8)])
    return {k: host(state.params)[k] - before[k] for k in before}


def test_lr_multiplier_scales_matched_updates():
    base = sgd_deltas()
    ruled = sgd_deltas(lr_multipliers=[{"pattern": "^head", "factor": 3.0}])
    for k in base:
        np.testing.assert_allclose(ruled[k], base[k] * (3.0 if k.startswith("head") else 1.0), rtol=1e-4, atol=1e-8)


def test_layer_wise_lr_decay_ratios():
    base = sgd_deltas()
    decayed = sgd_deltas(layer_decay={"factor": 0.5, "embed_pattern": "^embed"})
    expected = {"layers.0": 0.5**3, "layers.1": 0.5**2, "layers.2": 0.5, "embed": 0.5**4, "head": 1.0, "norm": 1.0}
    for k in base:
        f = next(v for p, v in expected.items() if k.startswith(p + "."))
        np.testing.assert_allclose(decayed[k], base[k] * f, rtol=1e-4, atol=1e-9)


# ---------------------------------------------------------------------------- precision


def test_bfloat16_compute_keeps_float32_params_and_state():
    state, run = trainer(name="adamw", lr=0.01, precision="bfloat16")
    state, logs = run([data(8)])
    assert logs[0]["compute_bf16"] == 1.0  # the model really ran in bfloat16
    assert {x.dtype for x in jax.tree.leaves(state.params)} == {jnp.dtype("float32")}
    assert {x.dtype for x in jax.tree.leaves(state.opt_state) if jnp.issubdtype(x.dtype, jnp.floating)} == {
        jnp.dtype("float32")}


def test_float16_loss_scaler_skips_overflow_and_reduces_scale():
    from astroflax.train.precision import dynamic_loss_scale

    tx = dynamic_loss_scale(optax.sgd(1.0), LossScaleConfig(init=8.0, period=2, factor=2.0))
    p = {"w": jnp.ones(2)}
    s = tx.init(p)
    u, s = tx.update({"w": jnp.array([jnp.inf, 8.0])}, s, p)  # overflow
    assert np.array_equal(u["w"], [0.0, 0.0]) and float(s.scale) == 4.0
    u, s = tx.update({"w": jnp.array([4.0, 8.0])}, s, p)  # grads 1, 2 after unscaling
    np.testing.assert_allclose(u["w"], [-1.0, -2.0])
    u, s = tx.update({"w": jnp.array([4.0, 8.0])}, s, p)  # second finite step: the scale grows
    assert float(s.scale) == 8.0 and int(s.good_steps) == 0


def test_float16_step_skips_overflowing_update():
    huge = lambda m, b, r, t: (1e4 * jnp.sum(m(b["x"], t).astype(jnp.float32)), {})  # noqa: E731
    state, run = trainer(loss=huge, name="sgd", lr=1e-6, precision="float16")
    before = host(state.params)
    state, logs = run([data(8)])
    assert logs[0]["skipped"] == 1.0 and logs[0]["loss_scale"] == 2.0**15
    assert all(np.array_equal(v, before[k]) for k, v in host(state.params).items())
    assert float(state.opt_state.scale) == 2.0**14
    assert {x.dtype for x in jax.tree.leaves(state.params)} == {jnp.dtype("float32")}


# ------------------------------------------------------------------------ regularisation


def test_label_smoothing_changes_the_loss_by_the_analytic_amount():
    def ce(model, batch, rng, train):
        logits = model(batch["x"], train)
        return classify.weighted_cross_entropy(logits, batch, batch.get("_label_smoothing", 0.0))

    batch = {"x": data(8)["x"], "label": np.array([0, 1] * 4, np.int32)}
    eps = 0.2
    logs = {}
    for ls in (0.0, eps):
        _, run = trainer(loss=ce, name="sgd", regularization={"label_smoothing": ls})
        logs[ls] = run([batch])[1][0]["loss"]
    model = Toy(nnx.Rngs(0))
    logp = np.asarray(jax.nn.log_softmax(model(batch["x"])))
    # smoothed CE = (1-eps) * CE + eps * mean_k(-log p_k)
    extra = eps * np.mean(-logp.mean(-1) - (-logp[np.arange(8), batch["label"]]))
    assert logs[eps] - logs[0.0] == pytest.approx(extra, rel=1e-4)


def test_l2_and_grad_norm_penalties_have_their_values():
    state, run = trainer(name="sgd", lr=0.0 + 1e-9, regularization={"l2": 0.3, "grad_norm_penalty": 0.7})
    p = host(state.params)
    graphdef, params = nnx.split(Toy(nnx.Rngs(0)))
    b = data(8)
    g = jax.jit(jax.grad(lambda p: mse_loss(nnx.merge(graphdef, p), b, None, True)[0]))(params)
    gnorm2 = float(optax.global_norm(g) ** 2)
    _, logs = run([b])
    l2 = 0.5 * 0.3 * sum(float(np.sum(v**2)) for k, v in p.items() if k.endswith("kernel"))
    assert logs[0]["l2_penalty"] == pytest.approx(l2, rel=1e-5)
    assert logs[0]["grad_penalty"] == pytest.approx(0.7 * gnorm2, rel=1e-4)


# ---------------------------------------------------------------------------- config


@pytest.mark.parametrize("override, fragment", [
    ("optim.freeze=['(']", "regular expression"),
    ("schedule.boundaries=[10]", "same length"),
    ("optim.precision=float8", "optim.precision"),
    ("optim.ema.decay=1.5", "optim.ema.decay"),
])
def test_bad_recipe_config_is_one_line(override, fragment):
    with pytest.raises(ConfigError) as info:
        build_config("transients", "quick", overrides=[override])
    assert fragment in str(info.value) and "\n" not in str(info.value)


# ----------------------------------------------------------------- resume and CLI smoke


def test_resume_with_ema_is_bitwise_and_ema_is_selectable(tmp_path):
    import orbax.checkpoint as ocp

    from astroflax.runs import load_run
    from astroflax.train.loop import train

    overrides = [o for o in TINY_TRANSIENTS if not o.startswith(("train.steps", "checkpoint.every", "train.eval_every"))]
    overrides += ["train.steps=10", "checkpoint.every=5", "train.eval_every=5", "checkpoint.keep_best=0",
                  "train.progress=false", "optim.ema.decay=0.9", "optim.swa.start_step=4"]
    full = tmp_path / "full"
    train(build_config("transients", "quick", overrides=overrides + [f"run_dir={full}"]), resume=False)
    part = tmp_path / "part"
    shutil.copytree(full, part)
    shutil.rmtree(part / "checkpoints" / "10")  # as if the run had stopped at step 5
    res = train(build_config("transients", "quick", overrides=overrides + [f"run_dir={part}"]), resume=True)
    assert res.step == 10

    def final(run_dir):
        tree = ocp.StandardCheckpointer().restore((run_dir / "checkpoints" / "10" / "state").absolute())
        return {jax.tree_util.keystr(p): np.asarray(x) for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}

    a, b = final(full), final(part)
    assert a.keys() == b.keys() and any("ema" in k for k in a)
    for k in a:
        assert np.array_equal(a[k], b[k]), k
    raw, ema = load_run(full, "latest"), load_run(full, "latest", weights="ema")
    rp, ep = host(raw.state.params), host(ema.state.params)
    assert any(not np.array_equal(rp[k], ep[k]) for k in rp)
    probs = ema.predict(ema.task.load_data(ema.cfg).split("val"))
    assert np.allclose(probs.sum(-1), 1.0, atol=1e-5)
    with pytest.raises(ConfigError, match="weights"):
        load_run(full, "latest", weights="nope")


def cli(capsys, *args: str) -> tuple[int, str, str]:
    return run_main(list(args), capsys)


def test_cli_schedule_and_optimizer_compare(tmp_path, capsys):
    cfg = tmp_path / "exp.yaml"
    cfg.write_text("task: transients\nschedule: {name: cosine, warmup_steps: 20}\noptim: {lr: 0.25}\n")
    code, out, _ = cli(capsys, "schedule", str(cfg), "--steps", "200", "--out", str(tmp_path / "lr.png"))
    assert code == 0 and "cosine" in out and "199" in out and "0.25" in out
    assert (tmp_path / "lr.png").stat().st_size > 1000
    code, out, _ = cli(capsys, "schedule", "transients", "--set", "schedule.name=constant", "--out", str(tmp_path / "c.png"))
    last = build_config("transients", "quick").train.steps - 1
    assert code == 0 and f"{last}" in out  # the quick preset's train.steps when --steps is not given
    code, out, _ = cli(capsys, "optimizers", "compare", "--steps", "100", "--optimizer", "sgd", "--optimizer", "lion",
                       "--optimizer", "adam+lookahead", "--out", str(tmp_path / "traj.png"))
    assert code == 0 and all(n in out for n in ("sgd", "lion", "adam+lookahead"))
    assert (tmp_path / "traj.png").stat().st_size > 1000
    code, _, err = cli(capsys, "optimizers", "compare", "--optimizer", "nope", "--out", str(tmp_path / "t.png"))
    assert code == 2 and "nope" in err
