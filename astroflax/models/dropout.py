"""Dropout keys and masks, one way for every model.

Models hold no RNG state: the train step passes one key per step (``rng``) and each dropout
site derives its own with ``jax.random.fold_in``, so a resumed run draws the same masks as an
uninterrupted one and evaluation (``rng=None``) is deterministic.

Masks come from a counter-based hash of (site key, element index), not from ``jax.random``.
Why: threefry, JAX's generator, was 20-25 ms of the transients quick preset's 81-88 ms train
step (one pinned core; 4 sites of (64, 128, 48)); the hash masks cost 3 ms (the jitted step
timed alone, as ``benchmarks/vs_torch.py`` times it; README "Speed"). JAX's other generators were slower still on CPU
(the same masks alone: threefry 10.0 ms, ``rbg``/``unsafe_rbg`` 16.8 ms). Dropout needs masks
that are independent of the data and of each other, not cryptographic streams, and
``lowbias32`` (C. Wellons's hash-prospector, an avalanche-tested 32-bit finaliser) applied in
two keyed rounds gives those (tests/test_dropout.py checks rate, neighbours and keys).
``train.dropout_masks=threefry`` restores ``flax.nnx.Dropout``'s own masks, which every run
recorded before December 2026 used: figures recorded with them reproduce only that way.
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import Iterator, Literal

import jax
import jax.numpy as jnp
from flax import nnx

MaskGenerator = Literal["hash", "threefry"]
_GENERATOR: contextvars.ContextVar[str] = contextvars.ContextVar("astroflax_dropout_masks", default="hash")


@contextlib.contextmanager
def mask_generator(name: MaskGenerator) -> Iterator[None]:
    """Within this block (at trace time), dropout masks come from ``name``."""
    if name not in ("hash", "threefry"):
        raise ValueError(f"dropout masks: expected 'hash' or 'threefry', got {name!r}")
    token = _GENERATOR.set(name)
    try:
        yield
    finally:
        _GENERATOR.reset(token)


def site_key(rng: jax.Array | None, index: int) -> jax.Array | None:
    """The key of dropout site ``index`` (None when not training)."""
    return None if rng is None else jax.random.fold_in(rng, index)


def _lowbias32(x: jax.Array) -> jax.Array:
    x = x ^ (x >> 16)
    x = x * jnp.uint32(0x7FEB352D)
    x = x ^ (x >> 15)
    x = x * jnp.uint32(0x846CA68B)
    return x ^ (x >> 16)


def keep_mask(key: jax.Array, shape: tuple[int, ...], keep: float) -> jax.Array:
    """Boolean mask of ``shape``, each element True with probability ``keep`` (to 2^-32),
    independently, a pure function of ``key`` (a typed or raw threefry key) and the index."""
    size = 1
    for n in shape:
        size *= int(n)
    if size >= 2**32:  # the counter is one uint32 per element
        raise ValueError(f"dropout mask of {size} elements: at most 2^32 - 1 (shape {shape})")
    words = jax.random.key_data(key) if jnp.issubdtype(key.dtype, jax.dtypes.prng_key) else key
    words = words.reshape(-1).astype(jnp.uint32)
    counter = jax.lax.iota(jnp.uint32, size).reshape(shape)
    bits = _lowbias32(_lowbias32(counter ^ _lowbias32(words[0])) ^ words[1])
    return bits < jnp.uint32(min(round(keep * 2.0**32), 2**32 - 1))


def dropout(layer: nnx.Dropout, x: jax.Array, key: jax.Array | None) -> jax.Array:
    """``layer`` applied with ``key``; the identity without a key or at rate 0."""
    if key is None or layer.rate == 0.0:
        return x
    if _GENERATOR.get() == "threefry":
        return layer(x, deterministic=False, rngs=key)
    keep = 1.0 - layer.rate
    if keep == 0.0:
        return jnp.zeros_like(x)
    shape = tuple(1 if i in _dims(layer.broadcast_dims, x.ndim) else n for i, n in enumerate(x.shape))
    mask = jnp.broadcast_to(keep_mask(key, shape, keep), x.shape)
    return jax.lax.select(mask, x / keep, jnp.zeros_like(x))


def _dims(dims: tuple[int, ...] | list[int], ndim: int) -> set[int]:
    return {d % ndim for d in dims}


class DropoutKeys:
    """A deterministic sequence of site keys from one key (for models with many sites)."""

    def __init__(self, rng: jax.Array | None, train: bool):
        if train and rng is None:
            raise ValueError("train=True requires an explicit `rng` key for dropout")
        self.rng = rng if train else None
        self._i = 0

    def __call__(self) -> jax.Array | None:
        if self.rng is None:
            return None
        self._i += 1
        return jax.random.fold_in(self.rng, self._i)

    def sub(self) -> "DropoutKeys":
        """A child sequence (for a sub-module), independent of later siblings."""
        child = DropoutKeys(None, False)
        child.rng = self()
        return child
