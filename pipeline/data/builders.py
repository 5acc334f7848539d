"""Dataset builders: generate or import puzzles and write them with DatasetWriter.

    build_sudoku("s3://bucket/sudoku-9x9", size=9, num_train=1000, num_test=1000, seed=0)

Builders are idempotent for sweeps: if a complete dataset with the same generator parameters is
already at the URI it is returned untouched; different parameters raise unless overwrite=True.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import pyarrow as pa

from pipeline.data.errors import DatasetError
from pipeline.data.meta import META_FILE, DatasetMeta, read_meta
from pipeline.data.shards import DatasetWriter
from pipeline.data.storage import open_storage
from trm.puzzles import sudoku

GENERATOR_VERSION = "1"
Progress = Callable[[str], None]


def _existing(uri: str, generator: dict, overwrite: bool) -> DatasetMeta | None:
    """The dataset at `uri` if it was built with exactly `generator`; None if there is none."""
    if overwrite:
        return None
    store = open_storage(uri)
    if not store.exists(META_FILE):
        return None
    meta = read_meta(uri)
    if meta.generator == json.loads(json.dumps(generator)):
        return meta
    raise DatasetError(
        f"{store.uri} holds a dataset built with {meta.generator}, not {generator}; "
        "use another URI or overwrite=True (--overwrite)"
    )


# --------------------------------------------------------------------------- sudoku


def _sudoku_chunk(args) -> list[tuple[list[int], list[int], int]]:
    seed, start, count, size, min_clues, min_rating = args
    out = []
    for i in range(start, start + count):
        rng = np.random.default_rng([seed, i])
        out.append(sudoku.generate(rng, size, min_clues=min_clues, min_rating=min_rating))
    return out


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
    """`count` distinct puzzles: (questions [count, n*n] digits, solutions, ratings).

    Candidate i is drawn from an rng seeded by (seed, i), so the result does not depend on the
    number of workers; exact duplicates are skipped in candidate order.
    """
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    sudoku.geometry(size)  # validates the size
    chunk = 64 if size >= 9 else 512
    seen: set[bytes] = set()
    qs, ss, rs = [], [], []
    next_i, misses, t0 = 0, 0, time.perf_counter()
    pool = ProcessPoolExecutor(workers) if workers > 1 else None
    try:
        while len(qs) < count:
            need = count - len(qs)
            n_chunks = max(1, min(workers * 4, math.ceil(need * 1.05 / chunk)))
            jobs = [
                (seed, next_i + k * chunk, chunk, size, min_clues, min_rating)
                for k in range(n_chunks)
            ]
            next_i += n_chunks * chunk
            results = pool.map(_sudoku_chunk, jobs) if pool else map(_sudoku_chunk, jobs)
            for part in results:
                for q, s, r in part:
                    key = bytes(q)
                    if key in seen:
                        misses += 1
                        continue
                    seen.add(key)
                    if len(qs) < count:
                        qs.append(q), ss.append(s), rs.append(r)
            if misses > 20 * count + 1000:
                raise ValueError(
                    f"only {len(qs)} distinct {size}x{size} puzzles found after {next_i} draws "
                    f"(min_clues={min_clues}); ask for fewer or lower min_clues"
                )
            if progress:
                dt = time.perf_counter() - t0
                progress(f"sudoku {len(qs)}/{count} puzzles ({len(qs) / max(dt, 1e-9):.0f}/s)")
    finally:
        if pool:
            pool.shutdown()
    cells = size * size
    return (
        np.array(qs, dtype=np.int8).reshape(-1, cells),
        np.array(ss, dtype=np.int8).reshape(-1, cells),
        np.array(rs, dtype=np.int32),
    )


def _sudoku_meta_fields(size: int, augmentation: dict, generator: dict) -> dict:
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


def write_sudoku_split(w: DatasetWriter, split, q, s, ratings, group_start, num_aug, seed) -> None:
    """Write puzzles (digits) and, with num_aug > 0, num_aug materialised symmetric copies each."""
    n = sudoku.geometry(round(q.shape[1] ** 0.5)).n
    x, y = sudoku.encode(q), sudoku.encode(s)
    groups = np.arange(group_start, group_start + len(q), dtype=np.int64)
    zeros = np.zeros(len(q), np.int32)
    w.add(split, inputs=x, labels=y, puzzle_identifier=zeros, group=groups, rating=ratings)
    for a in range(1, num_aug + 1):
        from trm.puzzles.rng import example_keys

        keys = example_keys(seed, a, groups)
        xa, ya = sudoku.augment(x, y, keys, n=n)
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
    workers: int = 1,
    rows_per_shard: int = 100_000,
    row_group_rows: int = 4096,
    overwrite: bool = False,
    progress: Progress | None = None,
) -> DatasetMeta:
    """Generate a Sudoku dataset (unique solutions, rating column) at `out_uri`.

    min_clues > 0 stops clue removal early (easier puzzles, faster); min_rating > 0 keeps only
    puzzles needing at least that many solver guesses (harder, slower). num_aug = 0 augments on
    the fly while streaming; num_aug > 0 materialises that many copies per training puzzle.
    """
    if num_train < 0 or num_test < 0 or num_aug < 0:
        raise ValueError(f"counts must be >= 0: num_train={num_train}, num_test={num_test}")
    generator = {
        "name": "sudoku",
        "version": GENERATOR_VERSION,
        "seed": seed,
        "params": {
            "size": size,
            "num_train": num_train,
            "num_test": num_test,
            "min_clues": min_clues,
            "min_rating": min_rating,
            "num_aug": num_aug,
        },
    }
    if (meta := _existing(out_uri, generator, overwrite)) is not None:
        return meta
    w = DatasetWriter(
        out_uri,
        seq_len=size * size,
        extra_columns={"rating": pa.int32()},
        rows_per_shard=rows_per_shard,
        row_group_rows=row_group_rows,
        overwrite=overwrite,
    )
    q, s, r = generate_sudoku(
        num_train + num_test,
        size=size,
        seed=seed,
        min_clues=min_clues,
        min_rating=min_rating,
        workers=workers,
        progress=progress,
    )
    write_sudoku_split(w, "train", q[:num_train], s[:num_train], r[:num_train], 0, num_aug, seed)
    write_sudoku_split(w, "test", q[num_train:], s[num_train:], r[num_train:], 0, 0, seed)
    mode = {"mode": "materialised", "num_aug": num_aug} if num_aug else {"mode": "on_the_fly"}
    return w.commit(**_sudoku_meta_fields(size, mode, generator))
