"""LayerNorm with a hand-written derivative (same parameters as ``flax.nnx.LayerNorm``).

Why: XLA:CPU differentiates flax's LayerNorm op by op (mean, E[x^2], their gradients through
the variance), which left several passes over each (B, L, d) activation in the backward pass.
The closed form, d x_hat = (dx - mean(dx) - x_hat mean(dx x_hat)) / sigma, is two reductions
and one pass, and its transpose (the backward pass) has the same form. Written as a JVP rule
(``jax.custom_jvp``), so forward mode and higher derivatives keep working. Transients quick
train step on one pinned core, flax's vs this, in one run: 73.1 -> 64.0 ms and 76.9 -> 70.9 ms
(a ``custom_vjp`` with the same formula: 68.1 / 71.0 ms). Only float32 over the last axis takes
this path; anything else is flax's own.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
from flax import nnx


def _normalise(x: jax.Array, eps: float) -> tuple[jax.Array, jax.Array]:
    """x_hat (zero mean, unit variance over the last axis) and 1 / sigma, the variance taken
    about the mean (two passes: no cancellation, unlike E[x^2] - E[x]^2)."""
    centred = x - x.mean(-1, keepdims=True)
    inv = jax.lax.rsqrt((centred * centred).mean(-1, keepdims=True) + eps)
    return centred * inv, inv


@partial(jax.custom_jvp, nondiff_argnums=(3,))
def layer_norm(x: jax.Array, scale: jax.Array, bias: jax.Array, eps: float = 1e-6) -> jax.Array:
    """Normalise over the last axis, then scale and shift."""
    return _normalise(x, eps)[0] * scale + bias


@layer_norm.defjvp
def _layer_norm_jvp(eps: float, primals: tuple, tangents: tuple) -> tuple[jax.Array, jax.Array]:
    x, scale, bias = primals
    dx, dscale, dbias = tangents
    x_hat, inv = _normalise(x, eps)
    dx_hat = inv * (dx - dx.mean(-1, keepdims=True) - x_hat * (dx * x_hat).mean(-1, keepdims=True))
    return x_hat * scale + bias, dx_hat * scale + x_hat * dscale + dbias


class LayerNorm(nnx.LayerNorm):
    """``nnx.LayerNorm`` (same parameters, paths and defaults) with :func:`layer_norm` where it applies."""

    def __call__(self, x: jax.Array, *, mask: jax.Array | None = None) -> jax.Array:
        fast = (mask is None and self.dtype is None and x.dtype == jnp.float32 and self.scale is not None
                and self.bias is not None and self.reduction_axes in (-1, (-1,)) and self.feature_axes in (-1, (-1,))
                and self.axis_name is None and self.scale[...].dtype == jnp.float32)
        if not fast:
            return super().__call__(x, mask=mask)
        return layer_norm(x, self.scale[...], self.bias[...], self.epsilon)
