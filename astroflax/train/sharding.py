"""Data parallelism with ``jax.sharding``: one mesh axis, ``data``, over all local devices.

The same code runs on one device (a mesh of one). Parameters and optimiser state are
replicated; each batch is split along its first axis.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from astroflax.errors import ConfigError


def make_mesh() -> Mesh:
    return Mesh(np.asarray(jax.devices()), ("data",))


def check_divisible(batch_size: int, mesh: Mesh, key: str) -> None:
    n = mesh.devices.size
    if batch_size % n:
        raise ConfigError(f"config key '{key}' = {batch_size}: must be a multiple of the {n} devices in the mesh")


def replicate(tree: Any, mesh: Mesh) -> Any:
    return jax.device_put(tree, NamedSharding(mesh, P()))


def shard_batch(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    return jax.device_put(batch, NamedSharding(mesh, P("data")))
