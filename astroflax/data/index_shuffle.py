"""Grain's ``index_shuffle``, vectorised over many indices with numpy.

Why written here: Grain exposes its random-access shuffle (a Simon block cipher with cycle
walking, keys from ``std::seed_seq``; ``grain/_src/python/experimental/index_shuffle/
index_shuffle.cc``) only for one index at a time. A training batch needs one call per example:
5.8 us each from Python, 0.75 ms for a photoz batch of 128, longer than the photoz step itself.
This computes the same permutation for a whole batch in 0.15 ms. It must stay bit-identical to
Grain's (the order of every run and the meaning of saved iterator states depend on it):
``tests/test_train_stream.py`` compares the two over block sizes, seeds and epochs.
"""

from __future__ import annotations

import functools
import math

import numpy as np

_MASK32 = 0xFFFFFFFF
_MIN_BLOCK_BITS = 16  # Grain's kMinBlockSize


def _seed_seq(seed: int, n: int) -> list[int]:
    """``std::seed_seq{seed}.generate`` of ``n`` 32-bit words ([rand.util.seedseq] of C++11)."""
    v, s = [seed & _MASK32], 1
    b = [0x8B8B8B8B] * n
    t = 11 if n >= 623 else 7 if n >= 68 else 5 if n >= 39 else 3 if n >= 7 else (n - 1) // 2
    p = (n - t) // 2
    q = p + t
    m = max(s + 1, n)

    def mix(x: int) -> int:
        return (x ^ (x >> 27)) & _MASK32

    for k in range(m):
        r1 = (1664525 * mix(b[k % n] ^ b[(k + p) % n] ^ b[(k - 1) % n])) & _MASK32
        r2 = (r1 + (s if k == 0 else (k % n + v[k - 1] if k <= s else k % n))) & _MASK32
        b[(k + p) % n] = (b[(k + p) % n] + r1) & _MASK32
        b[(k + q) % n] = (b[(k + q) % n] + r2) & _MASK32
        b[k % n] = r2
    for k in range(m, m + n):
        r3 = (1566083941 * mix((b[k % n] + b[(k + p) % n] + b[(k - 1) % n]) & _MASK32)) & _MASK32
        r4 = (r3 - (k % n)) & _MASK32
        b[(k + p) % n] ^= r3
        b[(k + q) % n] ^= r4
        b[k % n] = r4
    return b


@functools.lru_cache(maxsize=64)
def _round_keys(seed: int, rounds: int, word_mask: int) -> tuple[int, ...]:
    return tuple(k & word_mask for k in _seed_seq(seed, rounds))


def _word_bits(max_index: int) -> int:
    """Half of Grain's block size: ceil(log2(max_index)) rounded up to even, at least 16."""
    bits = int(math.ceil(float(np.log2(np.float64(max_index)))))  # C's log2 on a double, as Grain
    return max(bits + bits % 2, _MIN_BLOCK_BITS) // 2


def index_shuffle(index: np.ndarray, max_index: int, seed: np.ndarray | int, rounds: int = 4) -> np.ndarray:
    """Position of each ``index`` in the permutation of ``[0, max_index]`` that Grain's
    ``index_shuffle(index, max_index=max_index, seed=seed, rounds=rounds)`` gives; ``seed`` may
    differ per index (32-bit values)."""
    index = np.asarray(index, np.uint64)
    if max_index == 0:
        return np.zeros_like(index)
    if rounds < 4 or rounds % 2:
        raise ValueError(f"rounds must be an even number >= 4, got {rounds}")
    w = _word_bits(max_index)
    mask, shift = np.uint64((1 << w) - 1), np.uint64(w)
    seeds = np.broadcast_to(np.asarray(seed, np.int64), index.shape)
    distinct = np.unique(seeds)
    if len(distinct) == 1:
        keys: list = [np.uint64(k) for k in _round_keys(int(distinct[0]), rounds, (1 << w) - 1)]
    else:  # a batch that straddles two epochs
        keys = [np.zeros(index.shape, np.uint64) for _ in range(rounds)]
        for s in distinct:
            for r, k in enumerate(_round_keys(int(s), rounds, (1 << w) - 1)):
                keys[r][seeds == s] = k
    one, two, eight = np.uint64(1), np.uint64(2), np.uint64(8)
    back1, back2, back8 = np.uint64(w - 1), np.uint64(w - 2), np.uint64(w - 8)

    def f(x: np.ndarray) -> np.ndarray:  # Simon's round function: (x <<< 1 & x <<< 8) ^ x <<< 2
        return ((((x << one) | (x >> back1)) & ((x << eight) | (x >> back8))) ^ ((x << two) | (x >> back2))) & mask

    # Cycle walking: values that land above max_index are encrypted again, and only those (with
    # n far below the 2**16 minimum block, most do: 44 rounds of walking for a batch of 128 when
    # n = 6,988, so each round works on what is left).
    value = index.copy()
    todo = np.arange(index.size)
    flat = value.reshape(-1)
    while todo.size:
        x = flat[todo]
        k = [key if np.ndim(key) == 0 else key.reshape(-1)[todo] for key in keys]
        left, right = (x >> shift) & mask, x & mask
        for r in range(0, rounds, 2):
            left = left ^ f(right) ^ k[r]
            right = right ^ f(left) ^ k[r + 1]
        x = (left << shift) | right
        flat[todo] = x
        todo = todo[x > np.uint64(max_index)]
    return value
