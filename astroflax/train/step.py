"""Pure, jitted train and eval steps.

The NNX module is split outside jit and merged inside, so the compiled function sees only
arrays (no Python graph traversal per call). The state and the metric accumulator are donated:
their buffers are reused in place.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from astroflax.tasks.base import Batch, LossFn
from astroflax.train.state import TrainState


def make_train_step(
    graphdef: nnx.GraphDef,
    tx: optax.GradientTransformation,
    loss_fn: LossFn,
    schedule: optax.Schedule,
) -> Callable[[TrainState, dict, Batch], tuple[TrainState, dict]]:
    """Returns ``step(state, acc, batch) -> (state, acc)``; ``acc`` sums metrics on device."""

    def step(state: TrainState, acc: dict, batch: Batch) -> tuple[TrainState, dict]:
        # A fresh key per step derived from (seed key, step): identical after a resume.
        rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)

        # The step travels with the batch for losses that change with training (e.g. KL warm-up).
        step_batch = {**batch, "_step": state.step}

        def compute(params):
            model = nnx.merge(graphdef, params, state.model_state)
            loss, aux = loss_fn(model, step_batch, rng, True)
            _, _, new_model_state = nnx.split(model, nnx.Param, ...)
            return loss, (aux, new_model_state)

        (loss, (aux, model_state)), grads = jax.value_and_grad(compute, has_aux=True)(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {
            "loss": loss,
            "grad_norm": optax.global_norm(grads),
            "lr": jnp.asarray(schedule(state.step), jnp.float32),
            "nonfinite": jnp.logical_not(jnp.isfinite(loss)).astype(jnp.float32),
            **aux,
        }
        acc = {k: acc.get(k, 0.0) + v.astype(jnp.float32) for k, v in metrics.items()} | {
            "count": acc["count"] + 1.0
        }
        new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state, model_state=model_state)
        return new_state, acc

    return step


def init_accumulator(metric_names: list[str]) -> dict[str, jax.Array]:
    return {name: jnp.zeros((), jnp.float32) for name in [*metric_names, "count"]}


def make_predict_step(
    graphdef: nnx.GraphDef, predict_fn: Callable[[nnx.Module, Batch], jax.Array]
) -> Callable[[Any, Any, Batch], jax.Array]:
    def predict(params, model_state, batch: Batch) -> jax.Array:
        model = nnx.merge(graphdef, params, model_state)
        return predict_fn(model, batch)

    return predict
