"""Class-conditional variational auto-encoder (Kingma & Welling 2014; Sohn et al. 2015) for small images.

``encoder(image, one-hot class) -> (mean, log-variance)`` of a diagonal Gaussian q(z|x, y);
``z = mean + exp(logvar / 2) * eps`` with ``eps`` drawn from an EXPLICIT key (the model holds no
RNG state, so a train step is a pure function of params, batch and key and resume stays exact);
``decoder(z, one-hot class) -> Bernoulli logits`` per pixel. Both are MLPs: on 28x28 digits they
train in minutes on two CPU cores, and conditioning by concatenating the one-hot class to the
input of both halves is enough for the decoder to follow the requested class.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

__all__ = [
    "ConditionalVAE",
    "DigitClassifier",
    "bernoulli_nll",
    "gaussian_kl",
    "log_normal",
    "reparameterize",
]

_LOG_2PI = float(np.log(2.0 * np.pi))


def reparameterize(mean: jax.Array, logvar: jax.Array, key: jax.Array) -> jax.Array:
    """``mean + sigma * eps``: the sample is differentiable in (mean, logvar) and fixed by ``key``."""
    eps = jax.random.normal(key, mean.shape, mean.dtype)
    return mean + jnp.exp(0.5 * logvar) * eps


def gaussian_kl(
    mean: jax.Array, logvar: jax.Array, prior_mean: jax.Array | float = 0.0, prior_logvar: jax.Array | float = 0.0
) -> jax.Array:
    """Closed-form KL( N(mean, exp(logvar)) || N(prior_mean, exp(prior_logvar)) ) of diagonal
    Gaussians, summed over the last axis (nats). Defaults: the standard normal prior."""
    ratio = jnp.exp(logvar - prior_logvar)
    return 0.5 * jnp.sum(
        ratio + jnp.square(mean - prior_mean) * jnp.exp(-prior_logvar) - 1.0 - logvar + prior_logvar, axis=-1
    )


def log_normal(z: jax.Array, mean: jax.Array, logvar: jax.Array) -> jax.Array:
    """log N(z; mean, exp(logvar)), summed over the last axis (for importance weights)."""
    return -0.5 * jnp.sum(_LOG_2PI + logvar + jnp.square(z - mean) * jnp.exp(-logvar), axis=-1)


def bernoulli_nll(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """Sigmoid binary cross-entropy summed over all but the first axis (nats per example).

    Written as ``softplus(l) - t*l``: exact and stable for any logit, and valid for targets in
    [0, 1] (grey levels) as well as {0, 1}.
    """
    per_pixel = jax.nn.softplus(logits) - targets * logits
    return jnp.sum(per_pixel.reshape(per_pixel.shape[0], -1), axis=-1)


def _mlp(sizes: Sequence[int], rngs: nnx.Rngs) -> nnx.List:
    return nnx.List([nnx.Linear(a, b, rngs=rngs) for a, b in zip(sizes[:-1], sizes[1:])])


def _run(layers: nnx.List, x: jax.Array) -> jax.Array:
    for layer in layers:
        x = jax.nn.gelu(layer(x))
    return x


class ConditionalVAE(nnx.Module):
    """Conditional VAE over flattened images with pixel values in [0, 1].

    ``__call__(images, labels, key)`` returns ``(logits, mean, logvar, z)``; ``generate(z, labels)``
    decodes latent vectors to Bernoulli logits (use ``jax.nn.sigmoid`` for the mean image);
    ``prior(labels)`` gives the prior's mean and log-variance and ``sample_latent`` draws from it.

    ``prior="class"`` learns one diagonal Gaussian p(z | y) per class (Sohn et al. 2015 use a
    prior network; a table is enough for a one-hot y). Why: with an N(0, I) prior an MLP
    encoder on digits also stores the class in z (it costs only ~ln 10 nats), so prior samples
    decoded "as a 7" are often another digit. With p(z | y) the latent region of each class
    is known and conditional samples follow the requested class. ``prior="standard"`` is the
    textbook N(0, I).
    """

    def __init__(
        self,
        num_pixels: int,
        num_classes: int,
        *,
        latent_dim: int = 16,
        hidden: Sequence[int] = (512, 256),
        prior: str = "class",
        rngs: nnx.Rngs,
    ):
        if prior not in ("class", "standard"):
            raise ValueError(f"prior must be 'class' or 'standard', got {prior!r}")
        if not hidden:
            raise ValueError("hidden needs at least one layer width")
        self.num_pixels = int(num_pixels)
        self.num_classes = int(num_classes)
        self.latent_dim = int(latent_dim)
        widths = [int(h) for h in hidden]
        self.enc = _mlp([self.num_pixels + self.num_classes, *widths], rngs)
        self.enc_mean = nnx.Linear(widths[-1], self.latent_dim, rngs=rngs)
        # Small init keeps the initial posterior close to N(0, 1) (no exploding KL at step 0).
        self.enc_logvar = nnx.Linear(
            widths[-1], self.latent_dim, kernel_init=nnx.initializers.normal(1e-3), rngs=rngs
        )
        # The decoder sees the class at every layer, not just the first: it makes y the easy
        # path for class information (measured: higher conditional accuracy of samples).
        sizes = [self.latent_dim, *widths[::-1]]
        k = self.num_classes
        self.dec = nnx.List([nnx.Linear(a + k, b, rngs=rngs) for a, b in zip(sizes[:-1], sizes[1:])])
        self.dec_out = nnx.Linear(widths[0] + k, self.num_pixels, rngs=rngs)
        self.prior_kind = prior
        if prior == "class":  # starts as N(0, I) for every class
            self.prior_mean = nnx.Param(jnp.zeros((self.num_classes, self.latent_dim), jnp.float32))
            self.prior_logvar = nnx.Param(jnp.zeros((self.num_classes, self.latent_dim), jnp.float32))

    def prior(self, labels: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Mean and log-variance of p(z | y), each ``(B, latent_dim)``."""
        if self.prior_kind == "standard":
            zeros = jnp.zeros((labels.shape[0], self.latent_dim), jnp.float32)
            return zeros, zeros
        return self.prior_mean[...][labels], self.prior_logvar[...][labels]

    def sample_latent(self, labels: jax.Array, key: jax.Array) -> jax.Array:
        """z ~ p(z | y) for each label, from an explicit key."""
        mean, logvar = self.prior(labels)
        return reparameterize(mean, logvar, key)

    def _onehot(self, labels: jax.Array) -> jax.Array:
        return jax.nn.one_hot(labels, self.num_classes, dtype=jnp.float32)

    def encode(self, images: jax.Array, labels: jax.Array) -> tuple[jax.Array, jax.Array]:
        """q(z | x, y): mean and log-variance, each ``(B, latent_dim)``."""
        x = images.reshape(images.shape[0], -1).astype(jnp.float32)
        h = _run(self.enc, jnp.concatenate([x, self._onehot(labels)], axis=-1))
        return self.enc_mean(h), self.enc_logvar(h)

    def generate(self, z: jax.Array, labels: jax.Array) -> jax.Array:
        """p(x | z, y): Bernoulli logits ``(B, num_pixels)``."""
        y = self._onehot(labels)
        h = z.astype(jnp.float32)
        for layer in self.dec:
            h = jax.nn.gelu(layer(jnp.concatenate([h, y], axis=-1)))
        return self.dec_out(jnp.concatenate([h, y], axis=-1))

    def __call__(
        self, images: jax.Array, labels: jax.Array, key: jax.Array
    ) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
        mean, logvar = self.encode(images, labels)
        z = reparameterize(mean, logvar, key)
        return self.generate(z, labels), mean, logvar, z


class DigitClassifier(nnx.Module):
    """Small CNN (two 3x3 conv + max-pool blocks, one hidden dense layer) for 28x28 digits.

    The model of the ``digits`` task, which judges the VAE's generated samples, so it is
    deliberately independent of the VAE: its own architecture, data representation (grey
    levels) and seed.
    """

    def __init__(self, num_classes: int = 10, *, channels: tuple[int, int] = (16, 32), hidden: int = 128,
                 rngs: nnx.Rngs):
        c1, c2 = channels
        self.conv1 = nnx.Conv(1, c1, kernel_size=(3, 3), rngs=rngs)
        self.conv2 = nnx.Conv(c1, c2, kernel_size=(3, 3), rngs=rngs)
        self.fc = nnx.Linear(7 * 7 * c2, hidden, rngs=rngs)
        self.out = nnx.Linear(hidden, num_classes, rngs=rngs)

    def __call__(self, images: jax.Array) -> jax.Array:
        """``images`` (B, 28, 28) in [0, 1] -> logits (B, num_classes)."""
        x = images.reshape(images.shape[0], 28, 28, 1).astype(jnp.float32)
        x = nnx.max_pool(jax.nn.relu(self.conv1(x)), (2, 2), strides=(2, 2))
        x = nnx.max_pool(jax.nn.relu(self.conv2(x)), (2, 2), strides=(2, 2))
        x = jax.nn.relu(self.fc(x.reshape(x.shape[0], -1)))
        return self.out(x)
