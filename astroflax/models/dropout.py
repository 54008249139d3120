"""Dropout keys, one way for every model.

Models hold no RNG state: the train step passes one key per step (``rng``) and each dropout
site derives its own with ``jax.random.fold_in``, so a resumed run draws the same masks as an
uninterrupted one and evaluation (``rng=None``) is deterministic. ``flax.nnx.Dropout`` does
the masking; this module only says which key each call uses.
"""

from __future__ import annotations

import jax
from flax import nnx


def site_key(rng: jax.Array | None, index: int) -> jax.Array | None:
    """The key of dropout site ``index`` (None when not training)."""
    return None if rng is None else jax.random.fold_in(rng, index)


def dropout(layer: nnx.Dropout, x: jax.Array, key: jax.Array | None) -> jax.Array:
    """``layer`` applied with ``key``; the identity without a key or at rate 0."""
    if key is None or layer.rate == 0.0:
        return x
    return layer(x, deterministic=False, rngs=key)


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
