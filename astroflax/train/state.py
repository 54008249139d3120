"""The train state: everything that decides the next step, as one pytree."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx, struct


@struct.dataclass
class TrainState:
    """Params, optimiser state, step, RNG key and non-parameter model state (e.g. batch stats).

    The NNX graph definition is static and kept outside (``graphdef``) so the state is a plain
    pytree that jit can donate and Orbax can save.
    """

    step: jax.Array
    params: Any
    opt_state: Any
    rng: jax.Array
    model_state: Any


def create_state(model: nnx.Module, tx: optax.GradientTransformation, seed: int) -> tuple[nnx.GraphDef, TrainState]:
    graphdef, params, model_state = nnx.split(model, nnx.Param, ...)
    state = TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=tx.init(params),
        # Raw uint32 key data (not a typed key) so that Orbax can save it like any array.
        rng=jax.random.key_data(jax.random.key(seed + 1)),
        model_state=model_state,
    )
    return graphdef, state


def merge_model(graphdef: nnx.GraphDef, state: TrainState) -> nnx.Module:
    return nnx.merge(graphdef, state.params, state.model_state)


def count_params(params: Any) -> int:
    return int(sum(x.size for x in jax.tree.leaves(params)))
