"""Counter-based randomness (trm/puzzles/rng.py): deterministic, independent streams, uniform."""

import numpy as np

from trm.puzzles.rng import example_keys, random_ints, random_permutations, random_uniform


def test_keys_are_pure_functions_of_their_inputs():
    a = example_keys(3, 1, np.arange(1000))
    np.testing.assert_array_equal(a, example_keys(3, 1, np.arange(1000)))
    np.testing.assert_array_equal(a[[7, 9]], example_keys(3, 1, np.array([7, 9])))
    assert len(np.unique(a)) == 1000
    for other in (example_keys(4, 1, np.arange(1000)), example_keys(3, 2, np.arange(1000))):
        assert (other != a).all()
    assert example_keys(-1, 0, np.array([0])).dtype == np.uint64


def test_permutations_are_valid_and_uniform():
    keys = example_keys(0, 0, np.arange(60_000))
    p = random_permutations(keys, 3)
    assert (np.sort(p, axis=1) == np.arange(3)).all()
    counts = np.unique(p @ np.array([9, 3, 1]), return_counts=True)[1]
    assert len(counts) == 6 and counts.min() > 9_500 and counts.max() < 10_500  # 6 perms, ~10k each
    other = random_permutations(keys, 3, stream=1)
    assert (p != other).any(axis=1).mean() > 0.8  # streams are independent draws


def test_uniform_and_ints():
    keys = example_keys(1, 2, np.arange(100_000))
    u = random_uniform(keys, 2)
    assert u.min() >= 0 and u.max() < 1 and abs(u.mean() - 0.5) < 0.01
    assert abs(np.corrcoef(u[:, 0], u[:, 1])[0, 1]) < 0.02
    r = random_ints(keys, np.full(100_000, 7))
    assert r.min() == 0 and r.max() == 6 and np.bincount(r).min() > 13_500
