"""Batched, sharded inference over host arrays with one compiled shape."""

from __future__ import annotations

from typing import Any, Callable

import jax
import numpy as np
from jax.sharding import Mesh

from astroflax.data.pipeline import eval_batches, num_rows
from astroflax.train.sharding import host_value, process_rows, shard_batch


def round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def predict_arrays(
    predict: Callable[[Any, Any, dict], jax.Array],
    params: Any,
    model_state: Any,
    arrays: dict[str, np.ndarray] | Any,
    batch_size: int,
    mesh: Mesh,
    *extra: Any,
) -> np.ndarray:
    """Run ``predict`` (jitted) over every row of ``arrays`` in order; returns host outputs.

    ``extra`` arguments follow the batch, then the batch's index (for per-batch RNG keys), as in
    ``predict(params, model_state, batch, *extra, index)``; without ``extra`` only the batch.
    ``arrays`` may be a source streamed from disk (a converted dataset's split).

    On several processes each reads its rows of every batch and every process gets all the
    outputs (gathered), so that scores and the decisions taken on them agree everywhere.
    """
    n = num_rows(arrays)
    batch_size = round_up(min(batch_size, round_up(n, mesh.devices.size)), mesh.devices.size)
    rows = process_rows(batch_size) if jax.process_count() > 1 else slice(None)
    outputs = []
    for index, batch in enumerate(eval_batches(arrays, batch_size)):
        real = int(batch["_weight"].sum())
        args = (*extra, index) if extra else ()
        local = batch if rows == slice(None) else {k: v[rows] for k, v in batch.items()}
        out = predict(params, model_state, shard_batch(local, mesh), *args)
        outputs.append((out, real))
    # One transfer per batch, after all batches were dispatched.
    return np.concatenate([np.asarray(host_value(out))[:real] for out, real in outputs], axis=0)
