"""Tests for astroflax.models.lightcurve (small configs, CPU, < a few seconds each)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from astroflax.models.lightcurve import (LightCurveEncoder, SelfAttention, cross_attention, TimeEncoding, TransientClassifier,
                                         blockwise_attention, dense_attention, key_padding_bias)

NUM_CLASSES = 5
NUM_BANDS = 6
KEY0 = jax.random.key(0)
SMALL = dict(num_bands=NUM_BANDS, d_model=32, num_heads=4, num_layers=2, mlp_ratio=2, dropout=0.1)


def make_batch(B=4, L=16, lengths=None, meta_dim=0, seed=0):
    r = np.random.default_rng(seed)
    if lengths is None:
        lengths = r.integers(3, L + 1, B)
    lengths = np.asarray(lengths)
    mask = np.arange(L)[None, :] < lengths[:, None]
    batch = {
        "time": np.sort(r.uniform(-1000, 1000, (B, L)), axis=1).astype(np.float32),
        "flux": r.normal(size=(B, L)).astype(np.float32),
        "flux_err": r.uniform(0.01, 0.2, (B, L)).astype(np.float32),
        "band": r.integers(0, NUM_BANDS, (B, L)).astype(np.int32),
        "mask": mask,
    }
    # padded slots hold zeros by default; tests below overwrite them
    for k in ("time", "flux", "flux_err"):
        batch[k] = np.where(mask, batch[k], 0.0).astype(np.float32)
    batch["band"] = np.where(mask, batch["band"], 0).astype(np.int32)
    if meta_dim:
        batch["meta"] = r.normal(size=(B, meta_dim)).astype(np.float32)
    return batch


def jitted_apply(model):
    """Pure-function apply: jit(state, batch, rng, train) -> logits."""
    graphdef, state = nnx.split(model)

    @jax.jit
    def apply(state, batch, rng):
        return nnx.merge(graphdef, state)(batch, train=False, rng=rng)

    @jax.jit
    def apply_train(state, batch, rng):
        return nnx.merge(graphdef, state)(batch, train=True, rng=rng)

    return state, apply, apply_train


@pytest.fixture(scope="module")
def model():
    return TransientClassifier(NUM_CLASSES, rngs=nnx.Rngs(0), **SMALL)


@pytest.fixture(scope="module")
def fns(model):
    return jitted_apply(model)


def test_output_shape_and_finite(fns):
    state, apply, _ = fns
    logits = apply(state, make_batch(), KEY0)
    assert logits.shape == (4, NUM_CLASSES)
    assert logits.dtype == jnp.float32
    assert np.all(np.isfinite(np.asarray(logits)))


def test_time_encoding_uses_time_value_not_index():
    te = TimeEncoding(16, num_frequencies=8, min_period=0.1, max_period=2000.0, rngs=nnx.Rngs(0))
    w = te.frequencies()
    np.testing.assert_allclose(2 * np.pi / w[[0, -1]], [0.1, 2000.0], rtol=1e-5)
    t = jnp.array([[-500.0, 0.0, 3.7, 900.0]])
    out = te(t)
    assert out.shape == (1, 4, 16)
    # same time value at different positions -> identical encoding
    np.testing.assert_allclose(te(jnp.array([[3.7, 3.7]]))[0, 0], te(jnp.array([[3.7, 3.7]]))[0, 1])
    np.testing.assert_allclose(out[0, 2], te(jnp.array([[0.0, 3.7]]))[0, 1], rtol=1e-6, atol=1e-6)
    # and different times give different encodings
    assert not np.allclose(out[0, 1], out[0, 2])


def test_padding_append_invariance(fns):
    """(a) appending more padding (L -> L+k) leaves logits unchanged."""
    state, apply, _ = fns
    b = make_batch(lengths=[16, 5, 13, 1], seed=1)
    k = 11
    r = np.random.default_rng(7)
    longer = {}
    for key, v in b.items():
        pad_shape = (v.shape[0], k)
        if key == "mask":
            pad = np.zeros(pad_shape, bool)
        elif key == "band":
            pad = r.integers(0, NUM_BANDS, pad_shape).astype(np.int32)
        else:
            pad = r.normal(size=pad_shape).astype(np.float32) * 100.0
        longer[key] = np.concatenate([v, pad], axis=1)
    l1 = apply(state, b, KEY0)
    l2 = apply(state, longer, KEY0)
    assert l2.shape == l1.shape
    np.testing.assert_allclose(np.asarray(l1), np.asarray(l2), atol=1e-5, rtol=1e-5)


def test_padding_value_invariance(fns):
    """(b) arbitrary values (incl. huge) in padded slots leave logits unchanged."""
    state, apply, _ = fns
    b = make_batch(lengths=[16, 3, 10, 7], seed=2)
    pad = ~b["mask"]
    r = np.random.default_rng(3)
    junk = dict(b)
    junk["time"] = np.where(pad, r.uniform(-1e7, 1e7, pad.shape), b["time"]).astype(np.float32)
    junk["flux"] = np.where(pad, r.normal(size=pad.shape) * 1e20, b["flux"]).astype(np.float32)
    junk["flux_err"] = np.where(pad, -3e30, b["flux_err"]).astype(np.float32)
    junk["band"] = np.where(pad, r.integers(0, NUM_BANDS, pad.shape), b["band"]).astype(np.int32)
    l1 = np.asarray(apply(state, b, KEY0))
    l2 = np.asarray(apply(state, junk, KEY0))
    assert np.all(np.isfinite(l2))
    np.testing.assert_allclose(l1, l2, atol=1e-5, rtol=1e-5)
    # sanity: changing a VALID observation does change the logits
    changed = dict(b)
    changed["flux"] = b["flux"].copy()
    changed["flux"][1, 0] += 1.0
    assert not np.allclose(l1[1], np.asarray(apply(state, changed, KEY0))[1], atol=1e-5)


def test_nan_and_inf_in_padding(fns):
    state, apply, _ = fns
    b = make_batch(lengths=[16, 4, 9, 1], seed=4)
    pad = ~b["mask"]
    bad = dict(b)
    bad["flux"] = np.where(pad, np.nan, b["flux"]).astype(np.float32)
    bad["flux_err"] = np.where(pad, np.inf, b["flux_err"]).astype(np.float32)
    bad["time"] = np.where(pad, np.nan, b["time"]).astype(np.float32)
    l1 = np.asarray(apply(state, b, KEY0))
    l2 = np.asarray(apply(state, bad, KEY0))
    assert np.all(np.isfinite(l2))
    np.testing.assert_allclose(l1, l2, atol=1e-5, rtol=1e-5)


def test_fully_padded_row_is_finite(fns):
    state, apply, apply_train = fns
    b = make_batch(lengths=[0, 5, 16, 0], seed=5)
    b["flux"] = np.where(b["mask"], b["flux"], np.nan).astype(np.float32)
    out = np.asarray(apply(state, b, KEY0))
    assert np.all(np.isfinite(out))
    np.testing.assert_allclose(out[0], out[3], atol=1e-6)  # empty rows: same constant output
    assert np.all(np.isfinite(np.asarray(apply_train(state, b, jax.random.key(1)))))


def test_meta_changes_logits():
    model = TransientClassifier(NUM_CLASSES, meta_dim=3, rngs=nnx.Rngs(1), **SMALL)
    state, apply, _ = jitted_apply(model)
    b = make_batch(meta_dim=3, seed=6)
    l1 = np.asarray(apply(state, b, KEY0))
    b2 = dict(b, meta=b["meta"] + 1.0)
    l2 = np.asarray(apply(state, b2, KEY0))
    assert l1.shape == (4, NUM_CLASSES)
    assert not np.allclose(l1, l2, atol=1e-4)


def test_dropout_uses_explicit_rng(fns):
    state, apply, apply_train = fns
    b = make_batch(seed=8)
    k1, k2 = jax.random.key(1), jax.random.key(2)
    a1 = np.asarray(apply_train(state, b, k1))
    a1b = np.asarray(apply_train(state, b, k1))
    a2 = np.asarray(apply_train(state, b, k2))
    np.testing.assert_array_equal(a1, a1b)  # same key -> identical
    assert not np.allclose(a1, a2, atol=1e-6)  # different key -> different
    e1 = np.asarray(apply(state, b, k1))
    e2 = np.asarray(apply(state, b, k2))
    e0 = np.asarray(apply(state, b, None))
    np.testing.assert_array_equal(e1, e2)  # eval ignores rng
    np.testing.assert_array_equal(e1, e0)
    assert not np.allclose(a1, e1, atol=1e-6)  # dropout actually active in train


def test_no_rng_state_in_model(model):
    # The model must be a pure function of (params, batch, rng): no RNG variables.
    rng_state = nnx.state(model, nnx.RngState)
    assert jax.tree.leaves(rng_state) == []
    assert len(jax.tree.leaves(nnx.state(model))) == len(jax.tree.leaves(nnx.state(model, nnx.Param)))
    with pytest.raises(ValueError):  # train=True without a key is an error (raised before any compute)
        model(make_batch(), train=True, rng=None)


def test_gradients_finite_and_zero_at_padding(model):
    graphdef, state = nnx.split(model)
    b = make_batch(lengths=[16, 6, 0, 3], seed=9)
    b["flux"] = np.where(b["mask"], b["flux"], np.nan).astype(np.float32)
    labels = jnp.array([0, 1, 2, 3])

    @jax.jit
    def loss_fn(state, flux, rng):
        logits = nnx.merge(graphdef, state)(dict(b, flux=flux), train=True, rng=rng)
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], axis=1))

    loss, (g_state, g_flux) = jax.value_and_grad(loss_fn, argnums=(0, 1))(state, jnp.asarray(b["flux"]), jax.random.key(0))
    assert np.isfinite(float(loss))
    leaves = jax.tree.leaves(g_state)
    assert leaves and all(np.all(np.isfinite(np.asarray(x))) for x in leaves)
    assert any(np.any(np.asarray(x) != 0) for x in leaves)
    g_flux = np.asarray(g_flux)
    assert np.all(np.isfinite(g_flux))
    assert np.all(g_flux[~b["mask"]] == 0.0)
    assert np.any(g_flux[b["mask"]] != 0.0)


def test_encoder_reusable_with_extra_features():
    enc = LightCurveEncoder(num_obs_features=2, d_model=16, num_heads=2, num_layers=1, rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(enc)

    @jax.jit
    def run(state, batch):
        e = nnx.merge(graphdef, state)
        return e(batch), e.encode_sequence(batch)

    b = make_batch(B=2, L=9, lengths=[9, 4], seed=10)
    extra = np.random.default_rng(0).normal(size=(2, 9, 2)).astype(np.float32)
    z1, (seq, mask) = run(state, dict(b, obs_features=extra))
    z1 = np.asarray(z1)
    assert z1.shape == (2, 16) and np.all(np.isfinite(z1))
    assert seq.shape == (2, 9, 16)
    assert np.all(np.asarray(seq)[~np.asarray(mask)] == 0.0)
    junk = extra.copy()
    junk[~b["mask"]] = np.nan
    np.testing.assert_allclose(z1, np.asarray(run(state, dict(b, obs_features=junk))[0]), atol=1e-5, rtol=1e-5)
    changed = extra.copy()
    changed[0, 0] += 1.0
    assert not np.allclose(z1[0], np.asarray(run(state, dict(b, obs_features=changed))[0])[0], atol=1e-5)


def test_fused_self_attention_equals_flax_attention_with_a_boolean_mask():
    """The fused-QKV, additive-bias attention computes what nnx.MultiHeadAttention does, with the
    same weights, including a fully padded row (uniform weights), and the same gradient."""
    d, heads = 16, 4
    ours = SelfAttention(heads, d, rngs=nnx.Rngs(0))
    flax_mha = nnx.MultiHeadAttention(num_heads=heads, in_features=d, decode=False, keep_rngs=False,
                                      rngs=nnx.Rngs(1))
    kq = ours.qkv.kernel[...].reshape(d, 3, heads, d // heads)
    bq = ours.qkv.bias[...].reshape(3, heads, d // heads)
    for i, name in enumerate(("query", "key", "value")):
        getattr(flax_mha, name).kernel[...] = kq[:, i]
        getattr(flax_mha, name).bias[...] = bq[i]
    flax_mha.out.kernel[...] = ours.out.kernel[...].reshape(heads, d // heads, d)
    flax_mha.out.bias[...] = ours.out.bias[...]
    x = jax.random.normal(KEY0, (3, 7, d))
    mask = jnp.asarray(np.arange(7)[None, :] < np.array([7, 3, 0])[:, None])

    def f_ours(x):
        return ours(x, key_padding_bias(mask))

    def f_flax(x):
        return flax_mha(x, mask=mask[:, None, None, :], deterministic=True)

    np.testing.assert_allclose(f_ours(x), f_flax(x), rtol=2e-5, atol=2e-6)
    # The gradient through valid queries (the encoder zeroes padded rows after each layer; in a
    # fully padded row the bias version still passes a gradient to its logits, flax's `where` not).
    def loss(f):
        return lambda x: jnp.sum(jnp.where(mask[..., None], jnp.sin(f(x)), 0.0))

    g_ours, g_flax = jax.grad(loss(f_ours))(x), jax.grad(loss(f_flax))(x)
    np.testing.assert_allclose(g_ours, g_flax, rtol=1e-4, atol=1e-5)
    assert sum(p.size for p in jax.tree.leaves(nnx.state(ours, nnx.Param))) == \
        sum(p.size for p in jax.tree.leaves(nnx.state(flax_mha, nnx.Param)))


def test_induced_cross_attention_equals_flax_attention_on_its_own_parameters():
    """cross_attention (fused K/V, additive bias) computes what nnx.MultiHeadAttention computes
    from the same module's parameters: latents over masked observations (a fully padded row
    included) and observations over latents, values and gradients (inputs and parameters)."""
    d, heads = 24, 4
    mha = nnx.MultiHeadAttention(num_heads=heads, in_features=d, decode=False, keep_rngs=False, rngs=nnx.Rngs(2))
    for i, lin in enumerate((mha.query, mha.key, mha.value, mha.out)):
        lin.bias[...] = 0.2 * jax.random.normal(jax.random.fold_in(KEY0, i), lin.bias.shape)
    lat = jax.random.normal(jax.random.key(5), (3, 6, d))
    obs = jax.random.normal(jax.random.key(6), (3, 11, d))
    mask = jnp.asarray(np.arange(11)[None, :] < np.array([11, 4, 0])[:, None])
    cases = [
        (lat, obs, lambda m, q, kv: cross_attention(m, q, kv, key_padding_bias(mask)),
         lambda m, q, kv: m(q, kv, mask=mask[:, None, None, :], deterministic=True)),
        (obs, lat, lambda m, q, kv: cross_attention(m, q, kv, None),
         lambda m, q, kv: m(q, kv, deterministic=True)),
    ]
    for q, kv, ours, theirs in cases:
        np.testing.assert_allclose(ours(mha, q, kv), theirs(mha, q, kv), rtol=2e-5, atol=2e-6)

        def loss(f):
            return lambda m, q, kv: jnp.sum(jnp.sin(f(m, q, kv)))

        g_ours = nnx.grad(loss(ours), argnums=(0, 1, 2))(mha, q, kv)
        g_flax = nnx.grad(loss(theirs), argnums=(0, 1, 2))(mha, q, kv)
        for a, b in zip(jax.tree.leaves(g_ours), jax.tree.leaves(g_flax)):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_full_self_attention_variant_padding_invariant():
    model = TransientClassifier(3, attention="full", rngs=nnx.Rngs(2), **dict(SMALL, num_layers=1))
    state, apply, _ = jitted_apply(model)
    b = make_batch(B=3, L=12, lengths=[12, 2, 0], seed=11)
    longer = {k: np.concatenate([v, np.repeat(v[:, -1:], 5, axis=1)], axis=1) for k, v in b.items()}
    longer["mask"][:, 12:] = False
    longer["flux"][:, 12:] = 1e6
    l1, l2 = np.asarray(apply(state, b, KEY0)), np.asarray(apply(state, longer, KEY0))
    assert np.all(np.isfinite(l1))
    np.testing.assert_allclose(l1, l2, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("block", [4, 5, 13])  # divides L; leaves a partial last block; one block
def test_blockwise_attention_equals_dense_attention_forward_and_backward(block):
    """The online-softmax attention is the dense one to float32 rounding: valid rows, a row whose
    first blocks are all padding, a fully padded row (uniform weights), and the gradients."""
    b, n, h, dh = 4, 12, 2, 8
    kq, kk, kv = jax.random.split(KEY0, 3)
    q, k, v = (3.0 * jax.random.normal(key, (b, n, h, dh)) for key in (kq, kk, kv))
    valid = np.arange(n)[None, :] < np.array([12, 5, 0, 12])[:, None]
    valid[3, :9] = False  # keys only in the last block(s)
    bias = key_padding_bias(jnp.asarray(valid))
    dense, blocked = dense_attention(q, k, v, bias), blockwise_attention(q, k, v, bias, block)
    np.testing.assert_allclose(blocked, dense, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(blocked[2], jnp.broadcast_to(v[2].mean(0), (n, h, dh)), rtol=1e-5, atol=1e-5)

    def loss(f):
        return lambda q, k, v: jnp.sum(jnp.sin(f(q, k, v)))

    g_dense = jax.grad(loss(lambda *a: dense_attention(*a, bias)), argnums=(0, 1, 2))(q, k, v)
    g_block = jax.grad(loss(lambda *a: blockwise_attention(*a, bias, block)), argnums=(0, 1, 2))(q, k, v)
    for gb, gd in zip(g_block, g_dense):
        assert np.all(np.isfinite(gb))
        np.testing.assert_allclose(gb, gd, rtol=1e-4, atol=1e-4)


def test_blockwise_model_equals_dense_model_and_stays_padding_invariant():
    """attention_block changes how the full attention is computed, not what: same logits as the
    dense model with the same weights, and appending padding (L 12 -> 17, a new partial block)
    changes nothing."""
    kw = dict(SMALL, num_layers=2, attention="full")
    dense = TransientClassifier(3, rngs=nnx.Rngs(2), **kw)
    blocked = TransientClassifier(3, attention_block=5, rngs=nnx.Rngs(2), **kw)
    b = make_batch(B=3, L=12, lengths=[12, 2, 0], seed=11)
    longer = {k: np.concatenate([v, np.repeat(v[:, -1:], 5, axis=1)], axis=1) for k, v in b.items()}
    longer["mask"][:, 12:] = False
    longer["flux"][:, 12:] = 1e6
    state_d, apply_d, _ = jitted_apply(dense)
    state_b, apply_b, _ = jitted_apply(blocked)
    ref = np.asarray(apply_d(state_d, b, KEY0))
    np.testing.assert_allclose(np.asarray(apply_b(state_b, b, KEY0)), ref, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(apply_b(state_b, longer, KEY0)), ref, atol=1e-5, rtol=1e-5)


def test_attention_block_with_induced_attention_names_the_keys():
    from astroflax.errors import ConfigError
    from astroflax.models.lightcurve import LightCurveModelConfig, build_classifier

    with pytest.raises(ConfigError, match=r"'model.attention_block' = 64: .*model.attention is 'induced'"):
        build_classifier(LightCurveModelConfig(attention="induced", attention_block=64), 3, rngs=nnx.Rngs(0))


def test_training_augmentation_only_in_train_mode():
    """obs_dropout / flux_jitter change the training forward pass and nothing at evaluation."""
    import jax
    import numpy as np
    from flax import nnx

    from astroflax.models.lightcurve import TransientClassifier

    rng = np.random.default_rng(0)
    b, length = 4, 24
    batch = {
        "time": rng.normal(0, 50, (b, length)).astype(np.float32),
        "flux": rng.normal(0, 1, (b, length)).astype(np.float32),
        "flux_err": np.full((b, length), 0.3, np.float32),
        "band": rng.integers(0, 6, (b, length)).astype(np.int32),
        "mask": np.arange(length)[None, :] < np.array([[24], [10], [1], [5]]),
        "meta": np.zeros((b, 0), np.float32),
    }
    plain = TransientClassifier(3, d_model=16, num_heads=2, num_layers=1, dropout=0.0, rngs=nnx.Rngs(0))
    aug = TransientClassifier(3, d_model=16, num_heads=2, num_layers=1, dropout=0.0, obs_dropout=0.5,
                              flux_jitter=1.0, rngs=nnx.Rngs(0))
    key = jax.random.key(1)
    np.testing.assert_array_equal(np.asarray(plain(batch)), np.asarray(aug(batch)))
    np.testing.assert_array_equal(np.asarray(plain(batch, train=True, rng=key)), np.asarray(plain(batch)))
    a1 = np.asarray(aug(batch, train=True, rng=key))
    a2 = np.asarray(aug(batch, train=True, rng=jax.random.key(2)))
    assert np.all(np.isfinite(a1))
    assert not np.allclose(a1, np.asarray(aug(batch)))
    assert not np.allclose(a1, a2)
    np.testing.assert_array_equal(a1, np.asarray(aug(batch, train=True, rng=key)))
    # the object with a single observation keeps it (row 2 stays finite and defined)
    assert np.all(np.isfinite(a1[2]))
