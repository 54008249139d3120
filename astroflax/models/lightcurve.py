"""Continuous-time transformer for irregularly sampled multi-band light curves.

Input batch (dict of arrays, leading dims ``(B, L)``):

``time``      float32, days relative to a per-object reference epoch (may be
              negative, roughly +-1000).
``flux``      float32, per-object normalised flux.
``flux_err``  float32, per-object normalised flux uncertainty.
``band``      int32, passband index in ``[0, num_bands)``.
``mask``      bool, True = real observation; padded entries may hold ANY value
              (including NaN / out-of-range numbers).
``meta``      float32 ``(B, M)``, optional per-object metadata.
``obs_features`` (optional, key configurable) float32 ``(B, L, F)`` extra
              per-observation scalar features.

Padding is neutralised everywhere: padded inputs are replaced by zeros with
``jnp.where`` *before* any arithmetic, padded keys are excluded from attention,
padded hidden states are zeroed after every block and the pooling softmax runs
over valid observations only. Consequently the output for an object does not
depend on the amount of padding nor on the values stored in padded slots, and
padded inputs receive exactly zero gradient.

Randomness: models hold no RNG state. Dropout keys are derived from the
explicit ``rng`` argument (``jax.random.fold_in``) when ``train=True``; the
constructor ``rngs`` is used for parameter initialisation only.

Configuration: :class:`LightCurveModelConfig` is the ``model`` section of every light-curve
task (``transients``, ``variables``); :func:`build_classifier` makes the classifier from it.
"""

from __future__ import annotations

from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from pydantic import Field

from astroflax.errors import ConfigError
from astroflax.models.dropout import DropoutKeys, dropout
from astroflax.models.layernorm import LayerNorm
from astroflax.tasks.base import Section

__all__ = ["TimeEncoding", "LightCurveEncoder", "TransientClassifier", "LightCurveModelConfig", "build_classifier"]

Batch = dict[str, Any]


def _flat_dot_general(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None, **kwargs):
    """``lax.dot_general`` that runs token-wise projections as a single 2-D matmul.

    Dense layers applied to ``(B, L, d)`` inputs contract only trailing lhs /
    leading rhs axes.  XLA:CPU lowers the *backward* of such a 3-D
    dot_general (kernel gradient contracts over both B and L) ~6x slower than
    the equivalent 2-D ``(B*L, d) @ (d, k)`` matmul, so we flatten.  Numerics
    are identical; anything else falls back to ``lax.dot_general``.
    """
    (lc, rc), (lb, rb) = dimension_numbers
    lc, rc = tuple(lc), tuple(rc)
    n_c = len(lc)
    if (
        not lb
        and not rb
        and n_c
        and lc == tuple(range(lhs.ndim - n_c, lhs.ndim))
        and rc == tuple(range(n_c))
        and lhs.ndim - n_c >= 1
    ):
        lead, red = lhs.shape[: lhs.ndim - n_c], rhs.shape[n_c:]
        k = int(np.prod(lhs.shape[lhs.ndim - n_c :], dtype=np.int64))
        out = jax.lax.dot_general(
            lhs.reshape(-1, k),
            rhs.reshape(k, -1),
            (((1,), (0,)), ((), ())),
            precision=precision,
            preferred_element_type=preferred_element_type,
        )
        return out.reshape(lead + red)
    return jax.lax.dot_general(
        lhs, rhs, dimension_numbers, precision=precision, preferred_element_type=preferred_element_type, **kwargs
    )


def _linear(din: int, dout: int, rngs: nnx.Rngs) -> nnx.Linear:
    return nnx.Linear(din, dout, dot_general=_flat_dot_general, rngs=rngs)


def _mha(num_heads: int, d_model: int, rngs: nnx.Rngs) -> nnx.MultiHeadAttention:
    return nnx.MultiHeadAttention(
        num_heads=num_heads,
        in_features=d_model,
        decode=False,
        keep_rngs=False,  # no RNG state in the model (attention dropout unused)
        qkv_dot_general=_flat_dot_general,
        out_dot_general=_flat_dot_general,
        rngs=rngs,
    )


class TimeEncoding(nnx.Module):
    """Sinusoidal encoding of continuous observation times + linear projection.

    Angular frequencies ``2*pi/P`` with periods ``P`` geometrically spaced from
    ``min_period`` to ``max_period`` days; features are ``[sin, cos]`` of
    ``time * omega`` (the time VALUE, not the array index), projected to
    ``d_model``.
    """

    def __init__(
        self,
        d_model: int,
        *,
        num_frequencies: int = 16,
        min_period: float = 0.1,
        max_period: float = 2000.0,
        rngs: nnx.Rngs,
    ):
        if not (0 < min_period < max_period):
            raise ValueError("need 0 < min_period < max_period")
        self.num_frequencies = int(num_frequencies)
        self.min_period = float(min_period)
        self.max_period = float(max_period)
        self.proj = _linear(2 * self.num_frequencies, d_model, rngs)

    def frequencies(self) -> np.ndarray:
        """Angular frequencies (rad/day), a static float32 numpy array."""
        periods = np.geomspace(self.min_period, self.max_period, self.num_frequencies)
        return (2.0 * np.pi / periods).astype(np.float32)

    def features(self, time: jax.Array) -> jax.Array:
        """Raw ``(..., 2*num_frequencies)`` sin/cos features."""
        ang = time[..., None].astype(jnp.float32) * jnp.asarray(self.frequencies())
        return jnp.concatenate([jnp.sin(ang), jnp.cos(ang)], axis=-1)

    def __call__(self, time: jax.Array) -> jax.Array:
        return self.proj(self.features(time))


def key_padding_bias(mask: jax.Array) -> jax.Array:
    """``(B, L)`` valid-key mask -> additive logit bias ``(B, 1, 1, L)``: 0 or ``finfo.min``.

    Built once per batch and shared by every full-attention layer (flax's attention applies a
    boolean mask with a ``where`` on the (B, h, L, L) logits in each layer, forward and backward).
    Adding ``finfo.min`` gives what flax's masking gives: masked keys get exactly zero weight, and
    a fully padded row (every key masked) a uniform, finite softmax, since the bias absorbs the
    logits (|logit| << ulp(finfo.min)).
    """
    return jnp.where(mask, 0.0, jnp.finfo(jnp.float32).min)[:, None, None, :].astype(jnp.float32)


def dense_attention(q: jax.Array, k: jax.Array, v: jax.Array, bias: jax.Array) -> jax.Array:
    """Softmax attention with the (B, h, L, L) logits materialised. ``q`` (B, L, h, dh) is
    already scaled; ``bias`` is :func:`key_padding_bias`'s (B, 1, 1, L).

    The softmax's normalisation is applied to the (B, L, h, dh) output, not to the (B, h, L, L)
    weights, and the shift by the row maximum carries no gradient (the result does not depend on
    it): XLA otherwise materialised the normalised weights and the broadcast reciprocal of the
    denominator, forward and backward, at L^2 size. Full-preset step on one pinned core: see
    README "Speed".
    """
    s = jnp.einsum("bqhd,bkhd->bhqk", q, k) + bias
    e = jnp.exp(s - jax.lax.stop_gradient(s.max(axis=-1, keepdims=True)))
    o = jnp.einsum("bhqk,bkhd->bqhd", e, v)
    return o / e.sum(axis=-1).swapaxes(1, 2)[..., None]


def blockwise_attention(q: jax.Array, k: jax.Array, v: jax.Array, bias: jax.Array, block: int) -> jax.Array:
    """:func:`dense_attention` over blocks of ``block`` keys with an online softmax (Milakov &
    Gimelshein 2018; Rabe & Staats 2021; the forward half of FlashAttention).

    Why: the dense form keeps (B, h, L, L) logits and weights for the backward pass, which grows
    as L^2 (B = 64, 4 heads, L = 2048: 4 GiB a layer); here the scan body is rematerialised in
    the backward pass, so a layer keeps O(B h L block) at a time. Written here because JAX's own
    fused kernels (``jax.nn.dot_product_attention`` with cuDNN, the Pallas flash kernels) run on
    GPU/TPU only; its XLA implementation on CPU materialises the logits.

    Same function as the dense form to float32 rounding, masking included: masked keys get
    weight exactly 0 and a fully padded row the uniform weights of the dense softmax. Keys added
    to fill the last block get a bias of -inf (weight 0 even in a fully padded row).
    """
    b, n, h, dh = q.shape
    nb = -(-n // block)
    fill = nb * block - n
    if fill:
        k = jnp.pad(k, ((0, 0), (0, fill), (0, 0), (0, 0)))
        v = jnp.pad(v, ((0, 0), (0, fill), (0, 0), (0, 0)))
        bias = jnp.pad(bias, ((0, 0), (0, 0), (0, 0), (0, fill)), constant_values=-jnp.inf)
    kb = k.reshape(b, nb, block, h, dh).swapaxes(0, 1)  # (nb, B, block, h, dh)
    vb = v.reshape(b, nb, block, h, dh).swapaxes(0, 1)
    bb = bias.reshape(b, 1, 1, nb, block).transpose(3, 0, 1, 2, 4)  # (nb, B, 1, 1, block)

    @jax.checkpoint
    def step(carry, blk):
        top, total, acc = carry  # running max (B, h, L), softmax denominator (B, h, L), numerator (B, L, h, dh)
        kj, vj, bj = blk
        s = jnp.einsum("bqhd,bkhd->bhqk", q, kj) + bj
        # The result does not depend on the shift; stopping its gradient saves the max's backward.
        new_top = jax.lax.stop_gradient(jnp.maximum(top, s.max(axis=-1)))
        p = jnp.exp(s - new_top[..., None])
        rescale = jnp.exp(top - new_top)  # 0 at the first block (top = -inf)
        total = total * rescale + p.sum(axis=-1)
        acc = acc * rescale.swapaxes(1, 2)[..., None] + jnp.einsum("bhqk,bkhd->bqhd", p, vj)
        return (new_top, total, acc), None

    init = (jnp.full((b, h, n), -jnp.inf, q.dtype), jnp.zeros((b, h, n), q.dtype), jnp.zeros_like(q))
    (_, total, acc), _ = jax.lax.scan(step, init, (kb, vb, bb))
    return acc / total.swapaxes(1, 2)[..., None]


def cross_attention(mha: nnx.MultiHeadAttention, xq: jax.Array, xkv: jax.Array, bias: jax.Array | None) -> jax.Array:
    """``mha(xq, xkv, mask=...)`` computed from ``mha``'s own parameters, its key and value
    projections fused into one matmul, the mask as :func:`key_padding_bias`'s additive bias
    (None: every key valid) and :func:`dense_attention` instead of flax's attention.

    Why: flax's attention (a vmap over a boolean ``where`` on the logits) left the softmax's
    backward fused into skinny batched matmuls, the largest kernels of the induced step. The
    parameters (paths ``query``/``key``/``value``/``out``) stay flax's, so checkpoints and the
    shipped variables model load unchanged. Transients quick step, one pinned core: see README
    "Speed".
    """
    b, nq, d = xq.shape
    h = mha.num_heads
    dh = d // h

    def kernel(lin: nnx.LinearGeneral) -> jax.Array:
        return lin.kernel[...].reshape(d, h * dh)

    q = (xq.reshape(-1, d) @ kernel(mha.query) + mha.query.bias[...].reshape(-1)) * dh**-0.5
    kv_kernel = jnp.concatenate([kernel(mha.key), kernel(mha.value)], axis=1)
    kv_bias = jnp.concatenate([mha.key.bias[...].reshape(-1), mha.value.bias[...].reshape(-1)])
    k, v = jnp.split((xkv.reshape(-1, d) @ kv_kernel + kv_bias).reshape(b, -1, 2, h, dh), 2, axis=2)
    q, k, v = q.reshape(b, nq, h, dh), k[:, :, 0], v[:, :, 0]
    if bias is None:
        o = dense_attention(q, k, v, jnp.zeros((), q.dtype))
    else:
        # A row without valid keys: zero queries give flax's uniform weights, and, as flax's
        # `where` does, no gradient to its logits (the bias alone would pass one).
        q = q * jnp.any(bias == 0, axis=-1).reshape(b, 1, 1, 1)
        o = dense_attention(q, k, v, bias)
    return (o.reshape(-1, h * dh) @ mha.out.kernel[...].reshape(h * dh, d) + mha.out.bias[...]).reshape(b, nq, d)


class SelfAttention(nnx.Module):
    """Multi-head self-attention with one fused QKV projection and an additive key bias.

    The same function as ``nnx.MultiHeadAttention`` (same parameter count and initialisation:
    LeCun-normal kernels with fan-in d_model, zero biases) but one (d, 3d) matmul instead of
    three and the mask as a bias computed once per batch. Full-preset train step (L = 192,
    d = 64, 4 heads, batch 64, one pinned core, benchmarks/vs_torch.py): 781 -> 605 ms.
    ``block`` > 0 computes it blockwise (:func:`blockwise_attention`) when L exceeds ``block``.
    """

    def __init__(self, num_heads: int, d_model: int, *, block: int = 0, rngs: nnx.Rngs):
        self.num_heads = int(num_heads)
        self.block = int(block)
        self.qkv = nnx.Linear(d_model, 3 * d_model, dot_general=_flat_dot_general, rngs=rngs)
        self.out = nnx.Linear(d_model, d_model, dot_general=_flat_dot_general, rngs=rngs)

    def __call__(self, x: jax.Array, bias: jax.Array) -> jax.Array:
        b, n, d = x.shape
        h = self.num_heads
        q, k, v = jnp.split(self.qkv(x).reshape(b, n, 3, h, d // h), 3, axis=2)
        q, k, v = q[:, :, 0] * (d // h) ** -0.5, k[:, :, 0], v[:, :, 0]  # (B, L, h, dh)
        if self.block and n > self.block:
            o = blockwise_attention(q, k, v, bias, self.block)
        else:
            o = dense_attention(q, k, v, bias)
        return self.out(o.reshape(b, n, d))


class _EncoderLayer(nnx.Module):
    """Pre-LayerNorm transformer encoder layer (MHA + GELU MLP)."""

    def __init__(self, d_model: int, num_heads: int, mlp_ratio: int, dropout: float, *, block: int = 0,
                 rngs: nnx.Rngs):
        self.ln_attn = LayerNorm(d_model, rngs=rngs)
        self.attn = SelfAttention(num_heads, d_model, block=block, rngs=rngs)
        self.ln_mlp = LayerNorm(d_model, rngs=rngs)
        self.fc1 = _linear(d_model, d_model * mlp_ratio, rngs)
        self.fc2 = _linear(d_model * mlp_ratio, d_model, rngs)
        self.drop = nnx.Dropout(dropout)

    def __call__(self, x: jax.Array, mask: jax.Array, keys: DropoutKeys, bias: jax.Array) -> jax.Array:
        m = mask[..., None]
        # bias = key_padding_bias(mask), (B, 1, 1, L): every query (valid or padded) only sees valid keys.
        h = self.attn(self.ln_attn(x), bias)
        x = x + dropout(self.drop, h, keys())
        h = self.fc2(jax.nn.gelu(self.fc1(self.ln_mlp(x))))
        x = x + dropout(self.drop, h, keys())
        return jnp.where(m, x, 0.0)


class _InducedEncoderLayer(nnx.Module):
    """Pre-LN induced-set attention layer (Set Transformer ISAB, Lee et al. 2019).

    ``num_inducing`` learned latent queries attend to the VALID observations
    (key-padding mask), then every observation attends to those latents,
    followed by a GELU MLP.  Cost is O(L * num_inducing) instead of O(L^2),
    which is what keeps the default configuration fast on CPU.
    """

    def __init__(
        self, d_model: int, num_heads: int, mlp_ratio: int, dropout: float, num_inducing: int, *, rngs: nnx.Rngs
    ):
        self.inducing = nnx.Param(0.02 * jax.random.normal(rngs.params(), (num_inducing, d_model), jnp.float32))
        self.ln_ind = LayerNorm(d_model, rngs=rngs)
        self.ln_x = LayerNorm(d_model, rngs=rngs)
        self.attn_in = _mha(num_heads, d_model, rngs)
        self.ln_lat = LayerNorm(d_model, rngs=rngs)
        self.attn_out = _mha(num_heads, d_model, rngs)
        self.ln_mlp = LayerNorm(d_model, rngs=rngs)
        self.fc1 = _linear(d_model, d_model * mlp_ratio, rngs)
        self.fc2 = _linear(d_model * mlp_ratio, d_model, rngs)
        self.drop = nnx.Dropout(dropout)

    def __call__(self, x: jax.Array, mask: jax.Array, keys: DropoutKeys, bias: jax.Array) -> jax.Array:
        m = mask[..., None]
        ind = jnp.broadcast_to(self.inducing[...], (x.shape[0],) + self.inducing.shape)
        # latents <- valid observations (bias = key_padding_bias(mask), (B, 1, 1, L)); a fully
        # padded row gets uniform finite weights, as with flax's masking.
        xn = self.ln_x(x)  # one pre-LN of the tokens, shared by both attentions
        lat = ind + cross_attention(self.attn_in, self.ln_ind(ind), xn, bias)
        # observations <- latents (latents are always valid: no mask needed)
        h = cross_attention(self.attn_out, xn, self.ln_lat(lat), None)
        x = x + dropout(self.drop, h, keys())
        h = self.fc2(jax.nn.gelu(self.fc1(self.ln_mlp(x))))
        x = x + dropout(self.drop, h, keys())
        return jnp.where(m, x, 0.0)


class LightCurveEncoder(nnx.Module):
    """Shared light-curve encoder: ``batch -> (B, d_model)``.

    Per-observation token = Linear([flux, flux_err, *obs_features])
    + Embed(band) + TimeEncoding(time); then ``num_layers`` pre-LN transformer
    layers with key-padding masking, attention pooling over valid observations
    and a final LayerNorm.

    ``attention="induced"`` (default): each layer is an induced-set attention
    block (``num_inducing`` learned latents, O(L) cost) -- needed to keep the
    default config fast on CPU at L=256.  ``attention="full"``: classic
    O(L^2) self-attention layers (about 3x slower at B=64, L=256).
    ``encode_sequence`` returns per-observation states for other heads.
    """

    def __init__(
        self,
        *,
        num_bands: int = 6,
        d_model: int = 64,
        num_heads: int = 4,
        num_layers: int = 2,
        mlp_ratio: int = 2,
        dropout: float = 0.1,
        num_obs_features: int = 0,
        obs_feature_key: str = "obs_features",
        attention: str = "induced",
        attention_block: int = 0,
        num_inducing: int = 16,
        num_frequencies: int = 16,
        min_period: float = 0.1,
        max_period: float = 2000.0,
        obs_dropout: float = 0.0,
        flux_jitter: float = 0.0,
        rngs: nnx.Rngs,
    ):
        if d_model % num_heads:
            raise ValueError(f"d_model={d_model} not divisible by num_heads={num_heads}")
        self.num_bands = int(num_bands)
        self.d_model = int(d_model)
        self.obs_dropout = float(obs_dropout)
        self.flux_jitter = float(flux_jitter)
        self.num_obs_features = int(num_obs_features)
        self.obs_feature_key = obs_feature_key
        self.value_proj = _linear(2 + self.num_obs_features, d_model, rngs)
        self.band_embed = nnx.Embed(self.num_bands, d_model, rngs=rngs)
        self.time_enc = TimeEncoding(
            d_model,
            num_frequencies=num_frequencies,
            min_period=min_period,
            max_period=max_period,
            rngs=rngs,
        )
        self.embed_drop = nnx.Dropout(dropout)
        if attention == "full":
            make = lambda: _EncoderLayer(  # noqa: E731
                d_model, num_heads, mlp_ratio, dropout, block=attention_block, rngs=rngs
            )
        elif attention == "induced":
            make = lambda: _InducedEncoderLayer(  # noqa: E731
                d_model, num_heads, mlp_ratio, dropout, num_inducing, rngs=rngs
            )
        else:
            raise ValueError(f"attention must be 'full' or 'induced', got {attention!r}")
        self.attention = attention
        self.layers = nnx.List([make() for _ in range(num_layers)])
        self.ln_pool = LayerNorm(d_model, rngs=rngs)
        self.pool_score = _linear(d_model, 1, rngs)
        self.ln_out = LayerNorm(d_model, rngs=rngs)

    # ------------------------------------------------------------------ inputs
    def _clean_inputs(self, batch: Batch):
        """Zero every padded input with jnp.where BEFORE any arithmetic."""
        mask = jnp.asarray(batch["mask"]).astype(bool)
        m = mask[..., None]
        zero = jnp.float32(0.0)
        time = jnp.where(mask, jnp.asarray(batch["time"], jnp.float32), zero)
        flux = jnp.where(mask, jnp.asarray(batch["flux"], jnp.float32), zero)
        ferr = jnp.where(mask, jnp.asarray(batch["flux_err"], jnp.float32), zero)
        band = jnp.asarray(batch["band"]).astype(jnp.int32)
        band = jnp.where(mask, jnp.clip(band, 0, self.num_bands - 1), 0)
        vals = [flux[..., None], ferr[..., None]]
        if self.num_obs_features:
            extra = jnp.asarray(batch[self.obs_feature_key], jnp.float32)
            if extra.ndim == mask.ndim:
                extra = extra[..., None]
            if extra.shape[-1] != self.num_obs_features:
                raise ValueError(
                    f"{self.obs_feature_key!r} has {extra.shape[-1]} features, "
                    f"expected {self.num_obs_features}"
                )
            vals.append(jnp.where(m, extra, zero))
        return mask, time, jnp.concatenate(vals, axis=-1), band

    # ----------------------------------------------------------------- forward
    def encode_sequence(self, batch: Batch, *, train: bool = False, rng: jax.Array | None = None):
        """Per-observation hidden states ``(B, L, d_model)`` (padded rows = 0) and mask."""
        return self._encode_sequence(batch, DropoutKeys(rng, train))

    def _augment(self, batch: Batch, keys: DropoutKeys) -> Batch:
        """Training-time augmentation: drop random observations and re-draw fluxes within errors.

        Survey light curves of one class differ in cadence and noise; seeing each object with
        other subsets of its points and other noise draws is what regularises the model most.
        An object keeps all its points if dropping would leave none.
        """
        if keys.rng is None or not (self.obs_dropout or self.flux_jitter):
            return batch
        mask = jnp.asarray(batch["mask"]).astype(bool)
        out = dict(batch)
        if self.obs_dropout:
            kept = mask & (jax.random.uniform(keys(), mask.shape) >= self.obs_dropout)
            out["mask"] = jnp.where(jnp.any(kept, axis=-1, keepdims=True), kept, mask)
        if self.flux_jitter:
            noise = jax.random.normal(keys(), mask.shape)
            err = jnp.where(mask, jnp.asarray(batch["flux_err"], jnp.float32), 0.0)
            out["flux"] = jnp.where(mask, jnp.asarray(batch["flux"], jnp.float32) + self.flux_jitter * err * noise, 0.0)
        return out

    def _encode_sequence(self, batch: Batch, keys: DropoutKeys):
        mask, time, vals, band = self._clean_inputs(self._augment(batch, keys))
        m = mask[..., None]
        x = self.value_proj(vals) + self.band_embed(band) + self.time_enc(time)
        x = dropout(self.embed_drop, x, keys())
        x = jnp.where(m, x, 0.0)
        bias = key_padding_bias(mask)  # once per batch, shared by every layer
        for layer in self.layers:
            x = layer(x, mask, keys.sub(), bias)
        return x, mask

    def pool(self, x: jax.Array, mask: jax.Array) -> jax.Array:
        """Attention pooling over valid positions; NaN-free for fully padded rows."""
        score = self.pool_score(self.ln_pool(x))[..., 0]  # (B, L)
        neg = jnp.finfo(score.dtype).min
        smax = jax.lax.stop_gradient(jnp.max(jnp.where(mask, score, neg), axis=-1, keepdims=True))
        smax = jnp.where(jnp.any(mask, axis=-1, keepdims=True), smax, 0.0)
        # exp only of valid (finite) scores; padded -> exactly 0 (the "-inf" mask)
        e = jnp.where(mask, jnp.exp(jnp.where(mask, score - smax, 0.0)), 0.0)
        denom = jnp.sum(e, axis=-1, keepdims=True)
        w = e / jnp.where(denom > 0, denom, 1.0)  # fully padded row -> all-zero weights
        pooled = jnp.einsum("bl,bld->bd", w, x)
        return self.ln_out(pooled)

    def __call__(self, batch: Batch, *, train: bool = False, rng: jax.Array | None = None) -> jax.Array:
        return self._encode(batch, DropoutKeys(rng, train))

    def _encode(self, batch: Batch, keys: DropoutKeys) -> jax.Array:
        x, mask = self._encode_sequence(batch, keys)
        return self.pool(x, mask)


class TransientClassifier(nnx.Module):
    """Light-curve transformer classifier: ``batch -> logits (B, num_classes)``."""

    def __init__(
        self,
        num_classes: int,
        *,
        num_bands: int = 6,
        d_model: int = 64,
        num_heads: int = 4,
        num_layers: int = 2,
        mlp_ratio: int = 2,
        dropout: float = 0.1,
        meta_dim: int = 0,
        rngs: nnx.Rngs,
        **encoder_kwargs: Any,
    ):
        self.num_classes = int(num_classes)
        self.meta_dim = int(meta_dim)
        self.encoder = LightCurveEncoder(
            num_bands=num_bands,
            d_model=d_model,
            num_heads=num_heads,
            num_layers=num_layers,
            mlp_ratio=mlp_ratio,
            dropout=dropout,
            rngs=rngs,
            **encoder_kwargs,
        )
        self.head_fc = _linear(d_model + self.meta_dim, d_model, rngs)
        self.head_drop = nnx.Dropout(dropout)
        self.head_out = _linear(d_model, self.num_classes, rngs)

    def __call__(self, batch: Batch, *, train: bool = False, rng: jax.Array | None = None) -> jax.Array:
        keys = DropoutKeys(rng, train)
        z = self.encoder._encode(batch, keys.sub())
        if self.meta_dim:
            meta = jnp.asarray(batch["meta"], jnp.float32).reshape(z.shape[0], self.meta_dim)
            z = jnp.concatenate([z, meta], axis=-1)
        h = jax.nn.gelu(self.head_fc(z))
        h = dropout(self.head_drop, h, keys())
        return self.head_out(h)


class LightCurveModelConfig(Section):
    """The ``model`` section of the light-curve tasks: every setting of a :class:`TransientClassifier`.

    Defaults are those of ``transients``; a task with other defaults subclasses this.
    """

    d_model: int = Field(64, ge=8, description="width of the transformer")
    num_heads: int = Field(4, ge=1, description="attention heads")
    num_layers: int = Field(2, ge=1, description="transformer encoder layers")
    mlp_ratio: int = Field(2, ge=1, description="MLP width as a multiple of d_model")
    dropout: float = Field(0.1, ge=0, lt=1, description="dropout rate")
    attention: Literal["full", "induced"] = Field(
        "full", description="full: masked self-attention, O(L^2); induced: via learned latents, O(L) (Set Transformer)"
    )
    attention_block: int = Field(
        0, ge=0, description="full attention on sequences longer than this: online softmax over blocks of this many "
        "keys, memory O(L x block) instead of O(L^2); 0 = always all keys at once"
    )
    num_inducing: int = Field(16, ge=1, description="latent vectors of the induced attention")
    num_frequencies: int = Field(16, ge=2, description="sinusoidal time-encoding frequencies")
    min_period: float = Field(0.1, gt=0, description="shortest time-encoding period in days")
    max_period: float = Field(2000.0, gt=0, description="longest time-encoding period in days (survey baseline)")
    obs_dropout: float = Field(0.0, ge=0, lt=1, description="training: fraction of observations dropped at random")
    flux_jitter: float = Field(0.0, ge=0, description="training: flux noise added, in units of flux_err")


def build_classifier(m: LightCurveModelConfig, num_classes: int, *, num_bands: int = 6, meta_dim: int = 0,
                     rngs: nnx.Rngs) -> TransientClassifier:
    """The classifier a ``model`` section describes; bad combinations name their config keys."""
    if m.d_model % m.num_heads:
        raise ConfigError(f"config key 'model.d_model' = {m.d_model}: must be divisible by model.num_heads = {m.num_heads}")
    if m.attention_block and m.attention != "full":
        raise ConfigError(f"config key 'model.attention_block' = {m.attention_block}: blocks the full attention; "
                          f"model.attention is {m.attention!r} (set it to 'full' or the block to 0)")
    if m.min_period >= m.max_period:
        raise ConfigError(f"config key 'model.min_period' = {m.min_period}: must be below model.max_period = {m.max_period}")
    return TransientClassifier(num_classes, num_bands=num_bands, meta_dim=meta_dim, rngs=rngs, **m.model_dump())
