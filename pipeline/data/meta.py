"""Dataset metadata: meta.json at the dataset root, written last, so its presence marks a complete
dataset. It records the task and token encoding, the model-facing sizes (seq_len, vocab_size,
pad/ignore ids, number of puzzle identifiers), how augmentation works, how the data was made
(generator, version, seed, parameters) and, per split, every shard with its row count, row-group
sizes, byte size and SHA-256.

    meta = read_meta("s3://bucket/sudoku-9x9")
    meta.seq_len, meta.vocab_size, meta.splits["train"].num_rows, meta.splits["train"].shards[0].sha256
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pipeline.data.errors import DatasetError
from pipeline.data.storage import absolute, is_local, open_storage
from trm.config import is_int

FORMAT_VERSION = 1
META_FILE = "meta.json"
TASKS = ("sudoku", "maze", "arc")


@dataclass(frozen=True)
class ShardMeta:
    path: str
    """Shard path relative to the dataset root, e.g. 'train/part-00000-<build>.parquet'."""
    num_rows: int
    num_bytes: int
    sha256: str
    row_groups: list[int]
    """Rows in each Parquet row group, in file order (the reader's unit of work)."""


@dataclass(frozen=True)
class SplitMeta:
    num_rows: int
    """Examples in the split (before on-the-fly augmentation)."""
    num_groups: int
    """Distinct `group` values: an original puzzle with its augmented copies is one group."""
    shards: list[ShardMeta]


@dataclass(frozen=True)
class DatasetMeta:
    task: str
    """'sudoku', 'maze' or 'arc'."""
    seq_len: int
    vocab_size: int
    pad_id: int
    """Input token used for padding (0 for every task)."""
    ignore_label_id: int | None
    """Label token left out of the loss; the reader maps it to -100 (0 = PAD for every task)."""
    blank_identifier_id: int
    """Puzzle identifier of padding rows (0)."""
    num_puzzle_identifiers: int
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
    extra: dict = field(default_factory=dict)
    """Task-specific tables small enough for meta (ARC: task names per base identifier)."""
    format_version: int = FORMAT_VERSION

    def __post_init__(self):
        if self.task not in TASKS:
            raise DatasetError(f"unknown task {self.task!r}; expected one of {TASKS}")
        if self.seq_len <= 0 or self.vocab_size <= 0 or self.num_puzzle_identifiers <= 0:
            raise DatasetError(
                f"seq_len, vocab_size and num_puzzle_identifiers must be positive: {self.seq_len}, "
                f"{self.vocab_size}, {self.num_puzzle_identifiers}"
            )
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
        self._check_augmentation()

    def _check_augmentation(self) -> None:
        """What the reader's on-the-fly augmentation reads from meta is there and consistent."""
        if self.augmentation.get("mode") != "on_the_fly":
            return
        if self.task in ("sudoku", "maze"):
            key = "size" if self.task == "sudoku" else "side"
            n = self.encoding.get(key)
            if not is_int(n) or n < 2 or n * n != self.seq_len:
                raise DatasetError(
                    f"encoding.{key} = {n!r} does not fit seq_len {self.seq_len} (a "
                    f"{self.task} of side n has n*n cells)"
                )
        else:
            a = self.augmentation
            if not (
                is_int(a.get("num_aug"))
                and a["num_aug"] >= 0
                and is_int(a.get("aug_seed"))
                and isinstance(a.get("translate"), bool)
            ):
                raise DatasetError(
                    "augmentation needs integer num_aug >= 0 and aug_seed and a boolean "
                    f"translate for on-the-fly ARC, got {a}"
                )

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict, where: str = "meta.json") -> DatasetMeta:
        _check_keys(cls, d, where)
        d = dict(d)
        splits = {}
        for name, s in d.pop("splits").items():
            _check_keys(SplitMeta, s, f"{where} split {name!r}")
            shards = []
            for i, sh in enumerate(s["shards"]):
                _check_keys(ShardMeta, sh, f"{where} split {name!r} shard {i}")
                shards.append(ShardMeta(**sh))
            splits[name] = SplitMeta(s["num_rows"], s["num_groups"], shards)
        if d.get("format_version", FORMAT_VERSION) != FORMAT_VERSION:
            raise DatasetError(
                f"{where}: format_version {d['format_version']} is not supported "
                f"(this code reads {FORMAT_VERSION})"
            )
        try:
            return cls(splits=splits, **d)
        except DatasetError as e:
            raise DatasetError(f"{where}: {e}") from None

    def split(self, name: str) -> SplitMeta:
        if name not in self.splits:
            raise DatasetError(f"split {name!r} not in dataset; it has {sorted(self.splits)}")
        return self.splits[name]


def _fits(v, hint) -> bool:
    """`v` (parsed JSON) has the type `hint` of a metadata field (nested dataclasses: a dict,
    checked on its own)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is int:
        return is_int(v)
    if hint is type(None):
        return v is None
    if origin in (types.UnionType, typing.Union):
        return any(_fits(v, a) for a in args)
    if dataclasses.is_dataclass(hint) or hint is dict:
        return isinstance(v, dict)
    if origin is list:
        return isinstance(v, list) and all(_fits(x, args[0]) for x in v)
    if origin is dict:
        return isinstance(v, dict) and all(_fits(x, args[1]) for x in v.values())
    return isinstance(v, hint)


def _check_keys(cls, d, where: str) -> None:
    if not isinstance(d, dict):
        raise DatasetError(f"{where}: expected an object, got {type(d).__name__}")
    names = {f.name for f in dataclasses.fields(cls)}
    required = {
        f.name
        for f in dataclasses.fields(cls)
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    }
    if unknown := set(d) - names:
        raise DatasetError(f"{where}: unknown key(s) {sorted(unknown)}")
    if missing := required - set(d):
        raise DatasetError(f"{where}: missing key(s) {sorted(missing)}")
    hints = typing.get_type_hints(cls)
    for key, value in d.items():
        if not _fits(value, hints[key]):
            raise DatasetError(f"{where}: {key} must be {hints[key]}, got {value!r:.80}")


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
