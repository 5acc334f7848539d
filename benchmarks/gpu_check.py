"""The GPU check: one command, at most 8 minutes on one H100/H200, no network.

    python benchmarks/gpu_check.py             # on a CUDA machine; refuses to start without one
    python benchmarks/gpu_check.py --dry-run   # on a CPU: every part with tiny settings, eager

Parts, each in its own process (killed with its children when its time slot ends, so a hang
costs that part only), in this order:
1. `data`       (background, CPU) a 9x9 Sudoku dataset in the Sudoku-Extreme style (1000 train
                puzzles, augmented on the fly), built locally while the GPU parts run;
2. `train_step` Sudoku TRM-MLP and attention, batch 768, bf16, eager vs compiled
                (`benchmarks/train_step.py`): examples/s, MFU against the datasheet peak;
3. `train`      ~2-3 minutes of paper-recipe TRM-MLP training on that dataset through the real
                worker loop (`pipeline.training.worker.run_in_process`: pinned non-blocking copies,
                compiled blocks, bf16): the loss curve and MFU;
4. `inference`  ACT halting vs fixed 16 steps (`benchmarks/inference.py`, cached weights);
5. `sweep`      a 2-trial sweep with `gpus_per_worker: 0.5`, both trials on the one GPU
                (`benchmarks/sweep_overhead.py`'s runner): did they overlap;
6. `maze`       Maze-Hard at its paper batch per GPU (768 over 8 GPUs: 96), eager vs compiled,
                in whatever time is left.
Writes benchmarks/results/gpu_check_cuda.json and prints a table. Target: bf16 MFU >= 45%
compiled at batch 768 (datasheet dense peak, `pipeline.training.worker.GPU_PEAKS`).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import ROOT, machine, table, write_json

TOTAL_S = 470  # the whole check, under 8 minutes with process start and the table
# part -> (seconds it may take, seconds it needs at least to be worth starting)
SLOTS = {"train_step": (150, 60), "train": (200, 90), "inference": (45, 20),
         "sweep": (75, 40), "maze": (90, 45)}  # fmt: skip
TRAIN_STEPS_S = 130  # of the train part's slot: the rest is start-up, compiling and evaluation
DATA_SLOT = 230
MFU_TARGET = 0.45


# ---- the parts (run inside their own process) -------------------------------------------------
def part_data(a: argparse.Namespace, work: Path) -> dict[str, Any]:
    from pipeline.data import build_sudoku

    t = time.time()
    if a.dry_run:
        build_sudoku(str(work / "sudoku"), size=4, num_train=256, num_test=64, min_clues=10)
    else:
        build_sudoku(str(work / "sudoku"), size=9, num_train=1000, num_test=256, min_rating=3,
                     workers=max(1, (os.cpu_count() or 2) - 4))  # fmt: skip
    return {"uri": str(work / "sudoku"), "build_s": time.time() - t}


def _train_step_rows(a: argparse.Namespace, work: Path, configs: str, batch: int) -> dict[str, Any]:
    import train_step

    from pipeline.training.metrics import datasheet_peak_flops

    argv = ["--configs", configs, "--out", str(work / f"train_step_{configs}.json")]
    if a.dry_run:
        argv += ["--quick", "--dtypes", "bfloat16"]
    else:
        argv += ["--batch-sizes", str(batch), "--dtypes", "bfloat16", "--compile",
                 "--compile-scope", a.compile_scope, "--repeats", "3"]  # fmt: skip
    result = train_step.main(argv)
    gpu = result["machine"].get("gpu", "")
    import torch

    peak = datasheet_peak_flops(gpu, torch.bfloat16, False)
    for row in result["rows"]:
        rate = row["model_flop_s"]["median"]
        row["datasheet_peak_flop_s"] = peak
        row["mfu_vs_datasheet"] = rate / peak if peak else None
    return result


def part_train_step(a: argparse.Namespace, work: Path) -> dict[str, Any]:
    return _train_step_rows(a, work, "sudoku_mlp,sudoku_att", 768)


def part_maze(a: argparse.Namespace, work: Path) -> dict[str, Any]:
    # the paper's 768 is a global batch over 8 GPUs: 96 per GPU (768 on one GPU would keep
    # ~180 GB of activations for the backward of the 916-token maze)
    return _train_step_rows(a, work, "maze", 96)


def _steps_for(work: Path, seconds: float, default: int) -> int:
    """Training steps that fit `seconds`, from the compiled TRM-MLP step time of part 2."""
    path = work / "train_step.json"
    if path.exists():
        rows = json.loads(path.read_text())["result"]["rows"]
        for r in rows:
            if r["config"].startswith("sudoku_mlp") and r["mode"].startswith("compiled"):
                return max(50, int(seconds / r["step_s"]["median"]))
    return default


def part_train(a: argparse.Namespace, work: Path) -> dict[str, Any]:
    import torch

    from pipeline.config.run import RunConfig
    from pipeline.training.worker import RunInfo, run_in_process

    data = json.loads((work / "data.json").read_text())["result"]["uri"]
    if a.dry_run:
        path, steps, device = ROOT / "configs" / "sudoku_tiny.yaml", 20, torch.device("cpu")
        extra = ["resources.compile=off", "data.global_batch_size=32"]
    else:
        path, device = ROOT / "configs" / "sudoku_extreme_mlp.yaml", torch.device("cuda")
        steps = _steps_for(work, TRAIN_STEPS_S, default=1500)
        extra = [f"optim.lr_warmup_steps={min(200, steps // 10)}", "eval.max_examples=256"]
    every = max(1, steps // 20)
    cfg = RunConfig.from_yaml(path, [
        f"data.uri={data}", f"checkpoint.storage_path={work / 'runs'}", "tracking.enabled=false",
        "resources.num_workers=1", f"schedule.steps={steps}", f"schedule.log_every={every}",
        f"schedule.report_every={every}", f"eval.every={steps}", f"checkpoint.every={steps}",
        "eval.num_pictures=0", "eval.depth_steps=0", *extra,
    ])  # fmt: skip
    curve: list[dict[str, float]] = []

    def report(metrics: dict[str, Any], checkpoint_dir: str | None) -> None:
        keys = ("step", "train/loss", "train/exact_accuracy", "train/examples_per_s", "train/mfu")
        curve.append({k: metrics[k] for k in keys if k in metrics})

    t = time.time()
    last = run_in_process(cfg, RunInfo(name="gpu-check", run_key="gpu-check"), report=report,
                          device=device)  # fmt: skip
    first_loss, last_loss = curve[0]["train/loss"], curve[-1]["train/loss"]
    return {"config": str(path.relative_to(ROOT)), "steps": steps, "wall_s": time.time() - t,
            "curve": curve, "first_loss": first_loss, "last_loss": last_loss,
            "loss_fell": last_loss < first_loss,
            "eval_exact_accuracy": last.get("eval/exact_accuracy")}  # fmt: skip


def part_inference(a: argparse.Namespace, work: Path) -> dict[str, Any]:
    import inference

    argv = ["--out", str(work / "inference_run.json")]
    argv += ["--quick"] if a.dry_run else ["--repeats", "3"]
    return inference.main(argv)


def part_sweep(a: argparse.Namespace, work: Path) -> dict[str, Any]:
    import sweep_overhead as so

    if a.dry_run:
        res = ["resources.use_gpu=false"]
        cpus = 0.5
    else:
        res = ["resources.use_gpu=true", "resources.gpus_per_worker=0.5"]
        cpus = 2.0
    base, text, build_s = so.prepare(ROOT / "sweeps" / "smoke.yaml",
                                     ["resources.num_workers=1", *res], work, "gpu-check")  # fmt: skip
    sweep = so.fraction_sweep(base, cpus, trials=2, steps=60)
    r = so.run_once(sweep, text, work, "packed", num_cpus=None)
    t = r["per_trial"]
    r["overlapped"] = len(t) == 2 and max(x["start_s"] for x in t) < min(x["finish_s"] for x in t)
    res_cfg = sweep.base_config().resources
    r["gpus_per_trial"] = res_cfg.gpus_per_worker if res_cfg.use_gpu else 0.0
    r["data_build_s"] = build_s
    return r


PARTS = {"data": part_data, "train_step": part_train_step, "train": part_train,
         "inference": part_inference, "sweep": part_sweep, "maze": part_maze}  # fmt: skip


def run_part(a: argparse.Namespace) -> None:
    """Inside a part's process: run it, write <work>/<part>.json."""
    work = Path(a.work)
    t = time.time()
    result = PARTS[a.part](a, work)
    write_json(work / f"{a.part}.json", {"seconds": time.time() - t, "result": result})


# ---- the driver ------------------------------------------------------------------------------
def _spawn(a: argparse.Namespace, part: str, work: Path) -> subprocess.Popen:
    cmd = [sys.executable, __file__, "--part", part, "--work", str(work),
           "--compile-scope", a.compile_scope] + (["--dry-run"] if a.dry_run else [])  # fmt: skip
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    print(f"\n=== {part} ===", flush=True)
    return subprocess.Popen(cmd, cwd=ROOT, env=env, start_new_session=True)


def _finish(proc: subprocess.Popen, part: str, work: Path, timeout: float) -> dict[str, Any]:
    """Wait up to `timeout` s; kill the part's whole process group when it overruns."""
    t = time.time()
    try:
        code = proc.wait(timeout=max(timeout, 1))
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        return {"status": f"stopped after {time.time() - t:.0f} s (its time slot)"}
    path = work / f"{part}.json"
    if code != 0 or not path.exists():
        return {"status": f"failed (exit code {code})"}
    return {"status": "ok", **json.loads(path.read_text())}


def run_all(a: argparse.Namespace, work: Path) -> dict[str, Any]:
    start = time.time()
    total = a.total_s or TOTAL_S
    scale = total / TOTAL_S  # --total-s (tests on a slow CPU) stretches every slot alike
    deadline = start + total
    parts: dict[str, Any] = {}
    data_proc = _spawn(a, "data", work)
    for part in ("train_step", "train", "inference", "sweep", "maze"):
        if part == "train":  # needs the dataset: wait for it within its own slot
            parts["data"] = _finish(
                data_proc, "data", work, start + DATA_SLOT * scale - time.time()
            )
            if parts["data"]["status"] != "ok":
                parts[part] = {"status": "skipped: no dataset"}
                continue
        slot, least = (s * scale for s in SLOTS[part])
        left = deadline - time.time()
        if left < least:
            parts[part] = {"status": f"skipped: {left:.0f} s left of the time box"}
            continue
        parts[part] = _finish(_spawn(a, part, work), part, work, min(slot, left))
        print(f"--- {part}: {parts[part]['status']} ({time.time() - start:.0f} s into the check)",
              flush=True)  # fmt: skip
    if data_proc.poll() is None:
        parts["data"] = _finish(data_proc, "data", work, 0)
    return {"parts": parts, "wall_s": time.time() - start}


def summary_rows(parts: dict[str, Any]) -> list[dict[str, str]]:
    rows = []
    for part in ("train_step", "maze"):
        p = parts.get(part, {})
        for r in p.get("result", {}).get("rows", []):
            mfu = r.get("mfu_vs_datasheet")
            met = "" if mfu is None or not r["mode"].startswith("compiled") else (
                " (target met)" if mfu >= MFU_TARGET else f" (target {MFU_TARGET:.0%})")  # fmt: skip
            rows.append({"part": part, "what": f"{r['config']} b{r['batch']} {r['dtype']} {r['mode']}",
                         "value": f"{r['examples_per_s']['median']:,.0f} ex/s, MFU "
                                  + (f"{mfu:.1%}{met}" if mfu is not None else "n/a")})  # fmt: skip
        if not p.get("result"):
            rows.append({"part": part, "what": "", "value": p.get("status", "not run")})
    t = parts.get("train", {}).get("result")
    rows.append({"part": "train", "what": t and f"{t['config']}, {t['steps']} steps",
                 "value": (f"loss {t['first_loss']:.3f} -> {t['last_loss']:.3f} "
                           f"({'fell' if t['loss_fell'] else 'did not fall'}), "
                           f"{t['curve'][-1].get('train/examples_per_s', 0):,.0f} ex/s, "
                           f"MFU {t['curve'][-1].get('train/mfu', 0):.1%}")
                 if t else parts.get("train", {}).get("status", "not run")})  # fmt: skip
    i = parts.get("inference", {}).get("result", {}).get("results")
    rows.append({"part": "inference", "what": "ACT halting vs fixed 16 steps",
                 "value": (f"{i['speedup_act_vs_fixed']['median']:.2f}x examples/s, exact "
                           f"{i['exact_drop_points']:+.2f} points lower")
                 if i else parts.get("inference", {}).get("status", "not run")})  # fmt: skip
    s = parts.get("sweep", {}).get("result")
    rows.append({"part": "sweep", "what": s and f"{s['trials']} trials, {s['gpus_per_trial']} GPU each",
                 "value": (f"{'overlapped' if s['overlapped'] else 'did not overlap'}, wall "
                           f"{s['wall_s']:.0f} s, {s['examples_per_s']:,.0f} ex/s")
                 if s else parts.get("sweep", {}).get("status", "not run")})  # fmt: skip
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dry-run", action="store_true", help="CPU, tiny settings, no timing claims")
    ap.add_argument("--compile-scope", default="blocks", choices=["blocks", "model"])
    ap.add_argument("--out", default=None, help="JSON path (default results/gpu_check_cuda.json)")
    ap.add_argument("--total-s", type=float, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--part", choices=sorted(PARTS), help=argparse.SUPPRESS)
    ap.add_argument("--work", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.part:
        run_part(a)
        return 0
    import torch

    if not a.dry_run and not torch.cuda.is_available():
        print("gpu_check: no CUDA device here; run it on a GPU machine (or --dry-run on a CPU)",
              file=sys.stderr)  # fmt: skip
        return 2
    device = torch.device("cpu" if a.dry_run else "cuda")
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        result = {
            "machine": machine(device, "wall"),
            "dry_run": a.dry_run,
            "mfu_target": MFU_TARGET,
        }
        result.update(run_all(a, Path(tmp)))
    rows = summary_rows(result["parts"])
    result["summary"] = rows
    print()
    print(table(rows, [("part", "part"), ("what", "what"), ("value", "result")]))
    default = "gpu_check_dry_run.json" if a.dry_run else "gpu_check_cuda.json"
    path = write_json(a.out or ROOT / "benchmarks" / "results" / default, result)
    print(f"\nwrote {path} ({result['wall_s']:.0f} s)")
    return 0 if all(p.get("status") == "ok" for p in result["parts"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
