"""astroflax's LayerNorm equals flax's, value and derivatives, and keeps its parameters."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from astroflax.models.layernorm import LayerNorm


def _pair(d: int):
    ours, theirs = LayerNorm(d, rngs=nnx.Rngs(0)), nnx.LayerNorm(d, rngs=nnx.Rngs(0))
    k1, k2 = jax.random.split(jax.random.key(1))
    for m in (ours, theirs):
        m.scale[...] = 1 + 0.5 * jax.random.normal(k1, (d,))
        m.bias[...] = 0.3 * jax.random.normal(k2, (d,))
    return ours, theirs


@pytest.mark.parametrize("shape", [(5, 12), (3, 7, 48), (2, 4, 6, 1)])
def test_value_and_gradients_equal_flax(shape):
    ours, theirs = _pair(shape[-1])
    x = 4.0 * jax.random.normal(jax.random.key(2), shape) + 2.0
    w = jax.random.normal(jax.random.key(3), shape)
    np.testing.assert_allclose(ours(x), theirs(x), atol=2e-5)

    def loss(m, x):
        return jnp.sum(jnp.sin(m(x)) * w)

    (gm_o, gx_o), (gm_t, gx_t) = (nnx.grad(loss, argnums=(0, 1))(m, x) for m in (ours, theirs))
    np.testing.assert_allclose(gx_o, gx_t, atol=5e-5)
    for name in ("scale", "bias"):
        np.testing.assert_allclose(gm_o[name][...], gm_t[name][...], atol=5e-5)
    assert set(nnx.state(ours, nnx.Param)) == set(nnx.state(theirs, nnx.Param)) == {"scale", "bias"}


def test_forward_mode_and_second_derivatives_equal_flax():
    ours, theirs = _pair(9)
    x = jax.random.normal(jax.random.key(4), (4, 9))
    v = jax.random.normal(jax.random.key(5), (4, 9))
    jvp = [jax.jvp(lambda x: m(x), (x,), (v,))[1] for m in (ours, theirs)]
    np.testing.assert_allclose(jvp[0], jvp[1], atol=1e-5)
    # A gradient-norm penalty differentiates the gradient (optim.regularization.grad_norm_penalty).
    hv = [jax.grad(lambda x: jnp.sum(jax.grad(lambda x: jnp.sum(m(x) ** 3))(x) ** 2))(x) for m in (ours, theirs)]
    np.testing.assert_allclose(hv[0], hv[1], rtol=1e-3, atol=1e-3)


def test_constant_rows_and_other_dtypes():
    ours, theirs = _pair(6)
    x = jnp.ones((3, 6)) * 7.0  # zero variance: finite, the bias
    np.testing.assert_allclose(ours(x), theirs(x), atol=1e-5)
    assert np.isfinite(np.asarray(jax.grad(lambda x: ours(x).sum())(x))).all()
    xb = x.astype(jnp.bfloat16)  # not float32: flax's own path
    assert ours(xb).dtype == theirs(xb).dtype
