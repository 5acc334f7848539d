"""`pipeline/sweep.py` on a real local Ray cluster with the embedded MLflow store: the smoke sweep
end to end (data built on first use, ASHA stopping trials early, parent/child runs and summary
artifacts consistent with the trials, --resume of a finished sweep rerunning nothing), the
refusals that happen before any trial starts, and the compute budget. The `ray job submit` and
driver-kill drills are in test_sweep_cluster.py."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import re
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from pipeline.checkpoints.restore import restore
from pipeline.config.run import ConfigError, RunConfig
from pipeline.sweeping.cli import main, parse_args
from pipeline.sweeping.run import PARENT_KEY_PREFIX, run_sweep
from pipeline.sweeping.store import load_sweep, stored_sweep
from pipeline.tracking.tracker import child_runs, download_artifact, find_run, read_run

SMOKE = Path(__file__).resolve().parents[1] / "sweeps" / "smoke.yaml"


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("sweep")


def smoke_args(work: Path, name: str = "smoke", *extra: str) -> list[str]:
    return [
        "--sweep", str(SMOKE), "--name", name, "--storage-path", str(work / "runs"),
        "--set", f"data.uri={work / 'data' / 'sudoku4'}",
        "--set", f"tracking.uri=sqlite:///{work / 'mlflow.db'}", *extra,
    ]  # fmt: skip


def run(args: list[str], resume: bool = False):
    """What `main(args)` does, returning the outcome (rows, parent run) instead of a status."""
    a = parse_args(args)
    sweep, text, exp_path = load_sweep(a.sweep, a.overrides, a.storage_path, a.name)
    if resume:
        sweep, text = stored_sweep(sweep, exp_path)
    return run_sweep(sweep, text, exp_path, resume=resume)


@pytest.mark.slow
def test_smoke_sweep_end_to_end(ray_local, work, capfd):
    """~2 min (4 trials, 2 at a time, then a resume): the whole sweep path in one Ray run."""
    args = smoke_args(work)
    out = run(args)
    console = capfd.readouterr().out
    uri = f"sqlite:///{work / 'mlflow.db'}"
    exp_path = str(work / "runs" / "smoke")

    # the dataset was built on first use
    assert (work / "data" / "sudoku4" / "meta.json").is_file()
    assert "[sweep] building dataset" in console

    # four trials; ASHA stopped at least one early (the learning rate that cannot learn)
    rows = {r.trial_id: r for r in out.rows}
    assert len(rows) == 4 and out.exit_code == 0
    reasons = [r.stop_reason for r in rows.values()]
    assert "early-stopped" in reasons and "completed" in reasons, reasons
    for r in rows.values():
        if r.stop_reason == "completed":
            assert r.step == r.total_steps == 24
        else:  # either good trial may lose to the other at the first rung; never both
            assert r.stop_reason == "early-stopped" and r.step < 24, r
        if r.params["optim.lr"] == 1e-6:  # cannot learn: below every rung's cutoff
            assert r.stop_reason == "early-stopped" and r.step == 8, r
        assert r.examples == r.step * 32 and r.flops > 0 and r.wall_s > 0
        assert r.best is not None and 0 <= r.best <= 1
    assert {(r.params["model.H_cycles"], r.params["optim.lr"]) for r in rows.values()} == {
        (1, 3e-3), (1, 1e-6), (2, 3e-3), (2, 1e-6)}  # fmt: skip
    assert {r.depth for r in rows.values()} == {2, 4}  # H_cycles x (L_cycles + 1) x L_layers

    # the MLflow parent run and one child run per trial, consistent with the trials
    parent_id = find_run(uri, "trm-sweeps", PARENT_KEY_PREFIX + exp_path)
    assert parent_id == out.parent_run_id
    parent = read_run(uri, parent_id)
    assert parent["status"] == "FINISHED" and parent["tags"]["trm.kind"] == "sweep"
    assert parent["params"]["sweep.num_trials"] == "4"
    children = child_runs(uri, "trm-sweeps", parent_id)
    assert len(children) == 4
    for r in rows.values():
        child = read_run(uri, children[f"{exp_path}/trials/smoke-{r.trial_id}"])
        assert r.run_id == children[f"{exp_path}/trials/smoke-{r.trial_id}"]
        assert child["tags"]["trm.stop_reason"] == r.stop_reason
        # named by its swept values; trial id, stop reason, values and best metric to see
        lr = "0.003" if r.params["optim.lr"] == 3e-3 else "1e-06"
        assert r.name == child["tags"]["mlflow.runName"] == f"H{r.params['model.H_cycles']}-lr{lr}"
        assert child["tags"]["trial_id"] == r.trial_id
        assert child["tags"]["stop_reason"] == {"early-stopped": "asha"}.get(
            r.stop_reason, r.stop_reason
        )
        assert child["params"]["swept.model.H_cycles"] == str(r.params["model.H_cycles"])
        assert float(child["params"]["swept.optim.lr"]) == r.params["optim.lr"]
        assert child["metrics"]["best/eval/accuracy"] == [(0, pytest.approx(r.best))]
        assert child["status"] == ("FINISHED" if r.stop_reason == "completed" else "KILLED")
        assert child["params"]["model.H_cycles"] == str(r.params["model.H_cycles"])
        assert float(child["params"]["optim.lr"]) == r.params["optim.lr"]
        evals = child["metrics"]["eval/accuracy"]
        assert max(s for s, _ in evals) == r.step
        assert max(v for _, v in evals) == pytest.approx(r.best)
        tracking = "\n".join(line for line in console.splitlines() if "[tracking]" in line)
        assert any(a.startswith("depth_curve/") for a in child["artifacts"]), (
            f"trial {r.trial_id} ({r.stop_reason}): artifacts {sorted(child['artifacts'])}, "
            f"tags {child['tags'].get('trm.tracking.dropped')}\n{tracking}"
        )

    # each trial directory holds Tune's result.json (the evaluation history the summary reads)
    # and none of Tune's other per-trial files, which every experiment-state save re-uploads
    for r in rows.values():
        trial_dir = Path(exp_path) / f"trial_{r.trial_id}"
        assert (trial_dir / "result.json").is_file()
        tune_files = {"progress.csv", "params.json", "params.pkl"}
        assert not tune_files & {p.name for p in trial_dir.iterdir()}, list(trial_dir.iterdir())
        assert not list(trial_dir.glob("events.out.tfevents.*"))

    # parent artifacts: the sweep file, the summary, the best config, the plots
    arts = parent["artifacts"]
    for path in ("sweep/sweep.yaml", "sweep/resolved.yaml", "summary/summary.txt",
                 "summary/summary.csv", "summary/summary.json", "best/best_config.yaml",
                 "plots/exact_vs_depth.png", "plots/exact_vs_compute.png",
                 "plots/depth_curves.png", "plots/halt_curves.png"):  # fmt: skip
        assert path in arts, (path, arts)
    assert Path(download_artifact(uri, parent_id, "sweep/sweep.yaml")).read_text() == (
        SMOKE.read_text()
    )
    table = list(csv.DictReader(io.StringIO(
        Path(download_artifact(uri, parent_id, "summary/summary.csv")).read_text())))  # fmt: skip
    assert {t["trial_id"] for t in table} == set(rows)
    for t in table:
        r = rows[t["trial_id"]]
        assert t["stop_reason"] == r.stop_reason and int(t["step"]) == r.step
        assert float(t["best"]) == pytest.approx(r.best) and t["run_id"] == r.run_id
    best = max(rows.values(), key=lambda r: (r.best, -r.flops))
    assert parent["tags"]["trm.best_trial"] == best.trial_id
    # rewritten at every trial end (step = trials ended), the last one is the sweep's best
    assert max(parent["metrics"]["best/eval/accuracy"])[1] == pytest.approx(best.best)
    cfg = RunConfig.from_yaml(download_artifact(uri, parent_id, "best/best_config.yaml"))
    assert cfg.model.H_cycles == best.params["model.H_cycles"]
    assert cfg.optim.lr == best.params["optim.lr"]
    for png in ("exact_vs_depth", "exact_vs_compute", "depth_curves", "halt_curves"):
        data = Path(download_artifact(uri, parent_id, f"plots/{png}.png")).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    summary = json.loads(
        Path(download_artifact(uri, parent_id, "summary/summary.json")).read_text()
    )
    assert len(summary["trials"]) == 4 and summary["metric"] == "eval/accuracy"
    assert any(t["curve"] for t in summary["trials"])  # depth curves of the best trials
    # every trial's halting-threshold curve (eval.halt_thresholds) of its last evaluation
    assert all([p["tau"] for p in t["halt"]] == [0.1, 0.3, 0.5, 0.7, 0.9]
               for t in summary["trials"])  # fmt: skip
    # `best`: the metric's value, the checkpoint holding it (restore loads it), the config
    b = summary["best"]
    assert b["value"] == pytest.approx(best.best) and b["trial_id"] == best.trial_id
    assert b["config"] == yaml.safe_load(
        Path(download_artifact(uri, parent_id, "best/best_config.yaml")).read_text()
    )
    assert b["checkpoint"].startswith(f"{exp_path}/trial_{best.trial_id}/checkpoint_")
    with contextlib.ExitStack() as stack:
        restored = restore(b["checkpoint"], stack, say=lambda _: None)
        assert restored.step == b["checkpoint_step"] and restored.checkpoint == b["checkpoint"]
        assert restored.config.model.H_cycles == best.params["model.H_cycles"]
    ck_metrics = [v for s, v in read_run(uri, best.run_id)["metrics"]["eval/accuracy"]
                  if s == b["checkpoint_step"]]  # fmt: skip
    assert ck_metrics == [pytest.approx(best.best)]  # the checkpoint holds the best value

    # every trial checkpointed, the early-stopped ones included: a trial's first evaluation
    # (step 8) carries a checkpoint, which Tune persists before ASHA sees the report
    for t in rows:
        assert list((work / "runs" / "smoke" / f"trial_{t}").glob("checkpoint_*")), t

    # the summary (grouped by depth, ending with what the sweep found) beside the experiment;
    # the command line prints it last, with where the results are
    assert "Exact accuracy by effective depth" in out.summary_text
    assert out.summary_text.splitlines()[-1].startswith("Finding: ")
    assert "early-stopped" in out.summary_text and "halt tau=0.5 steps/exact" in out.summary_text
    assert out.where.startswith(f"Results: {exp_path} ") and parent_id in out.where
    for name in ("summary.csv", "summary.txt", "best_config.yaml", "sweep.yaml"):
        assert (work / "runs" / "smoke" / name).is_file(), name

    # a second start under the same name is refused; --resume of a finished sweep reruns
    # nothing and continues the same parent run
    with pytest.raises(ConfigError, match=r"already exists.*--resume"):
        run(args)
    again = run(args, resume=True)
    console = capfd.readouterr().out
    assert not any(f"[{r.name}]" in console for r in rows.values())  # no trial ran again
    assert again.parent_run_id == parent_id
    assert {r.trial_id: r.stop_reason for r in again.rows} == {
        t: r.stop_reason for t, r in rows.items()
    }
    # no new runs: still four children under the one parent (other tests of this module log
    # to the same experiment, so count this sweep's runs only)
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("trm-sweeps")
    mine = client.search_runs(
        [exp.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent_id}'"
    )
    assert sorted(r.info.run_id for r in mine) == sorted(r.run_id for r in rows.values())


def test_refused_before_any_trial_starts(ray_local, work, capsys):
    (work / "a-file").write_text("not a directory")
    cases = [
        (["--set", "resources.cpus_per_worker=4"], "it would wait forever"),
        (["--set", "resources.num_workers=2", "--set", "resources.cpus_per_worker=0.5"],
         "no node offers 'trial_driver'"),
        (["--set", "resources.use_gpu=true"], "GPU"),
        (["--set", "data.global_batch_size=4096"], "fewer than its batch"),
    ]  # fmt: skip
    for i, (extra, needle) in enumerate(cases):
        args = smoke_args(work, f"refused{i}", *extra)
        assert main(args) == 2
        err = capsys.readouterr().err
        assert needle in err, (extra, err)
        assert not (work / "runs" / f"refused{i}").exists()  # nothing was started
    args = smoke_args(work, "refused-storage")
    args[args.index("--storage-path") + 1] = str(work / "a-file" / "runs")
    assert main(args) == 2
    assert "is not writable" in capsys.readouterr().err


@pytest.mark.slow
def test_compute_budget_stops_the_sweep(ray_local, work, tmp_path, capfd):
    """~30 s: less than one trial's worth of FLOPs for a sweep of three, one at a time; with
    MLflow off (the summary still prints and lands beside the experiment)."""
    sweep = yaml.safe_load(SMOKE.read_text())
    sweep["scheduler"] = {"type": "fifo"}
    # three trials of the same cost (grid order is kept: see grid_longest_first)
    sweep["space"] = {"model.H_cycles": {"grid": [1]}, "data.seed": {"grid": [0, 1, 2]}}
    sweep["concurrency"] = 1
    # a 24-step H_cycles=1 trial spends 768 examples x trm.flops = 2.2e9 FLOPs
    sweep["budget"] = {"flops": 1.0e9}
    path = tmp_path / "budget.yaml"
    path.write_text(yaml.safe_dump(sweep))
    args = smoke_args(work, "budget", "--set", "tracking.enabled=false")
    args[1] = str(path)
    out = run(args)
    console = capfd.readouterr().out
    assert "[sweep] flops budget 1e+09 spent" in console
    assert out.exit_code == 0  # stopped by the budget: not a failure
    assert out.parent_run_id == "" and "MLflow parent run" not in console
    assert "budget" in (work / "runs" / "budget" / "summary.csv").read_text()
    # the first trial stopped mid-way (step 16 of 24: 1.5e9 FLOPs); the others never ran
    # (Tune creates trials as slots free up, so they may not be listed at all)
    first, *rest = sorted(out.rows, key=lambda r: r.trial_id)
    assert first.stop_reason == "budget" and 8 < first.step < 24, first
    assert first.flops >= 1.0e9
    assert all(r.stop_reason == "not started (budget)" for r in rest), rest


@pytest.mark.slow
def test_a_damaged_shard_ends_its_trial_once_naming_the_shard(ray_local, work, tmp_path, capfd):
    """~20 s: a truncated shard (which only reading it finds) fails the trial with a
    DatasetError; Tune is not asked to retry it (max_failures 2 would start it 3 times), and
    the summary row and the console name the shard."""
    from drills import build_tiny_sudoku

    data = tmp_path / "damaged"
    meta = build_tiny_sudoku(str(data))
    shard = data / meta.splits["train"].shards[-1].path
    shard.write_bytes(shard.read_bytes()[:-200])
    sweep = yaml.safe_load(SMOKE.read_text())
    sweep.pop("dataset", None)
    # two swept keys: Tune's check that a result holds the metric counts the flattened config
    # of a trial that ends without reporting, and stopped the whole sweep over this trial
    sweep["space"] = {"model.H_cycles": {"grid": [1]}, "optim.lr": {"grid": [3e-3]}}
    sweep["max_failures"] = 2
    path = tmp_path / "damaged.yaml"
    path.write_text(yaml.safe_dump(sweep))
    args = smoke_args(work, "damaged", "--set", f"data.uri={data}")
    args[1] = str(path)
    out = run(args)
    console = capfd.readouterr().out
    (row,) = out.rows
    assert row.stop_reason == "error" and row.error.startswith(f"DatasetError: shard {shard}")
    assert out.exit_code == 1 and f"Failed: trial {row.trial_id}" in out.summary_text
    assert "failed, not retried (its input fails the same way every time): DatasetError" in console
    assert "retrying it" not in console, console  # the monitor prints it for every retry


@pytest.mark.slow
def test_failed_trial_is_retried_from_its_last_checkpoint(ray_local, work, tmp_path, capfd):
    """~1 min: the trial's process is killed (SIGKILL) after its second checkpoint; Tune
    retries it (max_failures) from that checkpoint and it finishes, in the same child run."""
    import os
    import signal
    import threading
    import time

    sweep = yaml.safe_load(SMOKE.read_text())
    sweep["base"]["schedule"] = {"steps": 400, "log_every": 40}
    sweep["base"]["eval"]["every"] = 40
    sweep["base"]["checkpoint"]["every"] = 40
    sweep["space"] = {"model.H_cycles": {"grid": [1]}, "optim.lr": {"grid": [3e-3]}}
    sweep["scheduler"] = {"type": "fifo"}
    sweep["max_failures"] = 1
    path = tmp_path / "retry.yaml"
    path.write_text(yaml.safe_dump(sweep))
    args = smoke_args(work, "retry")
    args[1] = str(path)
    exp = work / "runs" / "retry"
    killed: list[int] = []
    seen: list[str] = []

    def kill_after_two_checkpoints():
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not killed:
            checkpoints = sorted(p.name for p in exp.glob("trial_*/checkpoint_*"))
            if len(checkpoints) >= 2:
                seen[:] = checkpoints
                for pid in ray_local.actor_pids("run_trial"):  # the Tune trial
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
                    return
            time.sleep(0.05)

    killer = threading.Thread(target=kill_after_two_checkpoints, daemon=True)
    killer.start()
    out = run(args)
    killer.join(timeout=10)
    console = capfd.readouterr().out
    assert killed, f"the trial process was never killed (checkpoints seen: {seen})"
    (row,) = out.rows
    assert row.stop_reason == "completed" and row.step == 400
    m = re.search(rf"\[{row.name}\] resumed from step (\d+)", console)
    assert m, console[-3000:]
    # from a checkpoint, not from scratch; the newest directory seen at the kill may still have
    # been copying (then incomplete and skipped): at most one behind
    newest = int(seen[-1].removeprefix("checkpoint_"))  # named by step
    assert int(m.group(1)) >= max(40, newest - 40), (m.group(0), seen)
    uri = f"sqlite:///{work / 'mlflow.db'}"
    children = child_runs(uri, "trm-sweeps", out.parent_run_id)
    assert len(children) == 1  # the retry continued the trial's MLflow run
    (run_id,) = children.values()
    assert read_run(uri, run_id)["status"] == "FINISHED"


def test_grid_runs_its_costliest_trials_first(tmp_path):
    """Grid values are handed to Tune costliest first (FLOPs x steps x batch); values of equal
    cost keep the file's order."""
    from pipeline.data import build_sudoku
    from pipeline.sweeping.tuner import grid_longest_first

    data = str(tmp_path / "sudoku4")
    build_sudoku(data, size=4, num_train=32, num_test=8, seed=0, min_clues=10)
    sweep = yaml.safe_load(SMOKE.read_text())
    sweep["base"]["data"]["uri"] = data
    sweep["space"] = {
        "model.H_cycles": {"grid": [1, 3, 2]},
        "model.L_layers,schedule.steps": {"grid": [[1, 24], [2, 8], [1, 48]]},
        "optim.lr": {"grid": [3e-3, 1e-3]},  # costs nothing: file order
        "data.seed": {"choice": [0, 1]},  # not a grid: left to Tune
    }
    sweep["search"] = {**sweep.get("search", {}), "algorithm": "random", "num_samples": 1}
    path = tmp_path / "order.yaml"
    path.write_text(yaml.safe_dump(sweep))
    sw, _, _ = load_sweep(str(path), [], str(tmp_path / "runs"), "order")
    order = grid_longest_first(sw, sw.base_config())
    assert order == {
        "model.H_cycles": [3, 2, 1],
        "model.L_layers,schedule.steps": [[1, 48], [1, 24], [2, 8]],
        "optim.lr": [3e-3, 1e-3],
    }


@pytest.mark.slow
@pytest.mark.parametrize("axis", ["flops", "examples"])
def test_asha_on_a_flops_or_examples_axis_stops_at_its_rung(ray_local, work, tmp_path, axis):
    """~30 s: ASHA's time axis in model FLOPs (or examples), not steps. One trial at a time, so
    the learning one sets the first rung's cutoff and the one that cannot learn (lr 1e-6) is
    stopped when it reaches that rung (step 8 of 24, 256 examples)."""
    from pipeline.sweeping.dataset import ensure_dataset
    from pipeline.sweeping.trial import flops_per_example

    sweep = yaml.safe_load(SMOKE.read_text())
    sweep["space"] = {"optim.lr": {"grid": [3e-3, 1e-6]}}  # equal cost: this order
    sweep["concurrency"] = 1
    args = smoke_args(work, f"asha-{axis}", "--set", "tracking.enabled=false")
    cfg = load_sweep(str(SMOKE), parse_args(args).overrides, str(work / "runs"), "x")[0]
    ensure_dataset(cfg, cfg.base_config().data.uri)  # built on first use (if no test did yet)
    per_step = 32 * (flops_per_example(cfg.base_config()) if axis == "flops" else 1)
    # a rung between steps 7 and 8, so float rounding cannot move it
    sweep["scheduler"] = {"type": "asha", "time_attr": axis, "max_t": 24 * per_step,
                          "grace_period": 7.5 * per_step, "reduction_factor": 2}  # fmt: skip
    path = tmp_path / f"asha-{axis}.yaml"
    path.write_text(yaml.safe_dump(sweep))
    args[1] = str(path)
    out = run(args)
    rows = {r.params["optim.lr"]: r for r in out.rows}
    assert rows[3e-3].stop_reason == "completed" and rows[3e-3].step == 24, rows
    assert rows[1e-6].stop_reason == "early-stopped" and rows[1e-6].step == 8, rows
    assert rows[1e-6].flops == pytest.approx(8 * 32 * flops_per_example(cfg.base_config()))


def test_a_dataset_built_otherwise_is_not_trained_on(tmp_path):
    """The sweep's `dataset` section must describe the dataset already at base.data.uri (one
    from an older generator or other parameters is refused, naming it), and a matching one is
    reused as it is."""
    from pipeline.data import build_sudoku
    from pipeline.sweeping.dataset import ensure_dataset

    sw, _, _ = load_sweep(str(SMOKE), [f"data.uri={tmp_path / 'd'}"], str(tmp_path / "r"), "x")
    build_sudoku(str(tmp_path / "d"), size=4, num_train=50, num_test=8, seed=0, min_clues=10)
    with pytest.raises(ConfigError, match=r"dataset: the sweep's `dataset` section does not "):
        ensure_dataset(sw, str(tmp_path / "d"))
    ensure_dataset(sw, str(tmp_path / "e"))  # built as the sweep says
    before = (tmp_path / "e" / "meta.json").read_bytes()
    ensure_dataset(sw, str(tmp_path / "e"))  # and then reused untouched
    assert (tmp_path / "e" / "meta.json").read_bytes() == before


def test_results_files_go_to_storage_and_survive_a_restore(ray_local, monkeypatch):
    """Each trial's result.json is written to the sweep's storage (S3 here) and holds every
    result, those before a restore included; the driver's staging directory, which Tune
    uploads whole at each save, keeps no trial file."""
    import ray
    from ray import tune

    from pipeline.sweeping.results_file import ResultsFile

    def steps_then_fail_once(config):  # by value: workers cannot import this module
        """Reports steps 1..3 with a checkpoint each; the first attempt raises after step 2."""
        import tempfile

        from ray import tune

        start = 0
        if (ckpt := tune.get_checkpoint()) is not None:
            with ckpt.as_directory() as d:
                start = int((Path(d) / "step").read_text())
        for step in range(start + 1, 4):
            if step == 3 and start == 0:
                raise RuntimeError("first attempt ends here")
            with tempfile.TemporaryDirectory() as d:
                (Path(d) / "step").write_text(str(step))
                ckpt = tune.Checkpoint.from_directory(d)
                tune.report({"step": step, "x": config["x"]}, checkpoint=ckpt)

    monkeypatch.setenv("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    exp = f"s3://{ray_local.s3.bucket}/tune/files"
    trainable = tune.with_resources(steps_then_fail_once, {"cpu": 0.5})
    tune.Tuner(trainable, param_space={"x": tune.grid_search([1, 2])},
               run_config=tune.RunConfig(name="files", storage_path=exp.rsplit("/", 1)[0],
                                         callbacks=[ResultsFile()], verbose=0)).fit()  # fmt: skip
    results = tune.Tuner.restore(exp, trainable=trainable, resume_errored=True).fit()

    assert len(results) == 2 and not results.errors
    s3 = ray_local.s3.client()
    for r in results:
        key = f"{r.path.removeprefix('s3://').split('/', 1)[1]}/result.json"
        lines = s3.get_object(Bucket=ray_local.s3.bucket, Key=key)["Body"].read().splitlines()
        assert [json.loads(line)["step"] for line in lines] == [1, 2, 3], key
        assert list(r.metrics_dataframe["step"]) == [1, 2, 3]
    session = Path(ray._private.worker._global_node.get_session_dir_path())
    staged = [p for p in session.glob("artifacts/*/files/driver_artifacts/**/*") if p.is_file()]
    assert staged and not [p for p in staged if p.name == "result.json"], staged
