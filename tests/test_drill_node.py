"""Drill 2, a node lost: a multi-node Ray cluster simulated on this machine
(`ray.cluster_utils.Cluster`: a head with no CPUs and three 1-CPU nodes, each its own raylet)
runs a 2-worker training run; once it has checkpointed, the node running one of its workers is
killed without warning. Ray Train restarts the worker group on the remaining capacity (the
spare node), the run resumes from its checkpoint and finishes.

Slow (~1.5 min: four raylets start on 2 cores). The cluster lives in a private temp dir, and its
address is kept out of /tmp/ray/ray_current_cluster so no other `ray.init()` on this machine
joins it.
"""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path

import pytest
from drills import (
    actor_pids,
    build_tiny_sudoku,
    logs_holding,
    private_cluster,
    raylet_pid,
    read_logs,
    record,
    tiny_config,
)

STEPS, EVERY = 600, 50


def _hosts_a_train_worker(node) -> bool:
    return bool(actor_pids("RayTrainWorker", raylet_pid(node)))


@pytest.fixture
def cluster(monkeypatch):
    with private_cluster(monkeypatch, 3) as (c, nodes, temp):
        yield c, nodes, Path(temp)


WORKER_LOGS = "session_*/logs/worker-*.out"


def _resumed(worker_output: str) -> bool:
    return "resumed from step" in worker_output


def _worker_output(temp: Path) -> str:
    return "\n".join(read_logs(temp, WORKER_LOGS))


@pytest.mark.slow
def test_node_running_a_worker_is_lost_and_the_run_finishes(cluster, tmp_path):
    from pipeline.train import run_training

    c, nodes, temp = cluster
    data = str(tmp_path / "sudoku4")
    build_tiny_sudoku(data)
    storage = tmp_path / "runs"
    cfg = tiny_config(data, storage, f"schedule.steps={STEPS}", f"schedule.log_every={EVERY}",
                      f"eval.every={EVERY}", f"checkpoint.every={EVERY}",
                      "resources.num_workers=2", "resources.cpus_per_worker=1",
                      "checkpoint.max_failures=3")  # fmt: skip
    lost: dict = {}

    def remove_a_worker_node():
        first = storage / "node-lost" / f"checkpoint_{EVERY:08d}"
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not (first / "trainer.pt.sha256").exists():
            time.sleep(0.05)
        victim = next((n for n in nodes if _hosts_a_train_worker(n)), None)
        if victim is None:
            return
        lost["latest"] = max(p.name for p in first.parent.glob("checkpoint_*"))
        lost["t"] = time.monotonic()
        c.remove_node(victim, allow_graceful=False)
        if _resumed(logs_holding(temp, WORKER_LOGS, _resumed, deadline - time.monotonic())):
            lost["recovery_s"] = time.monotonic() - lost["t"]

    killer = threading.Thread(target=remove_a_worker_node, daemon=True)
    killer.start()
    result = run_training(cfg, name="node-lost")
    killer.join(timeout=30)
    assert "t" in lost, "no node hosting a training worker was removed"
    assert result.error is None and result.metrics["step"] == STEPS
    out = _worker_output(temp)
    resumed = [int(s) for s in re.findall(r"resumed from step (\d+) ", out)]
    assert resumed, "the run did not resume from a checkpoint after losing the node"
    # resumed from a complete checkpoint at most one interval behind the newest seen just before
    # the loss (the surviving worker may finish one more before its peer's death reaches it)
    newest = int(lost["latest"].removeprefix("checkpoint_"))
    assert resumed[0] >= newest - EVERY, (resumed, lost)
    assert (storage / "node-lost" / f"checkpoint_{resumed[0]:08d}" / "trainer.pt.sha256").exists()
    record("node_lost", runs=1, recovery_s=lost.get("recovery_s", float("nan")),
           resumed_from=resumed[0], newest_at_loss=newest)  # fmt: skip
