"""The training stream's batch order (astroflax/data/pipeline.py): Grain's, computed directly."""

from __future__ import annotations

import grain
import numpy as np
import pytest

from astroflax.data.pipeline import BatchIndices, TrainStream


def grain_batches(n: int, batch_size: int, seed: int):
    """The pipeline TrainStream used before: Grain's shuffle, repeat and batch of indices."""
    return grain.MapDataset.range(n).shuffle(seed=seed).repeat(None).batch(batch_size, drop_remainder=True)


@pytest.mark.parametrize(("n", "batch_size", "seed"), [
    (10, 4, 3),  # batches straddle epochs
    (1000, 128, 0),
    (70_001, 256, 7),  # a block size above the cipher's minimum (16 bits)
    (50, 50, 2**32 - 2),  # per-epoch seeds wrap around 2**32
    (1, 1, 5),
])
def test_batches_are_graines_for_many_epochs(n, batch_size, seed):
    reference, ours = grain_batches(n, batch_size, seed), BatchIndices(n, batch_size, seed)
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
