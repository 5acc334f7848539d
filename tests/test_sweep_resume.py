"""`--resume auto` as a job that is submitted again after a failure would use it, with an Optuna
sweep, on a `ray start --head` cluster (the `ray_head` fixture): the same command starts the
sweep, the driver is SIGKILLed after trials have finished, and the same command again continues
it: finished trials are not rerun, the MLflow parent run is continued, and the Optuna study
after the resume holds every trial, the ones proposed before the kill included (the searcher's
state survived the driver). Slow: ~3 min on 2 shared cores."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from pipeline.tracking.tracker import child_runs

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "sweeps" / "smoke.yaml"
TRIALS = 5

pytestmark = pytest.mark.slow


def _optuna_file(tmp: Path) -> Path:
    d = yaml.safe_load(SMOKE.read_text())
    d["name"] = "auto"
    d["base"]["eval"]["num_pictures"] = 0
    d["base"]["schedule"] = {"steps": 32, "log_every": 8}
    d["space"] = {
        "optim.lr": {"loguniform": [1.0e-4, 1.0e-2]},
        "model.H_cycles": {"randint": [1, 2]},
    }
    d["search"].update(algorithm="optuna", num_samples=TRIALS, seed=0, startup_trials=2)
    d["scheduler"] = {"type": "fifo"}
    path = tmp / "auto.yaml"
    path.write_text(yaml.safe_dump(d))
    return path


def test_resume_auto_starts_then_continues_a_killed_optuna_sweep(ray_head, tmp_path):
    from ray.tune.search.optuna import OptunaSearch

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = [
        sys.executable, str(REPO / "pipeline" / "sweep.py"), "--sweep", str(_optuna_file(tmp_path)),
        "--address", ray_head.address, "--storage-path", str(tmp_path / "runs"),
        "--set", f"data.uri={tmp_path / 'data'}", "--set", f"tracking.uri={uri}", "--resume", "auto",
    ]  # fmt: skip
    env = {**ray_head.env, "RAY_DEDUP_LOGS": "0"}
    exp = tmp_path / "runs" / "auto"
    log1 = tmp_path / "first.log"
    with open(log1, "w") as f:
        driver = subprocess.Popen(args, stdout=f, stderr=subprocess.STDOUT, env=env)
    deadline, second_end = time.monotonic() + 600, float("inf")
    try:
        # killed once two trials have ended and Tune has saved the searcher after that
        while True:
            text = log1.read_text()
            ended = set(re.findall(r"\[sweep\] trial (\w+) ended", text))
            if len(ended) >= 2:
                second_end = min(second_end, time.time())
            saved = [p.stat().st_mtime for p in exp.glob("searcher-state-*.pkl")]
            if saved and max(saved) > second_end:
                break
            assert driver.poll() is None, f"the sweep ended before the kill: {text[-3000:]}"
            assert time.monotonic() < deadline, text[-3000:]
            time.sleep(0.2)
        os.kill(driver.pid, signal.SIGKILL)
    finally:
        driver.kill()
        driver.wait()
    first = log1.read_text()
    assert "--resume auto: no sweep yet; starting it" in first, first[-3000:]
    ended = set(re.findall(r"\[sweep\] trial (\w+) ended", first))
    parent = re.search(r"MLflow parent run (\w+) \(created\)", first).group(1)
    before = OptunaSearch()
    before.restore_from_dir(str(exp))
    proposed_before = len(before._ot_study.trials)

    out = subprocess.run(args, env=env, capture_output=True, text=True, timeout=900)
    second = out.stdout + out.stderr
    assert out.returncode == 0, second[-6000:]
    assert "--resume auto: continuing the sweep stored" in second, second[-3000:]
    assert f"MLflow parent run {parent} (continuing)" in second, second[-3000:]
    summary = re.search(r"Sweep 'auto': (\d+) trial\(s\) \(([^)]*)\)", second)
    assert summary and summary.groups() == (str(TRIALS), f"{TRIALS} completed"), second[-3000:]
    rows = json.loads((exp / "summary.json").read_text())["trials"]
    names = {r["trial_id"]: r["name"] for r in rows}
    assert len(names) == TRIALS and ended <= set(names), (names, ended)
    rerun = [t for t in ended if f"[{names[t]}] step" in second]
    assert not rerun, f"finished before the kill, run again after the resume: {rerun}"
    assert len(child_runs(uri, "trm-sweeps", parent)) == TRIALS

    # the study continued: it holds the trials proposed before the kill and the rest, each
    # told its result, and no more than the sweep's trials (a fresh searcher would add more)
    after = OptunaSearch()
    after.restore_from_dir(str(exp))
    trials = after._ot_study.trials
    assert proposed_before >= len(ended) and len(trials) == TRIALS, (proposed_before, trials)
    assert all(t.state.name == "COMPLETE" for t in trials), [t.state for t in trials]
    assert before._ot_study.trials[0].params == trials[0].params
    print(f"\nkilled after {len(ended)} trial(s) ended, {proposed_before} proposed; "
          f"resumed to {len(trials)} trials in one study")  # fmt: skip
