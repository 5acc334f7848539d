"""ARC canvas encoding (exact round trip), variants and vectorised augmentation (trm/puzzles/arc.py)."""

import numpy as np
import pytest

from trm.puzzles import arc as A
from trm.puzzles.maze import dihedral_one
from trm.puzzles.rng import example_keys


def _grids(rng, n):
    return [rng.integers(0, 10, tuple(rng.integers(1, 31, 2))).astype(np.uint8) for _ in range(n)]


def test_encoding_layout_matches_official():
    g = np.array([[0, 1, 2], [3, 4, 5]], np.uint8)
    c = A.encode(g, (1, 2)).reshape(30, 30)
    np.testing.assert_array_equal(c[1:3, 2:5], g + 2)
    assert (c[3, 2:5] == A.EOS).all() and (c[1:3, 5] == A.EOS).all()
    assert c[3, 5] == A.PAD and c.sum() == (g + 2).sum() + 5  # EOS corner left as PAD
    full = A.encode(np.ones((30, 30), np.uint8))
    assert (full == 3).all()  # no room for EOS: none written


def test_round_trip_is_exact_at_any_offset():
    rng = np.random.default_rng(0)
    for g in _grids(rng, 200):
        off = (int(rng.integers(0, 31 - g.shape[0])), int(rng.integers(0, 31 - g.shape[1])))
        s = A.encode(g, off)
        np.testing.assert_array_equal(A.decode(s), g)
        if off == (0, 0):
            np.testing.assert_array_equal(A.crop(s), g)
    with pytest.raises(ValueError, match="exceeds 30x30"):
        A.check_grid([[0] * 31])
    with pytest.raises(ValueError, match=r"colours must be 0\.\.9"):
        A.check_grid([[0, 10]])
    with pytest.raises(ValueError, match="equal lengths"):
        A.check_grid([[0, 1], [2]])


def test_crop_of_any_prediction_follows_the_row_by_row_rule():
    """Predictions are arbitrary token canvases: the crop grows row by row from the top-left,
    each row narrowing the width to its leading colour run, and keeps the largest area."""

    def by_rows(g):
        best, size, width = 0, (0, 0), 30
        for rows in range(1, 31):
            run = np.flatnonzero((g[rows - 1] < 2) | (g[rows - 1] > 11))
            width = min(width, int(run[0]) if len(run) else 30)
            if rows * width > best:
                best, size = rows * width, (rows, width)
        return size

    rng = np.random.default_rng(1)
    canvases = [np.zeros((30, 30), np.int64), np.full((30, 30), 5)]
    for p_bad in (0.002, 0.02, 0.2):
        canvases += list(np.where(rng.random((60, 30, 30)) < p_bad, rng.integers(0, 2, (60, 30, 30)),
                                  rng.integers(2, 12, (60, 30, 30))))  # fmt: skip
    h, w = A.crop_shapes(np.stack(canvases).reshape(len(canvases), 900))
    assert [by_rows(c) for c in canvases] == list(zip(h.tolist(), w.tolist()))
    assert (h[0], w[0]) == (0, 0) and A.crop(canvases[0]).shape == (0, 0)
    assert len({(a, b) for a, b in zip(h, w)}) > 20  # many different shapes exercised


def test_variants_are_fixed_per_task_and_invertible():
    tid, cmap = A.variant(5, 0, aug_seed=1)
    assert tid == 0 and cmap.tolist() == list(range(10))
    t1, c1 = A.variant([5, 5, 6], [3, 3, 3], aug_seed=1)
    assert t1[0] == t1[1] and (c1[0] == c1[1]).all() and c1[:, 0].tolist() == [0, 0, 0]
    assert sorted(c1[2].tolist()) == list(range(10))
    g = _grids(np.random.default_rng(1), 1)[0]
    for t in range(8):
        cm = np.r_[0, np.random.default_rng(t).permutation(9) + 1].astype(np.uint8)
        np.testing.assert_array_equal(A.inverse(A.apply(g, t, cm), t, cm), g)
        np.testing.assert_array_equal(A.apply(g, t, cm), dihedral_one(cm[g], t))


def test_pool_identifiers_number_the_distinct_variants_in_sequence():
    pools = A.Pools([[0, 3, 4], [0], [0, 1, 5, 9]])
    assert pools.first.tolist() == [1, 4, 5] and pools.num_identifiers == 1 + 3 + 1 + 4
    base, j = np.repeat([0, 1, 2], [3, 1, 4]), np.r_[0:3, 0, 0:4]
    pid = pools.identifier(base, j)
    assert pid.tolist() == list(range(1, 9))  # every distinct variant, no gaps
    b2, j2 = pools.split(pid)
    assert b2.tolist() == base.tolist() and j2.tolist() == j.tolist()
    with pytest.raises(ValueError, match="past the task's pool"):
        pools.identifier(1, 1)
    with pytest.raises(ValueError, match=r"1\.\.8"):
        pools.split([9])
    with pytest.raises(ValueError, match="original"):
        A.Pools([[0, 2], [5]])


def test_vectorised_augment_equals_the_per_grid_reference():
    rng = np.random.default_rng(2)
    B = 120
    gi, go = _grids(rng, B), _grids(rng, B)
    x = np.stack([A.encode(g) for g in gi])
    y = np.stack([A.encode(g) for g in go])
    base = rng.integers(0, 50, B)
    pools = A.Pools([list(range(11))] * 50)  # pool index j = draw j
    pid = pools.identifier(base, 0)
    keys = example_keys(0, 3, np.arange(B))
    xa, ya, pa = A.augment(x, y, pid, keys, pools, aug_seed=4)
    b2, k = pools.split(pa)
    np.testing.assert_array_equal(b2, base)
    assert len(set(k.tolist())) > 5
    for i in range(B):
        tid, cmap = A.variant(base[i], k[i], 4)
        np.testing.assert_array_equal(A.decode(xa[i]), A.apply(gi[i], tid, cmap))
        np.testing.assert_array_equal(A.decode(ya[i]), A.apply(go[i], tid, cmap))
        # Input and output share one offset.
        ri, ci = np.argwhere(xa[i].reshape(30, 30) >= 2).min(0)
        ro, co = np.argwhere(ya[i].reshape(30, 30) >= 2).min(0)
        assert (ri, ci) == (ro, co)
    xb, _, pb = A.augment(x[:7], y[:7], pid[:7], keys[:7], pools, aug_seed=4)
    np.testing.assert_array_equal(xb, xa[:7])  # per-row function of the key
    np.testing.assert_array_equal(pb, pa[:7])
    x0, _, _ = A.augment(x, y, pid, keys, pools, aug_seed=4, translate=False)
    assert all(x0[i].reshape(30, 30)[0, 0] >= 2 for i in range(B))
    with pytest.raises(ValueError, match="variant 0"):
        A.augment(x[:1], y[:1], pid[:1] + 1, keys[:1], pools, aug_seed=4)
