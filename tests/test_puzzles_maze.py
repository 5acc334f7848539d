"""Maze encoding, shortest-path labels, generator and dihedral augmentation (trm/puzzles/maze.py)."""

import numpy as np
import pytest

from trm.puzzles import maze as M
from trm.puzzles.rng import example_keys

SMALL = (
    "S  #"
    " # #"
    " #  "
    "   G"
)  # fmt: skip


def test_encoding_matches_official_charset():
    x = M.encode(SMALL)
    assert x.tolist()[:4] == [3, 2, 2, 1] and M.VOCAB_SIZE == 6
    assert M.decode(x) == SMALL
    with pytest.raises(ValueError, match=r"'x' at position 2"):
        M.encode("S x#")


def test_solve_labels_a_shortest_path():
    ans, length = M.solve(M.encode(SMALL))
    assert length == 6
    assert M.decode(ans) == "S  #o# #o#  oooG"
    assert M.is_shortest_path(M.encode(SMALL), ans)
    # Another path of the same length is accepted; a longer or broken one is not.
    other = M.encode("Soo#" + " #o#" + " #oo" + "   G")
    assert M.is_shortest_path(M.encode(SMALL), other)
    assert not M.is_shortest_path(M.encode(SMALL), M.encode("S  #o# #o#  oo G"))
    with pytest.raises(ValueError, match="cannot be reached"):
        M.solve(M.encode("S# " + "## " + "  G"))


def test_generated_mazes_are_hard_and_labelled_with_shortest_paths():
    rng = np.random.default_rng(0)
    for _ in range(3):
        q, a, length = M.generate(rng, side=30, min_path=60)
        assert length > 60 and q.shape == (900,)
        assert (q == M.START).sum() == 1 and (q == M.GOAL).sum() == 1 and not (q == M.PATH).any()
        assert M.is_shortest_path(q, a)
        free, s, g = M._parts(q)
        assert M.distances(free, s)[g] == length == (a == M.PATH).sum() + 1


def test_dihedral_matches_numpy_and_inverts():
    g = np.arange(16).reshape(4, 4)
    expect = [g, np.rot90(g), np.rot90(g, 2), np.rot90(g, 3), np.fliplr(g), np.flipud(g), g.T,
              np.fliplr(np.rot90(g))]  # fmt: skip
    for t in range(8):
        np.testing.assert_array_equal(M.dihedral_one(g, t), expect[t])
        np.testing.assert_array_equal(M.dihedral_one(M.dihedral_one(g, t), M.INVERSE[t]), g)


def test_augmented_mazes_keep_shortest_path_labels():
    rng = np.random.default_rng(1)
    q, a, _ = M.generate(rng, side=30, min_path=40)
    B = 16
    xa, ya = M.augment(np.repeat(q[None], B, 0), np.repeat(a[None], B, 0),
                       example_keys(3, 0, np.arange(B)))  # fmt: skip
    assert len({r.tobytes() for r in xa}) > 4  # several of the 8 transforms drawn
    for i in range(B):
        assert M.is_shortest_path(xa[i], ya[i])
