"""Drill 5, preemption six times over: a sweep trial on a multi-node Ray cluster simulated on
this machine (`ray.cluster_utils.Cluster`: a head with no CPUs and seven 1-CPU nodes, each its
own raylet) loses the node it runs on, without warning (the raylet and every process it
forked die at once), once before its first checkpoint and then five times, each just after a
new checkpoint; the trial moves to a node still standing (on KubeRay, the replacement pod the
autoscaler starts: nodes cannot be added here while the sweep runs, `add_node` needs the
main thread). The sweep allows no failures (`max_failures: 0`): lost nodes must cost none,
including one lost before the trial made any progress (told from a trial that crashes as it
starts by its node being dead).

Checked: the trial completes; the summary counts 6 preemptions; each retry resumed from the
checkpoint written just before its node died (a kill loses at most one checkpoint interval of
steps); the trial's MLflow metric series is continuous (every logged step present once the run
ends) and a step trained again after a resume logs the value the lost attempt logged.

Slow (~3-4 min: eight raylets start on 2 cores, and the retry after the first loss waits for
Ray to declare the node dead).
"""

from __future__ import annotations

import contextlib
import math
import re
import threading
import time
from pathlib import Path

import pytest
import yaml
from drills import private_cluster, raylet_pid, record

from pipeline.tracking.sender import TRIAL_RETURN_S

SMOKE = Path(__file__).resolve().parents[1] / "sweeps" / "smoke.yaml"
KILLS, EVERY, LOG_EVERY = 5, 8, 4
STEPS = EVERY * (KILLS + 3)


@pytest.fixture
def cluster(monkeypatch):
    monkeypatch.setenv("TUNE_FUNCTION_THREAD_TIMEOUT_S", TRIAL_RETURN_S)
    with private_cluster(monkeypatch, KILLS + 2) as made:
        yield made


def _sweep(tmp_path: Path):
    from pipeline.sweeping.store import load_sweep

    d = yaml.safe_load(SMOKE.read_text())
    d["base"]["schedule"] = {"steps": STEPS, "log_every": LOG_EVERY}
    d["base"]["eval"].update(every=EVERY, num_pictures=0)
    d["base"]["checkpoint"]["every"] = EVERY
    d["base"]["resources"].update(cpus_per_worker=1)
    d["space"] = {"model.H_cycles": {"grid": [1]}, "optim.lr": {"grid": [3e-3]}}
    d["scheduler"] = {"type": "fifo"}
    d["max_failures"] = 0
    path = tmp_path / "preempt.yaml"
    path.write_text(yaml.safe_dump(d))
    return load_sweep(
        str(path),
        [f"data.uri={tmp_path / 'data'}", f"tracking.uri=sqlite:///{tmp_path / 'm.db'}"],
        str(tmp_path / "runs"),
        "raylets",
    )


def _newest_checkpoint(exp: Path) -> int:
    """The newest complete checkpoint's step, by the check a resume makes (`store.verify`): a
    copy the kill cuts short is not counted (counting any checksum file, a kill mid-copy
    expected a resume from the half-written checkpoint; CI hit that)."""
    from pipeline.checkpoints.store import verify

    for d in sorted(exp.glob("trial_*/checkpoint_*"), key=lambda d: d.name, reverse=True):
        try:
            verify(d)
        except Exception:  # missing, short or still being copied
            continue
        return int(d.name.split("_")[1])
    return -1


def _trial_node(nodes: list):
    """The node whose raylet runs the trial's actor (`ray::run_trial...`), or None: one
    pass over the process table (a walk per node costs a pass each, slower than a checkpoint
    interval on a loaded machine)."""
    import psutil

    parent, actors = {}, []
    for p in psutil.process_iter(["pid", "ppid", "cmdline"]):
        parent[p.info["pid"]] = p.info["ppid"]
        title = (p.info["cmdline"] or [""])[0]
        if title.split(".")[0] == "ray::run_trial":
            actors.append(p.info["pid"])
    by_raylet = {}
    for n in nodes:
        try:
            by_raylet[raylet_pid(n)] = n
        except (KeyError, IndexError):  # a node still starting has no raylet yet
            continue
    for pid in actors:
        while pid in parent and pid not in by_raylet:
            pid = parent[pid]
        if pid in by_raylet:
            return by_raylet[pid]
    return None


def _lose(c, node) -> None:
    """Lose `node` as a machine is lost: its processes die together (`remove_node` kills the
    raylet and its agents; the workers it forked would train on until they noticed)."""
    import psutil

    for p in psutil.Process(raylet_pid(node)).children(recursive=True):
        with contextlib.suppress(psutil.Error):
            p.kill()
    c.remove_node(node, allow_graceful=False)


def _kill_nodes(c, nodes: list, exp: Path, killed: list[int], polls: list) -> None:
    """Lose the node that runs the trial once before its first checkpoint, then each time a
    new checkpoint is complete (no grace). `killed` gets the newest complete checkpoint once
    the node is gone (-1: none; the retry must resume from it); `polls` (newest, whether the
    trial's node was found) for the failure message."""
    deadline, last = time.monotonic() + 900, -2
    while time.monotonic() < deadline and len(killed) < KILLS + 1:
        newest = _newest_checkpoint(exp)
        started = newest >= 0 or any(exp.glob("attempts/*.json"))  # the attempt is counted
        victim = _trial_node(nodes) if started and last < newest < STEPS else None
        polls.append((newest, victim is not None))
        if victim is not None:
            _lose(c, victim)
            nodes.remove(victim)
            last = _newest_checkpoint(exp)
            killed.append(last)
        time.sleep(0.02)


def _series(tracking_uri: str, run_id: str, key: str) -> list[tuple[int, float]]:
    from mlflow.tracking import MlflowClient

    history = MlflowClient(tracking_uri).get_metric_history(run_id, key)
    return [(m.step, m.value) for m in sorted(history, key=lambda m: (m.timestamp, m.step))]


@pytest.mark.slow
def test_a_trial_whose_node_is_lost_six_times_completes_losing_at_most_an_interval_each(
    cluster, tmp_path, capfd
):
    from pipeline.sweeping.run import run_sweep

    c, nodes, _ = cluster
    sweep, text, exp_path = _sweep(tmp_path)
    killed: list[int] = []
    polls: list[tuple[int, bool]] = []
    killer = threading.Thread(target=_kill_nodes,
                              args=(c, list(nodes), Path(exp_path), killed, polls),
                              daemon=True)  # fmt: skip
    killer.start()
    out = run_sweep(sweep, text, exp_path)
    killer.join(timeout=10)
    console = capfd.readouterr().out
    seen = sorted({(newest, found) for newest, found in polls})
    assert len(killed) == KILLS + 1 and killed[0] == -1, (killed, len(polls), seen,
                                                          console[-3000:])  # fmt: skip
    (row,) = out.rows
    assert row.stop_reason == "completed" and row.step == STEPS, (row, console[-3000:])
    # the loss before any checkpoint counts as one too: its node died (not the trial itself)
    assert row.preemptions == KILLS + 1, (row, killed)
    assert "preempted" in out.summary_text
    name = re.escape(row.name)
    resumed = [int(s) for s in re.findall(rf"\[{name}\] resumed from step (\d+)", console)]
    # each retry resumed from the checkpoint written just before its node died
    assert resumed == killed[1:], (resumed, killed)

    series = _series(f"sqlite:///{tmp_path / 'm.db'}", row.run_id, "train/loss")
    first: dict[int, float] = {}
    for step, value in series:
        # a step trained again after a resume logs what the lost attempt logged
        assert math.isclose(first.setdefault(step, value), value, rel_tol=1e-5), (step, series)
    assert sorted(first) == list(range(LOG_EVERY, STEPS + 1, LOG_EVERY)), series
    again = len(series) - len(first)
    record("raylet_kill", kills=KILLS + 1, killed_after=killed, resumed_from=resumed,
           logged_steps_again=again)  # fmt: skip
