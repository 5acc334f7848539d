"""Random access to a split's rows: shards opened and checked against meta.json, decoded row
groups kept in memory, rows taken by their index in the split.

    reader = RowReader(store, meta, "train")
    cols = reader.take(rows_R)      # {"inputs": uint8 [R, L], "labels": ..., "puzzle_identifier"}
    groups = reader.groups()        # the split's puzzle groups (pipeline/data/sampler.py)

A global permutation touches every row group in every window, so rows are served from decoded
row groups held in memory: TRM datasets are small (one byte per token; Sudoku-Extreme-1k with
1000 stored variants per puzzle is 160 MB decoded), so after the first epoch nothing is read
again. A reader (and its cache) serves every epoch of one training stream; it is bounded by
TRM_DATA_CACHE_MB (default 4096); past it the least recently used row groups are dropped and
read again when needed. On S3 a row group loads with one ranged GET.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import threading
from collections import OrderedDict

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.data.errors import DatasetError, StorageError
from pipeline.data.meta import DatasetMeta, ShardMeta
from pipeline.data.sampler import Groups
from pipeline.data.shards import column_types

TOKENS = ["inputs", "labels", "puzzle_identifier"]


def check_size(store, sh: ShardMeta) -> int:
    """The shard's size in storage; DatasetError unless it is the size meta.json records."""
    size = store.size(sh.path)
    if size != sh.num_bytes:
        raise DatasetError(
            f"shard {store.uri}/{sh.path}: size {size} bytes does not match {sh.num_bytes} in "
            "meta.json (corrupted or replaced)"
        )
    return size


class Shard:
    """One open shard, checked against its metadata when opened."""

    def __init__(self, store, sh: ShardMeta, columns: dict[str, str], verify_checksum: bool):
        self.name = f"{store.uri}/{sh.path}"
        try:
            size = check_size(store, sh)
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

    def read(self, row_group: int, columns: list[str], seq_len: int) -> dict[str, np.ndarray]:
        """`columns` of one row group as numpy arrays (token columns as [rows, seq_len])."""
        try:
            if self.raw is not None:
                rg = self.file.metadata.row_group(row_group)
                spans = []
                for j in range(rg.num_columns):
                    col = rg.column(j)
                    if col.path_in_schema.split(".")[0] in columns:
                        start = col.data_page_offset
                        if col.has_dictionary_page and col.dictionary_page_offset:
                            start = min(start, col.dictionary_page_offset)
                        spans.append((start, start + col.total_compressed_size))
                self.raw.prefetch(min(a for a, _ in spans), max(b for _, b in spans))
            t = self.file.read_row_group(row_group, columns=columns)
        except (OSError, pa.ArrowException, UnicodeDecodeError) as e:
            if isinstance(e, StorageError):
                raise
            raise DatasetError(f"shard {self.name}, row group {row_group}: {e}") from e
        out = {}
        for name in columns:
            col = t.column(name).combine_chunks()
            if pa.types.is_fixed_size_list(col.type):
                out[name] = col.flatten().to_numpy().reshape(-1, seq_len)
            else:
                out[name] = col.to_numpy()
        return out


class RowGroupCache:
    """Decoded row groups by key, least recently used dropped past `max_bytes`; thread-safe."""

    def __init__(self, max_bytes: int):
        self.max_bytes, self.bytes = max_bytes, 0
        self._items: OrderedDict = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key, load):
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        value = load()  # outside the lock: another thread may read another row group meanwhile
        size = _nbytes(value)
        with self._lock:
            if key not in self._items:
                self._items[key] = value
                self.bytes += size
            while self.bytes > self.max_bytes and len(self._items) > 1:
                _, old = self._items.popitem(last=False)
                self.bytes -= _nbytes(old)
        return value

    def drop(self, key) -> None:
        with self._lock:
            if key in self._items:
                self.bytes -= _nbytes(self._items.pop(key))


def _nbytes(value: dict) -> int:
    return sum(getattr(v, "nbytes", 0) for v in value.values())


def _cache_bytes() -> int:
    raw = os.environ.get("TRM_DATA_CACHE_MB", "4096")
    try:
        mb = int(raw)
    except ValueError:
        raise ValueError(f"TRM_DATA_CACHE_MB must be an integer (MB), got {raw!r}") from None
    return max(mb, 0) << 20


class RowReader:
    """Rows of one split by index, through a cache of decoded row groups."""

    def __init__(self, store, meta: DatasetMeta, split: str, verify_checksums: bool = False):
        self.store, self.meta, self.split = store, meta, split
        self.split_meta = meta.split(split)
        self.verify_checksums = verify_checksums
        units, first = [], 0
        for si, sh in enumerate(self.split_meta.shards):
            for gi, rows in enumerate(sh.row_groups):
                units.append((si, gi))
                first += rows
        self._units = units
        sizes = [r for sh in self.split_meta.shards for r in sh.row_groups]
        self._first = np.r_[0, np.cumsum(sizes, dtype=np.int64)]
        self._shards: dict[int, Shard] = {}
        self._lock = threading.Lock()
        self._cache = RowGroupCache(_cache_bytes())
        self._groups: Groups | None = None

    def _shard(self, si: int) -> Shard:
        with self._lock:  # a shard's file handle is not shared between threads mid-read
            if si not in self._shards:
                self._shards[si] = Shard(self.store, self.split_meta.shards[si],
                                         self.meta.columns, self.verify_checksums)  # fmt: skip
            return self._shards[si]

    def check_shards(self) -> None:
        """Every shard is still the size meta.json records (a stat or HEAD each): streams call
        it once per epoch, as rows may come from memory and a replaced shard would go unseen."""
        for sh in self.split_meta.shards:
            try:
                check_size(self.store, sh)
            except FileNotFoundError:
                raise DatasetError(f"shard {self.store.uri}/{sh.path} is missing") from None

    def _unit(self, u: int, columns: list[str], what: str) -> dict[str, np.ndarray]:
        si, gi = self._units[u]

        def load():
            shard = self._shard(si)
            with self._lock:
                return shard.read(gi, columns, self.meta.seq_len)

        return self._cache.get((u, what), load)

    def groups(self) -> Groups:
        """The split's groups from its `group` (and `variant`) columns, read once per reader."""
        if self._groups is None:
            cols = ["group"] + (["variant"] if "variant" in self.meta.columns else [])
            parts = [self._unit(u, cols, "groups") for u in range(len(self._units))]
            got = {c: np.concatenate([p[c] for p in parts]) if parts else np.zeros(0, np.int64)
                   for c in cols}  # fmt: skip
            self._groups = Groups.from_columns(got["group"], got.get("variant"))
            for u in range(len(self._units)):
                self._cache.drop((u, "groups"))
        return self._groups

    def take(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        """Token columns of `rows` (indices in the split), in the order given."""
        rows = np.asarray(rows, np.int64)
        L = self.meta.seq_len
        out = {"inputs": np.empty((len(rows), L), np.uint8),
               "labels": np.empty((len(rows), L), np.uint8),
               "puzzle_identifier": np.empty(len(rows), np.int32)}  # fmt: skip
        unit = np.searchsorted(self._first, rows, side="right") - 1
        order = np.argsort(unit, kind="stable")
        bounds = np.flatnonzero(np.r_[True, np.diff(unit[order]) != 0, True])
        for a, b in itertools.pairwise(bounds):
            where = order[a:b]
            u = int(unit[where[0]])
            data = self._unit(u, TOKENS, "tokens")
            local = rows[where] - self._first[u]
            for k in out:
                out[k][where] = data[k][local]
        return out
