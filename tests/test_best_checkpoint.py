""""Best" reproduces: an evaluation that beats the run's best ranking metric is checkpointed and
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
import yaml

from pipeline.evaluate import main as evaluate_main

SMOKE = Path(__file__).resolve().parents[1] / "sweeps" / "smoke.yaml"


def evaluate_json(checkpoint: str, capsys) -> dict:
    """`pipeline/evaluate.py CHECKPOINT --json` in this process."""
    capsys.readouterr()
    assert evaluate_main([checkpoint, "--json", "--device", "cpu"]) == 0
    return json.loads(capsys.readouterr().out)


def test_run_local_tags_the_checkpoint_of_its_best_evaluation(tmp_path, capsys):
    from test_train import TINY

    from pipeline.config.run import RunConfig
    from pipeline.data import build_sudoku
    from pipeline.tracking.tracker import find_run, read_run
    from pipeline.train import run_local

    data = str(tmp_path / "sudoku4")
    build_sudoku(data, size=4, num_train=256, num_test=32, seed=0, min_clues=10)
    d = {**TINY, "data": {**TINY["data"], "uri": data},
         "schedule": {"steps": 12, "log_every": 2},
         "eval": {"every": 2, "max_examples": 0, "num_pictures": 0},
         "checkpoint": {"every": 12, "num_to_keep": 1, "metric": "eval/accuracy", "mode": "min",
                        "storage_path": str(tmp_path / "runs")},
         "tracking": {"experiment": "best", "uri": f"sqlite:///{tmp_path / 'mlflow.db'}"}}  # fmt: skip
    cfg = RunConfig.from_dict(d)
    run_local(cfg)
    uri = cfg.tracking.uri
    run = read_run(uri, find_run(uri, "best", str(tmp_path / "runs" / "tiny")))
    history = dict(run["metrics"]["eval/accuracy"])
    best_step = min(history, key=lambda s: (history[s], s))
    assert best_step < 12, history  # the case the cadence alone misses
    best = run["tags"]["checkpoint.best"]
    assert best.endswith(f"checkpoint_{best_step:08d}")
    assert evaluate_json(best, capsys)["eval/accuracy"] == history[best_step]
    # retention kept the best and the latest, nothing else
    kept = sorted(p.name for p in (tmp_path / "runs" / "tiny").glob("checkpoint_*"))
    assert kept == sorted({f"checkpoint_{best_step:08d}", "checkpoint_00000012"})


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
