"""Drill 5, preemption five times over: a sweep trial on a multi-node Ray cluster simulated on
this machine (`ray.cluster_utils.Cluster`: a head with no CPUs and six 1-CPU nodes, each its
own raylet) loses the node it runs on, without warning, five times, each time just after a new
checkpoint; the trial moves to a node still standing (on KubeRay, the replacement pod the
autoscaler starts: nodes cannot be added here while the sweep runs, `add_node` needs the
main thread). The sweep allows no failures (`max_failures: 0`): lost nodes must cost none.

Checked: the trial completes; the summary counts 5 preemptions; each retry resumed from the
checkpoint written just before its node died (a kill loses at most one checkpoint interval of
steps); the trial's MLflow metric series is continuous (every logged step present once the run
ends) and a step trained again after a resume logs the value the lost attempt logged.

Slow (~3-4 min: seven raylets start on 2 cores, and each loss waits for Ray to see the node
dead).
"""

from __future__ import annotations

import math
import re
import threading
import time
from pathlib import Path

import pytest
import yaml
from drills import actor_pids, private_cluster, raylet_pid, record

SMOKE = Path(__file__).resolve().parents[1] / "sweeps" / "smoke.yaml"
KILLS, EVERY, LOG_EVERY = 5, 8, 4
STEPS = EVERY * (KILLS + 3)


@pytest.fixture
def cluster(monkeypatch):
    monkeypatch.setenv("TUNE_FUNCTION_THREAD_TIMEOUT_S", "60")
    with private_cluster(monkeypatch, KILLS + 1) as made:
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
    done = [int(p.parent.name.split("_")[1]) for p in exp.glob("trial_*/checkpoint_*/*.sha256")]
    return max(done, default=-1)


def _runs_the_trial(node) -> bool:
    try:
        return bool(actor_pids("ImplicitFunc", raylet_pid(node)))
    except (KeyError, IndexError, OSError):  # a node still starting has no raylet yet
        return False


def _kill_five_nodes(c, nodes: list, exp: Path, killed: list[int]) -> None:
    """Each time a new checkpoint is complete: remove the node whose raylet runs the trial
    (no grace)."""
    deadline, last = time.monotonic() + 900, -1
    while time.monotonic() < deadline and len(killed) < KILLS:
        newest = _newest_checkpoint(exp)
        victim = next((n for n in nodes if _runs_the_trial(n)), None)
        if newest > last and newest < STEPS and victim is not None:
            c.remove_node(victim, allow_graceful=False)
            nodes.remove(victim)
            killed.append(newest)
            last = newest
        time.sleep(0.05)


def _series(tracking_uri: str, run_id: str, key: str) -> list[tuple[int, float]]:
    from mlflow.tracking import MlflowClient

    history = MlflowClient(tracking_uri).get_metric_history(run_id, key)
    return [(m.step, m.value) for m in sorted(history, key=lambda m: (m.timestamp, m.step))]


@pytest.mark.slow
def test_a_trial_whose_node_is_lost_five_times_completes_losing_at_most_an_interval_each(
    cluster, tmp_path, capfd
):
    from pipeline.sweeping.run import run_sweep

    c, nodes, _ = cluster
    sweep, text, exp_path = _sweep(tmp_path)
    killed: list[int] = []
    killer = threading.Thread(target=_kill_five_nodes,
                              args=(c, list(nodes), Path(exp_path), killed), daemon=True)  # fmt: skip
    killer.start()
    out = run_sweep(sweep, text, exp_path)
    killer.join(timeout=10)
    console = capfd.readouterr().out
    assert len(killed) == KILLS, (killed, console[-3000:])
    (row,) = out.rows
    assert row.stop_reason == "completed" and row.step == STEPS, (row, console[-3000:])
    assert row.preemptions == KILLS, (row, killed)
    assert "preempted" in out.summary_text
    name = re.escape(row.name)
    resumed = [int(s) for s in re.findall(rf"\[{name}\] resumed from step (\d+)", console)]
    # each retry resumed from the checkpoint written just before its node died
    assert resumed == killed, (resumed, killed)

    series = _series(f"sqlite:///{tmp_path / 'm.db'}", row.run_id, "train/loss")
    first: dict[int, float] = {}
    for step, value in series:
        # a step trained again after a resume logs what the lost attempt logged
        assert math.isclose(first.setdefault(step, value), value, rel_tol=1e-5), (step, series)
    assert sorted(first) == list(range(LOG_EVERY, STEPS + 1, LOG_EVERY)), series
    again = len(series) - len(first)
    record("raylet_kill", kills=KILLS, killed_after=killed, resumed_from=resumed,
           logged_steps_again=again)  # fmt: skip
