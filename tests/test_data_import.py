"""CSV importers (official sudoku-extreme / maze-hard layout) and their row-level errors."""

import csv
import math

import numpy as np
import pytest

from pipeline.data import InputError, ShardStream, build_sudoku, import_csv, verify_dataset
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
        (
            lambda r: _bad(r, 1, r[1][:80]),
            r"line 4: question: expected 16 \(4x4\), 36 \(6x6\) or 81 \(9x9\) characters, got 80",
        ),
        (lambda r: _bad(r, 1, "x" + r[1][1:]), r"line 4: question: character 'x' at position 0"),
        (
            lambda r: _bad(r, 2, r[2][1:] + r[2][0]),
            r"line 4: answer is not a valid solution: row 1 repeats a digit",
        ),
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


# --------------------------------------------------------------------------- 4x4 / 6x6 / 9x9


def _sudoku_csv(path, n, count, seed):
    """`count` puzzles of side n from the project's generator, as an official-format CSV."""
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(count):
        q, a, r = S.generate(rng, n, min_clues=30 if n == 9 else 0)
        rows.append(["gen", S.format_board(q), S.format_board(a), str(r)])
    return _write(path, rows), rows


@pytest.mark.parametrize("n, box", [(4, [2, 2]), (6, [2, 3]), (9, [3, 3])])
def test_sudoku_import_of_each_size_matches_the_generator(tmp_path, n, box):
    train, rows = _sudoku_csv(tmp_path / "train.csv", n, 6, seed=n)
    test, _ = _sudoku_csv(tmp_path / "test.csv", n, 2, seed=100 + n)
    meta = import_csv(str(tmp_path / "d"), "sudoku", train, test)
    generated = build_sudoku(
        str(tmp_path / "g"), size=n, num_train=4, num_test=4, min_clues=n * n // 2
    )
    for field in ("task", "seq_len", "vocab_size", "pad_id", "ignore_label_id"):
        assert getattr(meta, field) == getattr(generated, field), field
    assert meta.encoding == generated.encoding and meta.encoding["box"] == box
    assert (meta.seq_len, meta.vocab_size) == (n * n, n + 2)
    assert meta.splits["train"].num_rows == 6 and meta.splits["test"].num_rows == 2
    plain = ShardStream(str(tmp_path / "d"), batch_size=6, shuffle=False, augment=False)
    b = next(iter(plain))
    assert [S.format_board(S.decode(x)) for x in b["inputs"]] == [r[1] for r in rows]
    # the streaming augmentation (digit, band and stack shuffles for this size) keeps puzzles
    # valid: each label solves the shuffled question and obeys the rule for its boxes
    shuffled = 0
    for epoch in range(2):
        for b in ShardStream(str(tmp_path / "d"), batch_size=3, seed=1, epoch=epoch):
            for x, y in zip(S.decode(b["inputs"]), S.decode(b["labels"])):
                assert S.is_solution(y.tolist(), n) and ((x == 0) | (x == y)).all()
                shuffled += S.format_board(x) not in {r[1] for r in rows}
    assert shuffled > 0


def test_imported_4x4_sudoku_trains(tmp_path):
    from test_train import tiny_cfg

    from pipeline.train import run_info
    from pipeline.training.worker import LocalCheckpoints, run_in_process

    train, _ = _sudoku_csv(tmp_path / "train.csv", 4, 32, seed=0)
    test, _ = _sudoku_csv(tmp_path / "test.csv", 4, 8, seed=1)
    uri = str(tmp_path / "d")
    import_csv(uri, "sudoku", train, test)
    cfg = tiny_cfg(uri, tmp_path, "schedule.steps=2", "eval.every=2", "checkpoint.every=2")
    report = LocalCheckpoints(tmp_path / "runs" / "imp")
    run_in_process(cfg, run_info(cfg, "imp", str(tmp_path / "runs")), report=report)
    assert [m["step"] for m in report.history] == [1, 2]
    assert all(math.isfinite(m["train/loss"]) for m in report.history)


def _row(n, seed=0):
    q, a, _ = S.generate(np.random.default_rng(seed), n)
    return S.format_board(q), S.format_board(a)


def _swap_first_two(board: str) -> str:
    return board[1] + board[0] + board[2:]


@pytest.mark.parametrize(
    "rows, message",
    [
        # a row of another length
        (
            lambda q, a: [["s", q + ".", a, "0"]],
            r"line 2: question: expected 16 \(4x4\), 36 \(6x6\) or 81 \(9x9\) characters, got 17",
        ),
        # a digit that a 4x4 board cannot hold
        (
            lambda q, a: [["s", q, a, "0"], ["s", "5" + q[1:], a, "0"]],
            r"line 3: question: character '5' at position 0 is not a digit 1..4 or blank",
        ),
        (
            lambda q, a: [["s", q, a[:-1] + ".", "0"]],
            r"line 2: answer: character '\.' at position 15",
        ),
        # a solution that breaks the rule (first two cells swapped: row 1 stays valid, column 1 not)
        (
            lambda q, a: [["s", "." * 16, _swap_first_two(a), "0"]],
            r"line 2: answer is not a valid solution: column 1 repeats a digit",
        ),
        # mixed sizes in one file
        (
            lambda q, a: [["s", q, a, "0"], ["s", *_row(9), "0"]],
            r"line 3: question is a 9x9 grid, but line 2 made this file 4x4: one size per file",
        ),
    ],
)
def test_small_sudoku_bad_input(tmp_path, rows, message):
    q, a = _row(4)
    path = _write(tmp_path / "bad.csv", rows(q, a))
    with pytest.raises(InputError, match=rf"bad.csv, {message}"):
        import_csv(str(tmp_path / "out"), "sudoku", path)
    assert not (tmp_path / "out").exists()


def test_6x6_solution_contradicting_a_given(tmp_path):
    q, a = _row(6)
    c = next(i for i, ch in enumerate(q) if ch != ".")
    wrong = q[:c] + str(int(q[c]) % 6 + 1) + q[c + 1 :]
    path = _write(tmp_path / "bad.csv", [["s", wrong, a, "0"]])
    with pytest.raises(InputError, match=rf"bad.csv, line 2: answer does not solve the question \(cell {c}:"):  # fmt: skip
        import_csv(str(tmp_path / "out"), "sudoku", path)
    assert not (tmp_path / "out").exists()


def test_failed_import_leaves_nothing_and_keeps_an_old_dataset(tmp_path):
    train, rows = _sudoku_csv(tmp_path / "train.csv", 4, 6, seed=0)
    # the test file is 6x6: refused before anything is written
    test6, _ = _sudoku_csv(tmp_path / "test6.csv", 6, 1, seed=0)
    with pytest.raises(InputError, match=r"test6.csv, line 2: question is a 6x6 grid, but the training file's are 4x4: the test file must match"):  # fmt: skip
        import_csv(str(tmp_path / "out"), "sudoku", train, test6)
    assert not (tmp_path / "out").exists()
    # a bad test row is found after the training shards are written: they are removed again
    q, a = rows[0][1], rows[0][2]
    bad = _write(tmp_path / "bad.csv", [["s", q, _swap_first_two(a), "0"]])
    with pytest.raises(InputError, match=r"bad.csv, line 2: answer is not a valid solution"):
        import_csv(str(tmp_path / "out"), "sudoku", train, bad, rows_per_shard=1)
    assert not (tmp_path / "out").exists()
    # over an existing dataset (overwrite): the old one stays whole and readable
    old = import_csv(str(tmp_path / "old"), "sudoku", train)
    before = sorted(p.name for p in (tmp_path / "old").rglob("*"))
    with pytest.raises(InputError):
        import_csv(str(tmp_path / "old"), "sudoku", train, bad, rows_per_shard=1, overwrite=True)
    assert sorted(p.name for p in (tmp_path / "old").rglob("*")) == before
    assert verify_dataset(str(tmp_path / "old")) == old


def test_failed_import_to_s3_leaves_no_object(s3_env, tmp_path):
    train, rows = _sudoku_csv(tmp_path / "train.csv", 4, 6, seed=0)
    bad = _write(tmp_path / "bad.csv", [["s", rows[0][1], _swap_first_two(rows[0][2]), "0"]])
    uri = f"s3://{s3_env.bucket}/imported"
    with pytest.raises(InputError, match=r"bad.csv, line 2: answer is not a valid solution"):
        import_csv(uri, "sudoku", train, bad, rows_per_shard=1)  # 6 training shards written
    assert s3_env.client().list_objects_v2(Bucket=s3_env.bucket).get("KeyCount") == 0
    import_csv(uri, "sudoku", train, rows_per_shard=1)  # the check sees objects when there are
    assert s3_env.client().list_objects_v2(Bucket=s3_env.bucket).get("KeyCount") == 7
