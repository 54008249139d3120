"""Stratified splits by example (object), reproducible from a seed."""

from __future__ import annotations

import numpy as np

SPLIT_NAMES = ("train", "val", "test")


def stratified_split_codes(labels: np.ndarray, val: float = 0.1, test: float = 0.2, seed: int = 0) -> np.ndarray:
    """uint8 codes per example: 0 train, 1 val, 2 test.

    One generator for the whole call, classes in ascending order; within a class the members
    are permuted, the first ``max(1, round(val*n))`` go to val, the next ``max(1,
    round(test*n))`` to test, the rest to train, so every class reaches every split.
    """
    rng = np.random.default_rng(seed)
    codes = np.zeros(len(labels), dtype=np.uint8)
    for cls in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == cls))
        n_val = max(1, round(val * len(idx)))
        n_test = max(1, round(test * len(idx)))
        codes[idx[:n_val]] = 1
        codes[idx[n_val:n_val + n_test]] = 2
    return codes


def indices_from_codes(codes: np.ndarray) -> dict[str, np.ndarray]:
    return {name: np.flatnonzero(codes == i) for i, name in enumerate(SPLIT_NAMES)}


def stratified_split(labels: np.ndarray, val: float = 0.1, test: float = 0.2, seed: int = 0) -> dict[str, np.ndarray]:
    return indices_from_codes(stratified_split_codes(labels, val, test, seed))
