"""Dataset generators: Sudoku and Maze puzzles made offline and written as a dataset.

    build_sudoku("s3://bucket/sudoku-9x9", size=9, num_train=1000, num_test=1000, seed=0)
    build_maze("/data/maze-30x30", num_train=1000, num_test=1000, min_path=110, workers=2)

Candidate i is drawn from an rng seeded by (seed, i) and exact duplicates are skipped in candidate
order, so the output depends on the parameters only, never on the number of workers; train takes
the first num_train distinct puzzles and test the next num_test (no exact overlap). Small Sudoku
(4x4, 6x6) is split by symmetry class instead, so that no test puzzle is an augmentation of a
training puzzle (`generate_sudoku_split`).

Builders are idempotent for sweeps: if a complete dataset made with the same generator
parameters is already at the URI it is returned untouched; different parameters raise unless
overwrite=True.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from functools import partial

import numpy as np
import pyarrow as pa

from pipeline.data.errors import DatasetError
from pipeline.data.meta import META_FILE, DatasetMeta, cached_meta
from pipeline.data.shards import DatasetWriter
from pipeline.data.storage import open_storage
from trm.puzzles import maze, sudoku
from trm.puzzles.rng import example_keys

GENERATOR_VERSION = "1"
SUDOKU_SIZES = (4, 6, 9)
"""Board sides `build_sudoku` makes. Larger boards (16x16: 256 cells) are refused: generating
them with a unique solution by clue removal takes far too long with this solver."""
Progress = Callable[[str], None]


def existing_dataset(
    uri: str, name: str, seed: int, params: dict, overwrite: bool
) -> tuple[dict, DatasetMeta | None]:
    """The generator record for meta.json, and the dataset already at `uri` if it was built
    with exactly that record (None if there is none or overwrite is set)."""
    generator = {"name": name, "version": GENERATOR_VERSION, "seed": seed, "params": params}
    generator = json.loads(json.dumps(generator))  # as it reads back from meta.json
    store = open_storage(uri)
    if overwrite or not store.exists(META_FILE):
        return generator, None
    meta = cached_meta(uri)  # a sweep driver reads it next (once per process)
    if meta.generator == generator:
        return generator, meta
    raise DatasetError(
        f"{store.uri} holds a dataset built with {meta.generator}, not {generator}; "
        "use another URI or overwrite=True (--overwrite)"
    )


def _chunk(make, seed: int, start: int, count: int) -> list:
    return [make(np.random.default_rng([seed, i])) for i in range(start, start + count)]


def draw_distinct(
    make: Callable[[np.random.Generator], tuple],
    count: int,
    *,
    seed: int,
    workers: int = 1,
    chunk: int = 64,
    what: str = "puzzles",
    progress: Progress | None = None,
) -> list[tuple]:
    """`count` results of `make(rng)` with distinct first elements (bytes-compared).

    `make` must be picklable (a module-level function or a partial of one) when workers > 1.
    """
    return draw_split(make, [count], seed=seed, workers=workers, chunk=chunk, what=what,
                      progress=progress)[0]  # fmt: skip


def draw_split(
    make: Callable[[np.random.Generator], tuple],
    counts: list[int],
    *,
    seed: int,
    split_of: Callable[[list[tuple]], list[int]] | None = None,
    workers: int = 1,
    chunk: int = 64,
    what: str = "puzzles",
    progress: Progress | None = None,
) -> list[list[tuple]]:
    """Results of `make(rng)` with distinct first elements (bytes-compared), in candidate
    order, sorted into len(counts) parts: `split_of(items)` names each candidate's part (all
    in part 0 without it); a candidate for a full part is dropped. Returns the parts, part k
    with counts[k] items."""
    if any(c < 0 for c in counts):
        raise ValueError(f"counts must be >= 0, got {counts}")
    seen: set[bytes] = set()
    parts: list[list[tuple]] = [[] for _ in counts]
    total = sum(counts)
    next_i, stale, t0 = 0, 0, time.perf_counter()
    pool = ProcessPoolExecutor(workers) if workers > 1 else None

    def done() -> int:
        return sum(len(p) for p in parts)

    try:
        while done() < total:
            n_chunks = max(1, min(workers * 4, math.ceil((total - done()) * 1.05 / chunk)))
            starts = [next_i + k * chunk for k in range(n_chunks)]
            next_i += n_chunks * chunk
            job = partial(_chunk, make, seed, count=chunk)
            for batch in pool.map(job, starts) if pool else map(job, starts):
                where = split_of(batch) if split_of else [0] * len(batch)
                for item, k in zip(batch, where):
                    key = np.asarray(item[0]).tobytes()
                    if key in seen or len(parts[k]) >= counts[k]:
                        stale += 1  # a repeat, or for a part that is full
                    else:
                        seen.add(key)
                        parts[k].append(item)
                        stale = 0
            # no new puzzle for a long run of draws: the space is (nearly) exhausted
            if done() < total and stale > 4 * total + 200:
                have = (str(len(parts[0])) if len(parts) == 1
                        else " + ".join(f"{len(p)} of {c}" for p, c in zip(parts, counts)))  # fmt: skip
                raise ValueError(
                    f"only {have} distinct {what} after {next_i} draws; ask for fewer "
                    "or loosen the difficulty settings"
                )
            if progress:
                rate = done() / max(time.perf_counter() - t0, 1e-9)
                progress(f"{what}: {done()}/{total} ({rate:.1f}/s)")
    finally:
        if pool:
            pool.shutdown(cancel_futures=True)
    return parts


# --------------------------------------------------------------------------- sudoku


def generate_sudoku(
    count: int,
    *,
    size: int = 9,
    seed: int = 0,
    min_clues: int = 0,
    min_rating: int = 0,
    workers: int = 1,
    progress: Progress | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`count` distinct puzzles: (questions [count, n*n] digits 0..n, solutions, ratings)."""
    sudoku.geometry(size)  # validates the size before any work
    make = partial(sudoku.generate, n=size, min_clues=min_clues, min_rating=min_rating)
    items = draw_distinct(
        make, count, seed=seed, workers=workers, chunk=64 if size >= 9 else 512,
        what=f"{size}x{size} sudoku puzzles", progress=progress,
    )  # fmt: skip
    return _sudoku_arrays(items, size)


def _sudoku_arrays(items: list[tuple], size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(questions [N, size*size] int8, solutions, ratings int32) of generated (q, s, r) items."""
    cells = size * size
    return (
        np.array([q for q, _, _ in items], dtype=np.int8).reshape(-1, cells),
        np.array([s for _, s, _ in items], dtype=np.int8).reshape(-1, cells),
        np.array([r for _, _, r in items], dtype=np.int32),
    )


def holdout_split(keys: list[bytes], seed: int, share: float) -> list[int]:
    """1 (test) for each key whose seeded SHA-256 falls in the lowest `share` of the hash
    space, else 0 (train): a class goes wholly to one split, the same one for any draw order."""
    import hashlib

    salt = int(seed).to_bytes(8, "little", signed=True)
    cut = int(share * 2**64)
    return [int(int.from_bytes(hashlib.sha256(salt + k).digest()[:8], "little") < cut)
            for k in keys]  # fmt: skip


def generate_sudoku_split(
    num_train: int,
    num_test: int,
    *,
    size: int,
    seed: int = 0,
    holdout_share: float = 0.2,
    min_clues: int = 0,
    min_rating: int = 0,
    workers: int = 1,
    progress: Progress | None = None,
) -> tuple[tuple[np.ndarray, ...], tuple[np.ndarray, ...]]:
    """Train and test puzzles ((questions, solutions, ratings) each) such that no test puzzle
    is a symmetry of a training puzzle: puzzles are grouped into classes of puzzles that
    `augment` maps onto each other (`sudoku.symmetry_class`), and a class is held out for test
    with probability `holdout_share` (seeded). Small grids need this: the 4x4 puzzles with 10
    clues fall into under 800 classes, so exact-match splitting leaves nearly every test puzzle
    a relabelled copy of a training one. Sizes without class keys (9x9) split in draw order."""
    sudoku.geometry(size)
    if not 0 < holdout_share < 1:
        raise ValueError(f"holdout_share must be in (0, 1), got {holdout_share}")
    if sudoku.cell_symmetries(size) is None:
        q, s, r = generate_sudoku(num_train + num_test, size=size, seed=seed,
                                  min_clues=min_clues, min_rating=min_rating, workers=workers,
                                  progress=progress)  # fmt: skip
        return (q[:num_train], s[:num_train], r[:num_train]), (
            q[num_train:], s[num_train:], r[num_train:])  # fmt: skip

    def split_of(batch: list[tuple]) -> list[int]:
        keys = sudoku.symmetry_class(_sudoku_arrays(batch, size)[0], size)
        return holdout_split(keys, seed, holdout_share)

    make = partial(sudoku.generate, n=size, min_clues=min_clues, min_rating=min_rating)
    train, test = draw_split(
        make, [num_train, num_test], seed=seed, split_of=split_of, workers=workers,
        chunk=512, what=f"{size}x{size} sudoku puzzles", progress=progress,
    )  # fmt: skip
    return _sudoku_arrays(train, size), _sudoku_arrays(test, size)


def sudoku_meta_fields(size: int, augmentation: dict, generator: dict) -> dict:
    g = sudoku.geometry(size)
    return dict(
        task="sudoku",
        seq_len=g.cells,
        vocab_size=g.vocab_size,
        pad_id=0,
        ignore_label_id=0,
        blank_identifier_id=0,
        num_puzzle_identifiers=1,
        encoding={"size": size, "box": [g.box_rows, g.box_cols], "tokens": "pad 0, blank 1, d+1"},
        augmentation=augmentation,
        generator=generator,
    )


def write_sudoku_rows(w: DatasetWriter, split, x, y, ratings, groups, num_aug=0, seed=0) -> None:
    """Write token rows and, with num_aug > 0, num_aug materialised symmetric copies of each
    (copy a of group g is keyed by (seed, a, g), like an on-the-fly draw at epoch a)."""
    n = sudoku.geometry(round(x.shape[1] ** 0.5)).n
    zeros = np.zeros(len(x), np.int32)
    w.add(split, inputs=x, labels=y, puzzle_identifier=zeros, group=groups, rating=ratings)
    for a in range(1, num_aug + 1):
        xa, ya = sudoku.augment(x, y, example_keys(seed, a, groups), n=n)
        w.add(split, inputs=xa, labels=ya, puzzle_identifier=zeros, group=groups, rating=ratings)


def build_sudoku(
    out_uri: str,
    size: int = 9,
    num_train: int = 1000,
    num_test: int = 1000,
    seed: int = 0,
    *,
    min_clues: int = 0,
    min_rating: int = 0,
    num_aug: int = 0,
    holdout_share: float = 0.2,
    workers: int = 1,
    rows_per_shard: int = 100_000,
    row_group_rows: int = 4096,
    overwrite: bool = False,
    progress: Progress | None = None,
) -> DatasetMeta:
    """Generate a Sudoku dataset (unique solutions, `rating` column) at `out_uri`.

    4x4 and 6x6: no test puzzle is a symmetry of a training puzzle (`generate_sudoku_split`;
    about `holdout_share` of the symmetry classes are test's); 9x9 splits in draw order.

    min_clues > 0 stops clue removal early (easier puzzles, faster); min_rating > 0 keeps only
    puzzles needing at least that many solver guesses (harder, slower). num_aug = 0 augments on
    the fly while streaming; num_aug > 0 materialises that many copies per training puzzle.
    """
    if num_train < 0 or num_test < 0 or num_aug < 0:
        raise ValueError(
            f"counts must be >= 0: num_train={num_train}, num_test={num_test}, num_aug={num_aug}"
        )
    if size not in SUDOKU_SIZES:
        raise ValueError(
            f"sudoku size {size} is not supported: one of {', '.join(map(str, SUDOKU_SIZES))} "
            "(larger boards with a unique solution take far too long to generate; import them "
            "with import-csv instead)"
        )
    params = dict(size=size, num_train=num_train, num_test=num_test, min_clues=min_clues,
                  min_rating=min_rating, num_aug=num_aug)  # fmt: skip
    by_class = sudoku.cell_symmetries(size) is not None
    if by_class:  # the record says how test was held out (9x9 records are unchanged)
        params["holdout"] = {"by": "symmetry_class", "share": holdout_share}
    generator, meta = existing_dataset(out_uri, "sudoku", seed, params, overwrite)
    if meta is not None:
        return meta
    w = DatasetWriter(
        out_uri,
        seq_len=size * size,
        extra_columns={"rating": pa.int32()},
        rows_per_shard=rows_per_shard,
        row_group_rows=row_group_rows,
        overwrite=overwrite,
    )
    (q, s, r), (qt, st, rt) = generate_sudoku_split(
        num_train, num_test, size=size, seed=seed, holdout_share=holdout_share,
        min_clues=min_clues, min_rating=min_rating, workers=workers, progress=progress,
    )  # fmt: skip
    write_sudoku_rows(w, "train", sudoku.encode(q), sudoku.encode(s), r, np.arange(num_train),
                      num_aug, seed)  # fmt: skip
    write_sudoku_rows(w, "test", sudoku.encode(qt), sudoku.encode(st), rt, np.arange(num_test))
    mode = {"mode": "materialised", "num_aug": num_aug} if num_aug else {"mode": "on_the_fly"}
    return w.commit(**sudoku_meta_fields(size, mode, generator))


# --------------------------------------------------------------------------- maze


def maze_meta_fields(side: int, augmentation: dict, generator: dict) -> dict:
    return dict(
        task="maze",
        seq_len=side * side,
        vocab_size=maze.VOCAB_SIZE,
        pad_id=0,
        ignore_label_id=0,
        blank_identifier_id=0,
        num_puzzle_identifiers=1,
        encoding={"side": side, "charset": maze.CHARSET, "tokens": "pad 0, charset index + 1"},
        augmentation=augmentation,
        generator=generator,
    )


def write_maze_rows(w: DatasetWriter, split, x, y, lengths, groups, materialise=False) -> None:
    """Write token rows; with materialise, all 8 dihedral copies of each (official --aug)."""
    side = maze.side_of(x.shape[1])
    zeros = np.zeros(len(x), np.int32)
    for tid in range(8 if materialise else 1):
        t = np.full(len(x), tid)
        xa = maze.dihedral(x.reshape(-1, side, side), t).reshape(len(x), -1)
        ya = maze.dihedral(y.reshape(-1, side, side), t).reshape(len(x), -1)
        w.add(
            split, inputs=xa, labels=ya, puzzle_identifier=zeros, group=groups, path_length=lengths
        )


def build_maze(
    out_uri: str,
    side: int = 30,
    num_train: int = 1000,
    num_test: int = 1000,
    seed: int = 0,
    *,
    min_path: int = 110,
    wall_density: tuple[float, float] = (0.3, 0.5),
    materialise: bool = False,
    workers: int = 1,
    rows_per_shard: int = 100_000,
    row_group_rows: int = 1024,
    overwrite: bool = False,
    progress: Progress | None = None,
) -> DatasetMeta:
    """Generate mazes whose shortest S->G path is longer than `min_path` moves, each labelled
    with a shortest path (`path_length` column). materialise=True writes the 8 dihedral copies
    of each training maze (official --aug); otherwise dihedral augmentation is on the fly."""
    if num_train < 0 or num_test < 0:
        raise ValueError(f"counts must be >= 0: num_train={num_train}, num_test={num_test}")
    lo, hi = wall_density
    if not 0 <= lo <= hi < 1:
        raise ValueError(
            f"wall_density must be (low, high) with 0 <= low <= high < 1, got {wall_density}"
        )
    if not 0 <= min_path < side * side:
        raise ValueError(f"min_path must be in 0..{side * side - 1}, got {min_path}")
    params = dict(side=side, num_train=num_train, num_test=num_test, min_path=min_path,
                  wall_density=[lo, hi], materialise=materialise)  # fmt: skip
    generator, meta = existing_dataset(out_uri, "maze", seed, params, overwrite)
    if meta is not None:
        return meta
    w = DatasetWriter(
        out_uri, seq_len=side * side, extra_columns={"path_length": pa.int32()},
        rows_per_shard=rows_per_shard, row_group_rows=row_group_rows, overwrite=overwrite,
    )  # fmt: skip
    make = partial(maze.generate, side=side, min_path=min_path, density=(lo, hi))
    items = draw_distinct(
        make, num_train + num_test, seed=seed, workers=workers, chunk=8, what="mazes",
        progress=progress,
    )  # fmt: skip
    x = np.stack([q for q, _, _ in items]) if items else np.zeros((0, side * side), np.uint8)
    y = np.stack([a for _, a, _ in items]) if items else np.zeros((0, side * side), np.uint8)
    lengths = np.array([n for _, _, n in items], dtype=np.int32)
    tr, te = slice(0, num_train), slice(num_train, None)
    write_maze_rows(w, "train", x[tr], y[tr], lengths[tr], np.arange(num_train), materialise)
    write_maze_rows(w, "test", x[te], y[te], lengths[te], np.arange(num_test))
    mode = {"mode": "materialised", "transforms": 8} if materialise else {"mode": "on_the_fly"}
    return w.commit(**maze_meta_fields(side, mode, generator))
