"""Writing a dataset: splits of Parquet shards plus meta.json, committed atomically.

    w = DatasetWriter(uri, seq_len=81, extra_columns={"rating": pa.int32()})
    w.add("train", inputs=x_RL, labels=y_RL, puzzle_identifier=pid_R, group=g_R, rating=r_R)
    meta = w.commit(task="sudoku", vocab_size=11, ...)

Columns: `inputs`, `labels` (fixed_size_list<uint8>[seq_len], raw tokens), `puzzle_identifier`
(int32), `group` (int64: an original puzzle and its augmented copies share it), then any task
columns (a hardness rating, a path length; ARC's `variant`). `group`, with `variant` where one
variant is several rows, is how a dataset declares its puzzle groups to the training sampler
(pipeline/data/sampler.py: one variant per group per epoch); write a fresh value per row for a
dataset without groups. Shards hold `rows_per_shard` rows in row groups of
`row_group_rows`; the row group is the reader's unit of work, so a dataset of one shard can still
be split over many workers. Shards are zstd-compressed with Parquet page checksums (verified on
read), and meta.json records each shard's size and SHA-256.

Atomicity: every shard name carries a fresh build id, each file write is atomic, and meta.json,
which is what makes a dataset visible, is written last. A crash leaves stray shards and no new
meta.json: an old dataset at the same URI stays intact and readable, and a new URI has nothing
that looks complete. After the commit, shards of the replaced dataset are deleted. A build that
fails with an error calls `abort()`, which deletes the shards it wrote (and a local directory it
created), so nothing of it is left.
"""

from __future__ import annotations

import hashlib
import json
import uuid

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.data.errors import DatasetError
from pipeline.data.meta import META_FILE, DatasetMeta, ShardMeta, SplitMeta, forget_meta
from pipeline.data.storage import open_storage

BASE_COLUMNS = ("inputs", "labels", "puzzle_identifier", "group")


def schema(seq_len: int, extra_columns: dict[str, pa.DataType] | None = None) -> pa.Schema:
    tokens = pa.list_(pa.uint8(), seq_len)
    fields = [
        pa.field("inputs", tokens, nullable=False),
        pa.field("labels", tokens, nullable=False),
        pa.field("puzzle_identifier", pa.int32(), nullable=False),
        pa.field("group", pa.int64(), nullable=False),
    ]
    for name, typ in (extra_columns or {}).items():
        if name in BASE_COLUMNS:
            raise ValueError(f"extra column {name!r} clashes with a base column")
        fields.append(pa.field(name, typ, nullable=False))
    return pa.schema(fields)


def type_name(t: pa.DataType) -> str:
    """Arrow type as a string that survives a Parquet round trip (list item names differ)."""
    if pa.types.is_fixed_size_list(t):
        return f"fixed_size_list<{t.value_type}>[{t.list_size}]"
    return str(t)


def column_types(s: pa.Schema) -> dict[str, str]:
    return {f.name: type_name(f.type) for f in s}


class DatasetWriter:
    """Accumulate rows per split, write shards as they fill, then commit meta.json."""

    def __init__(
        self,
        uri: str,
        *,
        seq_len: int,
        extra_columns: dict[str, pa.DataType] | None = None,
        rows_per_shard: int = 100_000,
        row_group_rows: int = 4096,
        overwrite: bool = False,
    ):
        if rows_per_shard < 1 or row_group_rows < 1:
            raise ValueError(
                f"rows_per_shard and row_group_rows must be >= 1, got {rows_per_shard}, "
                f"{row_group_rows}"
            )
        self.store = open_storage(uri)
        self.store.check_writable()  # missing bucket / credentials / endpoint: fail before work
        self.previous: DatasetMeta | None = None
        if self.store.exists(META_FILE):
            if not overwrite:
                raise DatasetError(
                    f"{self.store.uri} already holds a dataset; pass overwrite=True "
                    "(--overwrite) to replace it"
                )
            try:
                self.previous = DatasetMeta.from_dict(json.loads(self.store.read_bytes(META_FILE)))
            except (ValueError, KeyError):
                self.previous = None  # unreadable old meta: replace it, leave its files alone
        self.seq_len = seq_len
        self.schema = schema(seq_len, extra_columns)
        self.rows_per_shard, self.row_group_rows = rows_per_shard, row_group_rows
        self.build_id = uuid.uuid4().hex[:8]
        self._pending: dict[str, list[dict[str, np.ndarray]]] = {}
        self._pending_rows: dict[str, int] = {}
        self._shards: dict[str, list[ShardMeta]] = {}
        self._groups: dict[str, set] = {}

    def add(self, split: str, **columns: np.ndarray) -> None:
        names = set(self.schema.names)
        if set(columns) != names:
            raise ValueError(
                f"columns {sorted(columns)} do not match the schema {sorted(names)} "
                f"(missing {sorted(names - set(columns))}, extra {sorted(set(columns) - names)})"
            )
        n = len(columns["inputs"])
        for name in ("inputs", "labels"):
            a = np.asarray(columns[name])
            if a.shape != (n, self.seq_len):
                raise ValueError(f"{name} must have shape [{n}, {self.seq_len}], got {a.shape}")
            if a.min(initial=0) < 0 or a.max(initial=0) > 255:
                raise ValueError(f"{name} tokens must fit in uint8 (0..255)")
        self._pending.setdefault(split, []).append({k: np.asarray(v) for k, v in columns.items()})
        self._pending_rows[split] = self._pending_rows.get(split, 0) + n
        self._groups.setdefault(split, set()).update(np.unique(columns["group"]).tolist())
        self._shards.setdefault(split, [])
        while self._pending_rows[split] >= self.rows_per_shard:
            self._flush(split, self.rows_per_shard)

    def _flush(self, split: str, rows: int) -> None:
        chunks = self._pending.pop(split, [])
        cols = {k: np.concatenate([c[k] for c in chunks]) for k in self.schema.names}
        head = {k: v[:rows] for k, v in cols.items()}
        tail = {k: v[rows:] for k, v in cols.items()}
        if len(tail["inputs"]):
            self._pending[split] = [tail]
        self._pending_rows[split] = len(tail["inputs"])
        self._write_shard(split, head)

    def _write_shard(self, split: str, cols: dict[str, np.ndarray]) -> None:
        arrays = []
        for f in self.schema:
            v = cols[f.name]
            if pa.types.is_fixed_size_list(f.type):
                flat = pa.array(np.ascontiguousarray(v, dtype=np.uint8).reshape(-1))
                arrays.append(pa.FixedSizeListArray.from_arrays(flat, self.seq_len))
            else:
                arrays.append(pa.array(v, type=f.type))
        table = pa.Table.from_arrays(arrays, schema=self.schema)
        sink = pa.BufferOutputStream()
        pq.write_table(
            table,
            sink,
            row_group_size=self.row_group_rows,
            compression="zstd",
            write_page_checksum=True,
        )
        data = sink.getvalue().to_pybytes()
        md = pq.ParquetFile(pa.BufferReader(data)).metadata
        index = len(self._shards[split])
        path = f"{split}/part-{index:05d}-{self.build_id}.parquet"
        self.store.write_bytes(path, data)
        self._shards[split].append(
            ShardMeta(
                path=path,
                num_rows=table.num_rows,
                num_bytes=len(data),
                sha256=hashlib.sha256(data).hexdigest(),
                row_groups=[md.row_group(i).num_rows for i in range(md.num_row_groups)],
            )
        )

    def abort(self) -> None:
        """Drop this build: delete the shards written so far and the pending rows; on local
        disk also the directories that leaves empty, and the dataset directory if this writer
        created it. An old dataset at the URI is untouched (its meta.json was never replaced)."""
        written = [sh.path for shards in self._shards.values() for sh in shards]
        self._shards, self._pending, self._pending_rows = {}, {}, {}
        self.store.discard(written)

    def commit(self, splits=("train", "test"), **fields) -> DatasetMeta:
        """Write remaining rows and meta.json (the commit point); returns the metadata."""
        for split in splits:
            self._shards.setdefault(split, [])
        for split in list(self._pending):
            if self._pending_rows.get(split):
                self._flush(split, self._pending_rows[split])
        meta = DatasetMeta(
            columns=column_types(self.schema),
            splits={
                s: SplitMeta(
                    num_rows=sum(x.num_rows for x in shards),
                    num_groups=len(self._groups.get(s, ())),
                    shards=shards,
                )
                for s, shards in self._shards.items()
            },
            **fields,
        )
        self.store.write_bytes(META_FILE, meta.to_json().encode())
        forget_meta(self.store.uri)  # this process may have read the dataset it replaces
        if self.previous is not None:
            keep = {sh.path for s in meta.splits.values() for sh in s.shards}
            for s in self.previous.splits.values():
                for sh in s.shards:
                    if sh.path not in keep:
                        self.store.delete(sh.path)
        return meta


def verify_dataset(uri: str) -> DatasetMeta:
    """Check every shard's size and SHA-256 against meta.json; DatasetError names the bad shard."""
    from pipeline.data.meta import read_meta

    meta = read_meta(uri)
    store = open_storage(uri)
    for split in meta.splits.values():
        for sh in split.shards:
            try:
                data = store.read_bytes(sh.path)
            except FileNotFoundError:
                raise DatasetError(f"shard {store.uri}/{sh.path} is missing") from None
            digest = hashlib.sha256(data).hexdigest()
            if len(data) != sh.num_bytes or digest != sh.sha256:
                raise DatasetError(
                    f"shard {store.uri}/{sh.path}: checksum mismatch (size {len(data)} vs "
                    f"{sh.num_bytes} in meta, sha256 {digest[:12]}… vs {sh.sha256[:12]}…)"
                )
    return meta
