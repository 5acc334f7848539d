"""Corrupted, mismatched or half-written datasets give errors that name the problem."""

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipeline.data import DatasetError, ShardStream, build_sudoku, read_meta, verify_dataset
from pipeline.data.shards import DatasetWriter


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    uri = tmp_path_factory.mktemp("clean") / "s9"
    build_sudoku(str(uri), size=9, num_train=200, num_test=20, seed=0, min_clues=36,
                 row_group_rows=50)  # fmt: skip
    return uri


@pytest.fixture
def copy(clean, tmp_path):
    dst = tmp_path / "copy"
    shutil.copytree(clean, dst)
    shard = dst / read_meta(str(dst)).splits["train"].shards[0].path
    return dst, shard


def _read_all(uri):
    return sum(1 for _ in ShardStream(str(uri), batch_size=10, shuffle=False, augment=False))


def test_flipped_bytes_are_caught_by_page_checksums_and_sha256(copy):
    uri, shard = copy
    data = bytearray(shard.read_bytes())
    mid = len(data) // 3
    data[mid : mid + 8] = bytes(b ^ 0xFF for b in data[mid : mid + 8])
    shard.write_bytes(bytes(data))
    with pytest.raises(DatasetError, match=rf"shard .*{shard.name}"):
        _read_all(uri)
    with pytest.raises(DatasetError, match=rf"shard .*{shard.name}: checksum mismatch"):
        verify_dataset(str(uri))


def test_truncated_shard_is_caught_before_reading(copy):
    uri, shard = copy
    shard.write_bytes(shard.read_bytes()[:-100])
    with pytest.raises(DatasetError, match=rf"{shard.name}: size \d+ bytes does not match"):
        _read_all(uri)


def test_missing_shard_is_named(copy):
    uri, shard = copy
    shard.unlink()
    with pytest.raises(DatasetError, match=rf"shard .*{shard.name} is missing"):
        _read_all(uri)


def test_schema_mismatch_names_the_shard(copy):
    uri, shard = copy
    t = pq.read_table(shard).rename_columns(
        ["inputs", "labels", "puzzle_identifier", "group", "level"]
    )
    pq.write_table(t, shard)
    meta = json.loads((uri / "meta.json").read_text())
    meta["splits"]["train"]["shards"][0]["num_bytes"] = shard.stat().st_size  # as if built together
    (uri / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(
        DatasetError, match=rf"shard .*{shard.name}: schema .*level.* does not match"
    ):
        _read_all(uri)


def test_row_count_mismatch_names_the_shard(copy):
    uri, shard = copy
    t = pq.read_table(shard)
    pq.write_table(t, shard, row_group_size=40)  # same rows, other row groups
    meta = json.loads((uri / "meta.json").read_text())
    meta["splits"]["train"]["shards"][0]["num_bytes"] = shard.stat().st_size
    (uri / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(DatasetError, match=rf"{shard.name}: 200 rows in row groups \[40"):
        _read_all(uri)


def test_bad_meta_json(copy):
    uri, _ = copy
    meta = json.loads((uri / "meta.json").read_text())
    meta["sequence_length"] = 81
    (uri / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(
        DatasetError,
        match=r"meta\.json: unknown config key 'sequence_length'",
    ):
        read_meta(str(uri))
    del meta["sequence_length"]
    meta["splits"]["train"]["shards"][0]["num_rows"] = "3"
    (uri / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(
        DatasetError, match=r"splits\.train\.shards\[0\]\.num_rows: must be an integer, got '3'"
    ):
        read_meta(str(uri))
    (uri / "meta.json").write_text("{")
    with pytest.raises(DatasetError, match="not valid JSON"):
        read_meta(str(uri))


def test_a_crashed_build_leaves_nothing_that_looks_complete(clean, tmp_path, monkeypatch):
    real = DatasetWriter._write_shard
    calls = []

    def crash_on_second(self, split, cols):
        calls.append(split)
        if len(calls) == 2:
            raise KeyboardInterrupt("killed mid-build")
        return real(self, split, cols)

    monkeypatch.setattr(DatasetWriter, "_write_shard", crash_on_second)
    new = tmp_path / "new"
    with pytest.raises(KeyboardInterrupt):
        build_sudoku(str(new), size=4, num_train=100, num_test=10, rows_per_shard=40)
    assert any(new.rglob("*.parquet")) and not (new / "meta.json").exists()
    with pytest.raises(DatasetError, match="no dataset at"):
        read_meta(str(new))
    # Overwriting an existing dataset and crashing leaves the old one intact and readable.
    old = tmp_path / "old"
    shutil.copytree(clean, old)
    before = (old / "meta.json").read_text()
    calls.clear()
    with pytest.raises(KeyboardInterrupt):
        build_sudoku(str(old), size=4, num_train=100, num_test=10, rows_per_shard=40,
                     overwrite=True)  # fmt: skip
    assert (old / "meta.json").read_text() == before
    verify_dataset(str(old))
    assert _read_all(old) == 20


def test_writer_rejects_bad_rows(tmp_path):
    w = DatasetWriter(str(tmp_path / "w"), seq_len=4)

    ok = dict(inputs=np.zeros((2, 4)), labels=np.zeros((2, 4)), puzzle_identifier=np.zeros(2),
              group=np.zeros(2))  # fmt: skip
    with pytest.raises(ValueError, match=r"missing \['group'\]"):
        w.add("train", **{k: v for k, v in ok.items() if k != "group"})
    with pytest.raises(ValueError, match=r"inputs must have shape \[2, 4\]"):
        w.add("train", **{**ok, "inputs": np.zeros((2, 5))})
    with pytest.raises(ValueError, match="uint8"):
        w.add("train", **{**ok, "labels": np.full((2, 4), 300)})
    assert not Path(tmp_path / "w" / "meta.json").exists()
