"""Evaluate-mode sweeps (test-time compute over one trained checkpoint): sweep-file errors
before anything runs, then one sweep end to end on a real local Ray cluster and the embedded
MLflow store, over a checkpoint trained in this process."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
import torch
import yaml
from tiny_run import tiny_run

from pipeline.config.run import ConfigError
from pipeline.sweeping.config import SweepConfig
from pipeline.sweeping.eval_trial import bind_checkpoint
from pipeline.tracking.tracker import child_runs, download_artifact, read_run

SWEEPS = Path(__file__).resolve().parents[1] / "sweeps"


def eval_sweep(uri: str, space: dict, **base) -> dict:
    return {
        "name": "tt",
        "mode": "evaluate",
        "checkpoint": uri,
        "base": {"resources": {"cpus_per_worker": 1}, **base},
        "space": space,
    }


@pytest.mark.parametrize(
    "changes, needle",
    [
        ({"space": {"model.H_cycles": {"grid": [1, 2]}}}, "'model.H_cycles' is a training field"),
        ({"space": {"optim.lr": {"grid": [1e-3]}}}, "'optim.lr' is a training field"),
        ({"space": {"eval.trajectories": {"grid": [1, 0]}}}, "eval.trajectories: must be an integer >= 1"),
        ({"space": {"eval.noise_std": {"grid": [0.1, -0.1]}}}, "eval.noise_std: must be a number >= 0"),
        ({"space": {"eval.select": {"grid": ["best"]}}}, "eval.select: must be one of"),
        ({"space": {"eval.halt_threshold": {"grid": [1.0]}}}, "eval.halt_threshold: must be a number in (0, 1)"),
        ({"space": {"eval.max_steps": {"grid": [-1]}}}, "eval.max_steps: must be an integer >= 0"),
        ({"space": {"eval.protocol": {"grid": ["act", "fixed"]}}}, "eval.protocol: must be one of"),
        ({"space": {"eval.protocol": {"grid": ["fixed_depth"]}, "eval.select": {"grid": ["first"]}}},
         "eval.select: 'first' picks the trajectory that halted first"),
        ({"space": {"eval.depth": {"grid": [8]}}},
         "eval.depth: is the depth of protocol fixed_depth, got 8 with protocol act"),
        ({"space": {"eval.protocol": {"grid": ["fixed_depth"]}, "eval.max_steps": {"grid": [8]}}},
         "eval.max_steps: is the step cap of protocol act, got 8 with protocol fixed_depth"),
        ({"space": {"eval.protocol": {"grid": ["fixed_depth"]}, "eval.halt_threshold": {"grid": [0.3]}}},
         "eval.halt_threshold: is the halting threshold of protocol act"),
        ({"space": {"eval.protocol": {"grid": ["act", "fixed_depth"]}},
          "search": {"metric": "eval/fixed_depth/mode_exact_accuracy"}},
         "eval/fixed_depth/mode_exact_accuracy is reported by protocol fixed_depth only"),
        ({"search": {"metric": "eval/fixed_depth/best_q"}}, "is not a metric runs report"),
        ({"checkpoint": ""}, "mode: evaluate needs the checkpoint"),
        ({"mode": "infer"}, "mode: must be one of"),
        ({"scheduler": {"type": "asha"}}, "has no training to stop early"),
        ({"base": {"resources": {"num_workers": 2}}}, "base.resources.num_workers"),
    ],
)  # fmt: skip
def test_bad_evaluate_sweeps_fail_naming_the_key(changes, needle):
    d = {**eval_sweep("runs/x", {"eval.trajectories": {"grid": [1, 4]}}), **changes}
    with pytest.raises(ConfigError) as e:
        SweepConfig.from_dict(d)
    assert needle in str(e.value)


def test_checkpoint_flag_replaces_the_files_and_a_missing_checkpoint_is_named(tmp_path):
    sweep = SweepConfig.from_yaml(SWEEPS / "test_time.yaml", checkpoint=str(tmp_path / "nope"))
    assert sweep.checkpoint == str(tmp_path / "nope") and sweep.num_trials == 24
    with pytest.raises(ConfigError, match=r"checkpoint .*nope"):
        bind_checkpoint(sweep)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, str]:
    """(work dir, run directory) of a tiny 4x4 Sudoku run trained in this process."""
    from pipeline.data import build_sudoku
    from pipeline.train import run_info
    from pipeline.training.worker import run_in_process

    work = tmp_path_factory.mktemp("tt")
    data = str(work / "sudoku4")
    build_sudoku(data, size=4, num_train=256, num_test=48, seed=0, min_clues=10)
    cfg = tiny_run(data, work / "runs", "name=tiny", "model.H_cycles=2", "model.puzzle_emb_ndim=0",
                   "model.halt_max_steps=3", "schedule.steps=8", "schedule.log_every=4")  # fmt: skip
    run_in_process(cfg, run_info(cfg, "tiny", str(work / "runs")))
    return work, str(work / "runs" / "tiny")


@pytest.mark.slow
def test_data_that_does_not_fit_the_checkpoint_is_refused(trained):
    from pipeline.data import build_sudoku

    work, run_dir = trained
    six = str(work / "sudoku6")
    build_sudoku(six, size=6, num_train=32, num_test=8, seed=0, min_clues=20)
    sweep = SweepConfig.from_dict(
        eval_sweep(run_dir, {"eval.trajectories": {"grid": [1, 2]}}, data={"uri": six})
    )
    with pytest.raises(ConfigError, match="does not match the dataset"):
        from pipeline.training.preflight import check_dataset

        bound = bind_checkpoint(sweep)
        for _, cfg in bound.checked:
            check_dataset(cfg)


@pytest.mark.slow
def test_evaluate_sweep_end_to_end(ray_local, trained, capsys):
    """~1 min: 4 settings of one checkpoint as Tune trials; child runs, summary, plot, best;
    the summary is the caller's to print (once), ending with where the results are."""
    from pipeline.checkpoints.restore import restore
    from pipeline.sweeping.eval_report import BEST, PLOT
    from pipeline.sweeping.run import run_sweep

    work, run_dir = trained
    uri = f"sqlite:///{work / 'mlflow.db'}"
    space = {"eval.trajectories": {"grid": [1, 3]}, "eval.noise_std": {"grid": [0.0, 0.5]}}
    d = eval_sweep(run_dir, space, checkpoint={"storage_path": str(work / "sweeps")},
                   tracking={"uri": uri, "experiment": "tt"})  # fmt: skip
    sweep = SweepConfig.from_dict(d)
    out = run_sweep(sweep, yaml.safe_dump(d), str(work / "sweeps" / "tt"))

    assert "evaluate-mode sweep 'tt'" not in capsys.readouterr().out
    assert out.console_text().count("evaluate-mode sweep 'tt'") == 1
    assert f"MLflow parent run {out.parent_run_id}" in out.console_text()
    assert out.exit_code == 0 and len(out.eval_rows) == 4
    assert all(r.metrics["eval/count"] == 48 for r in out.eval_rows)
    runs = child_runs(uri, "tt", out.parent_run_id)
    assert len(runs) == 4
    for run_id in runs.values():
        child = read_run(uri, run_id)
        assert child["status"] == "FINISHED"
        assert {"eval.trajectories", "eval.noise_std", "eval.select"} <= set(child["params"])
        assert "eval/inference_flops_per_example" in child["metrics"]
    parent = read_run(uri, out.parent_run_id)
    assert {"summary/summary.txt", "summary/summary.json", PLOT, BEST} <= set(parent["artifacts"])
    best = yaml.safe_load(Path(download_artifact(uri, out.parent_run_id, BEST)).read_text())
    assert best["eval"]["trajectories"] == out.best.setting["eval.trajectories"]
    assert "--set eval.trajectories=" in out.summary_text

    # K trajectories cost K times the FLOPs of their mean steps; K=1 without noise is the
    # plain halting prediction
    by = {(r.setting["eval.trajectories"], r.setting["eval.noise_std"]): r for r in out.eval_rows}
    k3 = by[(3, 0.5)].metrics
    per_step = (
        by[(1, 0.0)].metrics["eval/inference_flops_per_example"]
        / by[(1, 0.0)].metrics["eval/steps"]
    )
    assert k3["eval/inference_flops_per_example"] == pytest.approx(3 * k3["eval/steps"] * per_step)
    with contextlib.ExitStack() as stack:
        r = restore(run_dir, stack)
    from pipeline.data.stream import ShardStream

    batch = next(iter(ShardStream(r.config.data.uri, "test", batch_size=1000, rank=0,
                                  world_size=1, seed=0, shuffle=False, augment=False, epoch=0,
                                  drop_last=False)))  # fmt: skip
    labels = torch.as_tensor(batch["labels"]).long()
    keep = (labels != -100).any(-1)
    with torch.no_grad():
        pred = r.model.predict(
            torch.as_tensor(batch["inputs"]).long()[keep],
            torch.as_tensor(batch["puzzle_identifiers"]).long()[keep],
            halt=True,
        )
    lab = labels[keep]
    exact = ((pred.preds == lab) | (lab == -100)).all(-1).float().mean().item()
    assert by[(1, 0.0)].metrics["eval/exact_accuracy"] == pytest.approx(exact)
