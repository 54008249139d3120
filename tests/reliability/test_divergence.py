"""Divergence: a non-finite update is never applied, a non-finite model is never checkpointed,
and a diverging run rolls back (with a lower learning rate) or stops with a clear message."""

from __future__ import annotations

import json
import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from conftest import run_cli, set_args

# photoz quick with a learning rate multiplied by 1e12 from step 210 (the hostile case of the
# issue), evaluated and checkpointed every 100 steps so that good checkpoints exist before it.
BLOW_UP = [
    "train.steps=600", "train.eval_every=100", "train.log_every=50", "train.progress=false",
    "schedule.name=piecewise", "schedule.boundaries=[210]", "schedule.scales=[1e12]",
]


def _records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _checkpoint_steps(run_dir: Path) -> list[int]:
    return sorted(int(p.name) for p in (run_dir / "checkpoints").iterdir() if p.name.isdigit())


def test_step_skips_a_non_finite_update_and_counts_the_streak():
    from astroflax.train.state import create_state
    from astroflax.train.step import init_accumulator, make_train_step, summarise_accumulator

    model = nnx.Linear(3, 1, rngs=nnx.Rngs(0))

    def loss_fn(m, batch, rng, train):
        out = m(batch["x"])[:, 0]
        return jnp.mean((out - batch["y"]) ** 2) * batch["poison"][0], {}

    tx = optax.sgd(0.1)
    graphdef, state = create_state(model, tx, 0)
    step = jax.jit(make_train_step(graphdef, tx, loss_fn, optax.constant_schedule(0.1)))
    names = [k for k in jax.eval_shape(step, state, init_accumulator([]), _batch(1.0))[1] if k != "count"]
    before = jax.device_get(state.params)
    state, acc = step(state, init_accumulator(names), _batch(np.nan))
    after = jax.device_get(state.params)
    assert jax.tree.all(jax.tree.map(np.array_equal, before, after))  # nothing applied
    assert int(state.nonfinite_streak) == 1 and int(state.step) == 1
    state, acc = step(state, acc, _batch(np.inf))
    assert int(state.nonfinite_streak) == 2
    logged = summarise_accumulator(jax.device_get(acc))
    assert logged["nonfinite"] == 2.0 and np.isnan(logged["loss"])  # no applied update: no mean
    state, acc = step(state, acc, _batch(1.0))
    assert int(state.nonfinite_streak) == 0
    assert not jax.tree.all(jax.tree.map(np.array_equal, after, jax.device_get(state.params)))
    logged = summarise_accumulator(jax.device_get(acc))
    assert np.isfinite(logged["loss"]) and logged["nonfinite"] == 2.0


def _batch(poison: float) -> dict:
    r = np.random.default_rng(0)
    return {"x": r.normal(size=(8, 3)).astype(np.float32), "y": r.normal(size=8).astype(np.float32),
            "poison": np.full(8, poison, np.float32)}


def test_blow_up_rolls_back_then_stops_with_finite_checkpoints(tmp_path):
    run_dir = tmp_path / "photoz"
    proc = run_cli("train", "photoz", "--preset", "quick", "--run-dir", str(run_dir), *set_args(BLOW_UP))
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: training diverged at step") and "after 3 rollback(s)" in last
    assert "learning rate" in last and "checkpoints up to step" in last
    events = [r for r in _records(run_dir) if r["split"] == "event"]
    assert [e["event"] for e in events].count("rollback") == 3
    assert [e["lr_scale"] for e in events if e["event"] == "rollback"] == [0.5, 0.25, 0.125]
    assert all(e["step"] == 200 for e in events if e["event"] == "rollback")  # back to the last good checkpoint
    # No checkpoint holds non-finite parameters or a non-finite validation loss; step 300 (after
    # the blow-up at 210) was never written.
    from astroflax.runs import load_run
    from astroflax.train.checkpoint import Checkpointer

    steps = _checkpoint_steps(run_dir)
    assert steps and max(steps) <= 200, steps
    ckpt = Checkpointer(run_dir / "checkpoints", read_only=True)
    for s in steps:
        run = load_run(run_dir, s)
        assert all(bool(np.all(np.isfinite(x))) for x in jax.tree.leaves(jax.device_get(run.state.params)))
        val = ckpt.read_meta(s).get("val_metrics")
        assert val is None or np.isfinite(val["val_loss"])
    # The best checkpoint is usable: evaluate gives finite figures.
    proc = run_cli("evaluate", str(run_dir), "--split", "test", "--checkpoint", "best")
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads((run_dir / "eval" / "test.json").read_text())
    assert report["checkpoint_step"] <= 200 and np.isfinite(report["sigma_nmad"]) and report["sigma_nmad"] < 0.1
    page = (run_dir / "report" / "index.html").read_text()
    assert "Events" in page and "rollback" in page


def test_stop_policy_stops_at_the_first_divergence(tmp_path):
    run_dir = tmp_path / "photoz"
    proc = run_cli("train", "photoz", "--preset", "quick", "--run-dir", str(run_dir),
                   *set_args(BLOW_UP + ["train.nonfinite.action=stop"]))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert re.match(r"error: training diverged at step (250|300):", last) and "rollback" not in last, last
    assert [r["event"] for r in _records(run_dir) if r["split"] == "event"] == ["diverged"]
    assert max(_checkpoint_steps(run_dir)) == 200
