"""Training batches: deterministic from the seed, resumable from a state; Grain pipelines over
arrays or a dataset on disk, or indices into a split held on the devices."""

from __future__ import annotations

import sys
from typing import Any, Iterator

import grain
import grain.experimental
import numpy as np

from astroflax.data.index_shuffle import index_shuffle
from astroflax.errors import CheckpointError, ConfigError


class ArraySource:
    """A random-access Grain source over a dict of equally long arrays (one example per row)."""

    def __init__(self, arrays: dict[str, np.ndarray]):
        lengths = {k: len(v) for k, v in arrays.items()}
        if len(set(lengths.values())) != 1:
            raise ValueError(f"arrays of different lengths: {lengths}")
        self._arrays = arrays
        self._len = next(iter(lengths.values()))

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        return {k: v[index] for k, v in self._arrays.items()}

    def read_batch(self, indices: Any) -> dict[str, np.ndarray]:
        return {k: v[np.asarray(indices)] for k, v in self._arrays.items()}


class BatchIndices:
    """Batch number -> example indices, as Grain's ``MapDataset.range(n).shuffle(seed)
    .repeat(None).batch(B)`` gives them: position ``p`` of the endless stream is example
    ``index_shuffle(p % n, max_index=n - 1, seed=(seed + p // n) % 2**32, rounds=4)``, a new
    permutation each epoch.

    Why not Grain's pipeline itself: it walks four datasets, records statistics and calls its C++
    shuffle once per index, 12 us an index here (1.5-1.7 ms a photoz batch of 128, where the
    photoz step is 0.5 ms). Here the permutation of a whole epoch is computed at once
    (:mod:`astroflax.data.index_shuffle`; 3.9 ms for photoz's 6,988 examples, 73 ms for a
    million) and kept while the epoch lasts; past ``EPOCH_CACHE_MAX`` examples each batch is
    computed on its own instead (for n that large the cipher's cycle walking is short).
    """

    EPOCH_CACHE_MAX = 1 << 24  # a cached epoch is 4 bytes an example: 64 MiB at most
    # Below this, Grain's own scalar shuffle per example: the cipher's smallest block is 2**16
    # values, so with few examples most encryptions land outside [0, n) and the walk is long,
    # which costs numpy an array pass a step. An epoch, vectorised against scalar: n = 10 577
    # against 20 ms, 512: 29 against 23 ms, 1,000: 15 against 25 ms, 6,988: 4.3 against 43 ms.
    SCALAR_BELOW = 1024

    def __init__(self, num_examples: int, batch_size: int, seed: int):
        self.n, self.batch_size, self.seed = num_examples, batch_size, seed
        self._epochs: dict[int, np.ndarray] = {}

    def _epoch(self, epoch: int) -> np.ndarray:
        # Computed in line when an epoch starts: an epoch computed ahead on a thread measured
        # the same (photoz on the device, 0.5 ms a step: 0.02-0.05 ms a step over indices made
        # beforehand, either way; XLA runs the step on another thread meanwhile).
        order = self._epochs.get(epoch)
        if order is None:
            seed = (self.seed + epoch) % 2**32
            if self.n < self.SCALAR_BELOW:
                order = np.fromiter((grain.experimental.index_shuffle(i, max_index=self.n - 1, seed=seed, rounds=4)
                                     for i in range(self.n)), dtype=np.uint32, count=self.n)
            else:
                order = index_shuffle(np.arange(self.n), self.n - 1, seed).astype(np.uint32)
            self._epochs = {e: o for e, o in self._epochs.items() if e == epoch - 1}  # a batch may straddle two
            self._epochs[epoch] = order
        return order

    def __call__(self, batch: int) -> np.ndarray:
        positions = np.arange(batch * self.batch_size, (batch + 1) * self.batch_size, dtype=np.int64)
        epoch, within = np.divmod(positions, self.n)
        if self.n > self.EPOCH_CACHE_MAX:
            return index_shuffle(within, self.n - 1, (self.seed + epoch) % 2**32).astype(np.int64)
        first, last = int(epoch[0]), int(epoch[-1])
        if first == last:
            return self._epoch(first)[within].astype(np.int64)
        out = np.empty(self.batch_size, np.int64)
        for e in range(first, last + 1):
            sel = epoch == e
            out[sel] = self._epoch(e)[within[sel]]
        return out


class TrainStream:
    """Endless shuffled batches: indices -> shuffle (new order each epoch) -> repeat -> batch ->
    read the batch -> prefetch.

    The shuffle and batching run over example *indices*, and each batch is read with one
    ``read_batch`` call (numpy fancy indexing in memory, one batched ArrayRecord read and one
    decode on disk). Reading example by example and stacking, as ``MapDataset.source(src)
    .batch()`` does in Grain 0.2.18 (its batched-read pushdown is disabled), cost 7-18 % of
    the throughput of streamed light-curve training. The order is the same either way: it
    depends only on the seed and the number of examples.

    ``get_state``/``set_state`` capture the position exactly; the state carries the dataset
    version, so restoring it onto different data fails loudly instead of silently diverging.

    Several processes (``jax.distributed``): every process runs the same index stream (same
    seed) and reads only its rows ``[p*B/P, (p+1)*B/P)`` of each global batch of ``B`` indices.
    A step therefore sees the same examples whatever the process count, and the iterator
    state, a position in the index stream, is the same on every process: one saved state
    resumes any process count (Grain's ``ShardByJaxProcess`` would instead shard the examples,
    which changes the order with the number of processes).
    """

    def __init__(self, data: dict[str, np.ndarray] | Any, batch_size: int, seed: int, version: str,
                 prefetch: int = 4, threads: int = 1, process_index: int = 0, process_count: int = 1):
        """``data``: a dict of arrays (in memory) or a random-access source of examples (a
        converted dataset on disk: :class:`~astroflax.data.store.RecordSource`). The order of
        examples depends only on the seed and the number of examples, so both give the same
        batches. ``process_index``/``process_count``: read this process's rows of each batch."""
        self.version = version
        source = ArraySource(data) if isinstance(data, dict) else data
        self.num_examples = len(source)
        _check_batch_size(batch_size, self.num_examples, process_count)
        # Element b is batch b: the same indices, the same iterator state ({"next_index": b}) as
        # MapDataset.range(n).shuffle(seed).repeat(None).batch(B), so checkpoints of either
        # resume on the other.
        dataset = grain.MapDataset.range(sys.maxsize // batch_size).map(
            BatchIndices(self.num_examples, batch_size, seed))
        if process_count > 1:  # this process's block of the global batch of indices
            per = batch_size // process_count
            rows = slice(process_index * per, (process_index + 1) * per)
            dataset = dataset.map(lambda indices: indices[rows])
        dataset = dataset.map(source.read_batch)
        read = grain.ReadOptions(num_threads=threads, prefetch_buffer_size=prefetch)
        self._iter = iter(dataset.to_iter_dataset(read))

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        return next(self._iter)

    def get_state(self) -> dict[str, Any]:
        return {"version": self.version, "iterator": self._iter.get_state()}

    def set_state(self, state: dict[str, Any]) -> None:
        _check_version(state, self.version)
        self._iter.set_state(state["iterator"])


class IndexStream:
    """The example indices of each training batch, for a split held on the devices whole
    (:class:`~astroflax.train.step.FlatStep` gathers the rows inside the step).

    Why: for a small split the host's work per batch was most of a small model's step. The
    photoz quick step is 0.5 ms; reading its batch of 128 from disk and placing it on the device
    cost 1.1 ms more, and from memory through Grain's prefetch thread 0.15 ms. Here a batch is a
    slice of the cached epoch permutation (:class:`BatchIndices`: about 10 us, and the next
    epoch's permutation once an epoch, 3.3-4.5 ms for photoz's 6,988 examples), called on the loop's
    thread: no thread to hand batches over, no copy of the rows.

    The indices, the order and the state (``{"next_index": b}``) are :class:`TrainStream`'s, so
    a checkpoint of either resumes on the other, and the steps are bitwise the same (tested).
    """

    def __init__(self, num_examples: int, batch_size: int, seed: int, version: str):
        _check_batch_size(batch_size, num_examples, 1)
        self.version = version
        self._indices = BatchIndices(num_examples, batch_size, seed)
        self._next = 0

    def __iter__(self) -> Iterator[np.ndarray]:
        return self

    def __next__(self) -> np.ndarray:
        indices = self._indices(self._next).astype(np.int32)
        self._next += 1
        return indices

    def get_state(self) -> dict[str, Any]:
        return {"version": self.version, "iterator": {"next_index": self._next}}

    def set_state(self, state: dict[str, Any]) -> None:
        _check_version(state, self.version)
        self._next = int(state["iterator"]["next_index"])


def _check_batch_size(batch_size: int, num_examples: int, process_count: int) -> None:
    if num_examples < batch_size:
        raise ConfigError(
            f"config key 'train.batch_size' = {batch_size}: larger than the training split "
            f"({num_examples} examples); use at most {num_examples}"
        )
    if batch_size % process_count:
        raise ConfigError(f"config key 'train.batch_size' = {batch_size}: must be a multiple of the "
                          f"{process_count} processes")


def _check_version(state: dict[str, Any], version: str) -> None:
    if state.get("version") != version:
        raise CheckpointError(
            f"checkpoint data state is for dataset version {state.get('version')!r}, "
            f"but the data now has version {version!r}; resume with the same data or start a new run"
        )


def num_rows(data: dict[str, np.ndarray] | Any) -> int:
    """Examples in a dict of arrays or in a random-access source."""
    return len(ArraySource(data)) if isinstance(data, dict) else len(data)


def num_bytes(data: dict[str, np.ndarray] | Any) -> int:
    """Bytes of arrays, or of a source's fields over all its rows, without reading them."""
    return sum(np.asarray(v).nbytes for v in data.values()) if isinstance(data, dict) else data.nbytes


def read_all(data: dict[str, np.ndarray] | Any) -> dict[str, np.ndarray]:
    """Arrays, or a source's rows read whole."""
    return data if isinstance(data, dict) else data.read_all()


def take(data: dict[str, np.ndarray] | Any, idx: np.ndarray) -> dict[str, np.ndarray]:
    """Rows ``idx`` of arrays, or of a source (one batched read), as a batch."""
    if isinstance(data, dict):
        return {k: v[idx] for k, v in data.items()}
    return data.read_batch(idx)


def eval_batches(data: dict[str, np.ndarray] | Any, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
    """Ordered batches of a fixed size (one compiled shape); the last is padded, ``_weight`` = 0 there.
    ``data``: arrays, or a source streamed from disk (only one batch is in memory)."""
    n = num_rows(data)
    for start in range(0, n, batch_size):
        idx = np.arange(start, min(start + batch_size, n))
        pad = batch_size - len(idx)
        weight = np.ones(batch_size, np.float32)
        if pad:
            weight[len(idx):] = 0.0
            idx = np.concatenate([idx, np.zeros(pad, idx.dtype)])
        batch = take(data, idx)
        batch["_weight"] = weight
        yield batch


def first_rows(data: dict[str, np.ndarray] | Any, n: int) -> dict[str, np.ndarray]:
    """The first ``n`` examples of arrays or of a source, as a batch (an example for tracing)."""
    return take(data, np.arange(min(n, num_rows(data))))
