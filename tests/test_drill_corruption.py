"""Drill 5, corruption: a bit-flipped or truncated Parquet shard stops training with an error that
names the object; any single flipped bit is either caught or provably harmless; a truncated,
bit-flipped or half-written checkpoint is reported by name and the previous good one is used.

Shards live on the real S3-compatible server (moto, loopback) like a cluster's data; training
runs the in-process loop (the path of 1-worker sweep trials and `train.py --local`). The Ray Train
variant of the checkpoint drill (two workers, checkpoints on S3) is in test_train_ray.py, on the
run that module trains once for all its tests.
"""

from __future__ import annotations

import math
import shutil
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from drills import build_tiny_sudoku, record, tiny_config
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.checkpoints import store as ckpt
from pipeline.data import DatasetError, ShardStream, read_meta, verify_dataset
from pipeline.train import main, run_info
from pipeline.training.worker import LocalCheckpoints, run_in_process

COMPARED = ("train/loss", "train/lm_loss", "train/exact_accuracy", "train/steps", "train/lr",
            "eval/exact_accuracy", "eval/accuracy", "eval/q_halt_accuracy")  # fmt: skip


def _flip_in_data_page(data: bytes) -> bytes:
    """Flip 8 bytes in the middle of the first row group's `inputs` column chunk."""
    col = pq.ParquetFile(pa.BufferReader(data)).metadata.row_group(0).column(0)
    mid = col.data_page_offset + col.total_compressed_size // 2
    out = bytearray(data)
    out[mid : mid + 8] = bytes(b ^ 0xA5 for b in out[mid : mid + 8])
    return bytes(out)


@pytest.mark.parametrize("damage", ["bit-flip", "truncate"])
def test_damaged_shard_on_s3_stops_training_naming_the_object(s3_env, tmp_path, capsys, damage):
    uri = f"s3://{s3_env.bucket}/data/sudoku4"
    build_tiny_sudoku(uri)
    shard = read_meta(uri).splits["train"].shards[-1].path
    s3 = s3_env.client()
    key = f"data/sudoku4/{shard}"
    data = s3.get_object(Bucket=s3_env.bucket, Key=key)["Body"].read()
    bad = _flip_in_data_page(data) if damage == "bit-flip" else data[: len(data) * 2 // 3]
    s3.put_object(Bucket=s3_env.bucket, Key=key, Body=bad)

    cfg = tiny_config(uri, tmp_path / "runs")
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg.to_dict()))
    t = time.perf_counter()
    assert main([str(path), "--local"]) == 1
    detect_s = time.perf_counter() - t
    err = capsys.readouterr().err
    assert f"DatasetError: shard s3://{s3_env.bucket}/{key}" in err, err
    assert "Traceback" not in err
    # no checkpoint was taken from the damaged data: the batches before it are all it read
    assert not list((tmp_path / "runs").glob("*/checkpoint_*"))
    with pytest.raises(DatasetError, match=rf"shard s3://{s3_env.bucket}/{key}"):
        verify_dataset(uri)
    record(f"corruption.shard_{damage}", runs=1, detect_s=detect_s)


# ---- any single flipped bit: caught, or the data read is unchanged -----------------------------
@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    uri = tmp_path_factory.mktemp("clean") / "sudoku4"
    build_tiny_sudoku(str(uri), num_train=64, num_test=0)
    shard = read_meta(str(uri)).splits["train"].shards[0].path
    return uri, shard, _read_all(uri)


def _read_all(uri, verify=False) -> list[dict[str, np.ndarray]]:
    return list(ShardStream(str(uri), batch_size=16, shuffle=False, augment=False,
                            verify_checksums=verify))  # fmt: skip


def _corrupt_copy(clean, tmp: Path, mutate) -> tuple[Path, Path]:
    uri, shard, _ = clean
    dst = tmp / "copy"
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(uri, dst)
    (dst / shard).write_bytes(mutate((uri / shard).read_bytes()))
    return dst, dst / shard


def _caught_or_harmless(clean, dst: Path, shard_file: Path) -> str:
    """'caught' when reading raises DatasetError naming the shard; 'harmless' when the batches
    equal the clean ones; anything else fails the test."""
    try:
        got = _read_all(dst)
    except DatasetError as e:
        assert str(shard_file) in str(e), e
        return "caught"
    ref = clean[2]
    assert len(got) == len(ref)
    for a, b in zip(got, ref):
        for k in b:
            np.testing.assert_array_equal(a[k], b[k])
    return "harmless"


def _check_bit_flip(clean, tmp: Path, where: float, bit: int) -> None:
    def flip(data: bytes) -> bytes:
        out = bytearray(data)
        out[min(int(where * len(out)), len(out) - 1)] ^= 1 << bit
        return bytes(out)

    dst, shard_file = _corrupt_copy(clean, tmp, flip)
    _caught_or_harmless(clean, dst, shard_file)
    # the SHA-256 in meta.json catches every flip when asked to
    with pytest.raises(DatasetError, match=rf"shard {dst}/.*checksum mismatch"):
        _read_all(dst, verify=True)


_FLIP = dict(where=st.floats(0, 1, exclude_max=True), bit=st.integers(0, 7))
_SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@settings(max_examples=25, **_SETTINGS)
@given(**_FLIP)
def test_any_bit_flip_in_a_shard_is_caught_or_harmless(clean, tmp_path, where, bit):
    _check_bit_flip(clean, tmp_path, where, bit)


@pytest.mark.slow
@settings(max_examples=600, **_SETTINGS)
@given(**_FLIP)
def test_any_bit_flip_in_a_shard_is_caught_or_harmless_deep(clean, tmp_path, where, bit):
    _check_bit_flip(clean, tmp_path, where, bit)


def test_bit_flips_in_footer_column_names_are_caught(clean, tmp_path):
    """Column names in the footer are UTF-8; a flipped high bit makes them undecodable, which
    pyarrow reports from deep inside its schema code unless the reader catches it."""
    uri, shard, _ = clean
    data = (uri / shard).read_bytes()
    footer = len(data) - 8 - int.from_bytes(data[-8:-4], "little")
    hits = [i for i in range(footer, len(data)) if data.startswith(b"puzzle_identifier", i)]
    assert hits
    for i in hits:
        for off in (0, 5):  # 'p' -> 0xF0 (starts a 4-byte sequence), 'l' -> 0xEC

            def flip(d: bytes, at=i + off) -> bytes:
                return d[:at] + bytes([d[at] ^ 0x80]) + d[at + 1 :]

            dst, shard_file = _corrupt_copy(clean, tmp_path, flip)
            _caught_or_harmless(clean, dst, shard_file)


# ---- checkpoints: a damaged latest checkpoint is skipped for the previous good one -----------
def _truncate(d: Path) -> str:
    f = d / ckpt.TRAINER_FILE
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    return ckpt.TRAINER_FILE


def _flip_rank_file(d: Path) -> str:
    f = d / ckpt.rank_file(0)
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0x01
    f.write_bytes(bytes(data))
    return ckpt.rank_file(0)


def _half_written(d: Path) -> str:
    # an upload that stopped after trainer.pt: the rank files never arrived
    (d / ckpt.rank_file(0)).unlink()
    (d / (ckpt.rank_file(0) + ".sha256")).unlink()
    return ckpt.rank_file(0)


class _Crash(Exception):
    pass


@pytest.fixture(scope="module")
def local_data(tmp_path_factory) -> str:
    uri = str(tmp_path_factory.mktemp("data") / "sudoku4")
    build_tiny_sudoku(uri)
    return uri


@pytest.fixture(scope="module")
def reference(local_data, tmp_path_factory):
    """The uninterrupted run's final metrics."""
    tmp = tmp_path_factory.mktemp("reference")
    cfg = tiny_config(local_data, tmp / "runs")
    return run_in_process(cfg, run_info(cfg, "reference", str(tmp / "runs")))


@pytest.mark.parametrize("damage", [_truncate, _flip_rank_file, _half_written])
def test_damaged_latest_checkpoint_falls_back_to_the_previous_good_one(
    local_data, reference, tmp_path, capsys, damage
):
    cfg = tiny_config(local_data, tmp_path / "runs")
    storage = str(tmp_path / "runs")
    info = run_info(cfg, "drill", storage)
    run_dir = tmp_path / "runs" / "drill"
    saver = LocalCheckpoints(run_dir)

    def crash_after_8(metrics, checkpoint_dir):
        saver(metrics, checkpoint_dir)
        if metrics["step"] == 8:
            raise _Crash  # the process dies right after checkpoint 8 was written

    with pytest.raises(_Crash):
        run_in_process(cfg, info, report=crash_after_8)
    latest = run_dir / "checkpoint_00000008"
    bad_file = damage(latest)
    capsys.readouterr()

    t = time.perf_counter()
    final = run_in_process(cfg, info)  # the same run again: resumes from what it finds
    recovery_s = time.perf_counter() - t
    out = capsys.readouterr().out
    assert str(latest) in out and bad_file in out, out
    assert "resumed from step 4 " in out, out
    assert final["step"] == 12
    for k in COMPARED:
        assert math.isclose(final[k], reference[k], rel_tol=1e-6, abs_tol=1e-9), k
    # the damaged checkpoint was replaced by a good one when step 8 came round again
    ckpt.verify(latest)
    record(f"corruption.checkpoint_{damage.__name__.strip('_')}", runs=1, recovery_s=recovery_s)


def test_no_good_checkpoint_at_all_is_an_error_naming_each(local_data, tmp_path):
    cfg = tiny_config(local_data, tmp_path / "runs", "schedule.steps=4")
    info = run_info(cfg, "drill", str(tmp_path / "runs"))
    run_in_process(cfg, info)
    only = tmp_path / "runs" / "drill" / "checkpoint_00000004"
    _truncate(only)
    with pytest.raises(ckpt.CheckpointError, match=rf"{only}.*{ckpt.TRAINER_FILE}"):
        run_in_process(cfg.with_overrides(["schedule.steps=8"]), info)
