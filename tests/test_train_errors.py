"""Failures as a user meets them: a damaged shard or a checkpoint that does not fit the model
ends a real Ray Train run at its first attempt with one line naming the input (no retries);
a tracking server that does not answer stops the CLI before Ray starts; a changed config is
refused on resume (or started over with --fresh).

The Ray Train runs use a private local cluster (`drills.LocalRay`) whose worker logs show how
many times the worker group started; they are slow (~1 min each on 2 shared cores)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import free_port
from drills import LocalRay, build_tiny_sudoku, read_logs, tiny_config

from pipeline.checkpoints.store import CheckpointError
from pipeline.config.run import ConfigError
from pipeline.data import read_meta
from pipeline.data.errors import DatasetError, StorageAccessError, StorageError
from pipeline.train import main

REPO = Path(__file__).resolve().parents[1]
STARTS = "Setting up process group for"  # what Ray Train's worker prints at each start


def _starts(local_ray: LocalRay) -> int:
    """Worker-group starts so far, from the workers' logs (session_latest links to the same)."""
    logs = read_logs(Path(local_ray.temp_dir), "session_2*/logs/worker-*")
    return "\n".join(logs).count(STARTS)


def _truncate_last_train_shard(uri: str) -> Path:
    shard = Path(uri) / read_meta(uri).splits["train"].shards[-1].path
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) * 2 // 3])
    return shard


@pytest.fixture(scope="module")
def local_ray():
    with LocalRay(2) as ray_:
        yield ray_


@pytest.mark.slow
def test_damaged_shard_ends_a_ray_train_run_at_once_naming_the_shard(local_ray, tmp_path):
    from pipeline.train import run_training
    from pipeline.training.failures import root_cause

    data = str(tmp_path / "data")
    build_tiny_sudoku(data)
    shard = _truncate_last_train_shard(data)
    cfg = tiny_config(data, tmp_path / "runs")  # checkpoint.max_failures = 2
    before = _starts(local_ray)
    with pytest.raises(Exception) as e:
        run_training(cfg, name="damaged")
    line = root_cause(e.value)
    assert line.startswith(f"DatasetError: shard {shard}: size "), line
    assert "does not match" in line and "in meta.json" in line and "\n" not in line
    # one worker-group start: the same input is not tried again
    assert _starts(local_ray) - before == 1


@pytest.mark.slow
def test_checkpoint_of_another_model_is_not_retried(local_ray, tmp_path):
    """The driver's own check (check_resume) is bypassed here: run_training alone, as a
    multi-worker sweep trial calls it. The worker's error names the checkpoint."""
    from pipeline.train import run_training
    from pipeline.training.failures import root_cause

    data = str(tmp_path / "data")
    build_tiny_sudoku(data)
    cfg = tiny_config(data, tmp_path / "runs", "schedule.steps=4")
    assert run_training(cfg, name="shape").metrics["step"] == 4
    before = _starts(local_ray)
    wider = cfg.with_overrides(["model.hidden_size=32", "schedule.steps=8"])
    with pytest.raises(Exception) as e:
        run_training(wider, name="shape")
    line = root_cause(e.value)
    assert line.startswith("CheckpointError: checkpoint ") and "does not fit this model" in line
    assert "--fresh" in line
    assert _starts(local_ray) - before == 1


def _run_yaml(tmp_path: Path, *overrides: str) -> Path:
    data = tmp_path / "data"
    if not data.exists():
        build_tiny_sudoku(str(data))
    cfg = tiny_config(str(data), tmp_path / "runs", *overrides)
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg.to_dict()))
    return path


def test_tracking_server_down_stops_the_cli_before_ray_naming_the_uri(tmp_path):
    path = _run_yaml(tmp_path, "tracking.enabled=true")
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, str(REPO / "pipeline" / "train.py"), str(path)],
                         env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert out.returncode == 2, out.stderr
    lines = (out.stdout + out.stderr).strip().splitlines()
    assert lines[-1].startswith(f"error: MLflow tracking server {uri} is not reachable"), lines
    assert len(lines) <= 3 and "ray" not in out.stderr.lower()
    assert not (tmp_path / "runs" / "drill").exists()


def test_changed_model_on_resume_is_refused_and_fresh_starts_over(tmp_path, capsys):
    path = _run_yaml(tmp_path, "schedule.steps=4")
    assert main([str(path), "--local"]) == 0
    # allowed changes are printed, then the run resumes
    assert main([str(path), "--local", "--set", "schedule.steps=8", "--set", "eval.every=2"]) == 0
    out = capsys.readouterr().out
    assert "with changed settings: eval.every: 4 -> 2; schedule.steps: 4 -> 8" in out
    assert "resumed from step 4 " in out
    # a wider model cannot take those checkpoints: one line naming the keys
    wider = [str(path), "--local", "--set", "model.hidden_size=32", "--set", "schedule.steps=8"]
    assert main(wider) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"error: {tmp_path / 'runs' / 'drill'} holds checkpoints of another config; it cannot "
        "resume with model.hidden_size: 16 -> 32. Use --name for a new run, or --fresh to "
        "discard it"
    ]
    assert main([*wider, "--fresh"]) == 0
    out = capsys.readouterr().out
    assert "--fresh: discarding" in out and "(2 checkpoint(s))" in out
    assert "resumed from" not in out
    assert sorted(p.name for p in (tmp_path / "runs" / "drill").glob("checkpoint_*")) == [
        "checkpoint_00000004",
        "checkpoint_00000008",
    ]


@pytest.mark.parametrize(
    ("error", "retried"),
    [
        (DatasetError("shard s3://b/d/train/p.parquet: size 1 bytes does not match 2"), False),
        (ConfigError("model.vocab_size = 5 does not match the dataset"), False),
        (CheckpointError("checkpoint /c does not fit this model"), False),
        (StorageAccessError("access denied to s3://b/k at http://e (AccessDenied)"), False),
        (StorageError("S3 endpoint http://e unreachable: get s3://b/k failed 4 times"), True),
        (RuntimeError("gloo: Connection closed by peer"), True),
    ],
)
def test_failure_policy_retries_only_faults_that_pass(error, retried):
    """Ray Train's own policy object, with the worker error as Ray wraps it: errors of the
    input are raised at once, a storage outage or a lost peer is retried as before."""
    import ray.train
    from ray.train import WorkerGroupError
    from ray.train.v2._internal.exceptions import UserExceptionWithTraceback
    from ray.train.v2._internal.execution.failure_handling import FailureDecision

    from pipeline.training.failures import InputFailurePolicy, root_cause

    wrapped = UserExceptionWithTraceback(error, traceback_str="Traceback ...\n" + repr(error))
    group_error = WorkerGroupError("rank 0 failed", {0: wrapped})
    policy = InputFailurePolicy(ray.train.FailureConfig(max_failures=3))
    decision = policy.make_decision(training_failed_error=group_error)
    assert decision == (FailureDecision.RETRY if retried else FailureDecision.RAISE)
    assert root_cause(group_error) == f"{type(error).__name__}: {error}"
