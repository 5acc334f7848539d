"""ShardStream: the streaming reader training uses, one instance per worker (rank) and epoch.

    stream = ShardStream(uri, split="train", batch_size=256, rank=r, world_size=w, seed=0,
                         shuffle=True, augment=True, epoch=e, start_batch=0, drop_last=True)
    for batch in stream:      # {"inputs": int64 [B, L], "labels": int64 [B, L] (ignore -> -100),
        ...                   #  "puzzle_identifiers": int64 [B]}
    len(stream)               # batches this iterator yields; equal on every rank

Why plain pyarrow and not Ray Data: measured on this 2-core box (benchmarks/data_stream.py, same
200k-row Sudoku dataset, batch 1024), ShardStream gave 189k rows/s with the first batch after
0.24 s, Ray Data `read_parquet(...).iter_batches` 14k rows/s with the first batch after 13.8 s
(plus `ray.init`); inside two Train workers the gap was the same ~10x. TRM data is small (tens
of MB) and the per-row work (augmentation) is cheap numpy, so Ray Data's distributed execution
buys nothing and its per-epoch start-up dominates. Reading Parquet row groups ourselves also gives
exact control of the split across ranks, which DDP needs (every rank must take the same number
of steps), and of the augmentation keys.

How an epoch is laid out, all a pure function of (seed, epoch, world_size):
1. Units are Parquet row groups. With shuffle, their order is permuted by (seed, epoch).
2. The permuted units form one stream of row positions 0..N-1. Rank r takes positions
   [r*P, (r+1)*P), with P = N // world_size (drop_last) or ceil(N / world_size) (positions past
   N are padding rows: inputs PAD, labels -100, puzzle id blank). Equal P gives equal batch
   counts: P // B with drop_last, else ceil(P / B) with the last batch padded to B rows.
3. A rank reads its positions window by window (`shuffle_buffer` rows, a multiple of B), loading
   only the row groups it overlaps, and with shuffle permutes the rows inside each window.
4. With augment, each row gets the task's random symmetry keyed by (seed, epoch, row index in
   the split), so a row's augmentation does not depend on the batch or the rank that reads it.
   (ARC test rows get variants but no translation. Evaluation reads the test split without
   augmentation; pipeline/arc_vote.py expands each row into its variants for pass@K voting.)
   Datasets built with materialised augmentation are read as they are (augment is a no-op).
`start_batch=k` skips k batches without reading the windows before them (resume mid-epoch).
Nothing beyond one window, one row group and `prefetch` ready batches is held in memory; a
background thread prepares those batches while the consumer trains on the current one.
"""

from __future__ import annotations

import hashlib
import math
import queue
import threading

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.data.errors import DatasetError, StorageError
from pipeline.data.meta import DatasetMeta, ShardMeta, read_meta
from pipeline.data.shards import column_types
from pipeline.data.storage import open_storage
from trm.puzzles import sudoku
from trm.puzzles.rng import example_keys, random_permutations

IGNORE = -100
_COLUMNS = ["inputs", "labels", "puzzle_identifier"]


def _augment_sudoku(x, y, pid, keys, meta: DatasetMeta, split: str):
    x, y = sudoku.augment(x, y, keys, n=meta.encoding["size"])
    return x, y, pid


def _augment_maze(x, y, pid, keys, meta: DatasetMeta, split: str):
    from trm.puzzles import maze

    x, y = maze.augment(x, y, keys, side=meta.encoding["side"])
    return x, y, pid


def _augment_arc(x, y, pid, keys, meta: DatasetMeta, split: str):
    from trm.puzzles import arc

    params = arc.augment_params(meta.augmentation)
    # As in the official data, only training examples are translated: predictions on the test
    # split are read back with the top-left crop, and test-time variants are dihedral + colour.
    params["translate"] = params["translate"] and split == "train"
    return arc.augment(x, y, pid, keys, **params)


AUGMENT = {"sudoku": _augment_sudoku, "maze": _augment_maze, "arc": _augment_arc}


class _Shard:
    """One open shard, checked against its metadata when opened."""

    def __init__(self, store, sh: ShardMeta, columns: dict[str, str], verify_checksum: bool):
        self.name = f"{store.uri}/{sh.path}"
        try:
            size = store.size(sh.path)
            if size != sh.num_bytes:
                raise DatasetError(
                    f"shard {self.name}: size {size} bytes does not match {sh.num_bytes} in "
                    "meta.json (corrupted or replaced)"
                )
            if verify_checksum:
                digest = hashlib.sha256(store.read_bytes(sh.path)).hexdigest()
                if digest != sh.sha256:
                    raise DatasetError(f"shard {self.name}: checksum mismatch with meta.json")
            self.raw = None
            if hasattr(store, "open_ranged"):  # S3: lets a row group load in one request
                self.raw = store.open_ranged(sh.path, length=size)
                f = pa.PythonFile(self.raw, mode="r")
            else:
                f = store.open_input(sh.path)
            self.file = pq.ParquetFile(f, page_checksum_verification=True)
        except FileNotFoundError:
            raise DatasetError(f"shard {self.name} is missing") from None
        # a damaged footer can hold names that are not UTF-8: pyarrow's decode error says
        # nothing about which file it came from
        except (OSError, pa.ArrowException, UnicodeDecodeError) as e:
            if isinstance(e, StorageError):
                raise
            raise DatasetError(f"shard {self.name} is unreadable: {e}") from e
        got = column_types(self.file.schema_arrow)
        if got != columns:
            raise DatasetError(
                f"shard {self.name}: schema {got} does not match meta.json {columns}"
            )
        md = self.file.metadata
        groups = [md.row_group(i).num_rows for i in range(md.num_row_groups)]
        if md.num_rows != sh.num_rows or groups != sh.row_groups:
            raise DatasetError(
                f"shard {self.name}: {md.num_rows} rows in row groups {groups[:8]}... do not "
                f"match meta.json ({sh.num_rows} rows, {sh.row_groups[:8]}...)"
            )

    def read(self, row_group: int, seq_len: int) -> dict[str, np.ndarray]:
        try:
            if self.raw is not None:
                rg = self.file.metadata.row_group(row_group)
                spans = []
                for j in range(rg.num_columns):
                    col = rg.column(j)
                    if col.path_in_schema.split(".")[0] in _COLUMNS:
                        start = col.data_page_offset
                        if col.has_dictionary_page and col.dictionary_page_offset:
                            start = min(start, col.dictionary_page_offset)
                        spans.append((start, start + col.total_compressed_size))
                self.raw.prefetch(min(a for a, _ in spans), max(b for _, b in spans))
            t = self.file.read_row_group(row_group, columns=_COLUMNS)
        except (OSError, pa.ArrowException, UnicodeDecodeError) as e:
            if isinstance(e, StorageError):
                raise
            raise DatasetError(f"shard {self.name}, row group {row_group}: {e}") from e
        out = {}
        for name in ("inputs", "labels"):
            col = t.column(name).combine_chunks()
            out[name] = col.flatten().to_numpy().reshape(-1, seq_len)
        out["puzzle_identifier"] = t.column("puzzle_identifier").to_numpy()
        return out


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
        augment: bool = True,
        epoch: int = 0,
        start_batch: int = 0,
        drop_last: bool = True,
        *,
        shuffle_buffer: int = 16384,
        verify_checksums: bool = False,
        with_index: bool = False,
        prefetch: int = 2,
        meta: DatasetMeta | None = None,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(
                f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}"
            )
        if epoch < 0 or start_batch < 0:
            raise ValueError(f"epoch and start_batch must be >= 0, got {epoch}, {start_batch}")
        self.uri, self.store = uri, open_storage(uri)
        self.meta = meta if meta is not None else read_meta(uri)
        self.split_meta = self.meta.split(split)
        self.split, self.batch_size = split, batch_size
        self.rank, self.world_size, self.seed = rank, world_size, seed
        self.shuffle, self.epoch, self.drop_last = shuffle, epoch, drop_last
        self.augment = augment and self.meta.augmentation.get("mode") == "on_the_fly"
        self.verify_checksums, self.with_index = verify_checksums, with_index
        self.prefetch = prefetch
        self.window = batch_size * max(1, math.ceil(shuffle_buffer / batch_size))
        n = self.split_meta.num_rows
        if drop_last:
            self.rows_per_rank = n // world_size
            self.num_batches = self.rows_per_rank // batch_size
        else:
            self.rows_per_rank = math.ceil(n / world_size)
            self.num_batches = math.ceil(self.rows_per_rank / batch_size)
        if start_batch > self.num_batches:
            raise ValueError(
                f"start_batch {start_batch} is past the end of the epoch ({self.num_batches} batches)"
            )
        self.start_batch = start_batch
        # Units (row groups) in storage order: (shard index, row group, first row, rows).
        units, first = [], 0
        for si, sh in enumerate(self.split_meta.shards):
            for gi, rows in enumerate(sh.row_groups):
                units.append((si, gi, first, rows))
                first += rows
        self._units = np.array(units, dtype=np.int64).reshape(-1, 4)

    def __len__(self) -> int:
        return self.num_batches - self.start_batch

    def set_epoch(self, epoch: int, start_batch: int = 0) -> ShardStream:
        """The same stream for another epoch (no metadata re-read)."""
        return ShardStream(
            self.uri, self.split, self.batch_size, self.rank, self.world_size, self.seed,
            self.shuffle, self.augment, epoch, start_batch, self.drop_last,
            shuffle_buffer=self.window, verify_checksums=self.verify_checksums,
            with_index=self.with_index, prefetch=self.prefetch, meta=self.meta,
        )  # fmt: skip

    # ------------------------------------------------------------------ layout

    def _unit_order(self) -> np.ndarray:
        if not self.shuffle or len(self._units) < 2:
            return self._units
        key = example_keys(self.seed, self.epoch, np.array([0]))
        return self._units[random_permutations(key, len(self._units), stream=101)[0]]

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
        units = self._unit_order()
        ends = np.cumsum(units[:, 3]) if len(units) else np.zeros(0, np.int64)
        n, B = self.split_meta.num_rows, self.batch_size
        lo = self.rank * self.rows_per_rank
        total = self.num_batches * B  # positions this rank covers, padded if not drop_last
        shards: dict[int, _Shard] = {}
        cache: dict = {}
        skip_to = self.start_batch * B
        for w_start in range(skip_to - skip_to % self.window, total, self.window):
            w_end = min(total, w_start + self.window)
            b = min(lo + w_end, lo + self.rows_per_rank, n)  # real rows of this window: [a, b)
            a = min(lo + w_start, b)
            cols, rows = self._read(units, ends, a, b, shards, cache)
            if self.shuffle and len(rows) > 1:
                key = example_keys(self.seed, self.epoch, np.array([a]))
                perm = random_permutations(key, len(rows), stream=102)[0]
                cols = {k: v[perm] for k, v in cols.items()}
                rows = rows[perm]
            x, y, pid = cols["inputs"], cols["labels"], cols["puzzle_identifier"]
            if self.augment and len(rows):
                keys = example_keys(self.seed, self.epoch, rows)
                x, y, pid = AUGMENT[self.meta.task](x, y, pid, keys, self.meta, self.split)
            x = x.astype(np.int64)
            y = y.astype(np.int64)
            if self.meta.ignore_label_id is not None:
                y[y == self.meta.ignore_label_id] = IGNORE
            pid = pid.astype(np.int64)
            pad = (w_end - w_start) - len(rows)
            if pad:
                L = self.meta.seq_len
                x = np.concatenate([x, np.full((pad, L), self.meta.pad_id, np.int64)])
                y = np.concatenate([y, np.full((pad, L), IGNORE, np.int64)])
                pid = np.concatenate([pid, np.full(pad, self.meta.blank_identifier_id, np.int64)])
                rows = np.concatenate([rows, np.full(pad, -1, np.int64)])
            for s in range(max(0, skip_to - w_start), w_end - w_start, B):
                batch = {
                    "inputs": x[s : s + B],
                    "labels": y[s : s + B],
                    "puzzle_identifiers": pid[s : s + B],
                }
                if self.with_index:
                    batch["index"] = rows[s : s + B]
                yield batch

    def _read(self, units, ends, a: int, b: int, shards, cache):
        """Rows at stream positions [a, b): columns and each row's index in the split."""
        L = self.meta.seq_len
        parts, idx = [], []
        if b > a:
            u = int(np.searchsorted(ends, a, side="right"))
            pos = a
            while pos < b:
                si, gi, first, count = (int(v) for v in units[u])
                u_start = int(ends[u]) - count
                lo, hi = pos - u_start, min(b, int(ends[u])) - u_start
                if (si, gi) not in cache:
                    if si not in shards:
                        shards[si] = _Shard(
                            self.store,
                            self.split_meta.shards[si],
                            self.meta.columns,
                            self.verify_checksums,
                        )
                    cache.clear()  # keep one row group: windows may split one
                    cache[(si, gi)] = shards[si].read(gi, L)
                data = cache[(si, gi)]
                parts.append({k: v[lo:hi] for k, v in data.items()})
                idx.append(np.arange(first + lo, first + hi, dtype=np.int64))
                pos = u_start + hi
                u += 1
        if not parts:
            empty = np.zeros((0, L), np.uint8)
            return {
                "inputs": empty,
                "labels": empty,
                "puzzle_identifier": np.zeros(0, np.int32),
            }, np.zeros(0, np.int64)
        cols = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        return cols, np.concatenate(idx)
