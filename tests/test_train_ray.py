"""Training on a real local Ray cluster: two data-parallel workers stream a dataset from a real
S3-compatible server (moto, loopback), checkpoint to it, and log to a real `mlflow server`;
a run whose worker process is SIGKILLed after a checkpoint drawn at random resumes from it and
ends with the same loss curve as the uninterrupted run (drill 1 on Ray Train).

Each TorchTrainer run costs ~30 s of Ray start-up on 2 cores, so the uninterrupted run is made
once (module fixture) and shared by the assertions and the kill drill."""

from __future__ import annotations

import json
import math
import os
import random
import re
import signal
import threading
import time
from pathlib import Path

import pytest

from pipeline.config.run import ConfigError, RunConfig
from pipeline.tracking.tracker import find_run, read_run
from pipeline.train import run_training
from pipeline.training.preflight import check_readable_on_nodes

STEPS = 24
CONFIG = {
    "name": "ray",
    "model": {
        "hidden_size": 16, "num_heads": 2, "expansion": 1.0, "L_layers": 1, "H_cycles": 2,
        "L_cycles": 1, "puzzle_emb_ndim": 16, "puzzle_emb_len": 1, "halt_max_steps": 3,
        "halt_exploration_prob": 0.3,
    },
    "optim": {"lr": 3e-3, "lr_warmup_steps": 3, "puzzle_emb_lr": 1e-2, "ema_rate": 0.9},
    "data": {"global_batch_size": 16},
    "schedule": {"steps": STEPS, "log_every": 1},
    "eval": {"every": 6, "max_examples": 32, "depth_steps": 5, "num_pictures": 2},
    "checkpoint": {"every": 6, "num_to_keep": 2, "max_failures": 2},
    "resources": {"num_workers": 2, "cpus_per_worker": 0.5},
    "tracking": {"experiment": "trm-ray-test"},
}  # fmt: skip


@pytest.fixture(scope="module")
def s3_data(ray_local) -> str:
    from pipeline.data import build_sudoku

    uri = f"s3://{ray_local.s3.bucket}/data/sudoku4"
    build_sudoku(uri, size=4, num_train=512, num_test=64, seed=0, min_clues=10)
    return uri


def make_cfg(data_uri: str, storage: str, mlflow_uri: str) -> RunConfig:
    d = {
        **CONFIG,
        "data": {**CONFIG["data"], "uri": data_uri},
        "checkpoint": {**CONFIG["checkpoint"], "storage_path": storage},
        "tracking": {**CONFIG["tracking"], "uri": mlflow_uri},
    }
    return RunConfig.from_dict(d)


@pytest.fixture(scope="module")
def uninterrupted(ray_local, s3_data, mlflow_server):
    storage = f"s3://{ray_local.s3.bucket}/runs"
    cfg = make_cfg(s3_data, storage, mlflow_server)
    result = run_training(cfg, name="two-workers")
    run_id = find_run(mlflow_server, "trm-ray-test", f"{storage}/two-workers")
    return cfg, result, read_run(mlflow_server, run_id)


def test_two_workers_s3_checkpoints_and_mlflow_server(ray_local, uninterrupted):
    cfg, result, run = uninterrupted
    assert result.error is None
    assert result.metrics["step"] == STEPS
    # checkpoints: both ranks' files merged into one directory on S3; best-2 + latest kept
    s3 = ray_local.s3.client()
    keys = [
        o["Key"]
        for page in s3.get_paginator("list_objects_v2").paginate(
            Bucket=ray_local.s3.bucket, Prefix="runs/two-workers/"
        )
        for o in page.get("Contents", [])
    ]
    final = f"runs/two-workers/checkpoint_{STEPS:08d}/"
    for name in ("trainer.pt", "trainer.pt.sha256", "rank0.pt", "rank1.pt", "rank1.pt.sha256"):
        assert final + name in keys, keys
    ckpt_dirs = {k.split("/")[2] for k in keys if k.split("/")[2].startswith("checkpoint_0")}
    assert 1 <= len(ckpt_dirs) <= 3, ckpt_dirs
    assert result.checkpoint.path.endswith(f"checkpoint_{STEPS:08d}")

    # the MLflow run, read back through the tracking server
    assert run["status"] == "FINISHED"
    p = run["params"]
    assert p["resources.num_workers"] == "2" and p["model.vocab_size"] == "6"
    assert p["data.uri"] == cfg.data.uri and p["optim.ema"] == "True"
    m = run["metrics"]
    assert [s for s, _ in m["train/loss"]] == list(range(1, STEPS + 1))
    for key in ("train/examples_per_s", "train/mfu", "train/data_wait_fraction", "train/lr",
                "eval/exact_accuracy", "eval/accuracy", "eval/q_halt_accuracy", "eval/steps"):  # fmt: skip
        assert key in m, key
    assert [s for s, _ in m["eval/exact_accuracy"]] == [6, 12, 18, 24]
    assert [v for _, v in m["eval/count"]] == [32.0] * 4  # test split shared by both ranks
    for k in range(1, 6):  # one metric per ACT depth, over the evaluation steps
        assert [s for s, _ in m[f"depth_curve/exact_accuracy_at_step_{k}"]] == [6, 12, 18, 24]
    assert f"refinement/step_{STEPS:08d}.png" in run["artifacts"]
    assert f"depth_curve/step_{STEPS:08d}.png" in run["artifacts"]
    # models that load back with pipeline.checkpoints.restore.load_model
    for which in ("best", "final"):
        assert f"checkpoints/{which}/model.pt" in run["artifacts"]
    t = run["tags"]
    assert t["task"] == "sudoku" and t["code_version"]
    assert t["checkpoint.final"] == f"s3://{ray_local.s3.bucket}/{final.rstrip('/')}"
    assert t["checkpoint.best"].startswith(f"s3://{ray_local.s3.bucket}/runs/two-workers/")


def test_local_path_unreadable_on_a_node_is_refused(ray_local, tmp_path):
    check_readable_on_nodes(str(tmp_path), "data.uri")  # visible: fine
    with pytest.raises(ConfigError, match="cannot read; on a multi-node cluster use s3://"):
        check_readable_on_nodes(str(tmp_path / "only-on-the-driver"), "data.uri")


def _kill_a_worker_after(run_dir: Path, checkpoint: str, ray_local, done: dict) -> None:
    """SIGKILL a Train worker process once Ray has registered `checkpoint` (it is named in
    the run's checkpoint_manager_snapshot.json)."""
    snapshot = run_dir / "checkpoint_manager_snapshot.json"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        try:
            if checkpoint in snapshot.read_text():
                break
        except OSError:
            pass
        time.sleep(0.02)
    for pid in ray_local.actor_pids("RayTrainWorker"):
        os.kill(pid, signal.SIGKILL)
        done["pid"] = pid
        return


@pytest.mark.slow
def test_killed_worker_resumes_from_checkpoint_exactly(
    ray_local, s3_data, mlflow_server, uninterrupted, tmp_path
):
    """~70 s: a worker is SIGKILLed once a checkpoint drawn at random (6, 12 or 18; the seed is
    printed, TRM_DRILL_SEED=<seed> replays it) is registered; Ray Train restarts the group,
    the loop resumes from the latest checkpoint (carry, RNG, data position restored): no step
    up to that checkpoint runs again, and the loss at every step equals the uninterrupted
    run's (drill 1 on Ray Train)."""
    from drills import record

    seed = int(os.environ.get("TRM_DRILL_SEED", time.time_ns() % 2**31))
    print(f"\ndrill seed {seed} (TRM_DRILL_SEED={seed} replays it)")
    at = random.Random(seed).choice([6, 12, 18])
    storage = str(tmp_path / "runs")
    cfg = make_cfg(s3_data, storage, mlflow_server)
    killed: dict = {}
    killer = threading.Thread(
        target=_kill_a_worker_after,
        args=(tmp_path / "runs" / "killed", f"checkpoint_{at:08d}", ray_local, killed),
        daemon=True,
    )
    killer.start()
    result = run_training(cfg, name="killed")
    killer.join(timeout=5)
    assert "pid" in killed, f"no worker was killed (the run ended before step {at}?)"
    # the result names the final checkpoint, also when the kill came after the group wrote it
    # but before Ray Train recorded it (the run then resumes there with nothing left to train)
    assert result.metrics["step"] == STEPS
    assert result.checkpoint.path.endswith(f"checkpoint_{STEPS:08d}"), result.checkpoint.path

    run = read_run(mlflow_server, find_run(mlflow_server, "trm-ray-test", f"{storage}/killed"))
    assert run["status"] == "FINISHED"
    history = run["metrics"]["train/loss"]
    logged = [s for s, _ in history]
    # steps up to the checkpoint were logged once (a restart from scratch or from an older
    # checkpoint would log them again); steps between the checkpoint and the kill twice
    assert all(logged.count(s) == 1 for s in range(1, at + 1)), (at, logged)
    assert sorted(set(logged)) == list(range(1, STEPS + 1))
    last = {}
    for s, v in history:
        last[s] = v
    reference = dict(uninterrupted[2]["metrics"]["train/loss"])
    for s in range(1, STEPS + 1):
        assert math.isclose(last[s], reference[s], rel_tol=1e-5), (s, last[s], reference[s])
    record("worker_kill.ray", runs=1, seed=seed, killed_after_checkpoint=at,
           steps_again=len(logged) - STEPS)  # fmt: skip


@pytest.mark.slow
def test_damaged_latest_checkpoint_on_s3_resumes_both_ranks_from_the_previous(
    ray_local, mlflow_server, uninterrupted
):
    """Drill 5 on Ray Train: the uninterrupted run's checkpoints copied to a new run on S3, the
    latest one's trainer.pt truncated there; the run started (what a restarted driver does)
    names the damaged checkpoint, resumes both ranks from the previous one and finishes."""
    import ray
    from drills import logs_holding, record

    from pipeline.checkpoints import store as ckpt

    cfg, _, _ = uninterrupted
    s3, bucket = ray_local.s3.client(), ray_local.s3.bucket
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix="runs/two-workers/")
    keys = [o["Key"] for page in pages for o in page.get("Contents", [])]
    for key in keys:
        if "/checkpoint_0" in key:
            s3.copy_object(Bucket=bucket, Key=key.replace("/two-workers/", "/damaged/"),
                           CopySource={"Bucket": bucket, "Key": key})  # fmt: skip
    steps = sorted({int(k.split("/")[2].removeprefix("checkpoint_")) for k in keys
                    if k.split("/")[2].startswith("checkpoint_0")})  # fmt: skip
    assert steps[-1] == STEPS and len(steps) >= 2, steps
    previous = steps[-2]
    bad = f"runs/damaged/checkpoint_{STEPS:08d}/trainer.pt"
    body = s3.get_object(Bucket=bucket, Key=bad)["Body"].read()
    s3.put_object(Bucket=bucket, Key=bad, Body=body[: len(body) // 2])

    t = time.perf_counter()
    result = run_training(cfg.with_overrides([f"schedule.steps={STEPS + 6}"]), name="damaged")
    recovery_s = time.perf_counter() - t
    assert result.error is None and result.metrics["step"] == STEPS + 6
    logs = Path(ray._private.worker._global_node.get_logs_dir_path())
    skipped = f"skipping checkpoint s3://{bucket}/runs/damaged/checkpoint_{STEPS:08d}"
    used = f"using the previous complete checkpoint s3://{bucket}/runs/damaged/checkpoint_{previous:08d}"
    resumes = re.compile(r"\[damaged\] resumed from step (\d+) ")  # said by rank 0
    out = logs_holding(logs, "worker-*", lambda o: o.count(skipped) + o.count(used) == 4
                       and resumes.search(o))  # fmt: skip
    assert out.count(skipped) == 2 and out.count(used) == 2, out  # each rank, both ways
    assert resumes.findall(out) == [str(previous)], out
    storage = cfg.checkpoint.storage_path
    run = read_run(mlflow_server, find_run(mlflow_server, "trm-ray-test", f"{storage}/damaged"))
    # the previous checkpoint also carries the points its run had not sent yet (a loaded
    # server), which the resumed run sends: the copy's history starts there
    key = f"runs/two-workers/checkpoint_{previous:08d}/{ckpt.UNSENT_FILE}"
    held = json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read()) if key in keys else []
    unsent = [p["step"] for p in held if p["key"] == "train/loss"]
    logged = [s for s, _ in run["metrics"]["train/loss"]]
    assert sorted(logged) == sorted(unsent) + list(range(previous + 1, STEPS + 7)), logged
    # what replaced the damaged checkpoint when its step came round again verifies
    body = s3.get_object(Bucket=bucket, Key=bad)["Body"].read()
    digest = s3.get_object(Bucket=bucket, Key=bad + ".sha256")["Body"].read().decode().strip()
    assert ckpt._sha256(body) == digest
    record("corruption.checkpoint_ray_s3", runs=1, recovery_s=recovery_s)
