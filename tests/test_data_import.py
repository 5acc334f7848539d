"""CSV importers (official sudoku-extreme / maze-hard layout) and their row-level errors."""

import csv

import numpy as np
import pytest

from pipeline.data import InputError, ShardStream, import_csv
from trm.puzzles import maze as M
from trm.puzzles import sudoku as S

HEADER = ["source", "question", "answer", "rating"]


def _write(path, rows, header=HEADER):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return str(path)


@pytest.fixture(scope="module")
def sudoku_rows():
    rng = np.random.default_rng(0)
    out = []
    for i in range(30):
        q, a, r = S.generate(rng, 9, min_clues=30 if i % 2 else 0)
        out.append(["gen", S.format_board(q), S.format_board(a), str(r)])
    return out


def test_sudoku_import_subsample_and_difficulty(sudoku_rows, tmp_path):
    train = _write(tmp_path / "train.csv", sudoku_rows[:24])
    test = _write(tmp_path / "test.csv", sudoku_rows[24:])
    meta = import_csv(str(tmp_path / "d"), "sudoku", train, test, subsample=10, seed=1)
    assert meta.splits["train"].num_rows == 10 and meta.splits["test"].num_rows == 6
    assert (meta.seq_len, meta.vocab_size) == (81, 11)
    wanted = {r[1] for r in sudoku_rows[:24]}
    for b in ShardStream(str(tmp_path / "d"), batch_size=5, shuffle=False, augment=False):
        for x, y in zip(b["inputs"], b["labels"]):
            assert S.format_board(S.decode(x)) in wanted
            assert S.is_solution(S.decode(y).tolist())
    hard = sum(int(r[3]) >= 2 for r in sudoku_rows[:24])
    meta = import_csv(str(tmp_path / "h"), "sudoku", train, min_difficulty=2)
    assert meta.splits["train"].num_rows == hard and meta.splits["test"].num_rows == 0


def _bad(row, field, value):
    row = list(row)
    row[field] = value
    return row


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda r: r[:3], r"line 4: expected 4 fields"),
        (lambda r: _bad(r, 3, "hard"), r"line 4: rating 'hard' is not an integer"),
        (lambda r: _bad(r, 1, r[1][:80]), r"line 4: question: expected 81 characters"),
        (lambda r: _bad(r, 1, "x" + r[1][1:]), r"line 4: question: character 'x' at position 0"),
        (lambda r: _bad(r, 2, r[2][1:] + r[2][0]), r"line 4: answer is not a valid solution"),
    ],
)
def test_sudoku_malformed_rows_name_line_and_problem(sudoku_rows, tmp_path, mutate, message):
    rows = [*sudoku_rows[:2], mutate(sudoku_rows[2]), *sudoku_rows[3:6]]
    path = _write(tmp_path / "bad.csv", rows)
    with pytest.raises(InputError, match=rf"bad.csv, {message}"):
        import_csv(str(tmp_path / "out"), "sudoku", path)
    assert not (tmp_path / "out" / "meta.json").exists()


def test_sudoku_unsolvable_and_ambiguous_rows(sudoku_rows, tmp_path):
    q, a = sudoku_rows[0][1], sudoku_rows[0][2]
    # A clue that contradicts the answer: the question is not solved by it.
    c = next(i for i, ch in enumerate(q) if ch != ".")
    wrong = q[:c] + str(int(q[c]) % 9 + 1) + q[c + 1 :]
    path = _write(tmp_path / "u.csv", [sudoku_rows[1], ["s", wrong, a, "0"]])
    with pytest.raises(InputError, match=r"line 3: answer does not solve the question \(cell"):
        import_csv(str(tmp_path / "o1"), "sudoku", path)
    # Too few clues: several solutions.
    sparse = "".join(ch if i < 20 else "." for i, ch in enumerate(a))
    path = _write(tmp_path / "a.csv", [["s", sparse, a, "0"]])
    with pytest.raises(InputError, match=r"line 2: puzzle is ambiguous"):
        import_csv(str(tmp_path / "o2"), "sudoku", path)
    import_csv(str(tmp_path / "o3"), "sudoku", path, check_unique=False)  # the user's choice


def test_bad_header_and_empty_file(tmp_path):
    with pytest.raises(InputError, match=r"line 1: header \['q', 'a'\] is not"):
        import_csv(str(tmp_path / "o"), "sudoku", _write(tmp_path / "h.csv", [], header=["q", "a"]))
    (tmp_path / "e.csv").write_text("")
    with pytest.raises(InputError, match="file is empty"):
        import_csv(str(tmp_path / "o"), "sudoku", str(tmp_path / "e.csv"))
    with pytest.raises(InputError, match="file not found"):
        import_csv(str(tmp_path / "o"), "sudoku", str(tmp_path / "missing.csv"))


@pytest.fixture(scope="module")
def maze_rows():
    rng = np.random.default_rng(0)
    rows = []
    for _ in range(4):
        q, a, n = M.generate(rng, side=30, min_path=50)
        rows.append(["gen", M.decode(q), M.decode(a), str(n)])
    return rows


def test_maze_import_and_errors(maze_rows, tmp_path):
    meta = import_csv(str(tmp_path / "m"), "maze", _write(tmp_path / "t.csv", maze_rows),
                      num_aug=1)  # fmt: skip
    assert meta.splits["train"].num_rows == 4 * 8 and meta.augmentation["mode"] == "materialised"
    for b in ShardStream(str(tmp_path / "m"), batch_size=8, shuffle=False):
        for x, y in zip(b["inputs"], b["labels"]):
            assert M.is_shortest_path(x, y)
    q, a = maze_rows[0][1], maze_rows[0][2]
    # Remove one path mark: no longer a path.
    k = a.index("o")
    broken = a[:k] + " " + a[k + 1 :]
    cases = [
        (["m", q, broken, "0"], r"line 2: answer is not a shortest S->G path"),
        (["m", q.replace("G", " "), a, "0"], r"line 2: .*exactly one S and one G"),
        (["m", q[:-1] + "?", a, "0"], r"line 2: question: character '\?' at position 899"),
        (["m", q[:899], a[:899], "0"], r"line 2: question: a maze must be square"),
    ]
    for row, message in cases:
        with pytest.raises(InputError, match=message):
            import_csv(str(tmp_path / "bad"), "maze", _write(tmp_path / "b.csv", [row]))
    walled = list(q)
    g = q.index("G")
    for nb in (g - 30, g + 30, g - 1, g + 1):
        if 0 <= nb < 900 and walled[nb] in " ":
            walled[nb] = "#"
    row = ["m", "".join(walled), a, "0"]
    with pytest.raises(InputError, match=r"line 3: unsolvable maze|line 3: answer"):
        import_csv(str(tmp_path / "bad"), "maze", _write(tmp_path / "w.csv", [maze_rows[1], row]))


def test_row_errors_cross_worker_processes(sudoku_rows, tmp_path):
    rows = [*sudoku_rows[:5], _bad(sudoku_rows[5], 1, "x" + sudoku_rows[5][1][1:])]
    path = _write(tmp_path / "bad.csv", rows)
    with pytest.raises(InputError, match=r"bad.csv, line 7: question: character 'x'"):
        import_csv(str(tmp_path / "out"), "sudoku", path, workers=2)
