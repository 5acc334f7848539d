"""`Best` reproduces: an evaluation that beats the run's best ranking metric is checkpointed and
kept by retention, so evaluating the best checkpoint a sweep's summary (or the training CLI's
`checkpoint.best` tag) names gives exactly the best value it reports.

Both runs rank by the lowest token accuracy (mode min): an untrained model is least accurate
early, so the best evaluation falls on an early evaluation step that the regular checkpoint
cadence (only the last step) never saves. Without checkpoint-on-improvement the best
checkpoint would be the last one, whose accuracy differs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from pipeline.evaluate import main as evaluate_main

SMOKE = Path(__file__).resolve().parents[1] / "sweeps" / "smoke.yaml"


def evaluate_json(checkpoint: str, capsys) -> dict:
    """`pipeline/evaluate.py CHECKPOINT --json` in this process."""
    capsys.readouterr()
    assert evaluate_main([checkpoint, "--json", "--device", "cpu"]) == 0
    return json.loads(capsys.readouterr().out)


def test_run_local_tags_the_checkpoint_of_its_best_evaluation(tmp_path, capsys):
    from test_train import TINY_SET
    from tiny_run import tiny_run

    from pipeline.data import build_sudoku
    from pipeline.tracking.tracker import find_run, read_run
    from pipeline.train import run_local
    from pipeline.training.prepared import prepare_run

    data = str(tmp_path / "sudoku4")
    build_sudoku(data, size=4, num_train=256, num_test=32, seed=0, min_clues=10)
    cfg = tiny_run(data, tmp_path / "runs", *TINY_SET, "schedule.steps=12", "schedule.log_every=2",
                   "schedule.report_every=0", "eval.every=2", "eval.max_examples=0",
                   "eval.depth_steps=0", "eval.num_pictures=0", "checkpoint.every=12",
                   "checkpoint.num_to_keep=1", "checkpoint.metric=eval/accuracy",
                   "checkpoint.mode=min", "tracking.experiment=best",
                   tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")  # fmt: skip
    run_local(prepare_run(cfg))
    uri = cfg.tracking.uri
    run = read_run(uri, find_run(uri, "best", str(tmp_path / "runs" / "tiny")))
    history = dict(run["metrics"]["eval/accuracy"])
    best_step = min(history, key=lambda s: (history[s], s))
    assert best_step < 12, history  # the case the cadence alone misses
    best = run["tags"]["checkpoint.best"]
    assert best.endswith(f"checkpoint_{best_step:08d}")
    evaluated = evaluate_json(best, capsys)
    assert evaluated["eval/accuracy"] == history[best_step]
    assert (
        evaluated["eval/exact_accuracy"] == dict(run["metrics"]["eval/exact_accuracy"])[best_step]
    )
    # retention kept the best and the latest, nothing else
    kept = sorted(p.name for p in (tmp_path / "runs" / "tiny").glob("checkpoint_*"))
    assert kept == sorted({f"checkpoint_{best_step:08d}", "checkpoint_00000012"})


def test_worker_group_retention_keeps_the_best_over_later_time_based_checkpoints(tmp_path, capsys):
    """A worker group's checkpoints are kept by Ray Train's own retention: fed every checkpoint
    a run reports (its ranking rule, `checkpoint_config`, without a cluster), it keeps the best
    evaluation's checkpoint through the time-based ones after it, which carry that
    evaluation's scores, and `checkpoint.best`'s rule picks it; evaluating it gives the logged
    value exactly. Ranked by the metric itself, equal scores keep the later checkpoint."""
    import shutil

    from ray.train import Checkpoint
    from ray.train._internal.checkpoint_manager import _CheckpointManager
    from ray.train._internal.session import _TrainingResult
    from test_train import TINY_SET
    from tiny_run import tiny_run

    from pipeline.data import build_sudoku
    from pipeline.train import _rank
    from pipeline.training.cluster import checkpoint_config
    from pipeline.training.worker import RunInfo, run_in_process

    data = str(tmp_path / "sudoku4")
    build_sudoku(data, size=4, num_train=256, num_test=32, seed=0, min_clues=10)
    cfg = tiny_run(data, tmp_path / "runs", *TINY_SET, "schedule.steps=12", "schedule.log_every=1",
                   "schedule.report_every=0", "eval.every=4", "eval.max_examples=0",
                   "eval.depth_steps=0", "eval.num_pictures=0", "checkpoint.every=12",
                   "checkpoint.num_to_keep=1", "checkpoint.metric=eval/accuracy",
                   "checkpoint.mode=min",
                   "checkpoint.every_minutes=1e-9")  # a time-based checkpoint at every log step
    manager = _CheckpointManager(checkpoint_config(cfg.checkpoint))
    history: dict[int, dict] = {}

    def report(metrics: dict, checkpoint_dir: str | None) -> None:
        step = int(metrics["step"])
        if step % 4 == 0:
            history[step] = metrics
        if checkpoint_dir is not None:
            kept = shutil.copytree(checkpoint_dir, tmp_path / "ckpts" / f"checkpoint_{step:08d}")
            manager.register_checkpoint(_TrainingResult(Checkpoint(str(kept)), dict(metrics)))

    run_in_process(cfg, RunInfo("tiny", "tiny"), report=report, device=torch.device("cpu"))
    scores = {s: m["eval/accuracy"] for s, m in history.items()}
    best_step = min(scores, key=lambda s: (scores[s], s))
    assert best_step < 12, scores  # time-based checkpoints follow it, with its scores
    kept = sorted(p.name for p in (tmp_path / "ckpts").iterdir())
    assert kept == sorted({f"checkpoint_{best_step:08d}", "checkpoint_00000012"}), kept
    # what a run's result holds as best_checkpoints, ranked as `checkpoint.best` ranks them
    kept = [(r.checkpoint, r.metrics) for r in manager.best_checkpoint_results]
    best = max(kept, key=lambda cm: _rank(cm[1], cfg.checkpoint.mode))[0].path
    assert best.endswith(f"checkpoint_{best_step:08d}")
    evaluated = evaluate_json(best, capsys)
    for key in ("eval/accuracy", "eval/exact_accuracy", "eval/q_halt_accuracy", "eval/steps"):
        assert evaluated[key] == history[best_step][key], key


@pytest.mark.slow
def test_a_sweeps_best_checkpoint_evaluates_to_its_best_value(ray_local, tmp_path, capsys):
    """~1 min: one trial on a real local Ray; summary.json's best.checkpoint (and the sweep
    directory itself, which `restore` resolves to it) evaluates to best.value exactly."""
    from pipeline.sweeping.config import SweepConfig
    from pipeline.sweeping.run import run_sweep

    d = yaml.safe_load(SMOKE.read_text())
    d["base"]["data"]["uri"] = str(tmp_path / "data")
    d["base"]["schedule"] = {"steps": 12, "log_every": 2}
    d["base"]["eval"] = {"every": 2, "max_examples": 0, "num_pictures": 0}
    d["base"]["checkpoint"] = {"every": 12, "num_to_keep": 1}
    d["base"]["tracking"] = {"enabled": False}
    d["space"] = {"model.H_cycles": {"grid": [1]}}
    d["search"] = {"algorithm": "grid", "metric": "eval/accuracy", "mode": "min"}
    d["scheduler"] = {"type": "fifo"}
    sweep = SweepConfig.from_dict(d)
    exp_path = str(tmp_path / "sweeps" / "smoke")
    out = run_sweep(sweep, yaml.safe_dump(d), exp_path)
    assert out.exit_code == 0
    best = json.loads((Path(exp_path) / "summary.json").read_text())["best"]
    assert best["step"] < 12 and best["checkpoint_step"] == best["step"], best
    assert evaluate_json(best["checkpoint"], capsys)["eval/accuracy"] == best["value"]
    from_dir = evaluate_json(exp_path, capsys)
    assert from_dir["checkpoint"] == best["checkpoint"]
    assert from_dir["eval/accuracy"] == best["value"]
