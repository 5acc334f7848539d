"""Helpers shared by the fault drills (tests/test_drill_*.py): a tiny run config, a fault-injecting
TCP proxy in front of the S3 server, a private local Ray cluster, and the drill record.

Every drill prints one line `DRILL <name> key=value ...` (visible with `pytest -s`) with its
recovery time, and appends the same numbers as JSON to $TRM_DRILL_LOG when that is set:

    TRM_DRILL_LOG=/tmp/drills.jsonl pytest tests/test_drill_corruption.py -s

`python -m tests.drills.soak --runs N` runs every drill N times and tallies runs, passes and the
worst recovery times from those records.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tiny_run import TINY_RUN, tiny_run  # noqa: F401 (TINY_RUN: re-exported for the drills)

tiny_config = tiny_run  # the drills' name for the shared tiny run config (tests/tiny_run.py)


def build_tiny_sudoku(uri: str, num_train: int = 96, num_test: int = 16, **kw) -> Any:
    """A 4x4 Sudoku dataset of `num_train` rows in shards of 32 rows, row groups of 16."""
    from pipeline.data import build_sudoku

    kw.setdefault("rows_per_shard", 32)
    kw.setdefault("row_group_rows", 16)
    return build_sudoku(uri, size=4, num_train=num_train, num_test=num_test, seed=0,
                        min_clues=10, **kw)  # fmt: skip


def record(drill: str, **numbers: Any) -> None:
    """Print the drill's outcome line and append it to $TRM_DRILL_LOG (JSON lines) if set."""
    line = " ".join(
        f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}" for k, v in numbers.items()
    )
    print(f"\nDRILL {drill} {line}")
    if path := os.environ.get("TRM_DRILL_LOG"):
        # the running test (pytest sets it: "tests/test_x.py::name[param] (call)")
        test = os.environ.get("PYTEST_CURRENT_TEST", "").rsplit(" (", 1)[0]
        with open(path, "a") as f:
            f.write(json.dumps({"drill": drill, "test": test, "time": time.time(), **numbers}))
            f.write("\n")


def actor_pids(class_name: str, root: int | None = None) -> list[int]:
    """Sorted pids of live Ray actor processes of `class_name` (sweep trials are
    `run_trial`, Ray Train workers `RayTrainWorker`) among the descendants of process `root`
    (default: this process, whose `ray.init` started the raylet that forks the workers; or a
    raylet's pid), read from their process titles (`ray::CLASS.method`). No State API call,
    which can time out on a loaded machine, and never a process of another Ray."""
    import psutil

    pids = []
    for p in psutil.Process(root).children(recursive=True):
        try:
            title = (p.cmdline() or [""])[0]
            if title.split(".")[0] == f"ray::{class_name}" and p.status() != psutil.STATUS_ZOMBIE:
                pids.append(p.pid)
        except psutil.Error:  # gone, or a zombie, meanwhile
            continue
    return sorted(pids)


def raylet_pid(node: Any) -> int:
    """Pid of the raylet of a Ray node object (`ray._private.node.Node`)."""
    from ray._private import ray_constants

    return node.all_processes[ray_constants.PROCESS_TYPE_RAYLET][0].process.pid


def read_logs(root: Path, pattern: str) -> list[str]:
    """The text of every file under `root` matching `pattern`, in name order; a file that Ray
    removes between listing and reading (an exited worker's log) is skipped."""
    texts = []
    for path in sorted(root.glob(pattern)):
        try:
            texts.append(path.read_text(errors="replace"))
        except FileNotFoundError:
            continue
    return texts


def logs_holding(root: Path, pattern: str, done: Any, timeout: float = 30.0) -> str:
    """The joined text of `read_logs(root, pattern)` once `done(text)` holds, or as it is after
    `timeout` seconds: a worker's buffered output can reach its log file after the run that
    printed it has returned."""
    deadline = time.monotonic() + timeout
    while True:
        out = "\n".join(read_logs(root, pattern))
        if done(out) or time.monotonic() > deadline:
            return out
        time.sleep(0.5)


class LocalRay:
    """A private local Ray cluster: its own short temp dir (session logs land there, so a drill
    can read its workers' output), the given environment for every Ray process, and a
    shutdown that stops only what it started."""

    def __init__(self, num_cpus: int = 2, env: dict[str, str] | None = None, **init_kw: Any):
        import tempfile

        self.num_cpus, self.init_kw = num_cpus, init_kw
        self.env = {"RAY_TRAIN_V2_ENABLED": "1", **(env or {})}
        # AF_UNIX socket paths under it must stay short
        self.temp_dir = tempfile.mkdtemp(prefix="rd-", dir="/tmp")
        self._saved: dict[str, str | None] = {}

    def __enter__(self) -> LocalRay:
        import ray

        for k, v in self.env.items():
            self._saved[k] = os.environ.get(k)
            os.environ[k] = v
        ray.init(address="local", num_cpus=self.num_cpus, _temp_dir=self.temp_dir, include_dashboard=True,
                 **self.init_kw)  # fmt: skip
        return self

    def worker_output(self) -> str:
        """Everything Ray worker processes printed so far (their .out and .err logs)."""
        return "\n".join(read_logs(Path(self.temp_dir), "session_*/logs/worker-*"))

    def __exit__(self, *exc: Any) -> None:
        import shutil

        import ray

        try:
            ray.shutdown()
        finally:
            for k, v in self._saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
            shutil.rmtree(self.temp_dir, ignore_errors=True)


# A node whose raylet stops answering is declared dead after 3 missed health checks a second
# apart (Ray's defaults: 5, 3 s apart): each lost node in a drill costs ~3 s of waiting, not ~15.
FAST_NODE_DEATH = {"health_check_period_ms": 1000, "health_check_failure_threshold": 3}


@contextlib.contextmanager
def private_cluster(monkeypatch: Any, workers: int, **head: Any) -> Iterator[tuple[Any, list, str]]:
    """A multi-node Ray cluster on this machine (`ray.cluster_utils.Cluster`): a head with no
    CPUs (`head`: more of its `ray start` arguments) and `workers` 1-CPU nodes, each its own
    raylet, all in a private temp dir, lost nodes declared dead quickly (FAST_NODE_DEATH);
    connected. Yields (cluster, worker nodes, temp dir).
    cluster_utils records its address for `ray.init()` in /tmp/ray: it is kept in the temp dir
    instead, so no other `ray.init()` on this machine joins the cluster."""
    import shutil
    import tempfile

    import ray
    import ray._private.utils
    from ray.cluster_utils import Cluster

    temp = tempfile.mkdtemp(prefix="rn-", dir="/tmp")
    write = ray._private.utils.write_ray_address
    monkeypatch.setattr(ray._private.utils, "write_ray_address",
                        lambda addr, temp_dir=None: write(addr, temp))  # fmt: skip
    monkeypatch.setenv("RAY_TRAIN_V2_ENABLED", "1")
    head = {"num_cpus": 0, "temp_dir": temp, "_system_config": FAST_NODE_DEATH, **head}
    c = Cluster(initialize_head=True, head_node_args=head)
    try:
        nodes = [c.add_node(num_cpus=1, temp_dir=temp) for _ in range(workers)]
        c.wait_for_nodes()
        ray.init(address=c.address)
        yield c, nodes, temp
    finally:
        ray.shutdown()
        c.shutdown()
        shutil.rmtree(temp, ignore_errors=True)
