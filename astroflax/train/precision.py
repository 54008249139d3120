"""Mixed precision: compute in bfloat16/float16 with float32 parameters and optimiser state.

The compute dtype is set on every module that has a ``dtype`` attribute (Linear, attention,
LayerNorm, Embed, BatchNorm...) inside the jitted step, after merging the float32 params:
Flax then casts weights and activations per op, and gradients flow back to the float32
params. Float16 additionally needs dynamic loss scaling; it lives in the optimiser state.

Why not ``jmp`` (DeepMind's mixed-precision library): its last PyPI release is 0.0.4 (2023-01)
and the project is archived; the scaler is a few lines and needs to sit inside the optax state
anyway (checkpointed and restored bitwise), so astroflax carries its own.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from astroflax.config import LossScaleConfig

DTYPES = {"float32": None, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
MAX_SCALE = 2.0**24


def compute_dtype(name: str) -> Any:
    return DTYPES[name]


def set_compute_dtype(model: nnx.Module, dtype: Any) -> None:
    """Make every module compute in ``dtype`` (parameters keep their stored dtype).

    XLA:CPU has no float16 ``dot_product_attention`` (F16_F16_F32 dot), so with float16 on CPU
    attention modules (and their projections) stay in float32; everything else runs in float16.
    """
    modules = list(nnx.iter_modules(model))
    skip: list[tuple] = []
    if dtype == jnp.float16 and jax.default_backend() == "cpu":
        skip = [path for path, m in modules if isinstance(m, nnx.MultiHeadAttention)]
    for path, module in modules:
        if any(path[: len(s)] == s for s in skip):
            continue
        if hasattr(module, "dtype") and not isinstance(getattr(module, "dtype"), nnx.Variable):
            module.dtype = dtype


class LossScaleState(NamedTuple):
    inner: Any  # the wrapped optimiser's state
    scale: jax.Array  # float32 loss scale
    good_steps: jax.Array  # int32 finite steps since the last change


def all_finite(tree: Any) -> jax.Array:
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.asarray(True)


# For callers outside jit (the loop's pre-save check): one compiled program for the whole tree,
# not one eager op per leaf shape (see astroflax.train.checkpoint._nonfinite_counts).
all_finite_jit = jax.jit(all_finite)


def dynamic_loss_scale(inner: optax.GradientTransformation, cfg: LossScaleConfig) -> optax.GradientTransformation:
    """Takes gradients of ``loss * scale``: unscales them; on a non-finite gradient skips the
    update (zero updates, inner state unchanged) and divides the scale by ``factor``; after
    ``period`` finite steps multiplies it by ``factor``."""

    def init(params):
        return LossScaleState(inner.init(params), jnp.asarray(cfg.init, jnp.float32), jnp.zeros((), jnp.int32))

    def update(scaled_grads, state, params=None):
        grads = jax.tree.map(lambda g: g / state.scale.astype(g.dtype), scaled_grads)
        finite = all_finite(grads)
        safe = jax.tree.map(lambda g: jnp.where(finite, g, jnp.zeros_like(g)), grads)
        updates, new_inner = inner.update(safe, state.inner, params)
        updates = jax.tree.map(lambda u: jnp.where(finite, u, jnp.zeros_like(u)), updates)
        new_inner = jax.tree.map(lambda n, o: jnp.where(finite, n, o), new_inner, state.inner)
        good = jnp.where(finite, state.good_steps + 1, 0)
        grow = good >= cfg.period
        scale = jnp.where(
            finite,
            jnp.where(grow, jnp.minimum(state.scale * cfg.factor, MAX_SCALE), state.scale),
            jnp.maximum(state.scale / cfg.factor, cfg.min_scale),
        ).astype(jnp.float32)
        return updates, LossScaleState(new_inner, scale, jnp.where(grow, 0, good).astype(jnp.int32))

    return optax.GradientTransformation(init, update)
