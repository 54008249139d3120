"""Models for 1-D stellar spectra: ``flux (B, P) -> (class logits (B, K), type scale (B,))``.

:class:`SpectralConvolution` is a 1-D convolution whose output is modulated, channel by channel,
by a learned per-wavelength gain and offset: ``y[p, c] = conv(x)[p, c] * g[p, c] + o[p, c]``
(``g`` starts at 1, ``o`` at 0, so the layer starts as a plain convolution). Why: a plain
convolution is translation-equivariant, but a spectrum is not translation-invariant; an
absorption feature means something different at 3933 A (Ca II K), 6563 A (H-alpha) or 7100 A
(TiO). The gain lets each filter emphasise or suppress its response where it is diagnostic, at
the cost of ``2 * P * C`` parameters per layer, while the shared kernel keeps the layer
well-conditioned (the kernel still learns shapes such as "a line of this width" from everywhere).

Both models end in two heads: class logits and a regression of the spectral-type scale
``class_index + subtype / 10`` (predicted as ``3.5 + 2 * raw``, i.e. roughly standardised).
BatchNorm runs in batch-statistics mode when ``train=True`` and on running averages otherwise;
``mc_dropout=True`` turns dropout on with the running averages (MC-dropout: a pass does not
depend on the rest of its batch).
No RNG state is stored: dropout keys come from the explicit ``rng`` argument.

Coverage mask: spectra may cover only part of the grid, so a model built with
``in_channels=2`` also reads ``mask`` (1 where the pixel is covered) as a second input channel,
given as ``1 - mask`` so that a fully covered spectrum feeds exact zeros there. User-data models
have it, and so do bundled-data models trained with masked ranges (``data.effects.mask > 0``,
the default); a bundled model trained without them keeps one channel.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from astroflax.models.dropout import dropout, site_key

__all__ = ["SpectralConvolution", "SpectrumCNN", "SpectrumMLP"]

SCALE_CENTRE = 3.5
SCALE_SPREAD = 2.0


def _bn(features: int, rngs: nnx.Rngs, momentum: float = 0.9) -> nnx.BatchNorm:
    return nnx.BatchNorm(features, momentum=momentum, rngs=rngs)


def _inputs(flux: jax.Array, mask: jax.Array | None, in_channels: int) -> jax.Array:
    """``(B, P, in_channels)``: flux - 1 (normalised continuum at 0), then ``1 - mask`` if used."""
    x = (jnp.asarray(flux, jnp.float32) - 1.0)[..., None]
    if in_channels == 1:
        return x
    if mask is None:
        raise ValueError("this model reads a coverage mask (in_channels=2): pass mask=")
    return jnp.concatenate([x, (1.0 - jnp.asarray(mask, jnp.float32))[..., None]], axis=-1)




class SpectralConvolution(nnx.Module):
    """``(B, P, C_in) -> (B, P, C_out)``: 'SAME' 1-D convolution times a per-wavelength gain, plus offset."""

    def __init__(self, in_features: int, out_features: int, kernel_size: int, length: int, *, rngs: nnx.Rngs):
        self.length = int(length)
        self.conv = nnx.Conv(in_features, out_features, kernel_size=(int(kernel_size),), padding="SAME", rngs=rngs)
        self.gain = nnx.Param(jnp.ones((self.length, out_features), jnp.float32))
        self.offset = nnx.Param(jnp.zeros((self.length, out_features), jnp.float32))

    def __call__(self, x: jax.Array) -> jax.Array:
        if x.ndim != 3 or x.shape[1] != self.length:
            raise ValueError(f"SpectralConvolution expects (batch, {self.length}, channels), got {x.shape}")
        return self.conv(x) * self.gain[...] + self.offset[...]


class _Heads(nnx.Module):
    def __init__(self, features: int, num_classes: int, *, rngs: nnx.Rngs):
        self.cls = nnx.Linear(features, num_classes, rngs=rngs)
        # Zero-initialised: every spectrum starts at the centre of the type scale, so the subtype
        # loss at initialisation is moderate and its gradients do not swamp the classifier's.
        self.reg = nnx.Linear(features, 1, kernel_init=nnx.initializers.zeros_init(), rngs=rngs)

    def __call__(self, h: jax.Array) -> tuple[jax.Array, jax.Array]:
        return self.cls(h), SCALE_CENTRE + SCALE_SPREAD * self.reg(h)[:, 0]


class SpectrumMLP(nnx.Module):
    """Dense -> BatchNorm -> GELU -> dropout, repeated, then the two heads."""

    def __init__(
        self,
        num_pixels: int,
        num_classes: int,
        hidden: Sequence[int] = (512, 256),
        dropout: float = 0.2,
        *,
        in_channels: int = 1,
        bn_momentum: float = 0.9,
        rngs: nnx.Rngs,
    ):
        self.in_channels = int(in_channels)
        sizes = [int(num_pixels) * self.in_channels, *map(int, hidden)]
        self.layers = nnx.List([nnx.Linear(a, b, rngs=rngs) for a, b in itertools.pairwise(sizes)])
        self.norms = nnx.List([_bn(b, rngs, bn_momentum) for b in sizes[1:]])
        self.drop = nnx.Dropout(float(dropout))
        self.heads = _Heads(sizes[-1], num_classes, rngs=rngs)

    def __call__(self, flux: jax.Array, *, train: bool = False, rng: jax.Array | None = None,
                 mask: jax.Array | None = None, mc_dropout: bool = False):
        if (train or mc_dropout) and rng is None:
            raise ValueError("train=True or mc_dropout=True requires an explicit `rng` key for dropout")
        x = _inputs(flux, mask, self.in_channels)
        x = x.reshape(x.shape[0], -1)  # pixel-major: (flux, mask) of pixel 0, then pixel 1, ...
        for i, (layer, norm) in enumerate(zip(self.layers, self.norms)):
            x = jax.nn.gelu(norm(layer(x), use_running_average=not train))
            x = dropout(self.drop, x, site_key(rng if train or mc_dropout else None, i))
        return self.heads(x)


class SpectrumCNN(nnx.Module):
    """[SpectralConvolution -> BatchNorm -> GELU -> max-pool 2] per stage, flatten, dense, two heads."""

    def __init__(
        self,
        num_pixels: int,
        num_classes: int,
        channels: Sequence[int] = (16, 32, 48, 64),
        kernel_size: int = 7,
        hidden: int = 128,
        dropout: float = 0.2,
        *,
        in_channels: int = 1,
        bn_momentum: float = 0.9,
        rngs: nnx.Rngs,
    ):
        self.in_channels = int(in_channels)
        length = int(num_pixels)
        if length % (2 ** len(channels)):
            raise ValueError(f"num_pixels={length} must be divisible by 2**{len(channels)} (one pooling per stage)")
        convs, norms = [], []
        c_in = self.in_channels
        for c in channels:
            convs.append(SpectralConvolution(c_in, int(c), kernel_size, length, rngs=rngs))
            norms.append(_bn(int(c), rngs, bn_momentum))
            c_in, length = int(c), length // 2
        self.convs = nnx.List(convs)
        self.norms = nnx.List(norms)
        self.fc = nnx.Linear(length * c_in, int(hidden), rngs=rngs)
        self.fc_norm = _bn(int(hidden), rngs, bn_momentum)
        self.drop = nnx.Dropout(float(dropout))
        self.heads = _Heads(int(hidden), num_classes, rngs=rngs)

    def __call__(self, flux: jax.Array, *, train: bool = False, rng: jax.Array | None = None,
                 mask: jax.Array | None = None, mc_dropout: bool = False):
        if (train or mc_dropout) and rng is None:
            raise ValueError("train=True or mc_dropout=True requires an explicit `rng` key for dropout")
        x = _inputs(flux, mask, self.in_channels)
        for conv, norm in zip(self.convs, self.norms):
            x = jax.nn.gelu(norm(conv(x), use_running_average=not train))
            b, p, c = x.shape
            x = jnp.max(x.reshape(b, p // 2, 2, c), axis=2)
        x = x.reshape(x.shape[0], -1)
        x = jax.nn.gelu(self.fc_norm(self.fc(x), use_running_average=not train))
        x = dropout(self.drop, x, site_key(rng if train or mc_dropout else None, 0))
        return self.heads(x)
