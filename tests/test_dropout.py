"""Dropout masks (astroflax/models/dropout.py): the keyed hash behaves as independent draws."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from astroflax.models.dropout import dropout, keep_mask, mask_generator, site_key

SHAPE = (64, 128, 48)  # a transients quick-preset activation


def _within(observed: float, expected: float, n: int, sigmas: float = 5.0) -> bool:
    return abs(observed - expected) <= sigmas * np.sqrt(expected * (1 - expected) / n)


@pytest.mark.parametrize("keep", [0.1, 0.5, 0.8, 0.9, 0.99])
def test_keep_rate_matches_for_many_keys(keep):
    key = jax.random.key(0)
    rates = [float(keep_mask(site_key(key, i), SHAPE, keep).mean()) for i in range(8)]
    n = int(np.prod(SHAPE))
    assert all(_within(r, keep, n) for r in rates), rates
    assert _within(float(np.mean(rates)), keep, 8 * n)


def test_neighbours_along_every_axis_and_sites_are_independent():
    keep = 0.5
    key = jax.random.key(3)
    m = np.asarray(keep_mask(site_key(key, 1), SHAPE, keep))
    for axis in range(m.ndim):
        a = np.take(m, np.arange(m.shape[axis] - 1), axis=axis)
        b = np.take(m, np.arange(1, m.shape[axis]), axis=axis)
        assert _within(float((a & b).mean()), keep * keep, a.size), axis
    # Another site, the next step's key and another seed: masks unrelated to this one.
    others = [
        keep_mask(site_key(key, 2), SHAPE, keep),
        keep_mask(site_key(jax.random.fold_in(key, 1), 1), SHAPE, keep),
        keep_mask(site_key(jax.random.key(4), 1), SHAPE, keep),
    ]
    for o in others:
        assert _within(float((m & np.asarray(o)).mean()), keep * keep, m.size)
    # Flat neighbours at distance 1..64 (the counter's own order).
    flat = m.reshape(-1)
    for lag in (1, 2, 3, 7, 48, 64):
        assert _within(float((flat[:-lag] & flat[lag:]).mean()), keep * keep, flat.size - lag), lag


def test_bits_are_uniform_in_every_byte():
    """chi-square of the 256 values of each byte of the hash: the threshold sees uniform bits."""
    key = jax.random.key(11)
    # keep_mask compares with a threshold; read the bits by sweeping it over 256 levels instead.
    levels = np.stack([np.asarray(keep_mask(key, (1 << 16,), k / 256)) for k in range(1, 256)])
    bins = np.diff(np.concatenate([np.zeros((1, levels.shape[1])), levels, np.ones((1, levels.shape[1]))]),
                   axis=0).sum(axis=1)
    expected = (1 << 16) / 256
    chi2 = float(((bins - expected) ** 2 / expected).sum())
    assert bins.sum() == 1 << 16
    assert chi2 < 350, chi2  # 255 degrees of freedom: p(chi2 > 350) < 1e-4


def test_same_key_same_mask_and_dropout_scales_what_it_keeps():
    layer = nnx.Dropout(0.2)
    x = jax.random.normal(jax.random.key(0), (32, 40)) + 3.0
    k = site_key(jax.random.key(5), 7)
    y1, y2 = dropout(layer, x, k), dropout(layer, x, k)
    np.testing.assert_array_equal(np.asarray(y1), np.asarray(y2))
    kept = np.asarray(y1) != 0
    np.testing.assert_allclose(np.asarray(y1)[kept], np.asarray(x)[kept] / 0.8, rtol=1e-6)
    assert 0.6 < kept.mean() < 0.95
    # The gradient is the mask over keep, so dropped elements get none.
    g = jax.grad(lambda v: dropout(layer, v, k).sum())(x)
    np.testing.assert_allclose(np.asarray(g), kept / 0.8, rtol=1e-6)
    assert dropout(layer, x, None) is x
    assert not np.array_equal(np.asarray(dropout(layer, x, site_key(jax.random.key(5), 8))), np.asarray(y1))


def test_broadcast_dims_share_one_mask():
    layer = nnx.Dropout(0.5, broadcast_dims=(1,))
    y = np.asarray(dropout(layer, jnp.ones((16, 9, 5)), jax.random.key(2)))
    assert (y == y[:, :1, :]).all()
    assert 0 < (y == 0).mean() < 1


def test_threefry_setting_gives_flax_masks():
    layer = nnx.Dropout(0.3)
    x = jnp.arange(600.0).reshape(20, 30) + 1
    k = jax.random.key(9)
    with mask_generator("threefry"):
        ours = dropout(layer, x, k)
    np.testing.assert_array_equal(np.asarray(ours), np.asarray(layer(x, deterministic=False, rngs=k)))
    assert not np.array_equal(np.asarray(dropout(layer, x, k)), np.asarray(ours))
    with pytest.raises(ValueError, match="'hash' or 'threefry'"):
        with mask_generator("philox"):
            pass
