"""Drill 1, a training worker process killed at a random step (SIGKILL: no cleanup, no last
checkpoint). The run resumes from its last checkpoint, loses at most one checkpoint interval of
steps, and ends with the same metrics as an uninterrupted run with the same seed.

- `train.py --local` (one process, the loop 1-worker sweep trials run): killed, started again
  with the same command, which resumes by itself (~20 s, default run).
- Ray Train with two workers: one worker process is killed and Ray Train restarts the group from
  the last checkpoint within the same `fit()`: `tests/test_train_ray.py`
  (test_killed_worker_resumes_from_checkpoint_exactly, which shares its cluster and reference
  run with the other Ray Train tests).

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
import time
from pathlib import Path

import pytest
import yaml
from drills import (
    build_tiny_sudoku,
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


@pytest.mark.parametrize("recorded", [False, True])
def test_a_group_resumed_at_its_final_checkpoint_reports_that_checkpoint(data, tmp_path, recorded):
    """A Ray Train group killed after writing its final checkpoint resumes from it with nothing
    left to train, and reports that checkpoint's metrics again. When Ray Train had not recorded
    the checkpoint yet (it records a report up to 2 s after it was made), rank 0 reports a copy
    of its files too, so the run's result names the final checkpoint: a CI run once ended with
    the result naming step 18 of 24. A recorded one is reported without files (reporting it
    twice would record it twice)."""
    import torch

    from pipeline.checkpoints import store as ckpt
    from pipeline.training.worker import Session, train_loop

    cfg = tiny_config(data, tmp_path / "runs")
    info = run_info(cfg, "ended", str(tmp_path / "runs"))
    final = run_in_process(cfg, info)
    last = max((tmp_path / "runs" / "ended").glob("checkpoint_*"))
    seen = []

    def report(metrics, directory):
        if directory is not None:
            assert Path(directory) != last  # Ray Train copies it into storage: never itself
            ckpt.verify(directory)
        seen.append((metrics["step"], directory is not None))

    session = Session(0, 1, torch.device("cpu"), report, str(last), resume_unrecorded=not recorded)
    train_loop(cfg, info, session)
    assert seen == [(final["step"], not recorded)]
