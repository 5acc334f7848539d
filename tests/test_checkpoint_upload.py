"""The checked checkpoint upload (`pipeline/checkpoints/upload.py`): a file that Ray Train's
copy loses is copied again, and a loss that persists fails the report naming the file. The
copy that loses a file is staged here (pyarrow's S3 stream loses one only on a reset at the
wrong moment); the storage drill (`test_drill_storage.py`) runs the real upload through
outages on S3."""

from __future__ import annotations

import shutil
from pathlib import Path
from types import SimpleNamespace

import pyarrow.fs as pafs
import pytest

from pipeline.checkpoints.store import CheckpointError
from pipeline.checkpoints.upload import missing, upload_checked


class LossyStorage:
    """Ray Train's storage context as `upload_checked` uses it: copies a checkpoint into
    `root/<name>`, leaving `drop` out of the first `lossy` copies."""

    def __init__(self, root: Path, drop: str, lossy: int):
        self.root, self.drop, self.lossy, self.copies = root, drop, lossy, 0
        self.storage_filesystem = pafs.LocalFileSystem()

    def persist_current_checkpoint(self, checkpoint, dir_name):
        self.copies += 1
        dest = self.root / dir_name
        skip = shutil.ignore_patterns(self.drop) if self.copies <= self.lossy else None
        shutil.copytree(checkpoint.path, dest, dirs_exist_ok=True, ignore=skip)
        return SimpleNamespace(path=str(dest))


@pytest.fixture
def local_checkpoint(tmp_path) -> SimpleNamespace:
    d = tmp_path / "local"
    (d / "sub").mkdir(parents=True)
    for name, size in {"trainer.pt": 300, "rank1.pt": 200, "sub/extra.json": 10}.items():
        (d / name).write_bytes(b"x" * size)
    return SimpleNamespace(path=str(d))


def test_a_file_lost_once_is_copied_again(local_checkpoint, tmp_path, monkeypatch):
    monkeypatch.setenv("TRM_S3_RETRY_BASE_S", "0")
    storage = LossyStorage(tmp_path / "storage", drop="rank1.pt", lossy=1)
    persisted = upload_checked(local_checkpoint, "checkpoint_00000012", storage)
    assert storage.copies == 2
    assert (Path(persisted.path) / "rank1.pt").stat().st_size == 200
    assert missing(local_checkpoint.path, storage.storage_filesystem, persisted.path) == []


def test_a_file_lost_every_time_fails_naming_it(local_checkpoint, tmp_path, monkeypatch):
    monkeypatch.setenv("TRM_S3_MAX_ATTEMPTS", "3")
    monkeypatch.setenv("TRM_S3_RETRY_BASE_S", "0")
    storage = LossyStorage(tmp_path / "storage", drop="rank1.pt", lossy=99)
    with pytest.raises(CheckpointError, match=r"lost rank1\.pt in each of 3 attempts"):
        upload_checked(local_checkpoint, "checkpoint_00000012", storage)
    assert storage.copies == 3


def test_missing_names_absent_and_short_files_in_subdirectories(local_checkpoint, tmp_path):
    remote = tmp_path / "remote"
    shutil.copytree(local_checkpoint.path, remote)
    (remote / "other_rank.pt").write_bytes(b"y")  # another rank's file: not ours to check
    fs = pafs.LocalFileSystem()
    assert missing(local_checkpoint.path, fs, str(remote)) == []
    (remote / "sub" / "extra.json").write_bytes(b"x" * 9)
    (remote / "trainer.pt").unlink()
    assert missing(local_checkpoint.path, fs, str(remote) + "/") == ["sub/extra.json", "trainer.pt"]


def test_missing_lists_a_checkpoint_on_s3(local_checkpoint, s3_env):
    """The same check against pyarrow's S3 filesystem on the moto server."""
    fs = pafs.S3FileSystem(endpoint_override=s3_env.endpoint, region="us-east-1",
                           access_key="testing", secret_key="testing")  # fmt: skip
    remote = f"{s3_env.bucket}/runs/x/checkpoint_00000012"
    pafs.copy_files(local_checkpoint.path, remote, destination_filesystem=fs)
    assert missing(local_checkpoint.path, fs, remote) == []
    s3_env.client().delete_object(Bucket=s3_env.bucket, Key="runs/x/checkpoint_00000012/rank1.pt")
    assert missing(local_checkpoint.path, fs, remote) == ["rank1.pt"]
