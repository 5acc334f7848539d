"""ShardStream: the streaming reader training uses, one instance per worker (rank) and epoch.

    stream = ShardStream(uri, split="train", batch_size=256, rank=r, world_size=w, seed=0,
                         shuffle=True, augment="fixed_pool", num_aug=1000, epoch=e)
    for batch in stream:      # {"inputs": int64 [B, L], "labels": int64 [B, L] (ignore -> -100),
        ...                   #  "puzzle_identifiers": int64 [B]}
    len(stream)               # batches this iterator yields; equal on every rank
    stream.batch_rows()       # int64 [batches, B]: the split rows each batch holds (no reading)

Why plain pyarrow and not Ray Data: measured on this 2-core box (benchmarks/data_stream.py, same
200k-row Sudoku dataset, batch 1024), ShardStream gave 189k rows/s with the first batch after
0.24 s, Ray Data `read_parquet(...).iter_batches` 14k rows/s with the first batch after 13.8 s
(plus `ray.init`); inside two Train workers the gap was the same ~10x. TRM data is small (tens
of MB) and the per-row work (augmentation) is cheap numpy, so Ray Data's distributed execution
buys nothing and its per-epoch start-up dominates. Reading Parquet row groups ourselves also gives
exact control of the split across ranks, which DDP needs (every rank must take the same number
of steps), and of the augmentation keys.

What an epoch holds and which rank reads what: pipeline/data/sampler.py (one global
permutation per epoch over one variant per puzzle group; equal disjoint rank slices of every
global batch; nothing dropped). With drop_last=False (evaluation) rank r reads a contiguous
1/world_size of the epoch's rows instead, padded to whole batches with padding rows (inputs
PAD, labels -100, puzzle id blank). Rows are read through pipeline/data/reader.py.

Augmentation (`augment`, a regime of config.sections.REGIMES; True means the dataset's own: on_the_fly,
or its stored pool when materialised; False means none):
- on_the_fly: each row gets the task's random symmetry keyed by (seed, epoch, row index in the
  split), independent of the batch and rank that read it. (ARC test rows get variants but no
  translation; pipeline/evaluation/arc_vote.py expands each evaluated test row into its variants for
  pass@K voting.)
- fixed_pool: each epoch draws variant k in 0..num_aug per puzzle group; k = 0 is the original,
  variant k of the puzzle whose `group` is g is keyed by (dataset aug seed, k, g), the same key
  the builders use for materialised copy k, so the pool is the one --num-aug would store.
  On a materialised dataset the stored variants are the pool.
`start_batch=k` skips k batches without reading them (resume mid-epoch). One window of rows
(`window_rows`) and `prefetch` ready batches are prepared ahead by a background thread while
the consumer trains on the current batch.
"""

from __future__ import annotations

import math
import queue
import threading

import numpy as np

from pipeline.data.meta import DatasetMeta, read_meta
from pipeline.data.reader import RowReader
from pipeline.data.sampler import (
    EpochPlan,
    Groups,
    padded_positions,
    rank_positions,
    regime_problem,
    stored_pool_size,
)
from pipeline.data.storage import open_storage
from trm.puzzles.rng import example_keys

IGNORE = -100


def pool_seed(meta: DatasetMeta) -> int:
    """The dataset's augmentation seed (ARC: aug_seed; Sudoku and Maze: the generator seed, which
    keys their materialised copies)."""
    return int(meta.augmentation.get("aug_seed", meta.generator.get("seed", 0)))


def resolve_regime(meta: DatasetMeta, augment, num_aug: int) -> tuple[str, int]:
    """(regime, num_aug) for ShardStream's `augment` (a regime name, or True / False)."""
    mode = meta.augmentation.get("mode")
    if augment is True:
        if mode == "materialised":
            return "fixed_pool", stored_pool_size(meta) - 1
        return ("on_the_fly" if mode == "on_the_fly" else "none"), num_aug
    if augment is False:
        return "none", num_aug
    problem = regime_problem(meta, augment, num_aug)
    if problem is not None:
        raise ValueError(f"{problem[0]}: {problem[1]}")
    return augment, num_aug


class ShardStream:
    """Batches of one split for one rank and epoch; see the module docstring for the layout."""

    def __init__(
        self,
        uri: str,
        split: str = "train",
        batch_size: int = 256,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        shuffle: bool = True,
        augment: str | bool = True,
        epoch: int = 0,
        start_batch: int = 0,
        drop_last: bool = True,
        *,
        num_aug: int = 0,
        window_rows: int = 16384,
        verify_checksums: bool = False,
        with_index: bool = False,
        prefetch: int = 2,
        meta: DatasetMeta | None = None,
        reader: RowReader | None = None,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(
                f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}"
            )
        if epoch < 0 or start_batch < 0:
            raise ValueError(f"epoch and start_batch must be >= 0, got {epoch}, {start_batch}")
        self.uri = uri
        self.meta = meta if meta is not None else read_meta(uri)
        self.meta.split(split)  # an unknown split is named before anything is read
        # imported here: pipeline.tasks imports the builders, which load this package
        from pipeline.tasks import task_of

        self.task = task_of(self.meta, uri)  # a family this process does not know: named too
        self.reader = reader or RowReader(open_storage(uri), self.meta, split, verify_checksums)
        self.split, self.batch_size = split, batch_size
        self.rank, self.world_size, self.seed = rank, world_size, seed
        self.shuffle, self.epoch, self.drop_last = shuffle, epoch, drop_last
        self.augment, self.num_aug = augment, num_aug
        self.regime, pool = resolve_regime(self.meta, augment, num_aug)
        materialised = self.meta.augmentation.get("mode") == "materialised"
        fixed = self.regime == "fixed_pool"
        # reading everything in storage order needs no groups (and no read of their columns)
        rows = self.meta.split(split).num_rows
        groups = self.reader.groups() if shuffle else Groups.from_columns(np.arange(rows))
        virtual = np.asarray(1 + pool if fixed and not materialised else 1)
        self.pools = None
        self._example_of_row = self._count_of_row = None
        if self.task.read_pools is not None and not materialised and self.regime != "none":
            self.pools = self.task.read_pools(uri, self.meta)
            if fixed:  # a task's pool holds its distinct variants only
                virtual = np.minimum(self.pools.sizes[groups.key[groups.order[groups.start]]],
                                     virtual)  # fmt: skip
        self.plan = EpochPlan(
            groups, seed=seed, shuffle=shuffle,
            stored_pool=1 + pool if fixed and materialised else 1, virtual_pool=virtual,
        )  # fmt: skip
        self.with_index, self.prefetch = with_index, prefetch
        self.window = batch_size * max(1, math.ceil(window_rows / batch_size))
        self.rows_per_epoch = M = self.plan.rows_per_epoch
        if drop_last:
            self.num_batches = len(rank_positions(M, world_size, batch_size, rank, epoch))
        else:
            self.num_batches = math.ceil(math.ceil(M / world_size) / batch_size)
        if start_batch > self.num_batches:
            raise ValueError(
                f"start_batch {start_batch} is past the end of the epoch ({self.num_batches} batches)"
            )
        self.start_batch = start_batch

    def __len__(self) -> int:
        return self.num_batches - self.start_batch

    def set_epoch(self, epoch: int, start_batch: int = 0) -> ShardStream:
        """The same stream for another epoch (no metadata re-read; decoded rows are kept)."""
        return ShardStream(
            self.uri, self.split, self.batch_size, self.rank, self.world_size, self.seed,
            self.shuffle, self.augment, epoch, start_batch, self.drop_last,
            num_aug=self.num_aug, window_rows=self.window, with_index=self.with_index,
            prefetch=self.prefetch, meta=self.meta, reader=self.reader,
        )  # fmt: skip

    # ------------------------------------------------------------------ layout

    def _positions(self) -> np.ndarray:
        args = (self.rows_per_epoch, self.world_size, self.batch_size, self.rank, self.epoch,
                self.start_batch)  # fmt: skip
        return (rank_positions if self.drop_last else padded_positions)(*args).reshape(-1)

    def _rows_at(self, pos: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(row, computed pool variant k, epoch of the permutation) at stream positions `pos`
        (row -1 at padding positions)."""
        M = max(self.rows_per_epoch, 1)
        rows, k, passes = np.full(len(pos), -1), np.zeros(len(pos), np.int64), pos // M
        for p in np.unique(passes[pos >= 0]):
            sel = (passes == p) & (pos >= 0)
            r, kk = self.plan.pass_rows(int(p))
            rows[sel], k[sel] = r[pos[sel] % M], kk[pos[sel] % M]
        return rows, k, passes

    def batch_rows(self) -> tuple[np.ndarray, np.ndarray]:
        """(rows, epochs), int64 [len(self), B] each: the split row at each place of each batch
        this stream yields (-1: padding) and the epoch whose permutation it comes from (the
        last batch of an epoch may reach into the next one's), without reading any rows."""
        rows, _, passes = self._rows_at(self._positions())
        return rows.reshape(-1, self.batch_size), passes.reshape(-1, self.batch_size)

    # ------------------------------------------------------------------ reading

    def __iter__(self):
        if self.prefetch <= 0:
            yield from self._batches()
            return
        # Prepare batches in a thread, `prefetch` ahead: reading and numpy augmentation mostly
        # release the GIL, so they overlap with the training step that consumes the batch.
        q: queue.Queue = queue.Queue(self.prefetch)
        stop = threading.Event()

        def put(item) -> bool:
            while not stop.is_set():
                try:
                    q.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        def work():
            try:
                for b in self._batches():
                    if not put(("batch", b)):
                        return
                put(("end", None))
            except BaseException as e:  # re-raised in the consumer
                put(("error", e))

        t = threading.Thread(target=work, name="ShardStream-prefetch", daemon=True)
        t.start()
        try:
            while True:
                kind, value = q.get()
                if kind == "end":
                    return
                if kind == "error":
                    raise value
                yield value
        finally:
            stop.set()
            t.join(timeout=10)

    def _batches(self):
        self.reader.check_shards()
        positions, B, meta = self._positions(), self.batch_size, self.meta
        for w in range(0, len(positions), self.window):
            rows, k, passes = self._rows_at(positions[w : w + self.window])
            real = rows >= 0
            cols = self.reader.take(rows[real])
            x, y, pid = self._augment(cols, rows[real], k[real], passes[real])
            n, L = len(rows), meta.seq_len
            y = y.astype(np.int64)
            if meta.ignore_label_id is not None:
                y[y == meta.ignore_label_id] = IGNORE
            xs = np.full((n, L), meta.pad_id, np.int64)
            ys = np.full((n, L), IGNORE, np.int64)
            ps = np.full(n, meta.blank_identifier_id, np.int64)
            xs[real], ys[real], ps[real] = x, y, pid
            for s in range(0, n, B):
                batch = {"inputs": xs[s : s + B], "labels": ys[s : s + B],
                         "puzzle_identifiers": ps[s : s + B]}  # fmt: skip
                if self.with_index:
                    batch["index"] = rows[s : s + B]
                yield batch

    def _augment(self, cols, rows, k, passes):
        """The regime's augmentation of rows read from storage (uint8 tokens)."""
        x, y, pid = cols["inputs"], cols["labels"], cols["puzzle_identifier"]
        meta = self.meta
        if self.task.pool_augment is not None:
            return self.task.pool_augment(self, x, y, pid, rows, k, passes)
        fn = self.task.augment
        if self.regime == "on_the_fly" and len(rows):
            return fn(x, y, pid, example_keys(self.seed, passes, rows), meta, self.split)
        sel = k > 0
        if sel.any():
            # variant k of the puzzle whose group is g: keyed by (aug seed, k, g)
            keys = example_keys(pool_seed(meta), k[sel], self.plan.groups.key[rows[sel]])
            x[sel], y[sel], pid[sel] = fn(
                x[sel], y[sel], pid[sel], keys, meta, self.split, k=k[sel]
            )
        return x, y, pid

    def examples(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Each row's index among its group's rows (a task's examples, in storage order) and
        that group's row count."""
        g = self.plan.groups
        if self._example_of_row is None:
            place = np.empty(g.num_rows, np.int64)
            place[g.order] = np.arange(g.num_rows)
            group = g.group_of_row
            self._example_of_row = place - g.start[group]
            self._count_of_row = (g.variants * g.size)[group]
        return self._example_of_row[rows], self._count_of_row[rows]
