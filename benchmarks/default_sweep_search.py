"""Search, by measurement, for a default sweep (`sweeps/default.yaml`) in which TRM learns.

One try = one training run of the project's own in-process loop (`pipeline.training.worker.
run_in_process`, what a 1-worker sweep trial runs) on a dataset built by the sweep's own
builder, evaluated on the whole held-out test split every `--eval-every` steps. A try starts
from a sweep file's base config and dataset section (default: sweeps/default.yaml) with
overrides, so a configuration found here is pasted into the sweep file as it is:

    python benchmarks/default_sweep_search.py --label wide --steps 1500 --eval-every 100 \
        --set model.hidden_size=128 --set optim.lr=1e-3 --data min_clues=11 --data num_train=6000

Each try appends a record to benchmarks/results/default_sweep_search.json: the resolved config,
dataset arguments, exact and token accuracy at every evaluation, steps (and examples) to the
target exact accuracy (`--target`, default 0.95), wall seconds per training step (batch rows
over the loop's own `train/examples_per_s`, which leaves evaluation out) and the process's CPU
seconds since the start of the run at each evaluation (evaluations included: with one thread,
the time the try held a core, which is what a trial costs on an idle core). `--stop-at` ends a
try once that exact accuracy is reached (time is measured in steps, so a try need not run on).

Runs with one torch thread: the development machine's 2 cores are shared, so wall-clock
seconds per step are under contention and are converted to sweep wall time by the reader;
steps and examples are the machine-independent measure.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "benchmarks" / "results" / "default_sweep_search.json"


class TargetReached(Exception):
    """Raised from the report callback to end a try early (`--stop-at`)."""


class Stopped(Exception):
    """SIGTERM: the try is ended from outside; what it measured so far is still recorded."""


def _on_sigterm(signum: int, frame: Any) -> None:
    raise Stopped


def dataset_args(sweep: Any, overrides: list[str]) -> dict[str, Any]:
    """The sweep's `dataset` section with `key=value` overrides (values parsed as YAML)."""
    args = dict(sweep.dataset)
    for item in overrides:
        key, _, raw = item.partition("=")
        args[key.strip()] = yaml.safe_load(raw)
    return args


def data_uri(args: dict[str, Any]) -> str:
    """One local directory per distinct set of builder arguments."""
    tag = "-".join(f"{k}{v}" for k, v in sorted(args.items()) if k != "builder")
    return str(ROOT / "data" / "search" / tag.replace("_", ""))


def run_config(sweep: Any, uri: str, args: argparse.Namespace) -> Any:
    """The base run config with the try's overrides: no tracking, no pictures, every
    evaluation on the whole test split, checkpoints only at the end."""
    fixed = [
        f"data.uri={uri}",
        f"schedule.steps={args.steps}",
        f"schedule.log_every={args.eval_every}",
        f"eval.every={args.eval_every}",
        "eval.max_examples=0",
        "eval.num_pictures=0",
        f"checkpoint.every={args.steps}",
        "checkpoint.num_to_keep=1",
        f"checkpoint.storage_path={ROOT / 'runs' / 'search'}",
        "tracking.enabled=false",
    ]
    return sweep.base_config().with_overrides([*fixed, *args.set])


def train(cfg: Any, label: str, stop_at: float) -> tuple[list[dict[str, Any]], str]:
    """Run `cfg` in this process; returns (the metrics of every evaluation, how it ended:
    'completed', 'target' (--stop-at) or 'killed' (SIGTERM))."""
    from pipeline.train import run_info
    from pipeline.training.worker import run_in_process

    evals: list[dict[str, Any]] = []
    cpu0 = time.process_time()

    def report(metrics: dict[str, Any], checkpoint_dir: str | None) -> None:
        rows = cfg.data.global_batch_size
        evals.append({
            "step": int(metrics["step"]),
            "examples": int(metrics["step"]) * rows,
            "exact": round(metrics["eval/exact_accuracy"], 4),
            "token": round(metrics["eval/accuracy"], 4),
            "train_loss": round(metrics["train/loss"], 4),
            "s_per_step": round(rows / max(metrics["train/examples_per_s"], 1e-9), 5),
            "cpu_s": round(time.process_time() - cpu0, 1),
        })  # fmt: skip
        print(f"[{label}] step {evals[-1]['step']}: exact {evals[-1]['exact']:.4f}", flush=True)
        if stop_at and metrics["eval/exact_accuracy"] >= stop_at:
            raise TargetReached

    storage = str(ROOT / "runs" / "search")
    try:
        run_in_process(cfg, run_info(cfg, f"{label}-{os.getpid()}", storage), report=report)
    except TargetReached:
        return evals, "target"
    except Stopped:
        return evals, "killed"
    return evals, "completed"


def record(cfg: Any, data: dict[str, Any], evals: list[dict[str, Any]], args, secs: float):
    """The try's JSON record: config, data, evaluations and the headline numbers."""
    from trm import flops

    reached = [e["step"] for e in evals if e["exact"] >= args.target]
    per_step = sorted(e["s_per_step"] for e in evals)
    mcfg = cfg.model
    depth = mcfg.H_cycles * (mcfg.L_cycles + 1) * mcfg.L_layers
    return {
        "label": args.label,
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "dataset": data,
        "overrides": args.set,
        "config": cfg.to_dict(),
        "effective_depth": depth,
        "target": args.target,
        "steps_to_target": reached[0] if reached else None,
        "best_exact": max((e["exact"] for e in evals), default=0.0),
        "final_exact": evals[-1]["exact"] if evals else 0.0,
        "median_s_per_step": per_step[len(per_step) // 2] if per_step else None,
        "cpu_s_per_step": round(evals[-1]["cpu_s"] / evals[-1]["step"], 5) if evals else None,
        "wall_s": round(secs, 1),
        "load_avg_1min": round(os.getloadavg()[0], 2),
        "evals": evals,
        "note": "1 torch thread, nice'd, on a 2-core machine shared with other jobs: "
        "seconds are under contention",
        "train_flops_per_row": flops(_model_config(cfg))["train_step"],
    }


def _model_config(cfg: Any) -> Any:
    from pipeline.data.meta import read_meta

    return cfg.resolve(read_meta(cfg.data.uri))


def append(rec: dict[str, Any], path: Path) -> None:
    old = json.loads(path.read_text()) if path.is_file() else []
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps([*old, rec], indent=1) + "\n")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--label", required=True, help="name of this try in the results file")
    p.add_argument("--sweep", default=str(ROOT / "sweeps" / "default.yaml"))
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--target", type=float, default=0.95)
    p.add_argument("--stop-at", type=float, default=0.0, help="end the try at this exact acc.")
    p.add_argument("--set", action="append", default=[], help="run config key=value")
    p.add_argument("--data", action="append", default=[], help="dataset builder key=value")
    p.add_argument("--out", type=Path, default=RESULTS, help="results file (appended to)")
    p.add_argument("--quick", action="store_true", help="smoke run: 20 steps, eval every 10")
    args = p.parse_args(argv)
    if args.quick:
        args.steps, args.eval_every = 20, 10
    return args


def main(argv: list[str] | None = None) -> int:
    import torch

    from pipeline.sweeping.config import SweepConfig
    from pipeline.tasks import get_task

    args = parse_args(argv)
    torch.set_num_threads(1)
    sweep = SweepConfig.from_yaml(args.sweep)
    data = dataset_args(sweep, args.data)
    uri = data_uri(data)
    get_task(data["builder"]).builder(uri, **{k: v for k, v in data.items() if k != "builder"})
    cfg = run_config(sweep, uri, args)
    t = time.perf_counter()
    signal.signal(signal.SIGTERM, _on_sigterm)
    evals, ended = train(cfg, args.label, args.stop_at)
    rec = record(cfg, data, evals, args, time.perf_counter() - t)
    rec["ended"] = ended
    append(rec, args.out)
    print(json.dumps({k: rec[k] for k in ("label", "effective_depth", "steps_to_target",
                                          "best_exact", "median_s_per_step", "wall_s")}))  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
