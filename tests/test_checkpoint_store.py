"""The checkpoint store (`pipeline.checkpoints.directory.CheckpointStore`): saving, pruning and the
listing under them (`stored_in`), on a local directory and on S3 (a real moto
server): which checkpoints stay, which one a resumed trial continues from, and that a
checkpoint already gone is no error."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest

from pipeline.checkpoints import store as ckpt
from pipeline.checkpoints.directory import CheckpointStore, Stored
from pipeline.data.storage import open_storage


def _put(trial_uri: str, tmp: Path, name: str, step: int, acc: float | None) -> None:
    """A complete checkpoint `name` for `step` with eval accuracy `acc`, as Tune persists it."""
    src = tmp / f"src-{name}"
    src.mkdir()
    ckpt.save(src, ckpt.TRAINER_FILE, {"world_size": 1, "step": step})
    ckpt.save(src, ckpt.rank_file(0), {"rng": step})
    report = {"step": step, **({"eval/exact_accuracy": acc} if acc is not None else {})}
    ckpt.write_report(src, report)
    storage = open_storage(trial_uri)
    for f in src.iterdir():
        storage.write_bytes(f"{name}/{f.name}", f.read_bytes())


def test_persist_names_by_step_and_the_copy_is_a_complete_checkpoint(trial_uri, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    ckpt.save(src, ckpt.TRAINER_FILE, {"world_size": 1, "step": 120})
    ckpt.save(src, ckpt.rank_file(0), {"rng": 1})
    ckpt.write_report(src, {"step": 120, "eval/exact_accuracy": 0.5, "note": [1]})
    uri = CheckpointStore(trial_uri).save(src, 120)
    assert uri == f"{trial_uri}/checkpoint_00000120"
    (only,) = _stored(trial_uri)
    assert only.name == "checkpoint_00000120"
    assert only.metrics == {"step": 120, "eval/exact_accuracy": 0.5}  # scalars only
    with contextlib.ExitStack() as stack:
        _, found = CheckpointStore(trial_uri).newest_complete(stack)
        assert ckpt.load(found, ckpt.TRAINER_FILE)["step"] == 120


def _stored(trial_uri: str) -> list[Stored]:
    return CheckpointStore(trial_uri).stored()


@pytest.fixture(params=["local", "s3"])
def trial_uri(request, tmp_path) -> str:
    if request.param == "local":
        return str(tmp_path / "exp" / "trial_a")
    s3 = request.getfixturevalue("s3_env")
    return f"s3://{s3.bucket}/exp/trial_a"


def test_prune_keeps_the_best_and_the_latest(trial_uri, tmp_path):
    for i, (step, acc) in enumerate([(10, 0.2), (20, 0.9), (30, 0.5), (40, 0.1)]):
        _put(trial_uri, tmp_path, f"checkpoint_00000{i}", step, acc)
    deleted = CheckpointStore(trial_uri).prune(2, "eval/exact_accuracy", "max")
    assert deleted == ["checkpoint_000000"]
    # best two by accuracy: steps 20 (0.9) and 30 (0.5); the latest (step 40) always stays
    assert [s.step for s in _stored(trial_uri)] == [40, 30, 20]
    assert not any(k.startswith("checkpoint_000000/") for k in open_storage(trial_uri).list(""))
    # pruning again when nothing is over the limit (or a checkpoint is already gone) is a no-op
    assert CheckpointStore(trial_uri).prune(3, "eval/exact_accuracy", "max") == []
    assert CheckpointStore(trial_uri).prune(0, "eval/exact_accuracy", "max") == []


def test_prune_without_a_metric_keeps_the_newest_and_min_mode_inverts(trial_uri, tmp_path):
    for i, (step, acc) in enumerate([(10, 0.2), (20, 0.9), (30, 0.5)]):
        _put(trial_uri, tmp_path, f"checkpoint_00000{i}", step, acc)
    CheckpointStore(trial_uri).prune(1, "eval/exact_accuracy", "min")
    assert [s.step for s in _stored(trial_uri)] == [30, 10]  # latest + lowest
    CheckpointStore(trial_uri).prune(1, None, "max")
    assert [s.step for s in _stored(trial_uri)] == [30]


def test_a_resumed_trial_continues_from_the_highest_step_not_the_highest_name(trial_uri, tmp_path):
    # after a driver restart Tune numbers directories from its saved state: checkpoint_000001
    # was written again for step 50, while checkpoint_000002 still holds step 30
    _put(trial_uri, tmp_path, "checkpoint_000001", 50, 0.3)
    _put(trial_uri, tmp_path, "checkpoint_000002", 30, 0.4)
    names = [uri.rpartition("/")[2] for uri, _ in CheckpointStore(trial_uri).candidates()]
    assert names == ["checkpoint_000001", "checkpoint_000002"]
    with contextlib.ExitStack() as stack:
        _, found = CheckpointStore(trial_uri).newest_complete(stack)
        assert ckpt.load(found, ckpt.TRAINER_FILE)["step"] == 50


def test_a_half_deleted_checkpoint_is_skipped_on_resume(trial_uri, tmp_path):
    _put(trial_uri, tmp_path, "checkpoint_000000", 10, 0.3)
    _put(trial_uri, tmp_path, "checkpoint_000001", 20, 0.4)
    # a prune cut short after its first deletion: the trainer file goes first
    open_storage(trial_uri).delete(f"checkpoint_000001/{ckpt.TRAINER_FILE}")
    with contextlib.ExitStack() as stack:
        _, found = CheckpointStore(trial_uri).newest_complete(stack, say=lambda m: None)
        assert ckpt.load(found, ckpt.TRAINER_FILE)["step"] == 10


def test_an_empty_trial_directory_has_nothing_to_resume(trial_uri):
    assert _stored(trial_uri) == []
    with contextlib.ExitStack() as stack:
        assert CheckpointStore(trial_uri).newest_complete(stack) is None
