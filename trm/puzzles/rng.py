"""Counter-based random numbers for augmentations: a pure function of (seed, epoch, example index).

Streaming readers apply augmentations on the fly, in any batch order and on any number of workers,
so an example's augmentation must not depend on which batch or process it lands in. A stateful
generator cannot give that cheaply; a hash of the keys can. We use the SplitMix64 finaliser
(vectorised over numpy uint64 arrays), which is enough for shuffling puzzles, not for cryptography.

    keys = example_keys(seed, epoch, index_B)      # uint64 [B], one stream per example
    bits = random_bits(keys, n, stream=3)          # uint64 [B, n], independent per stream id
    perm = random_permutations(keys, 9, stream=0)  # int64 [B, 9], a uniform permutation per row
"""

from __future__ import annotations

import numpy as np

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def _mix(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser: a bijective avalanche of uint64 values (wrapping arithmetic)."""
    x = np.asarray(x, dtype=np.uint64)
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * _M1
        x = (x ^ (x >> np.uint64(27))) * _M2
    return x ^ (x >> np.uint64(31))


def _as_u64(v) -> np.ndarray:
    # Negative seeds are allowed and wrap, as Python ints do modulo 2**64.
    return np.asarray(np.asarray(v, dtype=np.int64).astype(np.uint64), dtype=np.uint64)


def example_keys(seed: int, epoch: int, index) -> np.ndarray:
    """One uint64 key per example index; equal inputs give equal keys on every machine."""
    with np.errstate(over="ignore"):
        k = _mix(_as_u64(seed) + _GOLDEN)
        k = _mix(k ^ (_as_u64(epoch) * _M1 + _GOLDEN))
        return _mix(k ^ (_as_u64(index) * _M2 + _GOLDEN))


def random_bits(keys: np.ndarray, n: int, stream: int = 0) -> np.ndarray:
    """uint64 [*keys.shape, n]: n random words per key; different `stream` ids are independent."""
    keys = np.asarray(keys, dtype=np.uint64)
    with np.errstate(over="ignore"):
        base = _mix(keys ^ (_as_u64(stream) * _M1 + _M2))
        ctr = (np.arange(1, n + 1, dtype=np.uint64) * _GOLDEN)[(None,) * keys.ndim]
        return _mix(base[..., None] + ctr)


def random_uniform(keys: np.ndarray, n: int, stream: int = 0) -> np.ndarray:
    """float64 [*keys.shape, n] uniform in [0, 1)."""
    return (random_bits(keys, n, stream) >> np.uint64(11)).astype(np.float64) * (2.0**-53)


def random_ints(keys: np.ndarray, high, stream: int = 0) -> np.ndarray:
    """int64 [*keys.shape]: uniform integers in [0, high) (high may be an array, broadcast)."""
    u = random_uniform(keys, 1, stream)[..., 0]
    return np.minimum((u * np.asarray(high)).astype(np.int64), np.asarray(high) - 1)


def random_permutations(keys: np.ndarray, n: int, stream: int = 0) -> np.ndarray:
    """int64 [*keys.shape, n]: a uniformly random permutation of range(n) per key."""
    return np.argsort(random_bits(keys, n, stream), axis=-1, kind="stable")
