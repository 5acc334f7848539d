"""Drill 1, a training worker process killed at a random step (SIGKILL: no cleanup, no last
checkpoint). The run resumes from its last checkpoint, loses at most one checkpoint interval of
steps, and ends with the same metrics as an uninterrupted run with the same seed.

- `train.py --local` (one process, the loop 1-worker sweep trials run): killed, started again
  with the same command, which resumes by itself (~20 s, default run).
- Ray Train with two workers: one worker process is killed and Ray Train restarts the group from
  the last checkpoint within the same `fit()` (slow, ~1.5 min).

The step is drawn at random; the seed is printed and `TRM_DRILL_SEED=<seed>` replays it.
"""

from __future__ import annotations

import math
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
from drills import (
    LocalRay,
    actor_pids,
    build_tiny_sudoku,
    raylet_pid,
    read_logs,
    record,
    tiny_config,
)

from pipeline.train import run_info
from pipeline.training.worker import run_in_process

REPO = Path(__file__).resolve().parent.parent
COMPARED = ("train/loss", "train/lm_loss", "train/exact_accuracy", "train/steps", "train/lr",
            "eval/exact_accuracy", "eval/accuracy", "eval/q_halt_accuracy", "eval/steps")  # fmt: skip


def _rng() -> tuple[random.Random, int]:
    seed = int(os.environ.get("TRM_DRILL_SEED", time.time_ns() % 2**31))
    print(f"\ndrill seed {seed} (TRM_DRILL_SEED={seed} replays it)")
    return random.Random(seed), seed


def _same(final: dict, reference: dict) -> None:
    for k in COMPARED:
        assert math.isclose(final[k], reference[k], rel_tol=1e-5, abs_tol=1e-8), (
            k, final[k], reference[k])  # fmt: skip


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> str:
    uri = str(tmp_path_factory.mktemp("data") / "sudoku4")
    build_tiny_sudoku(uri)
    return uri


def test_local_run_killed_at_a_random_step_resumes_to_the_same_result(data, tmp_path):
    steps, every = 16, 4
    cfg = tiny_config(data, tmp_path / "runs", f"schedule.steps={steps}")
    reference = run_in_process(cfg, run_info(cfg, "reference", str(tmp_path / "runs")))
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg.to_dict()))
    cmd = [sys.executable, str(REPO / "pipeline" / "train.py"), str(path), "--local",
           "--name", "killed"]  # fmt: skip
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    rng, seed = _rng()
    target = rng.randint(1, steps - 1)

    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)  # fmt: skip
    printed = []
    try:
        for line in proc.stdout:
            if m := re.search(r"\] step (\d+)/", line):
                printed.append(int(m.group(1)))
                if printed[-1] >= target:
                    os.kill(proc.pid, signal.SIGKILL)
                    killed_at = time.monotonic()
                    break
        rest = proc.stdout.read()
    finally:
        proc.kill()
        proc.wait()
    assert printed and printed[-1] >= target, (printed, rest[-2000:])
    printed += [int(s) for s in re.findall(r"\] step (\d+)/", rest)]
    assert proc.returncode == -signal.SIGKILL

    # what the killed run left on disk (written whole, then renamed): a step is printed before
    # its checkpoint is saved, so a kill right after "step 4/16" may leave none
    saved = sorted(int(c.name.removeprefix("checkpoint_"))
                   for c in (tmp_path / "runs" / "killed").glob("checkpoint_*"))  # fmt: skip
    again = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    resumed = re.search(r"resumed from step (\d+) ", again.stdout)
    last_done = max(printed)
    if not saved:
        assert resumed is None, again.stdout[-3000:]  # nothing to resume from: started over
        lost = last_done
    else:
        assert resumed and int(resumed.group(1)) == saved[-1], (saved, again.stdout[-3000:])
        lost = last_done - saved[-1]
    assert 0 <= lost <= every, (printed, again.stdout[-2000:])
    recovery_s = time.monotonic() - killed_at  # includes starting the process again
    assert f"[killed] done: step {steps}," in again.stdout
    # the final state both runs checkpointed: weights, optimiser and the final evaluation
    import torch

    from pipeline.checkpoints import store as ckpt

    a = ckpt.load(tmp_path / "runs" / "reference" / f"checkpoint_{steps:08d}", ckpt.TRAINER_FILE)
    b = ckpt.load(tmp_path / "runs" / "killed" / f"checkpoint_{steps:08d}", ckpt.TRAINER_FILE)
    for k, v in a["model"].items():
        assert torch.allclose(v.float(), b["model"][k].float(), rtol=1e-5, atol=1e-7), k
    for k in COMPARED:
        if k.startswith("eval/"):
            assert math.isclose(b["last_eval"][k], reference[k], rel_tol=1e-5, abs_tol=1e-8), k
    record("worker_kill.local", runs=1, seed=seed, killed_at_step=printed[-1], steps_lost=lost,
           recovery_s=recovery_s)  # fmt: skip


# ---- Ray Train: the group restarts within fit() ----------------------------------------------
def _train_worker_pids() -> list[int]:
    import ray

    return actor_pids("RayTrainWorker", raylet_pid(ray._private.worker._global_node))


@pytest.mark.slow
def test_ray_worker_killed_at_a_random_step_resumes_to_the_same_result(data, tmp_path):
    """~1.5 min: an uninterrupted 2-worker run, then the same run with one worker process
    SIGKILLed at a random step; Ray Train restarts the group from the last checkpoint."""
    from pipeline.train import run_training

    steps, every = 40, 8
    over = (f"schedule.steps={steps}", f"eval.every={every}", f"checkpoint.every={every}",
            "resources.num_workers=2")  # fmt: skip
    cfg = tiny_config(data, tmp_path / "runs", *over)
    rng, seed = _rng()
    target = rng.randint(2, steps - 2)
    killed: dict = {}

    with LocalRay(2) as ray_:
        reference = run_training(cfg, name="reference").metrics

        def kill_at_target():
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline:
                out = ray_.worker_output()
                done = [int(s) for s in re.findall(r"\[killed\] step (\d+)/", out)]
                if done and max(done) >= target:
                    pids = _train_worker_pids()
                    if pids:
                        victim = rng.choice(pids)
                        os.kill(victim, signal.SIGKILL)
                        killed.update(t=time.monotonic(), pid=victim, step=max(done))
                        break
                time.sleep(0.01)
            while time.monotonic() < deadline and "t" in killed:
                out = ray_.worker_output()
                if m := re.search(r"\[killed\] resumed from step (\d+) ", out):
                    killed.update(recovery_s=time.monotonic() - killed["t"],
                                  resumed=int(m.group(1)))  # fmt: skip
                    return
                time.sleep(0.1)

        killer = threading.Thread(target=kill_at_target, daemon=True)
        killer.start()
        result = run_training(cfg, name="killed")
        killer.join(timeout=60)
        out = ray_.worker_output()
        first = read_logs(Path(ray_.temp_dir), "session_*/logs/worker-*.out")
    assert "t" in killed, f"no worker was killed (target step {target})"
    assert result.error is None and result.metrics["step"] == steps
    # the last step the first group reached: its rank 0 log is the one that never resumed
    done = [int(s) for t in first if "[killed] resumed" not in t
            for s in re.findall(r"\[killed\] step (\d+)/", t)]  # fmt: skip
    assert "resumed" in killed and done, out[-3000:]
    lost = max(done) - killed["resumed"]
    assert 0 <= lost <= every, (killed, max(done))
    _same(result.metrics, reference)
    record("worker_kill.ray", runs=1, seed=seed, killed_at_step=max(done), steps_lost=lost,
           recovery_s=killed["recovery_s"])  # fmt: skip
