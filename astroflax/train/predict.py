"""Batched, sharded inference over host arrays with one compiled shape."""

from __future__ import annotations

from typing import Any, Callable, Iterator

import jax
import numpy as np
from jax.sharding import Mesh

from astroflax.data.pipeline import eval_batches, num_rows, take
from astroflax.train.sharding import host_value, process_rows, shard_batch


def round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def _all_batches(arrays: Any, batch_size: int) -> Iterator[tuple[dict[str, np.ndarray], int]]:
    """(batch, real rows) of one process: the ordered, padded evaluation batches."""
    for batch in eval_batches(arrays, batch_size):
        yield batch, int(batch["_weight"].sum())


def _process_batches(arrays: Any, batch_size: int) -> Iterator[tuple[dict[str, np.ndarray], int]]:
    """(this process's rows, real rows of the whole batch) of the same ordered, padded batches as
    :func:`~astroflax.data.pipeline.eval_batches`: each process reads only its block of every batch."""
    n, rows = num_rows(arrays), process_rows(batch_size)
    for start in range(0, n, batch_size):
        idx = np.arange(start, start + batch_size)
        weight = (idx < n).astype(np.float32)
        idx = np.where(idx < n, idx, 0)  # padding repeats row 0, weight 0
        batch = take(arrays, idx[rows])
        batch["_weight"] = weight[rows]
        yield batch, int(weight.sum())


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
    batches = _all_batches(arrays, batch_size) if jax.process_count() == 1 else _process_batches(arrays, batch_size)
    outputs = []
    for index, (batch, real) in enumerate(batches):
        args = (*extra, index) if extra else ()
        out = predict(params, model_state, shard_batch(batch, mesh), *args)
        outputs.append((out, real))
    # One transfer per batch, after all batches were dispatched.
    return np.concatenate([np.asarray(host_value(out))[:real] for out, real in outputs], axis=0)
