"""`pipeline/sweep.py` against a `ray start --head` cluster on loopback (the `ray_head` fixture):

- `ray job submit --working-dir . -- python pipeline/sweep.py --sweep sweeps/smoke.yaml` with
  data and checkpoints on S3 (moto server) and MLflow on a real tracking server;
- on a cluster of raylets shaped like the real one (no CPUs on the head): storage a node
  cannot reach, refused; multi-worker trials as TorchTrainer runs on the worker raylets.

The sweep driver killed mid-sweep and resumed is drill 3 (`tests/test_drill_sweep.py`).
Slow (minutes on 2 shared cores): each starts real Ray trials."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline.sweeping.run import PARENT_KEY_PREFIX
from pipeline.tracking.tracker import child_runs, find_run, read_run

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "sweeps" / "smoke.yaml"

pytestmark = pytest.mark.slow


def test_ray_job_submit_smoke_sweep_on_s3_with_tracking_server(ray_head, mlflow_server):
    s3 = ray_head.s3
    storage = f"s3://{s3.bucket}/sweeps"
    data = f"s3://{s3.bucket}/data/sudoku4"
    env_vars = {k: os.environ[k] for k in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID",
                                           "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")}  # fmt: skip
    env_vars["MLFLOW_TRACKING_URI"] = mlflow_server
    runtime_env = {
        "env_vars": env_vars,
        # anchored (gitignore syntax): a bare "data" would also drop pipeline/data/, which the
        # job then imported from wherever the project happens to be installed
        "excludes": [".git", ".venv", "/data", "/runs", "mlruns", "*.db", ".hypothesis"],
    }
    cmd = [
        str(Path(sys.executable).with_name("ray")), "job", "submit",
        "--address", ray_head.dashboard, "--working-dir", str(REPO),
        "--runtime-env-json", json.dumps(runtime_env), "--",
        "python", "pipeline/sweep.py", "--sweep", "sweeps/smoke.yaml",
        "--set", f"data.uri={data}", "--storage-path", storage,
    ]  # fmt: skip
    out = subprocess.run(cmd, env=ray_head.env, capture_output=True, text=True, timeout=900)
    log = out.stdout + out.stderr
    assert out.returncode == 0, log[-6000:]
    assert re.search(r"Job 'raysubmit_\w+' succeeded", log), log[-3000:]
    assert "Sweep 'smoke': 4 trial(s)" in log and "early-stopped" in log, log[-3000:]
    # the summary comes last (after Ray's log lines), ending with where the results are
    tail = log[log.index("Sweep 'smoke': 4 trial(s)") :]
    assert "(run_trial pid=" not in tail and "Finding: " in tail, tail
    assert "MLflow parent run " in tail and "/#/experiments/" in tail  # a server: its page

    # data built on S3 on first use, trial checkpoints and the summary next to the experiment
    pages = s3.client().get_paginator("list_objects_v2").paginate(Bucket=s3.bucket)
    keys = [o["Key"] for page in pages for o in page.get("Contents", [])]  # past 1000 keys too
    assert "data/sudoku4/meta.json" in keys
    for name in ("sweep.yaml", "sweep.resolved.yaml", "summary.csv", "best_config.yaml"):
        assert f"sweeps/smoke/{name}" in keys, (name, keys)
    # every trial reports an evaluation with a checkpoint (every 8 steps) before ASHA can stop
    # it, and stores the checkpoint itself before it reports: every trial has one on S3
    trials = {k.split("/")[2] for k in keys if re.match(r"sweeps/smoke/trial_\w+/", k)}
    checkpoints = {
        k.split("/")[2] for k in keys if re.match(r"sweeps/smoke/trial_\w+/checkpoint_\d+/", k)
    }
    summary = s3.client().get_object(Bucket=s3.bucket, Key="sweeps/smoke/summary.csv")
    rows = list(csv.DictReader(io.StringIO(summary["Body"].read().decode())))
    assert len(trials) == 4 == len(rows), (trials, rows)
    assert checkpoints == trials, (sorted(trials - checkpoints), log[-4000:])
    # the summary names each trial's best checkpoint, which is there
    for r in rows:
        assert r["checkpoint"].startswith(f"s3://{s3.bucket}/sweeps/smoke/trial_"), r
        key = r["checkpoint"].removeprefix(f"s3://{s3.bucket}/") + "/trainer.pt"
        assert key in keys, (key, r)

    # the tracking server holds the parent run with its four children and artifacts
    exp_path = f"{storage}/smoke"
    parent_id = find_run(mlflow_server, "trm-sweeps", PARENT_KEY_PREFIX + exp_path)
    assert parent_id is not None
    parent = read_run(mlflow_server, parent_id)
    assert parent["status"] == "FINISHED"
    for path in ("summary/summary.csv", "best/best_config.yaml", "plots/exact_vs_depth.png",
                 "plots/exact_vs_compute.png", "plots/depth_curves.png", "sweep/sweep.yaml"):  # fmt: skip
        assert path in parent["artifacts"], path
    children = child_runs(mlflow_server, "trm-sweeps", parent_id)
    assert len(children) == 4
    for key, run_id in children.items():
        child = read_run(mlflow_server, run_id)
        assert key.startswith(f"{exp_path}/trials/smoke-")
        assert child["tags"]["trm.stop_reason"] in ("completed", "early-stopped")
        assert child["tags"]["dataset"] == data
        # the job's working dir has no .git: the sources' digest names the code
        assert child["tags"]["code_version"].startswith("src-"), child["tags"]
        assert "eval/exact_accuracy" in child["metrics"]


def _ddp_sweep(tmp_path: Path) -> Path:
    """The smoke sweep cut to one trial of two data-parallel workers (resources.num_workers 2)."""
    d = yaml.safe_load(SMOKE.read_text())
    d["name"] = "ddp"
    d["base"]["resources"] = {"num_workers": 2, "cpus_per_worker": 0.5}
    d["base"]["schedule"] = {"steps": 16, "log_every": 8}
    d["space"] = {"model.H_cycles": {"grid": [2]}}
    d["scheduler"] = {"type": "fifo"}
    sweep = tmp_path / "ddp.yaml"
    sweep.write_text(yaml.safe_dump(d))
    return sweep


def test_sweep_on_worker_raylets_refuses_a_blind_node_then_runs_torchtrainer_trials(
    s3_env, tmp_path, monkeypatch, capsys
):
    """A cluster shaped like the real one (ray.cluster_utils, each node its own raylet): a head
    with no CPUs and the `trial_driver` slots, two 1-CPU worker nodes, one of them with the
    wrong S3 endpoint. A sweep on S3 stops before any trial, naming the storage and that node
    only. A sweep on storage every node reads runs a two-worker trial: its driver takes a
    `trial_driver` slot on the head, its TorchTrainer workers run on the worker raylets, and
    its evaluation reports reach Tune, the summary and the child run."""
    import tempfile

    import ray
    from ray._private.state import actors
    from ray.cluster_utils import Cluster

    from pipeline.sweeping.cli import main

    # a private Ray temp dir: the simulated cluster must not become "the" local cluster of others
    ray_tmp = tempfile.mkdtemp(prefix="trm-rt-", dir="/tmp")
    monkeypatch.setenv("RAY_TMPDIR", ray_tmp)
    monkeypatch.setenv("RAY_TRAIN_V2_ENABLED", "1")
    cluster = Cluster(initialize_head=True,
                      head_node_args={"num_cpus": 0, "resources": {"trial_driver": 2}})  # fmt: skip
    good = cluster.add_node(num_cpus=1)
    blind = cluster.add_node(num_cpus=1, env_vars={"AWS_ENDPOINT_URL": "http://127.0.0.1:9"})
    try:
        cluster.wait_for_nodes()
        ray.init(address=cluster.address)
        args = [
            "--sweep", str(SMOKE), "--address", cluster.address,
            "--storage-path", f"s3://{s3_env.bucket}/sweeps",
            "--set", f"data.uri=s3://{s3_env.bucket}/data/sudoku4",
            "--set", f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}",
        ]  # fmt: skip
        assert main(args) == 2
        err = capsys.readouterr().err
        assert f"storage path 's3://{s3_env.bucket}/sweeps/.trm-sweep-probe-" in err, err
        assert "is not reachable from every Ray node" in err
        assert f"node {blind.node_id[:8]}" in err  # the blind node, and only it
        assert f"node {good.node_id[:8]}" not in err
        assert f"node {cluster.head_node.node_id[:8]}" not in err
        objects = s3_env.client().list_objects_v2(Bucket=s3_env.bucket, Prefix="sweeps/")
        assert objects.get("KeyCount", 0) == 0  # probe markers removed, no sweep started

        _check_ddp_sweep(tmp_path, cluster.address, os.environ.copy())
        workers = [a for a in actors().values() if a["ActorClassName"] == "RayTrainWorker"]
        placed = {a["Address"]["NodeID"] for a in workers}
        assert len(workers) == 2 and placed <= {good.node_id, blind.node_id}, workers
    finally:
        ray.shutdown()
        cluster.shutdown()
        shutil.rmtree(ray_tmp, ignore_errors=True)


def _check_ddp_sweep(tmp_path: Path, address: str, env: dict) -> None:
    """`pipeline/sweep.py` runs the two-worker sweep at `address` to its end, recorded in the
    summary and in a child run holding the Train run's evaluations."""
    uri = f"sqlite:///{tmp_path / 'ddp.db'}"
    out = subprocess.run(
        [sys.executable, str(REPO / "pipeline" / "sweep.py"), "--sweep", str(_ddp_sweep(tmp_path)),
         "--address", address, "--storage-path", str(tmp_path / "runs"),
         "--set", f"data.uri={tmp_path / 'data'}", "--set", f"tracking.uri={uri}"],
        env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    log = out.stdout + out.stderr
    assert out.returncode == 0, log[-6000:]
    assert "Sweep 'ddp': 1 trial(s) (1 completed)" in log, log[-3000:]
    assert "each {'CPU': 0, 'trial_driver': 1} + workers" in log
    exp = tmp_path / "runs" / "ddp"
    parent_id = find_run(uri, "trm-sweeps", PARENT_KEY_PREFIX + str(exp))
    children = child_runs(uri, "trm-sweeps", parent_id)
    assert len(children) == 1
    for key, run_id in children.items():
        child = read_run(uri, run_id)
        assert child["params"]["resources.num_workers"] == "2"
        assert child["status"] == "FINISHED"
        # renamed by its swept values at the end (the Train run keeps the trial id)
        assert (
            child["tags"]["mlflow.runName"] == "H2" and child["tags"]["stop_reason"] == "completed"
        )
        assert max(s for s, _ in child["metrics"]["eval/exact_accuracy"]) == 16
        # the Train run (checkpoints) lives under the sweep, named after the trial
        assert list((exp / "trials" / key.rsplit("/", 1)[1]).glob("checkpoint_*")), key
    table = (exp / "summary.csv").read_text().splitlines()
    assert len(table) == 2 and ",completed," in table[1]
