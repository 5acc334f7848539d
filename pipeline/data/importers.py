"""Importers for puzzle CSV files a user already has (the official sudoku-extreme and maze-hard
files, or small Sudoku of their own): header `source,question,answer,rating`, one puzzle per row.

    import_csv("/data/sudoku-extreme-1k", "sudoku", "train.csv", "test.csv", subsample=1000)
    import_csv("data/my-4x4", "sudoku", "mine.csv")   # 16-character rows: 4x4 boards
    import_csv("s3://b/maze-hard", "maze", "maze/train.csv", "maze/test.csv")

Sizes: a Sudoku board is 16, 36 or 81 characters (4x4 with 2x2 boxes, 6x6 with 2x3 boxes, 9x9),
a maze any square; the first row of the training file fixes it, and every row of both files must
have it. The dataset then has the generator's encoding for that size (`sudoku_meta_fields`), so
training and the streaming augmentations treat it like a generated one.

A first pass over both files checks the framing of every row (header, field count, integer
rating, board size) before anything is written; then each row's content is checked as it is
converted. A bad row raises InputError naming the file, the line and what is wrong: wrong field
count, a length that is no board or not the file's size, a character outside the charset, an
answer that breaks the Sudoku rule or contradicts a given (Sudoku) or is not a shortest S->G path
(Maze), a Sudoku with several solutions (`check_unique`, on by default: one solver run per
puzzle, a few ms each; turn off for the 423k-row sudoku-extreme test file if minutes matter), a
non-integer rating. A failed import removes what it wrote (`DatasetWriter.abort`): no shards, no
meta.json, no output folder it created.
As in the official builders, `min_difficulty` keeps rows with rating >= it, and `subsample` draws
that many training rows without replacement (here from an rng seeded by `seed`).
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import partial

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


SUDOKU_SIDES = {16: 4, 36: 6, 81: 9}
"""Sudoku board sizes an import accepts: characters per row -> board side."""


@dataclass(frozen=True)
class CsvFormat:
    """How one family's rows read (its task entry's `csv`): question and answer are a square
    grid of side n, one character a cell."""

    task: str
    side: Callable[[int], int]
    """A question's length -> the grid side; ValueError naming the sizes it takes."""
    check: Callable[..., tuple]
    """`check(path, row, n, check_unique)` -> (question tokens, answer tokens, extra value);
    InputError naming the line. Module-level (rows are checked in worker processes)."""
    extra_column: str
    """The column the extra value goes to ('rating', 'path_length')."""
    write: Callable[..., None]
    """`write(writer, split, x, y, extra, groups, num_aug, seed)` (num_aug is 0 for test)."""
    meta_fields: Callable[[int, int, dict], dict]
    """`meta_fields(side, num_aug, generator)` -> the dataset's meta.json fields."""


def _sudoku_side(length: int) -> int:
    if length not in SUDOKU_SIDES:
        raise ValueError(f"expected 16 (4x4), 36 (6x6) or 81 (9x9) characters, got {length}")
    return SUDOKU_SIDES[length]


def _side_of(fmt: CsvFormat, path: str, line: int, question: str) -> int:
    """The board side a question's length gives (InputError if it is no board)."""
    try:
        return fmt.side(len(question))
    except ValueError as e:
        raise InputError(path, f"line {line}", f"question: {e}") from None


def _survey(fmt: CsvFormat, path: str, min_difficulty: int | None, side: int | None = None):
    """(rows kept, board side) of a file, checking every kept row's framing and that its
    question has the file's size: that of `side` if given (the other file's), else the first
    row's."""
    count, first = 0, None
    for line, q, _, _ in scan_csv(path, min_difficulty):
        s = _side_of(fmt, path, line, q)
        if side is None:
            side, first = s, line
        elif s != side:
            rule = (f"line {first} made this file {side}x{side}: one size per file" if first
                    else f"the training file's are {side}x{side}: the test file must match")  # fmt: skip
            raise InputError(path, f"line {line}", f"question is a {s}x{s} grid, but {rule}")
        count += 1
    return count, side


def _unit_name(n: int, unit: int) -> str:
    """'row 3', 'column 1' or 'box 4' for index `unit` of sudoku.geometry(n).units."""
    return f"{('row', 'column', 'box')[unit // n]} {unit % n + 1}"


def _check_sudoku(path, row, n, check_unique):
    """(question tokens, answer tokens, rating) of one CSV row of an n x n Sudoku."""
    line, q, a, rating = row
    where = f"line {line}"
    boards = []
    for name, text, blank in (("question", q, ".0"), ("answer", a, "")):
        try:
            boards.append(sudoku.parse_board(text, n, blank=blank))
        except ValueError as e:
            raise InputError(path, where, f"{name}: {e}") from None
    qd, ad = boards
    units = sudoku.geometry(n).units
    broken = [u for u, cells in enumerate(units) if len(set(ad[list(cells)].tolist())) != n]
    if broken:
        raise InputError(path, where, f"answer is not a valid solution: {_unit_name(n, broken[0])} repeats a digit")  # fmt: skip
    clash = np.flatnonzero((qd != 0) & (qd != ad))
    if len(clash):
        c = int(clash[0])
        raise InputError(path, where, f"answer does not solve the question (cell {c}: question {qd[c]}, answer {ad[c]})")  # fmt: skip
    if check_unique and len(sudoku.solve(qd.tolist(), n, limit=2).solutions) > 1:
        raise InputError(path, where, "puzzle is ambiguous: it has more than one solution")
    return sudoku.encode(qd), sudoku.encode(ad), rating


def _check_maze(path, row, n=None, check_unique=False):
    """(question tokens, answer tokens, shortest path length) of one CSV row of a maze (its
    question's size was checked by the first pass)."""
    line, q, a, _ = row
    where = f"line {line}"
    for name, text in (("question", q), ("answer", a)):
        try:
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
    check, path, rows = args
    return [check(path, row) for row in rows]


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


def _checked(pool, workers: int, check, path: str, rows: list) -> list[tuple]:
    """check(path, row) of every row, in row order; with a pool, in `workers` contiguous parts
    (so the first error raised is the one on the earliest line)."""
    size = -(-len(rows) // max(1, workers))
    jobs = [(check, path, rows[i : i + size]) for i in range(0, len(rows), size)]
    results = pool.map(_check_chunk, jobs) if pool else map(_check_chunk, jobs)
    return [item for part in results for item in part]


def _write_chunk(w, split, fmt: CsvFormat, rows, start, num_aug, seed) -> None:
    """Write checked rows (tokens, tokens, rating or path length) as groups start, start+1, ..."""
    x = np.stack([r[0] for r in rows])
    y = np.stack([r[1] for r in rows])
    extra = np.array([r[2] for r in rows], np.int32)
    groups = np.arange(start, start + len(rows), dtype=np.int64)
    fmt.write(w, split, x, y, extra, groups, num_aug if split == "train" else 0, seed)


def _write_maze(w, split, x, y, lengths, groups, num_aug, seed) -> None:
    write_maze_rows(w, split, x, y, lengths, groups, materialise=num_aug > 0)


def _materialised(copies: int, **record) -> dict:
    return {"mode": "materialised", **record} if copies else {"mode": "on_the_fly"}


SUDOKU_CSV = CsvFormat(
    "sudoku", _sudoku_side, _check_sudoku, "rating", write_sudoku_rows,
    lambda side, k, generator: sudoku_meta_fields(side, _materialised(k, num_aug=k), generator),
)  # fmt: skip
MAZE_CSV = CsvFormat(
    "maze", maze.side_of, _check_maze, "path_length", _write_maze,
    lambda side, k, generator: maze_meta_fields(side, _materialised(k, transforms=8), generator),
)  # fmt: skip


def _plan(fmt: CsvFormat, train_csv, test_csv, min_difficulty, subsample, seed):
    """(board side, training rows to keep or None for all), after the first pass over both
    files: framing, and one board size for both."""
    n_train, side = _survey(fmt, train_csv, min_difficulty)
    if side is None:
        raise InputError(train_csv, None, "no rows (after min_difficulty)")
    if test_csv is not None:
        _survey(fmt, test_csv, min_difficulty, side)
    if subsample is None or subsample >= n_train:
        return side, None
    rng = np.random.default_rng(seed)
    return side, set(rng.choice(n_train, subsample, replace=False).tolist())


def import_rows(
    out_uri: str,
    fmt: CsvFormat,
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
    """Import official-format CSV files of the family `fmt` reads as a dataset (by task name:
    `pipeline.data.import_csv`). num_aug > 0 (Sudoku: that many copies; Maze: the 8 dihedral
    copies) materialises augmentation; 0 augments on the fly."""
    if subsample is not None and subsample < 1:
        raise ValueError(f"subsample must be >= 1, got {subsample}")
    params = dict(task=fmt.task, train_csv=str(train_csv), test_csv=str(test_csv) if test_csv else None,
                  subsample=subsample, min_difficulty=min_difficulty, num_aug=num_aug,
                  check_unique=check_unique)  # fmt: skip
    generator, meta = existing_dataset(out_uri, "import-csv", seed, params, overwrite)
    if meta is not None:
        return meta
    side, keep_train = _plan(fmt, train_csv, test_csv, min_difficulty, subsample, seed)
    check = partial(fmt.check, n=side, check_unique=check_unique)
    w = DatasetWriter(
        out_uri, seq_len=side * side, extra_columns={fmt.extra_column: pa.int32()},
        rows_per_shard=rows_per_shard, row_group_rows=row_group_rows, overwrite=overwrite,
    )  # fmt: skip
    pool = ProcessPoolExecutor(workers) if workers > 1 else None
    try:
        for split, path, keep in (("train", train_csv, keep_train), ("test", test_csv, None)):
            done = 0
            for rows in _chunks(path, min_difficulty, keep) if path is not None else ():
                _write_chunk(w, split, fmt, _checked(pool, workers, check, str(path), rows),
                             done, num_aug, seed)  # fmt: skip
                done += len(rows)
                if progress:
                    progress(f"import {split}: {done} rows from {path}")
    except BaseException:  # a bad row (or an interrupt) leaves nothing behind
        w.abort()
        raise
    finally:
        if pool:
            pool.shutdown(cancel_futures=True)
    return w.commit(**fmt.meta_fields(side, num_aug, generator))
