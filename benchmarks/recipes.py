"""Step time of each optimisation recipe as a ratio to the default recipe, in one process.

Model and data: the transients ``quick`` preset (same batch, same compiled model). Each
recipe's jitted step is compiled and warmed up, then timed over ``--steps`` steps; the rounds
rotate over the recipes so that machine load hits them alike, and the median round counts.
``--accuracy-steps N`` also trains float32 / bfloat16 / float16 runs of N steps and reports
their validation metrics. Usage::

    python benchmarks/recipes.py --steps 20 --rounds 3 --accuracy-steps 400 --json out.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time

import jax

from astroflax.config import build_config
from astroflax.data.pipeline import TrainStream
from astroflax.runtime import enable_compile_cache
from astroflax.train.components import build_components
from astroflax.train.sharding import replicate, shard_batch
from astroflax.train.step import init_accumulator, make_train_step

RECIPES = {
    "default (adamw, clip 1, warmup_cosine)": [],
    "sgd nesterov": ["optim.name=sgd", "optim.nesterov=true"],
    "rmsprop": ["optim.name=rmsprop"],
    "lamb": ["optim.name=lamb"],
    "lion": ["optim.name=lion"],
    "adafactor": ["optim.name=adafactor"],
    "lookahead(adamw)": ["optim.lookahead.enabled=true"],
    "clip_value 0.1": ["optim.clip_value=0.1"],
    "accumulate 4": ["optim.accumulate_steps=4"],
    "ema 0.999": ["optim.ema.decay=0.999"],
    "ema + swa": ["optim.ema.decay=0.999", "optim.swa.start_step=0"],
    "lr multipliers": ["optim.lr_multipliers=[{pattern: '^head', factor: 10.0}]"],
    "layer decay 0.75": ["optim.layer_decay.factor=0.75"],
    "freeze encoder": ["optim.freeze=['^encoder']"],
    "l2 penalty": ["optim.regularization.l2=1e-4"],
    "grad-norm penalty": ["optim.regularization.grad_norm_penalty=1e-3"],
    "label smoothing": ["optim.regularization.label_smoothing=0.1"],
    "bfloat16": ["optim.precision=bfloat16"],
    "float16 + loss scaling": ["optim.precision=float16"],
}


def build_step(overrides: list[str]):
    cfg = build_config("transients", "quick", overrides=overrides)
    c = build_components(cfg)
    train = c.task.device_arrays(c.dataset.split("train"))
    mesh, state = c.mesh, c.state
    step = make_train_step(c.graphdef, c.tx, c.loss_fn, c.schedule, cfg.optim, cfg.train.dropout_masks)
    stream = TrainStream(train, cfg.train.batch_size, seed=0, version=c.dataset.version)
    batches = [shard_batch(next(stream), mesh) for _ in range(8)]
    acc0 = init_accumulator([])
    names = [k for k in jax.eval_shape(step, state, acc0, batches[0])[1] if k != "count"]
    jit_step = jax.jit(step, donate_argnums=(0, 1))
    return {"state": state, "acc": replicate(init_accumulator(names), mesh), "step": jit_step, "batches": batches,
            "names": names, "mesh": mesh}


def time_steps(r: dict, n: int) -> float:
    state, acc = r["state"], r["acc"]
    jax.block_until_ready(state)
    t0 = time.perf_counter()
    for i in range(n):
        state, acc = r["step"](state, acc, r["batches"][i % len(r["batches"])])
    jax.block_until_ready(acc)
    dt = (time.perf_counter() - t0) / n
    r["state"], r["acc"] = state, replicate(init_accumulator(r["names"]), r["mesh"])
    return dt


def accuracy(steps: int) -> dict:
    from astroflax.train.loop import train

    out = {}
    for prec in ("float32", "bfloat16", "float16"):
        with tempfile.TemporaryDirectory() as d:
            cfg = build_config("transients", "quick", overrides=[
                f"train.steps={steps}", f"train.eval_every={steps}", f"checkpoint.every={steps}",
                "train.progress=false", f"optim.precision={prec}", f"run_dir={d}/run"])
            res = train(cfg, resume=False)
            out[prec] = {"val_loss": res.val_metrics["val_loss"], "val_accuracy": res.val_metrics["val_accuracy"],
                         "wall_time_s": res.wall_time}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--accuracy-steps", type=int, default=0)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    enable_compile_cache()
    built = {}
    for name, ov in RECIPES.items():
        built[name] = build_step(ov)
        time_steps(built[name], 2)  # compile + warm up
    times: dict[str, list[float]] = {n: [] for n in RECIPES}
    for _ in range(args.rounds):
        for name in RECIPES:
            times[name].append(time_steps(built[name], args.steps))
    base = statistics.median(times[next(iter(RECIPES))])
    rows = []
    print(f"{'recipe':40s} {'ms/step':>8s} {'ratio':>6s}   ({jax.device_count()} {jax.default_backend()} device(s))")
    for name in RECIPES:
        med = statistics.median(times[name])
        rows.append({"recipe": name, "ms_per_step": med * 1e3, "ratio": med / base})
        print(f"{name:40s} {med * 1e3:8.1f} {med / base:6.2f}")
    result = {"steps": args.steps, "rounds": args.rounds, "recipes": rows}
    if args.accuracy_steps:
        result["precision_accuracy"] = accuracy(args.accuracy_steps)
        for prec, m in result["precision_accuracy"].items():
            print(f"{prec:9s} after {args.accuracy_steps} steps: val_loss {m['val_loss']:.4f}  "
                  f"val_accuracy {m['val_accuracy']:.4f}  wall {m['wall_time_s']:.0f} s")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=1)


if __name__ == "__main__":
    main()
