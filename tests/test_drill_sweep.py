"""Drills 3 and 8, the sweep driver (`pipeline/sweep.py`) on a `ray start --head` cluster
(the `ray_head` fixture, private temp dir):

3. The driver is SIGKILLed at a random moment shortly (0-1 s) after the first or second
   trial ended, while another has a checkpoint (seeded, replayable with TRM_DRILL_SEED):
   `--resume` completes the sweep; trials that had finished before the kill are not run
   again, the ones cut short continue from their checkpoints in their own MLflow runs; the
   parent run is continued, not duplicated, and every trial has exactly one child run.
8. Load: more trials than fit (12 by default, TRM_DRILL_LOAD_TRIALS=50 for the full drill) of
   0.5 CPU each on 2 CPUs (at most 4 at once) queue and all complete, and the driver's memory
   stays bounded while they do.

Both slow (each ~2-3 min on 2 shared cores).
"""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml
from drills import record
from mlflow.tracking import MlflowClient

from pipeline.config.fields import set_dotted
from pipeline.sweeping.run import PARENT_KEY_PREFIX
from pipeline.tracking.tracker import child_runs, find_run, read_run

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "sweeps" / "smoke.yaml"

pytestmark = pytest.mark.slow


def _sweep_file(tmp: Path, name: str, **changes) -> Path:
    d = yaml.safe_load(SMOKE.read_text())
    d["name"] = name
    d["base"]["eval"]["num_pictures"] = 0
    for dotted, value in changes.items():
        set_dotted(d, dotted.replace("__", "."), value)
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(d))
    return path


def _driver_args(sweep: Path, ray_head, tmp: Path, uri: str) -> list[str]:
    return [
        sys.executable, str(REPO / "pipeline" / "sweep.py"), "--sweep", str(sweep),
        "--address", ray_head.address, "--storage-path", str(tmp / "runs"),
        "--set", f"data.uri={tmp / 'data'}", "--set", f"tracking.uri={uri}",
    ]  # fmt: skip


# ---- drill 3: the driver killed at a random moment --------------------------------------------
def _with_checkpoint(exp: Path) -> set[str]:
    """Ids of the trials with a complete checkpoint (its trainer file is copied last)."""
    return {p.parts[-3].removeprefix("trial_") for p in exp.glob("trial_*/checkpoint_*/trainer.pt")}


def test_driver_killed_after_a_trial_ended_resume_completes_without_rerunning(ray_head, tmp_path):
    steps, every = 64, 8
    sweep = _sweep_file(
        tmp_path, "drill3",
        base__schedule={"steps": steps, "log_every": every},
        base__eval__every=every, base__checkpoint__every=every,
        space={"model.H_cycles": {"grid": [1, 2]}, "optim.lr": {"grid": [3.0e-3, 1.0e-3]}},
        scheduler={"type": "fifo"}, concurrency=2,
    )  # fmt: skip
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = _driver_args(sweep, ray_head, tmp_path, uri)
    seed = int(os.environ.get("TRM_DRILL_SEED", time.time_ns() % 2**31))
    print(f"\ndrill seed {seed} (TRM_DRILL_SEED={seed} replays it)")
    # The kill comes at a random moment shortly after the j-th trial ended (the worst time,
    # since Tune saves its experiment state, which trials ended, only every >= 10 s) while
    # another trial is part-way, with a checkpoint.
    rng = random.Random(seed)
    j, delay = rng.randint(1, 2), rng.uniform(0, 1)
    env = {**ray_head.env, "RAY_DEDUP_LOGS": "0"}  # every trial line reaches the driver log

    log1 = tmp_path / "first.log"
    exp = tmp_path / "runs" / "drill3"
    with open(log1, "w") as f:
        driver = subprocess.Popen(args, stdout=f, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + 600
    try:
        while True:
            text = log1.read_text()
            ended = set(re.findall(r"\[sweep\] trial (\w+) ended", text))
            if len(ended) >= j and _with_checkpoint(exp) - ended:
                break
            assert driver.poll() is None, f"the sweep ended before the kill: {text[-3000:]}"
            assert time.monotonic() < deadline, text[-3000:]
            time.sleep(0.02)
        time.sleep(delay)
        os.kill(driver.pid, signal.SIGKILL)
    finally:
        driver.kill()
        driver.wait()
    killed_at = time.monotonic()
    first = log1.read_text()
    ended = set(re.findall(r"\[sweep\] trial (\w+) ended", first))
    cut = _with_checkpoint(exp) - ended  # trials cut short
    assert cut, f"no trial was part-way at the kill: {first[-3000:]}"
    created = re.search(r"MLflow parent run (\w+) \(created\)", first)
    assert created, first[-3000:]
    parent_id = created.group(1)

    t = time.monotonic()
    out = subprocess.run([*args, "--resume"], env=env, capture_output=True,
                         text=True, timeout=900)  # fmt: skip
    resume_s = time.monotonic() - t
    second = out.stdout + out.stderr
    assert out.returncode == 0, second[-6000:]
    summary = re.search(r"Sweep 'drill3': (\d+) trial\(s\) \(([^)]*)\)", second)
    assert summary and summary.group(1) == "4", second[-3000:]
    assert summary.group(2) == "4 completed", summary.group(0)
    assert f"MLflow parent run {parent_id} (continuing)" in second, second[-3000:]
    # trials log under their display names (H1-lr0.003), which the summary table pairs with ids
    names = dict(re.findall(r"^(\w+_\d+)\s+(H\d-lr\S+)\s", second, re.M))
    assert len(names) == 4 and ended <= set(names), (names, ended)
    rerun = [t for t in ended if f"[{names[t]}] step" in second]
    assert not rerun, f"finished before the kill, run again after --resume: {rerun}"
    # the ones cut short continued from their checkpoints, not from scratch
    for t in cut:
        resumed = re.search(rf"\[{re.escape(names[t])}\] resumed from step (\d+)", second)
        assert resumed and int(resumed.group(1)) >= every, (t, second[-3000:])
        assert f"[{names[t]}] step {every}/{steps} " not in second, t

    assert find_run(uri, "trm-sweeps", PARENT_KEY_PREFIX + str(exp)) == parent_id
    assert read_run(uri, parent_id)["status"] == "FINISHED"
    children = child_runs(uri, "trm-sweeps", parent_id)
    assert len(children) == 4, children
    client = MlflowClient(uri)
    exp_id = client.get_experiment_by_name("trm-sweeps").experiment_id
    assert len(client.search_runs([exp_id])) == 5  # one parent, four children, no duplicates
    for key, run_id in children.items():
        child = read_run(uri, run_id)
        assert child["status"] == "FINISHED", (key, child["status"])
        evals = [s for s, _ in child["metrics"]["eval/accuracy"]]
        assert max(evals) == steps, (key, evals)
    for t in cut:  # the cut-short trials' runs were continued: one run holds every step
        logged = read_run(uri, children[f"{exp}/trials/drill3-{t}"])["metrics"]["train/loss"]
        assert {s for s, _ in logged} == set(range(every, steps + 1, every)), (t, logged)
    record("sweep_driver_kill", runs=1, seed=seed, kill_after_ended=j, delay_s=delay,
           finished_before_kill=len(ended), resume_s=resume_s,
           recovery_s=time.monotonic() - killed_at)  # fmt: skip


# ---- drill 8: more trials than the cluster runs at once ---------------------------------------
def test_many_trials_on_two_cpus_queue_and_complete_with_bounded_driver_memory(ray_head, tmp_path):
    """TRM_DRILL_LOAD_TRIALS trials (default 12: three times what fits; each tiny trial still
    costs ~20 s of process start-up on 2 shared cores, so 50 take ~8 min) of 0.5 CPU each on
    2 CPUs: they queue, at most 4 run at once, all complete, and the driver's memory does not
    grow with the number of trials done."""
    import json

    import psutil

    n = int(os.environ.get("TRM_DRILL_LOAD_TRIALS", 12))
    sweep = _sweep_file(
        tmp_path, "drill8",
        base__schedule={"steps": 8, "log_every": 8}, base__eval__every=8,
        base__eval__max_examples=16, base__checkpoint__every=8,
        base__tracking__enabled=False,  # MLflow per trial is not what this drill loads
        space={"optim.lr": {"loguniform": [1.0e-4, 1.0e-2]}},
        search={"algorithm": "random", "num_samples": n, "seed": 0,
                "metric": "eval/accuracy", "mode": "max"},
        scheduler={"type": "fifo"}, concurrency=0,
    )  # fmt: skip
    args = _driver_args(sweep, ray_head, tmp_path, "")[:-2]  # no tracking URI
    log = tmp_path / "driver.log"
    rss: list[tuple[int, int]] = []  # (driver RSS, trials ended so far)
    t0 = time.monotonic()
    with open(log, "w") as f:
        driver = subprocess.Popen(args, stdout=f, stderr=subprocess.STDOUT, env=ray_head.env)
    proc = psutil.Process(driver.pid)

    def sample():
        while driver.poll() is None:
            try:
                rss.append((proc.memory_info().rss, log.read_text().count("[sweep] trial ")))
            except (psutil.Error, OSError):
                pass
            time.sleep(0.5)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        driver.wait(timeout=1800)
    finally:
        driver.kill()
        driver.wait()
    sampler.join(timeout=5)
    wall_s = time.monotonic() - t0
    text = log.read_text()
    assert driver.returncode == 0, text[-4000:]
    assert f"Sweep 'drill8': {n} trial(s) ({n} completed)" in text, text[-3000:]
    assert "4 at a time" in text, text[:2000]  # 2 CPUs / 0.5 CPU per trial

    # from each trial's Tune results: all reached the last step; never more than 4 at once
    spans = []
    for path in (tmp_path / "runs" / "drill8").glob("trial_*/result.json"):
        last = [json.loads(line) for line in path.read_text().splitlines()][-1]
        assert last["step"] == 8, path
        # Tune's timestamp is whole seconds (floored): the true end lies in [ts, ts + 1), so
        # [ts + 1 - total, ts] lies inside the trial's true span; overlaps of these can only
        # undercount (a trial starts ~20 ms after its predecessor in a reused process)
        ts = last["timestamp"]
        spans.append((ts + 1 - last["time_total_s"], ts))
    assert len(spans) == n
    running = peak = 0
    for _, d in sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans]):
        running += d
        peak = max(peak, running)
    assert 1 < peak <= 4, peak

    # the driver's memory: what it grows by from the first quarter of the trials done to the
    # end is small (no per-trial state piling up), and it stays well under a GiB or two
    assert rss, "no memory samples"
    after_quarter = [r for r, ended in rss if ended >= n // 4]
    assert after_quarter, rss[-5:]
    peak_mb = max(r for r, _ in rss) / 2**20
    growth_mb = (max(after_quarter) - after_quarter[0]) / 2**20
    assert growth_mb < 100, (growth_mb, peak_mb)
    assert peak_mb < 1500, peak_mb
    record("sweep_load", runs=1, trials=n, wall_s=wall_s, peak_concurrency=peak,
           driver_peak_mb=peak_mb, driver_growth_mb=growth_mb)  # fmt: skip
