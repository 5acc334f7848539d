"""Importers for puzzle CSV files a user already has (the official sudoku-extreme and maze-hard
files): header `source,question,answer,rating`, one puzzle per row.

    import_csv("/data/sudoku-extreme-1k", "sudoku", "train.csv", "test.csv", subsample=1000)
    import_csv("s3://b/maze-hard", "maze", "maze/train.csv", "maze/test.csv")

The framing of every row (header, field count, integer rating) is checked in a first pass before
anything is written; then each row's content is checked as it is converted. A bad row raises
InputError naming the file, the line and what is wrong, and leaves no meta.json, so nothing that
looks like a dataset: wrong field count, wrong length, a character outside the charset, an
answer that does not solve its question (Sudoku) or is not a shortest S->G path (Maze), a Sudoku
with several solutions (`check_unique`, on by default: one solver run per puzzle, a few ms each;
turn off for the 423k-row sudoku-extreme test file if minutes matter), a non-integer rating.
As in the official builders, `min_difficulty` keeps rows with rating >= it, and `subsample` draws
that many training rows without replacement (here from an rng seeded by `seed`).
"""

from __future__ import annotations

import csv
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import pyarrow as pa

from pipeline.data.builders import (
    Progress,
    existing_dataset,
    maze_meta_fields,
    sudoku_meta_fields,
    write_maze_rows,
    write_sudoku_rows,
)
from pipeline.data.errors import InputError
from pipeline.data.meta import DatasetMeta
from pipeline.data.shards import DatasetWriter
from trm.puzzles import maze, sudoku

HEADER = ["source", "question", "answer", "rating"]
CHUNK = 50_000


def scan_csv(path: str, min_difficulty: int | None = None):
    """Yield (line number, question, answer, rating) of the rows kept by min_difficulty;
    InputError on a bad header, a wrong field count or a non-integer rating."""
    try:
        f = open(path, newline="")
    except FileNotFoundError:
        raise InputError(path, None, "file not found") from None
    with f:
        reader = csv.reader(f)
        try:
            yield from _rows(path, reader, min_difficulty)
        # not UTF-8 text, a NUL byte, an unterminated quote: csv and the codec name no file
        except (UnicodeDecodeError, csv.Error) as e:
            where = f"line {reader.line_num + 1}"
            raise InputError(path, where, f"not readable as UTF-8 CSV text: {e}") from None


def _rows(path: str, reader, min_difficulty: int | None):
    header = next(reader, None)
    if header is None:
        raise InputError(path, "line 1", "file is empty (expected a header row)")
    if [h.strip() for h in header] != HEADER:
        raise InputError(path, "line 1", f"header {header} is not {','.join(HEADER)}")
    for row in reader:
        line = reader.line_num
        if len(row) != 4:
            raise InputError(path, f"line {line}", f"expected 4 fields ({','.join(HEADER)}), got {len(row)}")  # fmt: skip
        _, q, a, r = row
        try:
            rating = int(r)
        except ValueError:
            raise InputError(path, f"line {line}", f"rating {r!r} is not an integer") from None
        if min_difficulty is None or rating >= min_difficulty:
            yield line, q, a, rating


def _check_sudoku(path, line, q, a, check_unique):
    where = f"line {line}"
    boards = []
    for name, text, blank in (("question", q, ".0"), ("answer", a, "")):
        try:
            boards.append(sudoku.parse_board(text, blank=blank))
        except ValueError as e:
            raise InputError(path, where, f"{name}: {e}") from None
    qd, ad = boards
    if not sudoku.is_solution(ad.tolist()):
        raise InputError(path, where, "answer is not a valid solution (a row, column or box repeats a digit)")  # fmt: skip
    clash = np.flatnonzero((qd != 0) & (qd != ad))
    if len(clash):
        c = int(clash[0])
        raise InputError(path, where, f"answer does not solve the question (cell {c}: question {qd[c]}, answer {ad[c]})")  # fmt: skip
    if check_unique and len(sudoku.solve(qd.tolist(), limit=2).solutions) > 1:
        raise InputError(path, where, "puzzle is ambiguous: it has more than one solution")
    return qd, ad


def _check_maze(path, line, q, a, side):
    where = f"line {line}"
    if len(q) != side * side:
        raise InputError(path, where, f"question has {len(q)} cells; this file's mazes have {side * side}")  # fmt: skip
    for name, text in (("question", q), ("answer", a)):
        try:
            maze.side_of(len(text))
            maze.encode(text)
        except ValueError as e:
            raise InputError(path, where, f"{name}: {e}") from None
    if len(q) != len(a):
        raise InputError(path, where, f"question has {len(q)} cells, answer {len(a)}")
    x, y = maze.encode(q), maze.encode(a)
    try:
        _, length = maze.solve(x)
    except ValueError as e:
        raise InputError(path, where, f"unsolvable maze: {e}") from None
    if not maze.is_shortest_path(x, y):
        marks = int((y == maze.PATH).sum())
        raise InputError(path, where, f"answer is not a shortest S->G path ({marks} path cells marked; the shortest path has {length} moves)")  # fmt: skip
    return x, y, length


def _check_chunk(args):
    task, path, rows, option = args  # option: check_unique (sudoku) or the side (maze)
    check = _check_sudoku if task == "sudoku" else _check_maze
    return [check(path, line, q, a, option) for line, q, a, _ in rows]


def _chunks(path, min_difficulty, keep: set[int] | None):
    rows, index = [], 0
    for item in scan_csv(path, min_difficulty):
        if keep is None or index in keep:
            rows.append(item)
            if len(rows) == CHUNK:
                yield rows
                rows = []
        index += 1
    if rows:
        yield rows


def import_csv(
    out_uri: str,
    task: str,
    train_csv: str,
    test_csv: str | None = None,
    *,
    subsample: int | None = None,
    min_difficulty: int | None = None,
    num_aug: int = 0,
    seed: int = 0,
    check_unique: bool = True,
    workers: int = 1,
    rows_per_shard: int = 100_000,
    row_group_rows: int = 4096,
    overwrite: bool = False,
    progress: Progress | None = None,
) -> DatasetMeta:
    """Import official-format CSV files as a dataset. num_aug > 0 (Sudoku: that many copies;
    Maze: the 8 dihedral copies) materialises augmentation; 0 augments on the fly."""
    if task not in ("sudoku", "maze"):
        raise ValueError(f"import-csv task must be 'sudoku' or 'maze', got {task!r}")
    if subsample is not None and subsample < 1:
        raise ValueError(f"subsample must be >= 1, got {subsample}")
    params = dict(task=task, train_csv=str(train_csv), test_csv=str(test_csv) if test_csv else None,
                  subsample=subsample, min_difficulty=min_difficulty, num_aug=num_aug,
                  check_unique=check_unique)  # fmt: skip
    generator, meta = existing_dataset(out_uri, "import-csv", seed, params, overwrite)
    if meta is not None:
        return meta
    # Find the sizes (and check the framing of every row) before writing anything.
    keep_train = None
    n_train = sum(1 for _ in scan_csv(train_csv, min_difficulty))
    if subsample is not None and subsample < n_train:
        rng = np.random.default_rng(seed)
        keep_train = set(rng.choice(n_train, subsample, replace=False).tolist())
    first = next(scan_csv(train_csv, min_difficulty), None)
    if first is None:
        raise InputError(train_csv, None, "no rows (after min_difficulty)")
    try:
        side = maze.side_of(len(first[1])) if task == "maze" else 9
    except ValueError as e:
        raise InputError(train_csv, f"line {first[0]}", f"question: {e}") from None
    w = DatasetWriter(
        out_uri, seq_len=side * side,
        extra_columns={"rating": pa.int32()} if task == "sudoku" else {"path_length": pa.int32()},
        rows_per_shard=rows_per_shard, row_group_rows=row_group_rows, overwrite=overwrite,
    )  # fmt: skip
    pool = ProcessPoolExecutor(workers) if workers > 1 else None
    try:
        for split, path, keep in (("train", train_csv, keep_train), ("test", test_csv, None)):
            if path is None:
                continue
            done = 0
            for rows in _chunks(path, min_difficulty, keep):
                parts = [rows[i :: max(1, workers)] for i in range(max(1, workers))]
                option = check_unique if task == "sudoku" else side
                jobs = [(task, str(path), p, option) for p in parts if p]
                results = list(pool.map(_check_chunk, jobs) if pool else map(_check_chunk, jobs))
                order = [r for p in parts if p for r in p]
                checked = [c for res in results for c in res]
                by_line = sorted(zip([r[0] for r in order], checked, [r[3] for r in order]))
                groups = np.arange(done, done + len(by_line), dtype=np.int64)
                if task == "sudoku":
                    x = sudoku.encode(np.stack([c[0] for _, c, _ in by_line]))
                    y = sudoku.encode(np.stack([c[1] for _, c, _ in by_line]))
                    ratings = np.array([r for _, _, r in by_line], np.int32)
                    aug = num_aug if split == "train" else 0
                    write_sudoku_rows(w, split, x, y, ratings, groups, aug, seed)
                else:
                    x = np.stack([c[0] for _, c, _ in by_line])
                    y = np.stack([c[1] for _, c, _ in by_line])
                    lengths = np.array([c[2] for _, c, _ in by_line], np.int32)
                    write_maze_rows(
                        w, split, x, y, lengths, groups, num_aug > 0 and split == "train"
                    )
                done += len(by_line)
                if progress:
                    progress(f"import {split}: {done} rows from {path}")
    finally:
        if pool:
            pool.shutdown(cancel_futures=True)
    if task == "sudoku":
        mode = {"mode": "materialised", "num_aug": num_aug} if num_aug else {"mode": "on_the_fly"}
        fields = sudoku_meta_fields(9, mode, generator)
    else:
        mode = {"mode": "materialised", "transforms": 8} if num_aug else {"mode": "on_the_fly"}
        fields = maze_meta_fields(side, mode, generator)
    return w.commit(**fields)
