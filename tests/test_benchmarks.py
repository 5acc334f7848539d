"""benchmarks/: each script runs end to end with `--quick` and writes a results file that says
what it measured; the shared helpers count and summarise correctly. No timed assertions
(speed is measured in benchmarks/, as ratios, never asserted in tests)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).parents[1]
BENCH = ROOT / "benchmarks"
sys.path.insert(0, str(BENCH))

import common  # noqa: E402
import train_step  # noqa: E402

from trm import flops  # noqa: E402
from trm.compat import official_config  # noqa: E402


def run_script(name: str, *args: str, timeout: int = 600) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, str(BENCH / name), *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip
    assert proc.returncode == 0, f"{name} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"


def positive(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def quick_result(stem: str, tmp_path: Path) -> dict:
    """`benchmarks/<stem>.py --quick`'s JSON result, its machine block checked."""
    out = tmp_path / f"{stem}.json"
    run_script(f"{stem}.py", "--quick", "--out", str(out), timeout=1200)
    res = json.loads(out.read_text())
    check_machine(res["machine"])
    return res


def check_machine(m: dict) -> None:
    for key in ("date_utc", "cpu_model", "logical_cpus", "torch_threads", "torch", "clock"):
        assert key in m, key
    assert m["clock"] in ("cpu", "wall")


# ---- the scripts ------------------------------------------------------------------------------
def test_train_step_quick_writes_every_row(tmp_path):
    out = tmp_path / "train_step.json"
    run_script("train_step.py", "--quick", "--configs", "sudoku_mlp,sudoku_att",
               "--dtypes", "float32,bfloat16", "--out", str(out))  # fmt: skip
    res = json.loads(out.read_text())
    check_machine(res["machine"])
    assert res["machine"]["torch_threads"] == 1  # the default on a CPU, stated in the file
    rows = {(r["config"], r["dtype"]) for r in res["rows"]}
    assert rows == {(c, d) for c in ("sudoku_mlp-quick", "sudoku_att-quick")
                    for d in ("float32", "bfloat16")}  # fmt: skip
    for r in res["rows"]:
        for key in ("step_s", "examples_per_s", "model_flop_s", "square_peak_flop_s",
                    "mfu_vs_square", "mfu_vs_shapes"):  # fmt: skip
            assert positive(r[key]["median"]), (key, r[key])
            assert r[key]["min"] <= r[key]["median"] <= r[key]["max"]
        assert positive(r["shapes_peak_flop_s"]) and r["shapes"]
        # the reported rate is the FLOP count of trm.flops over the measured time
        rate = r["train_flop_per_example"] * r["batch"] / r["step_s"]["median"]
        assert rate == pytest.approx(r["model_flop_s"]["median"], rel=1e-6)


def test_inference_quick_compares_act_with_fixed_depth(tmp_path):
    out = tmp_path / "inference.json"
    run_script("inference.py", "--quick", "--out", str(out))
    res = json.loads(out.read_text())
    check_machine(res["machine"])
    r = res["results"]
    for way in ("rollout", "fixed", "act"):
        assert 0.0 <= r[way]["exact_accuracy"] <= 1.0
        assert positive(r[way]["examples_per_s"]["median"])
    # the two fixed-depth paths give the same answers
    assert r["rollout"]["exact_accuracy"] == r["fixed"]["exact_accuracy"]
    assert sum(r["act"]["steps_histogram"].values()) == r["examples"]
    assert 1 <= r["act"]["mean_steps"] <= res["model"]["halt_max_steps"]
    assert positive(r["speedup_act_vs_fixed"]["median"])
    assert r["exact_drop_points"] == pytest.approx(
        100 * (r["fixed"]["exact_accuracy"] - r["act"]["exact_accuracy"])
    )


def test_default_sweep_search_quick_records_every_evaluation(tmp_path):
    out = tmp_path / "search.json"
    # target 0: the first evaluation reaches it (the try still runs on: --stop-at is unset)
    run_script("default_sweep_search.py", "--quick", "--label", "q", "--out", str(out),
               "--target", "0", "--set", "model.hidden_size=16",
               "--set", "model.num_heads=2")  # fmt: skip
    (rec,) = json.loads(out.read_text())
    assert rec["ended"] == "completed"
    assert [e["step"] for e in rec["evals"]] == [10, 20]
    assert rec["config"]["model"]["hidden_size"] == 16
    assert rec["effective_depth"] == 2  # the default sweep's base: H 1, L 1, one layer
    assert all(0.0 <= e["exact"] <= 1.0 and positive(e["cpu_s"]) for e in rec["evals"])
    assert rec["target"] == 0 and rec["steps_to_target"] == 10
    assert rec["best_exact"] == max(e["exact"] for e in rec["evals"])


def test_search_efficiency_quick_runs_both_searchers_over_the_space(tmp_path):
    out = tmp_path / "search_efficiency.json"
    run_script("search_efficiency.py", "--quick", "--out", str(out))
    res = json.loads(out.read_text())
    check_machine(res["machine"])
    assert [(s["searcher"], s["seed"]) for s in res["searches"]] == [("random", 0), ("optuna", 0)]
    for s in res["searches"]:
        assert 1 <= len(s["trials"]) <= 2 and s["best"] == max(t["score"] for t in s["trials"])
        reached = [i + 1 for i, t in enumerate(s["trials"]) if t["score"] >= res["settings"]["target"]]
        assert s["trials_needed"] == (reached[0] if reached else None)
        for t in s["trials"]:
            assert 1.0e-4 <= t["params"]["optim.lr"] <= 3.0e-2
            assert 0.9 <= t["params"]["optim.ema_rate"] <= 0.999
            assert t["steps"] == 10
    rows = {r["searcher"]: r for r in res["summary"]}
    assert set(rows) == {"random", "optuna"} and res["settings"]["data"] == ["min_clues=12"]


@pytest.mark.slow
def test_sweep_overhead_quick_times_a_real_sweep(tmp_path):
    # a real local Ray cluster, the smoke sweep cut to 2 trials (the whole smoke sweep runs in
    # test_sweep.py and test_sweep_cluster.py) and 2 trials of half a CPU each (gpu_check's
    # sweep part on a CPU): ~1.5 min
    import yaml

    sweep = yaml.safe_load((ROOT / "sweeps" / "smoke.yaml").read_text())
    sweep["space"] = {"model.H_cycles": {"grid": [1, 2]}}
    (tmp_path / "two.yaml").write_text(yaml.safe_dump(sweep))
    out = tmp_path / "sweep_overhead.json"
    run_script("sweep_overhead.py", "--quick", "--sweep", str(tmp_path / "two.yaml"),
               "--fractions", "0.5", "--fraction-trials", "2", "--fraction-steps", "60",
               "--out", str(out), timeout=1200)  # fmt: skip
    res = json.loads(out.read_text())
    check_machine(res["machine"])
    s = res["sweep"]
    assert s["trials"] == 2 and s["exit_code"] == 0
    assert s["wall_s"] >= s["longest_trial_s"] > 0
    # busy time is measured inside the trials, wall time around them: no packing beats 1.0
    assert s["ratio_wall_vs_lower_bound"] >= 1.0
    for t in s["per_trial"]:
        assert 0 < t["to_first_step_s"] <= t["to_first_report_s"] <= t["busy_s"]
    (f,) = res["fractions"]
    assert f["cpus_per_trial"] == 0.5 and f["trials"] == 2 and f["exit_code"] == 0


def test_experiment_save_counts_what_each_save_uploads(tmp_path):
    # 12 trivial Tune trials on a local Ray, two uploads of each directory to moto: ~30 s
    out = tmp_path / "experiment_save.json"
    run_script("experiment_save.py", "--trials", "12", "--repeats", "2", "--out", str(out))
    res = json.loads(out.read_text())
    check_machine(res["machine"])
    # Tune's defaults leave five files per trial, result.json alone one, the pipeline none;
    # the experiment's own files (state, searcher, tuner) go up with each
    assert res["trial_files"] == {"defaults": ["events", "params.json", "params.pkl",
                                               "progress.csv", "result.json"],
                                  "result_json": ["result.json"], "no_trial_files": []}  # fmt: skip
    files = res["files_per_save"]
    assert files["defaults"] - files["result_json"] == 12 * 4, files
    assert files["result_json"] - files["no_trial_files"] == 12, files
    for label in ("defaults", "result_json", "no_trial_files"):
        assert len(res["seconds_per_save"][label]) == 2
        assert all(positive(t) for t in res["seconds_per_save"][label])
        ratio = res["median_s"][label] / res["median_s"]["defaults"]
        assert res["ratio_vs_defaults"][label] == pytest.approx(ratio, abs=1e-3)


@pytest.mark.slow
def test_tracking_overhead_quick_measures_every_way_of_sending(tmp_path):
    # a real mlflow server and three 40-step runs of the in-process loop: ~2 min
    res = quick_result("tracking_overhead", tmp_path)
    runs = {r["mode"]: r for r in res["runs"]}
    assert set(runs) == {"sync", "mlflow_async", "sender"}
    assert len({r["calls"] for r in runs.values()}) == 1  # the same run each way
    for r in runs.values():
        assert r["calls"] > 0 and 0 < r["share"] < 1 and r["loop_s"] > 0 and r["dropped"] == 0


def test_gpu_check_refuses_to_start_without_cuda():
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    proc = subprocess.run([sys.executable, str(BENCH / "gpu_check.py")], cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 2 and "no CUDA device" in proc.stderr


def _alive(pid: int) -> bool:
    """Running (a zombie, dead and awaiting its reaper, is not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def test_gpu_check_stops_a_hung_part_and_its_children(tmp_path):
    import time

    import gpu_check

    # a part that never ends, with a child of its own: both go when the slot ends
    proc = subprocess.Popen([sys.executable, "-c", "import subprocess, time; "
                             "subprocess.Popen(['sleep', '300']); time.sleep(300)"],
                            start_new_session=True)  # fmt: skip
    children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children")
    while not children.read_text().split():
        time.sleep(0.05)
    (child,) = map(int, children.read_text().split())
    out = gpu_check._finish(proc, "hang", tmp_path, timeout=1)
    assert out["status"].startswith("stopped after")
    for _ in range(100):
        if not _alive(child):
            break
        time.sleep(0.1)
    assert not _alive(proc.pid) and not _alive(child)


# the driver, with stub parts: the real parts are the benchmark scripts tested above and the
# dry-run parts below (the whole `--dry-run` took 5-10 min on 2 cores)
_STUB = {
    "data": {"uri": "/nowhere", "build_s": 1.0},
    "train_step": {"rows": [{"config": "sudoku_mlp", "batch": 768, "dtype": "bfloat16",
                             "mode": "compiled", "examples_per_s": {"median": 1000.0},
                             "mfu_vs_datasheet": 0.5}]},
    "train": {"config": "configs/x.yaml", "steps": 20, "first_loss": 2.0, "last_loss": 1.0,
              "loss_fell": True, "curve": [{"step": 20, "train/examples_per_s": 50.0,
                                             "train/mfu": 0.25}]},
    "inference": {"results": {"speedup_act_vs_fixed": {"median": 2.5},
                              "exact_drop_points": 0.5}},
    "sweep": {"trials": 2, "gpus_per_trial": 0.5, "overlapped": True, "wall_s": 30.0,
              "examples_per_s": 100.0},
    "maze": {"rows": [{"config": "maze", "batch": 96, "dtype": "bfloat16", "mode": "compiled",
                       "examples_per_s": {"median": 10.0}, "mfu_vs_datasheet": 0.3}]},
}  # fmt: skip


def _stub_parts(monkeypatch, **how: str) -> list[str]:
    """Replace each part's process by a shell stub: 'ok' (default) writes <part>.json with the
    part's _STUB result, 'fail' exits 1, 'hang' sleeps. Returns the parts in start order."""
    import gpu_check

    started: list[str] = []

    def spawn(a, part, work):
        started.append(part)
        body = json.dumps({"seconds": 0.1, "result": _STUB[part]})
        script = {"ok": 'printf "%s" "$1" > "$2"', "fail": "exit 1", "hang": "sleep 300"}
        return subprocess.Popen(["sh", "-c", script[how.get(part, "ok")], "sh", body,
                                 str(work / f"{part}.json")], start_new_session=True)  # fmt: skip

    monkeypatch.setattr(gpu_check, "_spawn", spawn)
    return started


def _driver_args(total_s: float):
    import argparse

    return argparse.Namespace(total_s=total_s, dry_run=True, compile_scope="blocks")


def test_gpu_check_driver_runs_parts_in_order_and_sums_them_up(monkeypatch, tmp_path):
    """Every part in its slot, in order; a failed part and a hung one (stopped when its slot
    ends) cost that part only; no dataset skips the training part; the table shows each."""
    import gpu_check

    started = _stub_parts(monkeypatch, data="fail", inference="hang")
    res = gpu_check.run_all(_driver_args(47), tmp_path)  # a tenth of every slot
    assert started == ["data", "train_step", "inference", "sweep", "maze"]
    status = {k: p["status"] for k, p in res["parts"].items()}
    assert status["data"] == "failed (exit code 1)"
    assert status["train"] == "skipped: no dataset"
    assert status["inference"].startswith("stopped after")
    assert {status[k] for k in ("train_step", "sweep", "maze")} == {"ok"}
    assert res["parts"]["sweep"]["result"] == _STUB["sweep"]
    rows = {r["part"]: r["value"] for r in gpu_check.summary_rows(res["parts"])}
    assert rows["train_step"] == "1,000 ex/s, MFU 50.0% (target met)"
    assert rows["maze"] == "10 ex/s, MFU 30.0% (target 45%)"
    assert rows["train"] == "skipped: no dataset"
    assert rows["inference"].startswith("stopped after")
    assert rows["sweep"] == "overlapped, wall 30 s, 100 ex/s"


def test_gpu_check_driver_table_of_a_full_run(monkeypatch, tmp_path):
    import gpu_check

    _stub_parts(monkeypatch)
    res = gpu_check.run_all(_driver_args(47), tmp_path)
    assert {p["status"] for p in res["parts"].values()} == {"ok"} and len(res["parts"]) == 6
    rows = {r["part"]: r["value"] for r in gpu_check.summary_rows(res["parts"])}
    assert rows["train"] == "loss 2.000 -> 1.000 (fell), 50 ex/s, MFU 25.0%"
    assert rows["inference"] == "2.50x examples/s, exact +0.50 points lower"


def test_gpu_check_driver_keeps_to_its_time_box(monkeypatch, tmp_path):
    """Parts that overrun use up the box: the ones left without their minimum are skipped."""
    import gpu_check

    _stub_parts(monkeypatch, train_step="hang", train="hang", inference="hang", sweep="hang",
                maze="hang")  # fmt: skip
    res = gpu_check.run_all(_driver_args(4.7), tmp_path)  # a hundredth of every slot
    status = {k: p["status"] for k, p in res["parts"].items()}
    assert status["train_step"].startswith("stopped after"), status
    assert status["maze"].startswith("skipped: ") and "left of the time box" in status["maze"]


@pytest.mark.slow  # ~1-3 min on 2 cores
def test_gpu_check_dry_run_parts_nothing_else_runs(tmp_path):
    """The dry-run parts of gpu_check that no other test runs, each in its part process as the
    driver starts it: the dataset, training through the worker loop, the maze step rows (the
    train_step and inference parts are the scripts tested above; the sweep part is
    sweep_overhead's runner, tested with the smoke sweep)."""
    import argparse

    import gpu_check

    a = argparse.Namespace(dry_run=True, compile_scope="blocks")
    for part in ("data", "train", "maze"):
        assert gpu_check._finish(gpu_check._spawn(a, part, tmp_path), part, tmp_path,
                                 600)["status"] == "ok", part  # fmt: skip
    read = lambda part: json.loads((tmp_path / f"{part}.json").read_text())["result"]  # noqa: E731
    assert (Path(read("data")["uri"]) / "meta.json").is_file()
    train = read("train")
    assert train["steps"] == 20 and [c["step"] for c in train["curve"]][-1] == 20
    assert all(math.isfinite(c["train/loss"]) for c in train["curve"])
    assert train["first_loss"] == train["curve"][0]["train/loss"]
    assert train["last_loss"] == train["curve"][-1]["train/loss"]
    rows = read("maze")["rows"]
    assert {r["config"] for r in rows} == {"maze-quick"}
    assert all(r["mfu_vs_datasheet"] is None for r in rows)  # a CPU has no datasheet peak


# ---- the helpers ------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ["sudoku_mlp", "sudoku_att", "maze"])
@pytest.mark.parametrize("batch,chunk", [(64, None), (64, 8), (3, None)])
def test_gemm_list_accounts_for_every_model_flop(arch, batch, chunk):
    """The GEMM shapes that define the shape peak cover exactly the FLOPs that trm.flops
    counts for a training step (so MFU vs shapes compares like with like)."""
    cfg = train_step.arch_config(arch, "float32", batch, quick=False)
    gemms = train_step.model_gemms(cfg, batch, chunk)
    total = sum(g.flops * g.count for g in gemms)
    assert total == pytest.approx(flops(official_config(arch))["train_step"] * batch, rel=1e-12)


def test_summary_and_spread():
    s = common.summary([2.0, 1.0, 4.0])
    assert (s["median"], s["min"], s["max"], s["n"]) == (2.0, 1.0, 4.0, 3)
    assert s["spread"] == pytest.approx(1.5)
    assert common.fmt_spread(s, digits=1, unit=" s") == "2.0 s ±75%"
    with pytest.raises(ValueError, match="no values"):
        common.summary([])


def test_write_json_is_atomic_and_leaves_no_temp_files(tmp_path):
    path = common.write_json(tmp_path / "sub" / "r.json", {"a": 1, "dtype": torch.float32})
    assert json.loads(path.read_text()) == {"a": 1, "dtype": "torch.float32"}
    with pytest.raises(TypeError):
        common.write_json(path, {"bad": object()})
    assert json.loads(path.read_text()) == {"a": 1, "dtype": "torch.float32"}  # untouched
    assert [p.name for p in path.parent.iterdir()] == ["r.json"]


def test_gemm_rate_and_device_choice():
    cpu = torch.device("cpu")
    assert common.pick_device("cpu") == cpu
    if not torch.cuda.is_available():
        assert common.pick_device(None) == cpu
        with pytest.raises(ValueError, match="no CUDA device"):
            common.pick_device("cuda")
    g = common.Gemm(8, 16, 32, batch=2)
    assert g.flops == 2 * 2 * 8 * 16 * 32
    assert positive(common.gemm_rate(g, cpu, torch.float32, "wall"))
    assert common.headline_clock(cpu, "wall") == "wall"
    with pytest.raises(ValueError, match="--clock"):
        common.headline_clock(cpu, "fast")


@pytest.mark.slow
def test_sweep_scale_loses_no_trial(tmp_path):
    """16 tiny trials (two waves of the 8 slots; `--quick`'s 50 and the full 1,000 are the
    benchmark's own runs, results in benchmarks/results/) on 4 raylets with fake GPUs, MLflow
    on PostgreSQL + S3: every trial has a finished child run, a checkpoint and a summary row,
    and the file has every field."""
    import sweep_scale

    out = tmp_path / "sweep_scale.json"
    run_script("sweep_scale.py", "--trials", "16", "--out", str(out), timeout=1800)
    res = json.loads(out.read_text())
    check_machine(res["machine"])
    assert [f for f in sweep_scale.FIELDS if f not in res] == []
    assert res["trials"] == 16 and res["trials_lost"] == 0, res["lost"]
    # the event loop's time in each of the sweep's callbacks was measured
    assert set(res["loop_callbacks_s"]) == {"SweepMonitor", "ResultsFile", "LiveRuns"}
    assert res["lost"] == {"summary_rows": 16, "with_checkpoint": 16,
                           "finished_child_runs": 16, "ids": []}  # fmt: skip
    assert res["concurrency"] == 8  # 4 raylets x 1 fake GPU x 2 trials per GPU
    for key in ("wall_s", "ideal_s", "mlflow_requests_per_trial", "mlflow_p50_ms",
                "driver_peak_rss_mib", "finish_sweep_s", "tune_end_s"):  # fmt: skip
        assert positive(res[key]), key
    assert res["mlflow_p99_ms"] >= res["mlflow_p50_ms"]
    assert positive(res["to_first_step_s"]["median"])
