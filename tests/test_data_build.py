"""Generators and builders: determinism across worker counts, materialised augmentation."""

import numpy as np
import pytest

from pipeline.data import ShardStream, build_maze, build_sudoku, generate_sudoku
from trm.puzzles import maze as M
from trm.puzzles import sudoku as S


def test_generation_does_not_depend_on_the_number_of_workers():
    one = generate_sudoku(300, size=4, seed=5, workers=1)
    two = generate_sudoku(300, size=4, seed=5, workers=2)
    for a, b in zip(one, two):
        np.testing.assert_array_equal(a, b)
    q = one[0]
    assert len({row.tobytes() for row in q}) == 300  # distinct
    other = generate_sudoku(300, size=4, seed=6)[0]
    assert not np.array_equal(q, other)


def test_too_many_distinct_small_puzzles_is_a_clear_error():
    # With all 16 clues kept a 4x4 "puzzle" is a full grid: only 288 exist.
    with pytest.raises(ValueError, match=r"only 288 distinct 4x4 sudoku puzzles"):
        generate_sudoku(300, size=4, seed=0, min_clues=16)


def test_materialised_sudoku_copies_are_valid_and_grouped(tmp_path):
    meta = build_sudoku(str(tmp_path / "m"), size=4, num_train=20, num_test=5, seed=2, num_aug=3)
    assert meta.augmentation == {"mode": "materialised", "num_aug": 3}
    assert meta.splits["train"].num_rows == 80 and meta.splits["train"].num_groups == 20
    assert meta.splits["test"].num_rows == 5
    rows = [b for b in ShardStream(str(tmp_path / "m"), batch_size=80, shuffle=False, augment=True)]
    x, y = rows[0]["inputs"], rows[0]["labels"]
    assert len({r.tobytes() for r in x}) > 60  # copies differ from their originals
    for i in range(80):
        q, a = S.decode(x[i]), S.decode(y[i])
        assert S.solve(list(q), 4).solutions == [list(a)]
    # copy c of puzzle p sits at row c * 20 + p: same clue count as its original
    for p in range(20):
        counts = {int((x[c * 20 + p] > 1).sum()) for c in range(4)}
        assert len(counts) == 1


def test_materialised_maze_has_all_eight_transforms(tmp_path):
    meta = build_maze(str(tmp_path / "mz"), num_train=2, num_test=1, seed=0, min_path=40,
                      materialise=True)  # fmt: skip
    assert meta.splits["train"].num_rows == 16 and meta.augmentation["mode"] == "materialised"
    b = next(iter(ShardStream(str(tmp_path / "mz"), batch_size=16, shuffle=False)))
    for p in range(2):
        variants = {b["inputs"][t * 2 + p].tobytes() for t in range(8)}
        assert len(variants) == 8
        for t in range(8):
            assert M.is_shortest_path(b["inputs"][t * 2 + p], b["labels"][t * 2 + p])
    with pytest.raises(ValueError, match="wall_density"):
        build_maze(str(tmp_path / "bad"), wall_density=(0.6, 0.2))


def test_small_sudoku_test_puzzles_are_no_symmetry_of_a_training_one(tmp_path):
    # 4x4 puzzles with 10 clues fall into <800 symmetry classes: split by class, not by puzzle
    from pipeline.data.builders import generate_sudoku_split

    meta = build_sudoku(str(tmp_path / "s"), size=4, num_train=600, num_test=64, seed=1,
                        min_clues=10)  # fmt: skip
    assert meta.generator["params"]["holdout"] == {"by": "symmetry_class", "share": 0.2}
    b = {split: next(iter(ShardStream(str(tmp_path / "s"), split=split, batch_size=n,
                                      shuffle=False, augment=False)))["inputs"]
         for split, n in (("train", 600), ("test", 64))}  # fmt: skip
    digits = {k: np.where(v > 1, v - 1, 0) for k, v in b.items()}
    train = set(S.symmetry_class(digits["train"], 4))
    test = S.symmetry_class(digits["test"], 4)
    assert not train & set(test) and len(set(test)) > 10
    # same split for any number of workers
    one = generate_sudoku_split(200, 30, size=4, seed=3, min_clues=10, workers=1)
    two = generate_sudoku_split(200, 30, size=4, seed=3, min_clues=10, workers=2)
    for a, c in zip(one[0] + one[1], two[0] + two[1]):
        np.testing.assert_array_equal(a, c)
    with pytest.raises(ValueError, match="holdout_share"):
        generate_sudoku_split(10, 2, size=4, holdout_share=1.0)
