"""How many trials random search and Optuna (TPE) each need to reach a target held-out exact
accuracy on a CPU-sized space: the default sweep's model and generated 4x4 Sudoku
(`sweeps/default.yaml`) with 4 blanks per puzzle instead of 6 (`min_clues=12`, so that 150 steps
can reach a useful accuracy), 150 steps per trial, and learning rate, weight decay, EMA rate and
recursion depth (H_cycles, L_cycles) searched together.

Optuna is the sweep's own searcher, `pipeline.sweeping.tuner.searcher` (TPE through Tune's
OptunaSearch, as `search.algorithm: optuna` builds it). Random search draws every key
uniformly from the same domains through the same wrapper with Optuna's RandomSampler of the
same seed, which is also what TPE draws its first `--startup-trials` trials with: the two
searches of a seed share those trials (a paired comparison; each distinct config is trained
once and its result reused), and differ only in what comes after. Trials run one after another in this process through the sweep trial's own training loop
(`default_sweep_search.train`, `pipeline.training.worker.run_in_process`): sequential, so TPE
sees every earlier result (a sweep with concurrency 1). A trial's score is its best held-out
exact accuracy over its evaluations; a trial ends once it reaches the target, and a search once
one of its trials does, or after `--max-trials`. Each search is repeated for `--seeds` seeds of
the search itself (the dataset and the trials' own `data.seed` stay fixed, so the searchers are
what differs).

    python benchmarks/search_efficiency.py                  # 3 seeds x 2 searchers, ~30-40 min on 2 shared cores
    python benchmarks/search_efficiency.py --quick          # smoke run (tests/test_benchmarks.py)

Writes benchmarks/results/search_efficiency[_quick].json: every trial's values and score, and per
searcher and seed the trials needed (null: not reached within --max-trials).
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
for p in (ROOT, ROOT / "benchmarks"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

# learning rate, weight decay, EMA rate and recursion depth (effective depth 2, 4, 6; depth 12
# costs ~4x a depth-2 step, too much for the shared 2-core machine this was measured on)
SPACE = {
    "optim.lr": {"loguniform": [1.0e-4, 3.0e-2]},
    "optim.weight_decay": {"loguniform": [1.0e-3, 1.0]},
    "optim.ema_rate": {"uniform": [0.9, 0.999]},
    "model.H_cycles,model.L_cycles": {"choice": [[1, 1], [2, 1], [2, 2]]},
}
SEARCHERS = ("random", "optuna")
SETTINGS = (
    "steps",
    "eval_every",
    "target",
    "max_trials",
    "startup_trials",
    "seeds",
    "data",
    "jobs",
)


def search_sweep(args: argparse.Namespace, seed: int) -> Any:
    """The default sweep with SPACE as an Optuna search of this seed."""
    import yaml

    from pipeline.sweeping.config import SweepConfig

    d = yaml.safe_load(Path(args.sweep).read_text())
    d["space"] = SPACE
    d["search"] = {**d.get("search", {}), "algorithm": "optuna", "seed": seed,
                   "num_samples": args.max_trials, "startup_trials": args.startup_trials}  # fmt: skip
    return SweepConfig.from_dict(d)


def make_searcher(name: str, sweep: Any) -> Any:
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    from pipeline.sweeping.tuner import searcher

    alg = searcher(sweep, concurrency=1)  # the sweep's TPE (and its logging settings)
    if name == "random":
        alg = OptunaSearch(sampler=optuna.samplers.RandomSampler(seed=sweep.search.seed))
    space = {k: d.tune_domain() for k, d in sweep.domains.items()}
    assert alg.set_search_properties(sweep.search.metric, sweep.search.mode, space)
    return alg


def run_search(
    name: str, seed: int, args: argparse.Namespace, uri: str, trained: dict[str, Any]
) -> dict[str, Any]:
    """One search: trials until one reaches the target or --max-trials ran. `trained`: config
    -> (score, steps) of every trial trained so far, shared between searches."""
    from default_sweep_search import train

    from pipeline.sweeping.trial import SweepContext

    sweep = search_sweep(args, seed)
    alg = make_searcher(name, sweep)
    ctx = SweepContext(name="bench", exp_path="", base={}, metric="", mode="max", use_gpu=False,
                       code_version="", keys={k: d.names for k, d in sweep.domains.items()})  # fmt: skip
    base = sweep.base_config().with_overrides(fixed_overrides(args, uri))
    trials, needed, t0 = [], None, time.perf_counter()
    for i in range(args.max_trials):
        params = alg.suggest(f"{name}{seed}_{i}")
        point = ctx.assignments(params)
        key = repr(sorted(point.items()))
        if key not in trained:
            cfg = base.with_overrides([f"{k}={v}" for k, v in point.items()])
            evals, _ = train(cfg, f"{name}{seed}#{i}", args.target)
            trained[key] = (max((e["exact"] for e in evals), default=0.0),
                            evals[-1]["step"] if evals else 0)  # fmt: skip
        score, steps = trained[key]
        alg.on_trial_complete(f"{name}{seed}_{i}", {sweep.search.metric: score})
        trials.append({"params": point, "score": score, "steps": steps})
        print(f"[{name} seed {seed}] trial {i + 1}: exact {score:.4f} {trials[-1]['params']}",
              flush=True)  # fmt: skip
        if score >= args.target:
            needed = i + 1
            break
    return {"searcher": name, "seed": seed, "trials_needed": needed, "trials": trials,
            "best": max(t["score"] for t in trials), "wall_s": round(time.perf_counter() - t0, 1)}  # fmt: skip


def run_seed(seed: int, args: argparse.Namespace, uri: str) -> tuple[list[dict[str, Any]], int]:
    """Both searches of one seed, sharing their trained trials; (searches, trials trained)."""
    import torch

    torch.set_num_threads(1)
    trained: dict[str, Any] = {}
    return [run_search(name, seed, args, uri, trained) for name in SEARCHERS], len(trained)


def fixed_overrides(args: argparse.Namespace, uri: str) -> list[str]:
    """Every trial: the step budget, evaluation on the whole test split, no tracking."""
    return [
        f"data.uri={uri}", f"schedule.steps={args.steps}", f"schedule.log_every={args.eval_every}",
        f"eval.every={args.eval_every}", "eval.max_examples=0", "eval.num_pictures=0",
        f"checkpoint.every={args.steps}", "checkpoint.num_to_keep=1",
        f"checkpoint.storage_path={ROOT / 'runs' / 'search'}", "tracking.enabled=false",
        f"optim.lr_warmup_steps={max(args.steps // 10, 1)}",
    ]  # fmt: skip


def summarise(searches: list[dict[str, Any]], max_trials: int) -> list[dict[str, Any]]:
    rows = []
    for name in SEARCHERS:
        mine = [s for s in searches if s["searcher"] == name]
        needed = [s["trials_needed"] for s in mine]
        reached = [n for n in needed if n is not None]
        rows.append({
            "searcher": name,
            "trials_needed_per_seed": needed,
            "reached": f"{len(reached)}/{len(mine)}",
            # a search that never reached the target counts as max_trials + 1 (a lower bound)
            "mean_trials_needed": round(
                sum(n if n is not None else max_trials + 1 for n in needed) / max(len(mine), 1), 2),
            "trials_run": sum(len(s["trials"]) for s in mine),
            "best_per_seed": [s["best"] for s in mine],
        })  # fmt: skip
    return rows


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sweep", default=str(ROOT / "sweeps" / "default.yaml"))
    p.add_argument("--steps", type=int, default=150, help="training steps per trial")
    p.add_argument("--eval-every", type=int, default=25)
    p.add_argument("--target", type=float, default=0.4, help="held-out exact accuracy to reach")
    p.add_argument("--jobs", type=int, default=3, help="seeds run at once, one process each")
    p.add_argument("--max-trials", type=int, default=6, help="trials per search at most")
    p.add_argument("--startup-trials", type=int, default=3, help="Optuna's random start")
    p.add_argument("--data", action="append", default=["min_clues=12"],
                   help="dataset builder key=value (default: min_clues=12)")  # fmt: skip
    p.add_argument("--seeds", type=int, default=3, help="seeds of each search: 0..N-1")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--quick", action="store_true", help="smoke run: 2 trials of 10 steps, 1 seed")
    args = p.parse_args(argv)
    if args.quick:
        args.steps, args.eval_every, args.max_trials, args.seeds = 10, 5, 2, 1
        args.startup_trials, args.jobs = 1, 1
    return args


def main(argv: list[str] | None = None) -> int:
    import torch
    from common import machine, save, table
    from default_sweep_search import data_uri, dataset_args

    from pipeline.sweeping.config import SweepConfig
    from pipeline.tasks import get_task

    args = parse_args(argv)
    torch.set_num_threads(1)
    data = dataset_args(SweepConfig.from_yaml(args.sweep), args.data)
    uri = data_uri(data)
    get_task(data["builder"]).builder(uri, **{k: v for k, v in data.items() if k != "builder"})
    # seeds in parallel processes (`--jobs`): each trains its own trials with one thread
    with multiprocessing.get_context("spawn").Pool(args.jobs) as pool:
        per_seed = pool.starmap(run_seed, [(seed, args, uri) for seed in range(args.seeds)])
    searches = [s for searches, _ in per_seed for s in searches]
    rows = summarise(searches, args.max_trials)
    print(table(rows, [("searcher", "searcher"), ("trials_needed_per_seed", "trials needed per seed"),
                       ("reached", "reached"), ("mean_trials_needed", "mean"),
                       ("trials_run", "trials run")]))  # fmt: skip
    result = {
        "machine": machine(torch.device("cpu"), "cpu"),
        "command": " ".join(["python", "benchmarks/search_efficiency.py", *(argv or sys.argv[1:])]),
        "settings": {k: getattr(args, k) for k in SETTINGS},
        "space": SPACE,
        "dataset": data,
        "summary": rows,
        "distinct_trials_trained": sum(n for _, n in per_seed),
        "searches": searches,
    }
    save(result, "search_efficiency", torch.device("cpu"), args.quick, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
