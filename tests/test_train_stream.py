"""The training stream's batch order (astroflax/data/pipeline.py): Grain's, computed directly."""

from __future__ import annotations

import grain
import grain.experimental
import numpy as np
import pytest

from astroflax.data.index_shuffle import index_shuffle
from astroflax.data.pipeline import BatchIndices, IndexStream, TrainStream
from astroflax.errors import CheckpointError, ConfigError


def grain_batches(n: int, batch_size: int, seed: int):
    """The pipeline TrainStream used before: Grain's shuffle, repeat and batch of indices."""
    return grain.MapDataset.range(n).shuffle(seed=seed).repeat(None).batch(batch_size, drop_remainder=True)


SMALL = [(10, 4, 3), (1, 1, 5), (10, 25, 1)]  # batches straddle epochs; one batch spans three
LARGE = [(1000, 128, 0), (70_001, 256, 7), (50, 50, 2**32 - 2), (3000, 64, 4)]  # seeds wrap around 2**32


@pytest.mark.parametrize(("n", "batch_size", "seed", "mode"), [
    *[(*case, "scalar") for case in SMALL + LARGE],
    # The vectorised cipher walks long cycles when n is tiny (slow in numpy, not wrong): larger n only.
    *[(*case, mode) for case in LARGE for mode in ("vectorised", "per-batch")],
])
def test_batches_are_graines_for_many_epochs(n, batch_size, seed, mode):
    reference, ours = grain_batches(n, batch_size, seed), BatchIndices(n, batch_size, seed)
    if mode == "scalar":  # Grain's own shuffle per example, for an epoch (small datasets)
        ours.SCALAR_BELOW = n + 1
    elif mode == "vectorised":  # the vectorised cipher for an epoch
        ours.SCALAR_BELOW = 0
    else:  # each batch on its own: datasets too large to keep an epoch's order
        ours.EPOCH_CACHE_MAX = 0
    per_epoch = max(1, n // batch_size)
    for b in [*range(min(12, 3 * per_epoch)), per_epoch - 1, per_epoch, 5 * per_epoch + 1, 10**6]:
        np.testing.assert_array_equal(ours(b), reference[b], err_msg=f"batch {b}")
    within = np.concatenate([ours(b) for b in range(per_epoch)])
    if n % batch_size == 0:  # each epoch is a permutation
        assert sorted(within.tolist()) == list(range(n))


def test_the_stream_resumes_from_a_state_of_the_grain_pipeline():
    """Checkpoints written before hold Grain's iterator state ({"next_index": batches read})."""
    data = {"x": np.arange(37) * 10, "y": np.arange(37)}
    old = iter(grain_batches(37, 8, 11).map(lambda idx: {k: v[idx] for k, v in data.items()}).to_iter_dataset())
    for _ in range(9):
        next(old)
    state = {"version": "v1", "iterator": old.get_state()}
    stream = TrainStream(data, 8, 11, "v1")
    stream.set_state(state)
    for _ in range(6):
        a, b = next(stream), next(old)
        np.testing.assert_array_equal(a["x"], b["x"])
        np.testing.assert_array_equal(a["y"], b["y"])
    assert stream.get_state()["iterator"] == old.get_state()


@pytest.mark.parametrize(("max_index", "seed", "rounds"), [
    (1, 0, 4), (9, 3, 4), (65_535, 7, 4), (65_536, 2**32 - 1, 4),  # 2**16: Grain's block is still 16 bits
    (70_000, 12, 4), (2**20, 9, 6), (1_000_003, 123_456, 4), (5, 2**31, 8),
])
def test_the_vectorised_shuffle_is_graines(max_index, seed, rounds):
    rng = np.random.default_rng(max_index)
    idx = np.arange(max_index + 1) if max_index < 70_001 else rng.choice(max_index + 1, 3000, replace=False)
    ref = [grain.experimental.index_shuffle(int(i), max_index=max_index, seed=seed, rounds=rounds) for i in idx]
    np.testing.assert_array_equal(index_shuffle(idx, max_index, seed, rounds), ref)
    # one seed per index (a batch that straddles two epochs)
    seeds = np.where(np.arange(len(idx)) % 3 == 0, seed, (seed + 1) % 2**32)
    ref = [grain.experimental.index_shuffle(int(i), max_index=max_index, seed=int(s), rounds=rounds)
           for i, s in zip(idx, seeds)]
    np.testing.assert_array_equal(index_shuffle(idx, max_index, seeds, rounds), ref)


def test_the_vectorised_shuffle_refuses_odd_rounds():
    with pytest.raises(ValueError, match="rounds"):
        index_shuffle(np.arange(3), 10, 0, rounds=3)


def test_the_index_stream_gives_the_train_streams_batches_and_state():
    """A split held on the devices (IndexStream) and a streamed one (TrainStream) see the same
    examples in the same order, and each resumes from the other's state."""
    n, batch_size, seed = 1000, 96, 3
    rows = {"i": np.arange(n)}
    streamed, indexed = TrainStream(rows, batch_size, seed, "v1"), IndexStream(n, batch_size, seed, "v1")
    for b in range(25):  # past two epochs
        np.testing.assert_array_equal(next(indexed), next(streamed)["i"], err_msg=f"batch {b}")
    assert indexed.get_state() == streamed.get_state()
    other = IndexStream(n, batch_size, seed, "v1")
    other.set_state(streamed.get_state())
    again = TrainStream(rows, batch_size, seed, "v1")
    again.set_state(indexed.get_state())
    for b in range(5):
        expected = next(streamed)["i"]
        np.testing.assert_array_equal(next(other), expected, err_msg=f"batch {b} after set_state")
        np.testing.assert_array_equal(next(again)["i"], expected, err_msg=f"batch {b} after set_state")
    with pytest.raises(CheckpointError, match="dataset version 'v1'.*'v2'"):
        IndexStream(n, batch_size, seed, "v2").set_state(indexed.get_state())
    with pytest.raises(ConfigError, match="'train.batch_size' = 96: larger than the training split"):
        IndexStream(50, batch_size, seed, "v1")
