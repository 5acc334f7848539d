"""Datasets on S3 through a real S3-compatible HTTP server (moto server mode on loopback)."""

import numpy as np
import pytest
from conftest import free_port

from pipeline.data import (
    ShardStream,
    StorageError,
    build_sudoku,
    open_storage,
    read_meta,
    verify_dataset,
)


def test_write_and_stream_a_dataset_through_s3(s3_env, tmp_path):
    uri = f"s3://{s3_env.bucket}/datasets/sudoku4"
    meta = build_sudoku(uri, size=4, num_train=300, num_test=40, seed=1, rows_per_shard=128,
                        row_group_rows=32)  # fmt: skip
    keys = sorted(
        o["Key"] for o in s3_env.client().list_objects_v2(Bucket=s3_env.bucket)["Contents"]
    )
    assert keys[0] == "datasets/sudoku4/meta.json" and len(keys) == 1 + 3 + 1
    assert read_meta(uri) == meta
    verify_dataset(uri)
    # The same build on local disk streams the same batches.
    local = str(tmp_path / "sudoku4")
    build_sudoku(local, size=4, num_train=300, num_test=40, seed=1, rows_per_shard=128,
                 row_group_rows=32)  # fmt: skip
    for rank in range(2):
        kw = dict(batch_size=16, rank=rank, world_size=2, seed=4, epoch=1)
        remote, here = list(ShardStream(uri, **kw)), list(ShardStream(local, **kw))
        assert len(remote) == len(here) == 300 // 2 // 16
        for a, b in zip(remote, here):
            for k in a:
                np.testing.assert_array_equal(a[k], b[k])


def test_rebuilding_is_idempotent_and_overwrite_replaces(s3_env):
    uri = f"s3://{s3_env.bucket}/s"
    m1 = build_sudoku(uri, size=4, num_train=50, num_test=10, seed=0)
    assert build_sudoku(uri, size=4, num_train=50, num_test=10, seed=0) == m1  # no rebuild
    with pytest.raises(ValueError, match="overwrite=True"):
        build_sudoku(uri, size=4, num_train=60, num_test=10, seed=0)
    m2 = build_sudoku(uri, size=4, num_train=60, num_test=10, seed=0, overwrite=True)
    store = open_storage(uri)
    files = set(store.list("train/")) | set(store.list("test/"))
    assert files == {sh.path for s in m2.splits.values() for sh in s.shards}  # old shards gone


def test_missing_bucket_is_named_before_any_work(s3_env, monkeypatch):
    from pipeline.data import builders

    def generate(*a, **kw):  # reaching the puzzle generator means the bucket was not checked
        raise AssertionError("puzzles generated before the bucket was checked")

    monkeypatch.setattr(builders, "generate_sudoku_split", generate)
    uri = f"s3://no-such-bucket-{s3_env.bucket}/x"
    with pytest.raises(StorageError, match=r"bucket 'no-such-bucket-.*' does not exist at http"):
        build_sudoku(uri, size=9, num_train=10_000, num_test=0)


def test_missing_credentials(s3_env, monkeypatch, tmp_path):
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    with pytest.raises(StorageError, match="no usable AWS credentials"):
        read_meta(f"s3://{s3_env.bucket}/x")


def test_unreachable_endpoint_bounded_retries_then_named(monkeypatch):
    port = free_port()  # nothing listens here
    endpoint = f"http://127.0.0.1:{port}"
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("TRM_S3_MAX_ATTEMPTS", "3")
    monkeypatch.setenv("TRM_S3_RETRY_BASE_S", "0.01")
    # bounded: the attempts are counted in the message (a hang is the time limit's to catch)
    with pytest.raises(StorageError, match=rf"endpoint {endpoint} unreachable.*failed 3 times"):
        build_sudoku("s3://bucket/x", size=4, num_train=10, num_test=0)
