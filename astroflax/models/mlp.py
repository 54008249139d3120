"""Plain MLP trunk and probabilistic regression heads (Gaussian, Gaussian mixture).

:class:`MLP` is a generic ``(B, D) -> (B, H)`` feature extractor any tabular task can reuse.
:class:`MLPRegressor` adds input standardisation and a distribution head and returns the
parameters of a K-component Gaussian mixture *in target units* (K = 1 for the Gaussian head):
``(logits (B, K), means (B, K), log_sigmas (B, K))``. Normalisation constants are static
(plain floats from the training split), so they travel with the model definition and need
no extra state.

Randomness: no RNG state is stored. Dropout keys come from the explicit ``rng`` argument
(``jax.random.fold_in`` per layer) when ``train=True``; constructor ``rngs`` only initialise.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from astroflax.models.dropout import dropout, site_key
from astroflax.models.layernorm import LayerNorm

__all__ = ["MLP", "GaussianHead", "MixtureHead", "MLPRegressor", "ACTIVATIONS"]

ACTIVATIONS = {"gelu": jax.nn.gelu, "relu": jax.nn.relu, "silu": jax.nn.silu, "tanh": jnp.tanh}
MIN_SIGMA = 1e-3  # in standardised target units: keeps the NLL bounded


class MLP(nnx.Module):
    """Dense -> [LayerNorm] -> activation -> dropout, repeated; returns the last hidden layer."""

    def __init__(
        self,
        in_features: int,
        hidden: Sequence[int],
        *,
        activation: str = "gelu",
        dropout: float = 0.0,
        layer_norm: bool = False,
        rngs: nnx.Rngs,
    ):
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
        if not hidden:
            raise ValueError("hidden must list at least one layer width")
        sizes = [int(in_features), *map(int, hidden)]
        self.activation = activation
        self.dropout = float(dropout)
        self.out_features = sizes[-1]
        self.layers = nnx.List([nnx.Linear(a, b, rngs=rngs) for a, b in zip(sizes[:-1], sizes[1:])])
        self.norms = nnx.List([LayerNorm(b, rngs=rngs) for b in sizes[1:]]) if layer_norm else None
        self.drop = nnx.Dropout(self.dropout)

    def __call__(self, x: jax.Array, *, train: bool = False, rng: jax.Array | None = None) -> jax.Array:
        if train and self.dropout > 0 and rng is None:
            raise ValueError("train=True with dropout requires an explicit `rng` key")
        act = ACTIVATIONS[self.activation]
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if self.norms is not None:
                x = self.norms[i](x)
            x = act(x)
            x = dropout(self.drop, x, site_key(rng if train else None, i))
        return x


class GaussianHead(nnx.Module):
    """Heteroscedastic Gaussian: ``h -> (mean, log_sigma)`` (standardised units), each ``(B, 1)``.

    sigma = MIN_SIGMA + softplus(raw): smooth, positive and never collapsing to zero.
    """

    num_components = 1

    def __init__(self, in_features: int, *, rngs: nnx.Rngs):
        self.out = nnx.Linear(in_features, 2, rngs=rngs)

    def __call__(self, h: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        o = self.out(h)
        mean, raw = o[:, :1], o[:, 1:]
        log_sigma = jnp.log(MIN_SIGMA + jax.nn.softplus(raw))
        return jnp.zeros_like(mean), mean, log_sigma


class MixtureHead(nnx.Module):
    """Mixture density head: ``h -> (logits, means, log_sigmas)``, each ``(B, K)`` (standardised units).

    Means start spread over [-1.5, 1.5] so components do not begin identical (which would let
    them stay identical forever under symmetric gradients).
    """

    def __init__(self, in_features: int, num_components: int, *, rngs: nnx.Rngs):
        k = int(num_components)
        if k < 1:
            raise ValueError("num_components must be >= 1")
        self.num_components = k
        self.logits = nnx.Linear(in_features, k, rngs=rngs)
        self.means = nnx.Linear(in_features, k, rngs=rngs)
        self.sigmas = nnx.Linear(in_features, k, rngs=rngs)
        self.mean_offset = nnx.Param(jnp.asarray(np.linspace(-1.5, 1.5, k) if k > 1 else [0.0], jnp.float32))

    def __call__(self, h: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        logits = self.logits(h)
        means = self.means(h) + self.mean_offset[...]
        log_sigmas = jnp.log(MIN_SIGMA + jax.nn.softplus(self.sigmas(h)))
        return logits, means, log_sigmas


class MLPRegressor(nnx.Module):
    """Standardise inputs -> :class:`MLP` -> Gaussian or mixture head -> target units.

    ``input_mean``/``input_std`` and ``target_mean``/``target_std`` come from the training
    split; outputs are ``(logits, means, log_sigmas)`` of a Gaussian mixture over the target.
    """

    def __init__(
        self,
        input_mean: Sequence[float],
        input_std: Sequence[float],
        target_mean: float,
        target_std: float,
        *,
        hidden: Sequence[int] = (128, 128, 128),
        activation: str = "gelu",
        dropout: float = 0.0,
        layer_norm: bool = False,
        head: str = "gaussian",
        num_components: int = 1,
        rngs: nnx.Rngs,
    ):
        if len(input_mean) != len(input_std):
            raise ValueError("input_mean and input_std differ in length")
        self.input_mean = tuple(float(v) for v in input_mean)
        self.input_std = tuple(float(v) for v in input_std)
        self.target_mean = float(target_mean)
        self.target_std = float(target_std)
        self.trunk = MLP(len(self.input_mean), hidden, activation=activation, dropout=dropout,
                         layer_norm=layer_norm, rngs=rngs)
        if head == "gaussian":
            self.head = GaussianHead(self.trunk.out_features, rngs=rngs)
        elif head == "mixture":
            self.head = MixtureHead(self.trunk.out_features, num_components, rngs=rngs)
        else:
            raise ValueError(f"head must be 'gaussian' or 'mixture', got {head!r}")

    @property
    def num_components(self) -> int:
        return self.head.num_components

    def __call__(self, x: jax.Array, *, train: bool = False, rng: jax.Array | None = None):
        x = (x - jnp.asarray(self.input_mean, jnp.float32)) / jnp.asarray(self.input_std, jnp.float32)
        logits, means, log_sigmas = self.head(self.trunk(x, train=train, rng=rng))
        means = self.target_mean + self.target_std * means
        log_sigmas = log_sigmas + np.log(self.target_std)
        return logits, means, log_sigmas
