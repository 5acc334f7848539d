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
    run_script("default_sweep_search.py", "--quick", "--label", "q", "--out", str(out),
               "--set", "model.hidden_size=16", "--set", "model.num_heads=2")  # fmt: skip
    (rec,) = json.loads(out.read_text())
    assert rec["ended"] == "completed"
    assert [e["step"] for e in rec["evals"]] == [10, 20]
    assert rec["config"]["model"]["hidden_size"] == 16
    assert rec["effective_depth"] == 2  # the default sweep's base: H 1, L 1, one layer
    assert all(0.0 <= e["exact"] <= 1.0 and positive(e["cpu_s"]) for e in rec["evals"])
    reached = rec["steps_to_target"]
    assert reached is None or rec["best_exact"] >= rec["target"]


@pytest.mark.slow
def test_sweep_overhead_quick_times_a_real_sweep(tmp_path):
    # a real local Ray cluster and the smoke sweep (4 trials), then 2 fraction trials: ~2-4 min
    out = tmp_path / "sweep_overhead.json"
    run_script("sweep_overhead.py", "--quick", "--out", str(out), timeout=1200)
    res = json.loads(out.read_text())
    check_machine(res["machine"])
    s = res["sweep"]
    assert s["trials"] == 4 and s["exit_code"] == 0
    assert s["wall_s"] >= s["longest_trial_s"] > 0
    # busy time is measured inside the trials, wall time around them: no packing beats 1.0
    assert s["ratio_wall_vs_lower_bound"] >= 1.0
    for t in s["per_trial"]:
        assert 0 < t["to_first_step_s"] <= t["to_first_report_s"] <= t["busy_s"]
    (f,) = res["fractions"]
    assert f["cpus_per_trial"] == 0.5 and f["trials"] == 2 and positive(f["examples_per_s"])


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
