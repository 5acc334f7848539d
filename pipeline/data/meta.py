"""Dataset metadata: meta.json at the dataset root, written last, so its presence marks a complete
dataset. It records the task and token encoding, the model-facing sizes (seq_len, vocab_size,
pad/ignore ids, number of puzzle identifiers), how augmentation works, how the data was made
(generator, version, seed, parameters) and, per split, every shard with its row count, row-group
sizes, byte size and SHA-256.

    meta = read_meta("s3://bucket/sudoku-9x9")
    meta.seq_len, meta.vocab_size, meta.splits["train"].num_rows, meta.splits["train"].shards[0].sha256
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import ConfigDict, Field, ValidationError, field_validator, model_validator

from pipeline.data.errors import DatasetError
from pipeline.data.storage import absolute, is_local, open_storage
from trm.config import StrictConfig, one_line

FORMAT_VERSION = 1
META_FILE = "meta.json"


class _Meta(StrictConfig):
    """Metadata is read, never edited: frozen."""

    model_config = ConfigDict(frozen=True)


class ShardMeta(_Meta):
    path: str
    """Shard path relative to the dataset root, e.g. 'train/part-00000-<build>.parquet'."""
    num_rows: int
    num_bytes: int
    sha256: str
    row_groups: list[int]
    """Rows in each Parquet row group, in file order (the reader's unit of work)."""


class SplitMeta(_Meta):
    num_rows: int
    """Examples in the split (before on-the-fly augmentation)."""
    num_groups: int
    """Distinct `group` values: an original puzzle with its augmented copies is one group."""
    shards: list[ShardMeta]


class DatasetMeta(_Meta):
    task: str = Field(min_length=1)
    """The puzzle family ('sudoku', 'maze', 'arc', ...): its entry in the task registry
    (pipeline/tasks) says how the rows are augmented, checked and read."""
    seq_len: int = Field(gt=0)
    vocab_size: int = Field(gt=0)
    pad_id: int
    """Input token used for padding (0 for every task)."""
    ignore_label_id: int | None
    """Label token left out of the loss; the reader maps it to -100 (0 = PAD for every task)."""
    blank_identifier_id: int
    """Puzzle identifier of padding rows (0)."""
    num_puzzle_identifiers: int = Field(gt=0)
    """Size of the puzzle-embedding table: every identifier the reader can yield is below this."""
    encoding: dict
    """Task encoding details, e.g. {'size': 9, 'box': [3, 3]} or {'charset': '# SGo'}."""
    augmentation: dict
    """{'mode': 'on_the_fly' | 'materialised' | 'none', ...task parameters (ARC: num_aug,
    aug_seed, identifier layout)}."""
    generator: dict
    """How the data was made: {'name', 'version', 'seed', 'params': {...}, 'source'}."""
    columns: dict[str, str]
    """Parquet column name -> Arrow type string; shards must match exactly."""
    splits: dict[str, SplitMeta]
    extra: dict = Field(default_factory=dict)
    """Task-specific tables small enough for meta (ARC: task names per base identifier)."""
    format_version: int = FORMAT_VERSION

    @field_validator("format_version")
    @classmethod
    def _supported(cls, v: int) -> int:
        if v != FORMAT_VERSION:
            raise DatasetError(f"{v} is not supported (this code reads {FORMAT_VERSION})")
        return v

    @model_validator(mode="after")
    def _check(self) -> DatasetMeta:
        for name, s in self.splits.items():
            if sum(sh.num_rows for sh in s.shards) != s.num_rows:
                raise DatasetError(
                    f"split {name!r}: shard row counts do not add up to {s.num_rows}"
                )
            for sh in s.shards:
                if (
                    sh.num_bytes < 0
                    or sum(sh.row_groups) != sh.num_rows
                    or min(sh.row_groups, default=1) < 1
                ):
                    raise DatasetError(
                        f"split {name!r} shard {sh.path!r}: row groups {sh.row_groups[:8]} do "
                        f"not add up to its {sh.num_rows} rows (or a size is negative)"
                    )
        return self

    def to_json(self) -> str:
        return json.dumps(self.model_dump(), indent=1, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict, where: str = "meta.json") -> DatasetMeta:
        """Metadata from parsed JSON; a `DatasetError` naming `where` and the key when a key is
        unknown or missing, a value has the wrong type or the sizes do not add up."""
        if not isinstance(d, dict):
            raise DatasetError(f"{where}: expected an object, got {type(d).__name__}")
        try:
            return cls.model_validate(d)
        except ValidationError as e:
            raise DatasetError(f"{where}: {one_line(e, cls)}") from None

    def split(self, name: str) -> SplitMeta:
        if name not in self.splits:
            raise DatasetError(f"split {name!r} not in dataset; it has {sorted(self.splits)}")
        return self.splits[name]


def read_meta(uri: str) -> DatasetMeta:
    """Read and validate `<uri>/meta.json`; DatasetError if there is no complete dataset at uri."""
    store = open_storage(uri)
    try:
        raw = store.read_bytes(META_FILE)
    except FileNotFoundError:
        raise DatasetError(
            f"no dataset at {store.uri}: {META_FILE} not found (a build that did not finish "
            "leaves no meta.json)"
        ) from None
    try:
        d = json.loads(raw)
    except json.JSONDecodeError as e:
        raise DatasetError(f"{store.uri}/{META_FILE} is not valid JSON: {e}") from e
    return DatasetMeta.from_dict(d, where=f"{store.uri}/{META_FILE}")


# (uri, version) -> metadata; see `cached_meta`
_META_CACHE: dict[str, tuple[object, DatasetMeta]] = {}


def cached_meta(uri: str) -> DatasetMeta:
    """`read_meta(uri)`, read once per process and dataset: a driver checks every trial's model
    against its dataset and prices every trial in FLOPs, which needs the same small file many
    times. A local dataset is read again when its meta.json changed (size or mtime: a rebuild in
    another process); an s3:// one is forgotten when this process writes it (`forget_meta`)."""
    version: object = None
    uri = absolute(uri)  # 'data/x' and '/abs/data/x' are one dataset
    if is_local(uri):  # a stat is far cheaper than reading and validating
        try:
            st = (Path(uri) / META_FILE).stat()
            version = (st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            _META_CACHE.pop(uri, None)
            return read_meta(uri)  # raises the DatasetError naming the missing file
    hit = _META_CACHE.get(uri)
    if hit is not None and hit[0] == version:
        return hit[1]
    meta = read_meta(uri)
    _META_CACHE[uri] = (version, meta)
    return meta


def forget_meta(uri: str) -> None:
    """Drop `uri` from `cached_meta`'s cache (a dataset is being written there)."""
    _META_CACHE.pop(absolute(uri), None)
