"""Lost nodes cost no retries: a trial attempt that goes away with its process after reaching a
new checkpoint (preemption, node failure) is retried without limit and counted as a preemption;
one that fails on its own, or goes away again and again without reaching a checkpoint, counts
against `max_failures`; input that fails the same way every time ends the trial at once
(tests/test_sweep.py, the damaged shard). The record is `pipeline.sweeping.store`'s; the real
kill is a slow test on a local Ray cluster."""

from __future__ import annotations

import os
import re
import signal
import threading
import time
from pathlib import Path

import pytest
import yaml

from pipeline.sweeping.store import begin_attempt, end_attempt_with_error, trial_attempts

SMOKE = Path(__file__).resolve().parents[1] / "sweeps" / "smoke.yaml"


def test_attempts_lost_after_progress_are_preemptions_and_the_rest_are_errors(tmp_path):
    exp = str(tmp_path / "exp")
    assert trial_attempts(exp, "t") == {"lost": 0, "errors": 0, "open": False, "step": -1}
    assert begin_attempt(exp, "t", -1)["lost"] == 0  # first attempt, no checkpoint yet
    a = begin_attempt(exp, "t", 8)  # the first went away after checkpointing step 8
    assert (a["lost"], a["errors"]) == (1, 0)
    a = begin_attempt(exp, "t", 24)  # and again after step 24: another preemption
    assert (a["lost"], a["errors"]) == (2, 0)
    a = begin_attempt(exp, "t", 24)  # went away before its next checkpoint: an error
    assert (a["lost"], a["errors"]) == (2, 1)
    assert end_attempt_with_error(exp, "t") == 2  # failed on its own
    a = begin_attempt(exp, "t", 24)  # the failed attempt was closed: nothing more counted
    assert (a["lost"], a["errors"], a["open"]) == (2, 2, True)
    assert trial_attempts(exp, "other")["lost"] == 0  # per trial


@pytest.mark.slow
def test_a_trial_killed_more_often_than_max_failures_completes_counting_preemptions(
    ray_local, tmp_path, capfd
):
    """~2-4 min: max_failures 0, and the trial's process is SIGKILLed (what a lost node does to
    it) three times, each after a new checkpoint; it completes, continuing from its
    checkpoints, and the summary counts 3 preemptions."""
    from pipeline.sweeping.run import run_sweep
    from pipeline.sweeping.store import load_sweep

    d = yaml.safe_load(SMOKE.read_text())
    d["base"]["schedule"] = {"steps": 48, "log_every": 8}
    d["base"]["eval"].update(every=8, num_pictures=0)
    d["base"]["checkpoint"]["every"] = 8
    d["space"] = {"model.H_cycles": {"grid": [1]}, "optim.lr": {"grid": [3e-3]}}
    d["scheduler"] = {"type": "fifo"}
    d["max_failures"] = 0
    path = tmp_path / "preempt.yaml"
    path.write_text(yaml.safe_dump(d))
    sweep, text, exp_path = load_sweep(
        str(path), [f"data.uri={tmp_path / 'data'}", f"tracking.uri=sqlite:///{tmp_path / 'm.db'}"],
        str(tmp_path / "runs"), "preempt",
    )  # fmt: skip
    exp = Path(exp_path)
    killed: list[int] = []

    def kill_after_new_checkpoints():
        deadline, last = time.monotonic() + 600, -1
        while time.monotonic() < deadline and len(killed) < 3:
            steps = [
                int(p.parent.name.split("_")[1])
                for p in exp.glob("trial_*/checkpoint_*/trainer.pt")
            ]
            pids = ray_local.actor_pids("ImplicitFunc")
            if steps and max(steps) > last and pids:
                last = max(steps)
                for pid in pids:
                    os.kill(pid, signal.SIGKILL)
                killed.append(last)
            time.sleep(0.05)

    killer = threading.Thread(target=kill_after_new_checkpoints, daemon=True)
    killer.start()
    out = run_sweep(sweep, text, exp_path)
    killer.join(timeout=10)
    console = capfd.readouterr().out
    assert len(killed) == 3, (killed, console[-3000:])
    (row,) = out.rows
    assert row.stop_reason == "completed" and row.step == 48, (row, console[-3000:])
    assert row.preemptions == 3, (row, killed)
    resumed = [
        int(s) for s in re.findall(rf"\[{re.escape(row.name)}\] resumed from step (\d+)", console)
    ]
    assert len(resumed) == 3 and all(s >= 8 for s in resumed), (resumed, killed)
    assert "preempted" in out.summary_text
