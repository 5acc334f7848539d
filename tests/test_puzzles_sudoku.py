"""Sudoku encoding, solver, generator and augmentation (trm/puzzles/sudoku.py)."""

import numpy as np
import pytest

from trm.puzzles import sudoku as S
from trm.puzzles.rng import example_keys

# A widely published "hardest sudoku" (A. Inkala, 2012) and its solution; '.' = blank.
Q17 = "8..........36......7..9.2...5...7.......457.....1...3...1....68..85...1..9....4.."
A17 = "812753649943682175675491283154237896369845721287169534521974368438526917796318452"


def _consistent(q, a, n):
    """Question clues sit where the answer has the same digit, and the answer is a solution."""
    return S.is_solution(a, n) and all(int(x) in (0, int(y)) for x, y in zip(q, a))


def test_solver_on_a_known_hard_puzzle():
    q = S.parse_board(Q17)
    res = S.solve(list(q))
    assert res.unique
    assert S.format_board(res.solutions[0]) == A17
    assert res.guesses >= 10  # needs real search, unlike easy puzzles (rating 0)


def test_solver_ambiguous_and_contradictory():
    assert len(S.solve([0] * 81, limit=2).solutions) == 2
    bad = list(S.parse_board(Q17))
    bad[0] = bad[1] = 9  # two 9s in row 0
    assert S.solve(bad).solutions == []
    with pytest.raises(ValueError, match="2 solution"):
        S.rating([0] * 16, n=4)
    with pytest.raises(ValueError, match=r"digits must be 1\.\.4"):
        S.solve([5] + [0] * 15, n=4)


@pytest.mark.parametrize("n", [4, 6, 9])
def test_generated_puzzles_are_valid_unique_and_minimal(n):
    rng = np.random.default_rng(n)
    for _ in range(5 if n == 9 else 20):
        q, a, r = S.generate(rng, n)
        assert _consistent(q, a, n)
        res = S.solve(q, n)
        assert res.unique and res.solutions[0] == a and res.guesses == r
        # Minimal: removing any clue makes the puzzle ambiguous.
        for c in [i for i, v in enumerate(q) if v][:6]:
            q2 = list(q)
            q2[c] = 0
            assert not S.solve(q2, n).unique


def test_generator_difficulty_controls():
    rng = np.random.default_rng(0)
    q, _, _ = S.generate(rng, 9, min_clues=40)
    assert sum(1 for v in q if v) >= 40
    q, _, r = S.generate(rng, 9, min_rating=2)
    assert r >= 2 and S.rating(q) == r
    with pytest.raises(ValueError, match="min_clues"):
        S.generate(rng, 4, min_clues=99)


def test_box_shapes():
    assert S.box_shape(9) == (3, 3) and S.box_shape(6) == (2, 3) and S.box_shape(4) == (2, 2)
    with pytest.raises(ValueError, match="size 7"):
        S.box_shape(7)


def test_encoding_matches_official_tokens():
    q = S.parse_board(Q17)
    x = S.encode(q)
    assert x.dtype == np.uint8 and x.min() == 1 and x.max() == 10  # blank 1, digits 2..10
    assert (x == 1).sum() == 81 - 21
    np.testing.assert_array_equal(S.decode(x), q)
    assert S.geometry(9).vocab_size == 11
    with pytest.raises(ValueError, match="position 3"):
        S.parse_board("...x" + "." * 77)
    with pytest.raises(ValueError, match="expected 81"):
        S.parse_board("123")


@pytest.mark.parametrize("n", [4, 6, 9])
def test_every_augmented_puzzle_is_valid_and_uniquely_solvable(n):
    rng = np.random.default_rng(1)
    puzzles = [S.generate(rng, n) for _ in range(3)]
    x = np.stack([S.encode(q) for q, _, _ in puzzles])
    y = np.stack([S.encode(a) for _, a, _ in puzzles])
    B = 40
    reps = np.repeat(np.arange(len(puzzles)), B // len(puzzles) + 1)[:B]
    xa, ya = S.augment(x[reps], y[reps], example_keys(7, 0, np.arange(B)), n=n)
    assert xa.dtype == x.dtype and xa.shape == (B, n * n)
    distinct = {xa[i].tobytes() for i in range(B)}
    assert len(distinct) > B // 2  # the maps really vary
    for i in range(B):
        q, a = S.decode(xa[i]), S.decode(ya[i])
        assert _consistent(q, a, n), f"row {i} broken"
        assert (q > 0).sum() == (x[reps[i]] > 1).sum()  # clue count preserved
        res = S.solve(list(q), n)
        assert res.unique and res.solutions[0] == list(a)


def test_augment_is_a_function_of_the_key():
    q, a, _ = S.generate(np.random.default_rng(3), 9)
    x, y = S.encode(q)[None].repeat(4, 0), S.encode(a)[None].repeat(4, 0)
    keys = example_keys(1, 2, np.array([5, 6, 5, 7]))
    xa, _ = S.augment(x, y, keys)
    np.testing.assert_array_equal(xa[0], xa[2])
    assert not np.array_equal(xa[0], xa[1])
    xb, _ = S.augment(x[:1], y[:1], keys[:1])  # batch composition does not matter
    np.testing.assert_array_equal(xb[0], xa[0])


@pytest.mark.parametrize("n", [4, 6])
def test_symmetry_class_is_shared_by_augmented_copies_only(n):
    from trm.puzzles.rng import example_keys

    rng = np.random.default_rng(0)
    q = np.array([S.generate(rng, n=n, min_clues=n * n // 2)[0] for _ in range(40)], np.int8)
    keys = S.symmetry_class(q, n)
    x = S.encode(q)
    for epoch in range(3):  # any symmetry augment draws keeps the class
        xa, _ = S.augment(x, x, example_keys(9, epoch, np.arange(len(x))), n=n)
        assert S.symmetry_class(np.where(xa > 1, xa - 1, 0), n) == keys
    assert len(S.cell_symmetries(n)) == {4: 128, 6: 3456}[n]
    assert S.symmetry_class(q[:1], 9) is None and S.cell_symmetries(9) is None


def test_symmetry_class_equality_is_equivalence_under_the_group():
    """4x4, brute force: two puzzles share a key exactly when some cell symmetry and digit
    relabelling maps one onto the other."""
    import itertools

    rng = np.random.default_rng(1)
    q = np.array([S.generate(rng, n=4, min_clues=10)[0] for _ in range(30)], np.int8)
    q = np.concatenate([q, q[:5, S.cell_symmetries(4)[77]]])  # some certainly equivalent
    keys = S.symmetry_class(q, 4)
    maps = S.cell_symmetries(4)
    relabels = [np.array((0, *p), np.int8) for p in itertools.permutations(range(1, 5))]
    for i, j in itertools.combinations(range(len(q)), 2):
        images = {relabel[q[i][m]].tobytes() for m in maps for relabel in relabels}
        assert (q[j].tobytes() in images) == (keys[i] == keys[j]), (i, j)
    assert keys[30:] == keys[:5]
