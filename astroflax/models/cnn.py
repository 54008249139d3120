"""A small image CNN with BatchNorm, plus on-device augmentation (dihedral, small-angle, colour).

Input ``(B, H, W, C)`` float images (any C); output ``(B, num_classes)`` logits. Each stage is
``blocks`` x (3x3 conv -> BatchNorm -> ReLU) followed by 2x2 max-pooling (except the last);
the head is global average pooling -> dropout -> dense. ``space_to_depth=f`` first folds each f x f
pixel block into channels (lossless), which cuts the convolution cost by about f^2 on CPUs.

BatchNorm statistics are ``nnx.BatchStat`` variables: the trainer carries them as model state.
``train=True`` normalises with batch statistics and updates the running averages; ``train=False``
uses the frozen running averages. Dropout keys come from the explicit ``rng`` argument; the
model stores no RNG state (``rngs`` is for parameter initialisation only). Augmentation
settings are arguments of :func:`augment_images`, bound by the task from its config (the model
carries none).
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from astroflax.models.dropout import dropout, site_key

__all__ = ["SmallCNN", "augment_images", "dihedral_augment", "max_pool_2x2", "rotate_small_angle"]


class SmallCNN(nnx.Module):
    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        widths: Sequence[int] = (16, 32, 64, 96),
        blocks: int = 1,
        dropout: float = 0.1,
        bn_momentum: float = 0.9,
        space_to_depth: int = 1,
        *,
        rngs: nnx.Rngs,
    ):
        self.dropout = float(dropout)
        self.drop = nnx.Dropout(self.dropout)
        self.space_to_depth = int(space_to_depth)
        self.num_stages = len(widths)
        convs, norms = [], []
        c_in = in_channels * self.space_to_depth**2
        for w in widths:
            for _ in range(blocks):
                convs.append(nnx.Conv(c_in, w, (3, 3), padding="SAME", use_bias=False, rngs=rngs))
                norms.append(nnx.BatchNorm(w, momentum=bn_momentum, rngs=rngs))
                c_in = w
        self.convs = nnx.List(convs)
        self.norms = nnx.List(norms)
        self.blocks = blocks
        self.head = nnx.Linear(c_in, num_classes, rngs=rngs)

    def features(self, x: jax.Array, train: bool) -> jax.Array:
        """Pooled feature vector ``(B, widths[-1])`` (for reuse by other tasks)."""
        x = x.astype(jnp.float32)
        f = self.space_to_depth
        if f > 1:  # lossless (B, H, W, C) -> (B, H/f, W/f, f*f*C): full-resolution information at 1/f^2 the conv cost
            b, h, w, c = x.shape
            x = x.reshape(b, h // f, f, w // f, f, c).transpose(0, 1, 3, 2, 4, 5).reshape(b, h // f, w // f, f * f * c)
        i = 0
        for stage in range(self.num_stages):
            for _ in range(self.blocks):
                x = jax.nn.relu(self.norms[i](self.convs[i](x), use_running_average=not train))
                i += 1
            if stage < self.num_stages - 1:
                x = max_pool_2x2(x)
        return x.mean(axis=(1, 2))

    def __call__(self, x: jax.Array, train: bool = False, rng: jax.Array | None = None,
                 mc_dropout: bool = False) -> jax.Array:
        """``mc_dropout=True``: dropout on, BatchNorm on its running averages (MC-dropout passes
        that do not depend on the rest of the batch)."""
        h = self.features(x, train)
        if (train or mc_dropout) and self.dropout > 0 and rng is None:
            raise ValueError("train=True or mc_dropout=True with dropout requires an explicit `rng` key")
        return self.head(dropout(self.drop, h, site_key(rng if train or mc_dropout else None, 1)))


def max_pool_2x2(x: jax.Array) -> jax.Array:
    """2x2 max-pooling with stride 2 (an odd last row/column is dropped, as VALID pooling does).

    A reshape and a max over the two window axes, not ``nnx.max_pool``: XLA:CPU runs the latter as a
    reduce-window whose gradient is a select-and-scatter with integer index tensors (about 22 ms
    of a morphology step, issue 15's profile); a reduction's gradient is plain elementwise work.
    Where a window holds equal maxima the gradient is shared among them instead of going to the
    first one; after a ReLU such ties are zeros, whose gradient is zero either way.
    """
    b, h, w, c = x.shape
    x = x[:, : h - h % 2, : w - w % 2]
    return x.reshape(b, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


def dihedral_augment(images: jax.Array, rng: jax.Array) -> jax.Array:
    """Per example, one of the 8 symmetries of the square: a random 90-degree rotation, then a random flip.

    Galaxy class does not depend on orientation or handedness, so these are exact label-preserving
    transforms (no interpolation). Images must be square ``(B, S, S, C)``.
    """
    if images.shape[1] != images.shape[2]:
        raise ValueError(f"dihedral_augment needs square images, got {images.shape[1]}x{images.shape[2]}")
    k_t, k_h, k_w = jax.random.split(rng, 3)
    b = images.shape[0]
    # Each of the 8 symmetries is one of {transpose or not} x {flip rows or not} x {flip columns or
    # not}, so three independent fair coins pick one uniformly. Three selects over the batch,
    # not a gather from a stack of the four rotations (4x the images' memory, issue 15's profile).
    flags = [jax.random.bernoulli(k, 0.5, (b, 1, 1, 1)) for k in (k_t, k_h, k_w)]
    out = jnp.where(flags[0], images.transpose(0, 2, 1, 3), images)
    out = jnp.where(flags[1], out[:, ::-1], out)
    return jnp.where(flags[2], out[:, :, ::-1], out)


def rotate_small_angle(images: jax.Array, rng: jax.Array, max_degrees: float) -> jax.Array:
    """Rotate each image by a uniform random angle in [-max, max] degrees about its centre (bilinear)."""
    b, h, w, c = images.shape
    ang = jnp.deg2rad(jax.random.uniform(rng, (b,), minval=-max_degrees, maxval=max_degrees))
    yy, xx = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32), jnp.arange(w, dtype=jnp.float32), indexing="ij")
    cy, cx = (h - 1) / 2, (w - 1) / 2

    def one(img, a):
        ca, sa = jnp.cos(a), jnp.sin(a)
        src_x = ca * (xx - cx) + sa * (yy - cy) + cx
        src_y = -sa * (xx - cx) + ca * (yy - cy) + cy
        chan = lambda ch: jax.scipy.ndimage.map_coordinates(ch, [src_y, src_x], order=1, mode="nearest")  # noqa: E731
        return jax.vmap(chan, in_axes=-1, out_axes=-1)(img)

    return jax.vmap(one)(images.astype(jnp.float32), ang)


def augment_images(
    images: jax.Array,
    rng: jax.Array,
    *,
    dihedral: bool = True,
    rotate_degrees: float = 0.0,
    desaturate: float = 0.0,
    colour_jitter: float = 0.0,
) -> jax.Array:
    """Training-time view of a batch of galaxy images ``(B, S, S, C)``, all from the one step key.

    Per-band gains ``exp(N(0, colour_jitter))`` (survey composites differ in colour balance),
    blending a ``desaturate`` share of images towards grey by a random amount (so shape, not
    colour gradients alone, decides the class), a random dihedral symmetry and optionally a
    rotation in ``[-rotate_degrees, rotate_degrees]``. Colour is weakened, never scrambled: a
    band permutation would turn red bulges blue and blue knots red (unphysical gradients).
    """
    x = images.astype(jnp.float32)
    b = x.shape[0]
    if colour_jitter > 0:
        gain = jnp.exp(colour_jitter * jax.random.normal(jax.random.fold_in(rng, 9), (b, 1, 1, x.shape[-1])))
        x = x * gain
    if desaturate > 0:
        k_on, k_t = jax.random.split(jax.random.fold_in(rng, 10))
        on = jax.random.bernoulli(k_on, desaturate, (b, 1, 1, 1))
        t = jnp.where(on, jax.random.uniform(k_t, (b, 1, 1, 1)), 0.0)
        x = (1 - t) * x + t * x.mean(axis=-1, keepdims=True)
    if dihedral:
        x = dihedral_augment(x, jax.random.fold_in(rng, 11))
    if rotate_degrees > 0:
        x = rotate_small_angle(x, jax.random.fold_in(rng, 12), rotate_degrees)
    return x
