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
    # The non-finite guard (train/step.py, train/loop.py): consecutive rejected updates, and the
    # factor on every update that rollbacks lower. Checkpointed, so a resume decides the same.
    nonfinite_streak: jax.Array
    lr_scale: jax.Array


def create_state(model: nnx.Module, tx: optax.GradientTransformation, seed: int) -> tuple[nnx.GraphDef, TrainState]:
    graphdef, params, model_state = nnx.split(model, nnx.Param, ...)
    state = TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=tx.init(params),
        # Raw uint32 key data (not a typed key) so that Orbax can save it like any array.
        rng=jax.random.key_data(jax.random.key(seed + 1)),
        model_state=model_state,
        nonfinite_streak=jnp.zeros((), jnp.int32),
        lr_scale=jnp.ones((), jnp.float32),
    )
    return graphdef, state


def count_params(params: Any) -> int:
    return int(sum(x.size for x in jax.tree.leaves(params)))
