"""The sweep summary's pieces without Ray, on synthetic trials: seeds grouped per grid point,
steps to 95% exact accuracy, the sentence on what the sweep found, the halting-threshold
columns and plot, child-run display names, summary.json's `best`, and the refusal to keep
results in a Ray job's temporary working directory. The real sweep is in test_sweep.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from pipeline.config.run import ConfigError, RunConfig
from pipeline.sweeping.config import SweepConfig
from pipeline.sweeping.findings import finding, halt_cell, halt_points, seed_groups, steps_to
from pipeline.sweeping.report import (
    TrialRow,
    best_config_yaml,
    best_row,
    best_summary,
    summary_text,
)
from pipeline.sweeping.trial import SweepContext

SWEEPS = Path(__file__).resolve().parents[1] / "sweeps"


def row(i: int, H: int, seed: int, exact: float, to95: int | None, layers: int = 2) -> TrialRow:
    """A finished trial at (H_cycles=H, L_cycles=1, L_layers=layers): depth 2 x H x layers."""
    params = {"model.H_cycles": H, "model.L_layers": layers, "data.seed": seed}
    return TrialRow(f"t_{i:05d}", params, depth=2 * H * layers, halt_max_steps=2,
                    total_steps=800, best=exact, best_step=800, exact=exact, step=800,
                    steps_to_95=to95, stop_reason="completed", name=f"H{H}-seed{seed}")  # fmt: skip


def rising() -> list[TrialRow]:
    """Depth 4: 0.40 and 0.42 (never 95%); depth 8: 0.96 and 0.98 (at 600 and 800); depth 12:
    0.97 (at 300) and 0.97 (at 300)."""
    return [row(0, 1, 0, 0.40, None), row(1, 1, 1, 0.42, None), row(2, 2, 0, 0.96, 600),
            row(3, 2, 1, 0.98, 800), row(4, 3, 0, 0.97, 300), row(5, 3, 1, 0.97, 300)]  # fmt: skip


def test_steps_to_95_is_the_first_evaluation_at_or_over_it():
    assert steps_to([(300, 0.96), (100, 0.2), (200, 0.95), (400, 0.5)]) == 200
    assert steps_to([(100, 0.2), (200, 0.949)]) is None
    assert steps_to([]) is None


def test_seeds_are_grouped_per_grid_point():
    groups = seed_groups(rising())
    assert [(g.params, len(g.rows)) for g in groups] == [
        ({"model.H_cycles": h, "model.L_layers": 2}, 2) for h in (1, 2, 3)
    ]
    g = groups[1]
    assert g.mean("exact") == pytest.approx(0.97) and g.spread("exact") == pytest.approx(0.02)
    assert g.steps_to_target() == 700  # mean over the seeds that reached it
    assert groups[0].steps_to_target() is None


def test_summary_shows_seed_groups_and_ends_with_the_finding():
    sweep = SweepConfig.from_yaml(SWEEPS / "default.yaml")
    rows = rising()
    text = summary_text(sweep, rows, 60.0, best_row(rows, "max"), "x")
    assert "By grid point, over seeds (data.seed):" in text
    lines = text.splitlines()
    depth8 = next(line for line in lines if line.startswith("  2  ") and "8" in line.split())
    assert "0.970 (0.960-0.980)" in depth8 and "600 800" in depth8 and "700 (2/2 seeds)" in depth8
    depth4 = next(line for line in lines if line.startswith("  1  ") and "4" in line.split())
    assert "0.410 (0.400-0.420)" in depth4 and "- -" in depth4
    assert lines[-1] == (
        "Finding: At equal parameters (L_layers=2), exact accuracy rose from 0.41 at depth 4 to "
        "0.97 at depth 12; only depth 12 reached 95% (at step 300)."
    )


def test_finding_compares_steps_and_admits_no_trend():
    rows = rising()[2:]  # depth 8 (700 steps) vs depth 12 (300 steps): same accuracy
    assert finding(seed_groups(rows)) == (
        "Finding: At equal parameters (L_layers=2), exact accuracy showed no clear trend with "
        "depth (0.97 at depth 8 vs 0.97 at depth 12, within the seeds' spread of 0.02); deeper "
        "recursion reached 95% in fewer steps (300 vs 700)."
    )
    falling = [row(0, 1, 0, 0.9, None), row(1, 1, 1, 0.8, None), row(2, 3, 0, 0.3, None)]
    assert finding(seed_groups(falling)) == (
        "Finding: At equal parameters (L_layers=2), exact accuracy fell from 0.85 at depth 4 to "
        "0.30 at depth 12; neither reached 95% exact accuracy."
    )
    one_depth = [row(0, 1, 0, 0.5, None), row(1, 1, 1, 0.7, None)]
    assert finding(seed_groups(one_depth)) == (
        "Finding: the sweep compares no effective depths; its best grid point (H_cycles=1, "
        "L_layers=2) reached mean exact accuracy 0.60 over 2 seed(s)."
    )
    assert "nothing to compare" in finding(seed_groups([row(0, 1, 0, None, None)]))


def test_halting_threshold_curve_of_the_last_evaluation(tmp_path):
    from pipeline.sweeping.plots import halt_figure

    metrics = {"eval/halt_tau_0.9/steps": 1.9, "eval/halt_tau_0.9/exact_accuracy": 0.8,
               "eval/halt_tau_0.5/steps": 1.4, "eval/halt_tau_0.5/exact_accuracy": 0.8,
               "eval/halt_tau_0.1/steps": 1.0, "eval/halt_tau_0.1/exact_accuracy": 0.5,
               "eval/halt_tau_0.3/steps": float("nan"), "eval/exact_accuracy": 0.8}  # fmt: skip
    points = halt_points(metrics)
    assert [p["tau"] for p in points] == [0.1, 0.5, 0.9]  # NaN left out, by tau
    assert points[1] == {"tau": 0.5, "steps": 1.4, "exact_accuracy": 0.8}
    assert halt_cell(points) == "1.4/0.80 best 0.5"  # ties on accuracy: fewer steps win
    assert halt_cell([]) == "-"
    r = row(0, 1, 0, 0.8, None)
    r.halt = points
    sweep = SweepConfig.from_yaml(SWEEPS / "default.yaml")
    assert "1.4/0.80 best 0.5" in summary_text(sweep, [r], 1.0, r, "x")
    fig = halt_figure([r])
    fig.savefig(tmp_path / "halt.png")
    assert len(fig.axes[0].lines) == 1 and list(fig.axes[0].lines[0].get_xdata()) == [1.0, 1.4, 1.9]


def test_depth_plot_shows_every_seed_and_integer_ticks():
    from pipeline.sweeping.plots import depth_figure

    ax = depth_figure(rising()).axes[0]
    xs = sorted(x for c in ax.collections for x, _ in c.get_offsets())
    assert len(xs) == 6 and len(set(xs)) == 6  # seeds of one depth side by side
    assert [round(x) for x in xs] == [4, 4, 8, 8, 12, 12]
    assert list(ax.get_xticks()) == [4, 8, 12]
    assert list(ax.lines[0].get_ydata()) == pytest.approx([0.41, 0.97, 0.97])  # the means


def test_child_runs_are_named_by_their_swept_values():
    sweep = SweepConfig.from_yaml(SWEEPS / "default.yaml")
    ctx = SweepContext(name="default", exp_path="/x", base={}, metric="m", mode="max",
                       keys={k: d.names for k, d in sweep.domains.items()}, use_gpu=False,
                       code_version="")  # fmt: skip
    point = {"model.H_cycles,model.L_cycles,model.L_layers": [3, 2, 2], "data.seed": 1}
    assert ctx.display_name(point, "abc_00007") == "H3-L2-layers2-seed1"

    def tune_params(p):  # a grid point (dotted fields) as Tune hands it over (space keys)
        return {k: p[n[0]] if len(n) == 1 else [p[x] for x in n] for k, n in ctx.keys.items()}

    names = {
        ctx.display_name(tune_params(p), f"a_{i:05d}") for i, p in enumerate(sweep.grid_points())
    }
    assert len(names) == sweep.num_trials  # unique within the sweep
    ctx.unique_points = False  # values may repeat (num_samples > 1, random draws)
    assert ctx.display_name(point, "abc_00007") == "H3-L2-layers2-seed1-00007"
    tied = SweepContext(name="s", exp_path="/x", base={}, metric="m", mode="max",
                        keys={"optim.lr,data.uri": ["optim.lr", "data.uri"]}, use_gpu=False,
                        code_version="")  # fmt: skip
    assert tied.display_name({"optim.lr,data.uri": [1e-4, "s3://b/sudoku 4"]}, "x_1") == (
        "lr0.0001-urisudoku_4"
    )
    assert ctx.run_key("abc_00007") == "/x/trials/default-abc_00007"  # --resume: the trial id


def test_best_in_summary_json_holds_value_checkpoint_and_config(tmp_path):
    sweep = SweepConfig.from_yaml(SWEEPS / "default.yaml")
    best = rising()[3]
    best.checkpoint, best.checkpoint_step = "/s/trial_x/checkpoint_000001", 800
    got = json.loads(json.dumps(best_summary(sweep, best)))
    assert got["value"] == 0.98 and got["checkpoint"] == "/s/trial_x/checkpoint_000001"
    (tmp_path / "best.yaml").write_text(best_config_yaml(sweep, best))
    assert got["config"] == yaml.safe_load((tmp_path / "best.yaml").read_text())
    assert RunConfig.from_dict(got["config"]).model.H_cycles == 2


def test_a_ray_job_does_not_keep_results_in_its_temporary_working_dir(
    tmp_path, monkeypatch, capsys
):
    """`ray job submit --working-dir .` runs the sweep in a copy Ray deletes: refused, naming
    what to set, before anything is built or started."""
    from pipeline.sweeping.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", '{"runtime_env": {"working_dir": "x"}}')
    args = ["--sweep", str(SWEEPS / "smoke.yaml"), "--set", f"data.uri={tmp_path / 'data'}"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "running as a Ray job" in err and "set MLFLOW_TRACKING_URI" in err, err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "data").exists() and not (tmp_path / "runs").exists()
    from pipeline.sweeping.prepare import check_durable

    base = SweepConfig.from_yaml(SWEEPS / "smoke.yaml").base_config()
    with pytest.raises(ConfigError, match=r"MLFLOW_TRACKING_URI .* and --storage-path"):
        check_durable(
            base.with_overrides([f"tracking.uri=sqlite:///{tmp_path}/m.db"]), "/elsewhere"
        )
    with pytest.raises(ConfigError, match=r"the sweep's storage \(.*runs/smoke\) would be lost"):
        check_durable(base.with_overrides(["tracking.enabled=false"]), str(tmp_path / "runs/smoke"))
    durable = base.with_overrides(["tracking.uri=http://mlflow:5000"])
    check_durable(durable, "s3://bucket/sweeps/smoke")  # durable places: no error
    monkeypatch.delenv("RAY_JOB_CONFIG_JSON_ENV_VAR")
    check_durable(base.with_overrides([f"tracking.uri=sqlite:///{tmp_path}/m.db"]), "runs")


def test_the_parent_run_page_is_printed_for_a_tracking_server():
    from types import SimpleNamespace

    from pipeline.sweeping.report import results_where
    from pipeline.tracking.server import run_url

    assert run_url("http://me:pw@mlflow:5000/", "3", "abc") == (
        "http://me:***@mlflow:5000/#/experiments/3/runs/abc?workflowType=machine_learning"
    )
    assert run_url("sqlite:////x/mlflow.db", "3", "abc") == ""
    ctx = SimpleNamespace(exp_path="s3://b/sweeps/s", tracking_uri="sqlite:////x/mlflow.db")
    where = results_where(ctx, SimpleNamespace(run_id="abc"))
    assert where == (
        "Results: s3://b/sweeps/s (summary, best_config.yaml, plots, trial checkpoints)\n"
        "MLflow parent run abc: mlflow ui --backend-store-uri sqlite:////x/mlflow.db"
    )
    assert results_where(ctx, SimpleNamespace(run_id=None)).count("\n") == 0


def test_a_large_sweep_prints_its_best_trials_and_grid_points_not_every_row():
    sweep = SweepConfig.from_yaml(SWEEPS / "default.yaml")
    # 3 depths x 25 seeds: 75 trials; the best trial is t_00074 (H=3, seed 24)
    rows = [row(25 * (h - 1) + s, h, s, 0.3 * h + 0.001 * s, None) for h in (1, 2, 3)
            for s in range(25)]  # fmt: skip
    full = summary_text(sweep, rows, 60.0, best_row(rows, "max"), "x")
    short = summary_text(sweep, rows, 60.0, best_row(rows, "max"), "x", bounded=True)
    assert all(r.trial_id in full for r in rows)
    shown = [r.trial_id for r in rows if r.trial_id in short]
    assert sorted(shown) == [f"t_{i:05d}" for i in range(65, 75)]  # the 10 best, no others
    assert "The best 10 of 75 trials (every trial: summary.txt" in short
    assert "The best 3 of 3 grid points, over seeds (data.seed):" in short
    # aggregates without the per-seed columns (25 values a cell)
    assert "per seed" not in short and "per seed" in full
    assert len(short.splitlines()) < 40 < len(full.splitlines())


def test_the_end_of_a_sweep_lists_its_directory_once(tmp_path, monkeypatch):
    from pipeline.checkpoints import store as ckpt
    from pipeline.checkpoints.directory import CheckpointStore
    from pipeline.sweeping import store

    exp = tmp_path / "sweep"
    for trial, steps in (("trial_a", (8, 16)), ("trial_b", (8,))):
        for step in steps:
            d = exp / trial / f"checkpoint_{step:06d}"
            d.mkdir(parents=True)
            ckpt.write_report(d, {"step": step, "eval/accuracy": 1.0 / step})
    (exp / "trial_b" / "checkpoint_000099").mkdir()  # no report, no files: not a checkpoint
    (exp / "trial_b" / "checkpoint_000099" / "x").write_text("half")
    store.record_failed(str(exp), "b", "ValueError: bad")
    store.begin_attempt(str(exp), "a", -1, "node-1")
    store.begin_attempt(str(exp), "a", 8, "node-2")  # the first got further: lost (preempted)
    lists = []
    original = store.open_storage

    def counting(uri, **kw):
        s = original(uri, **kw)
        real = s.list
        s.list = lambda prefix="": lists.append(prefix) or real(prefix)
        return s

    monkeypatch.setattr(store, "open_storage", counting)
    listing = store.SweepListing(str(exp))
    a = listing.checkpoints(f"{exp}/trial_a")
    assert [(s.name, s.step) for s in a] == [("checkpoint_000016", 16), ("checkpoint_000008", 8)]
    assert CheckpointStore(f"{exp}/trial_a").best("eval/accuracy", "max", stored=a) == (
        f"{exp}/trial_a/checkpoint_000008", 8)  # fmt: skip
    # the same order as the per-directory listing the trial itself resumes from
    assert [s.name for s in listing.checkpoints(f"{exp}/trial_b")] == [
        s.name for s in CheckpointStore(f"{exp}/trial_b").stored()]  # fmt: skip
    assert listing.failed_line("b") == "ValueError: bad" and listing.failed_line("a") is None
    assert listing.checkpoints(f"{exp}/trial_c") == []
    assert listing.preemptions("a") == 1 and listing.preemptions("b") == 0  # b: no record
    assert lists == [""]  # one listing for everything
