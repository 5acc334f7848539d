"""What the sweep machinery costs: wall time of a real `pipeline/sweep.py` sweep against the
time its trials were busy, trial start-up, and trials per device against throughput.

For one sweep (default: sweeps/default.yaml, the CPU default of `python pipeline/sweep.py`):
- wall: `pipeline.sweeping.run.run_sweep` end to end (local Ray start, checks, Tune, MLflow, summary);
  the dataset is built once before the clock starts (reported apart);
- busy: each trial function's own run time (in the trial process, start to return);
- ratio = wall / (sum of busy / concurrency); 1.0 would be perfect packing with no overhead.
  Also: the lower bound max(sum/concurrency, longest trial), which no scheduler beats;
- start-up: in each trial, seconds from the trial function's start to its first training
  step (first model forward) and to its first report.
With `--fractions`, the same N identical trials run at several CPUs-per-trial settings
(trials per device = CPUs / cpus_per_worker): aggregate training examples/s against packing.

    python benchmarks/sweep_overhead.py                             # default sweep + fractions
    python benchmarks/sweep_overhead.py --sweep sweeps/smoke.yaml --fractions ""
    python benchmarks/sweep_overhead.py --quick                     # smoke sweep only
    python benchmarks/sweep_overhead.py --quick --fractions 0.5     # and one fraction

Everything (data, trial storage, MLflow sqlite) goes to a temporary directory. Writes
benchmarks/results/sweep_overhead.json. Timestamps are wall-clock: on a shared machine the
ratio is what to read, not the seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import ROOT, headline_clock, machine, pick_device, save, table

from pipeline.sweeping.config import SweepConfig

DEFAULT_SWEEP = ROOT / "sweeps" / "default.yaml"
SMOKE_SWEEP = ROOT / "sweeps" / "smoke.yaml"


def make_timed_trial(original, log_path: str):
    """A trial function that runs `original` and logs timestamped events to `log_path` as they
    happen (a trial that the scheduler stops at its last report is killed before it returns):
    start, first model forward (first training step), every report, end. Runs in the trial's
    process, where it wraps `TRM.forward` and the trial's reporter."""

    def timed_trial(config: dict[str, Any], ctx: Any) -> None:
        import json as _json
        import time as _time

        from ray import tune as _tune

        import pipeline.sweeping.trial as _trial
        from trm.model import TRM as _TRM

        trial_id = _tune.get_context().get_trial_id()

        def event(kind: str, **extra: Any) -> None:
            line = {"trial_id": trial_id, "event": kind, "t": _time.time(), **extra}
            with open(log_path, "a") as f:
                f.write(_json.dumps(line) + "\n")

        forward, report = _TRM.forward, _trial.TuneReporter.__call__
        seen_forward = []

        def logged_forward(self, *a, **k):
            if not seen_forward:
                seen_forward.append(True)
                event("first_forward")
            return forward(self, *a, **k)

        def logged_report(self, metrics, checkpoint_dir):
            event("report", step=int(metrics.get("step", 0)),
                  rows=self.cfg.data.global_batch_size)  # fmt: skip
            return report(self, metrics, checkpoint_dir)

        event("start", pid=os.getpid())
        _TRM.forward, _trial.TuneReporter.__call__ = logged_forward, logged_report
        try:
            original(config, ctx)
        finally:
            _TRM.forward, _trial.TuneReporter.__call__ = forward, report
            event("end")

    return timed_trial


def read_trials(log: Path) -> list[dict[str, Any]]:
    """Per trial: start, first_forward, first_report, last_report, end (None when the trial
    was stopped at its last report), busy = (end or last report) - start, examples trained."""
    trials: dict[str, dict[str, Any]] = {}
    for line in log.read_text().splitlines() if log.exists() else []:
        e = json.loads(line)
        t = trials.setdefault(e["trial_id"], {"trial_id": e["trial_id"], "end": None})
        if e["event"] == "report":
            t.setdefault("first_report", e["t"])
            t["last_report"], t["examples"] = e["t"], e["step"] * e["rows"]
        elif e["event"] == "end":
            t["end"] = e["t"]  # a retried trial ends once more; the last end counts
        else:
            t.setdefault(e["event"], e["t"])
            if "pid" in e:  # the trial process (Tune reuses it for the next trial)
                t["pid"] = e["pid"]
    out = []
    for t in trials.values():
        if "start" not in t:
            continue
        finish = t["end"] or t.get("last_report") or t["start"]
        out.append({**t, "finish": finish, "busy": finish - t["start"],
                    "examples": t.get("examples", 0)})  # fmt: skip
    return sorted(out, key=lambda t: t["start"])


def _phase(fn, name: str, phases: dict[str, float]):
    def timed(*a, **k):
        t = time.time()
        try:
            return fn(*a, **k)
        finally:
            phases[name] = phases.get(name, 0.0) + time.time() - t

    return timed


def handover_gaps(trials: list[dict[str, Any]], slots: int) -> list[float]:
    """Seconds from a trial's finish to the start of the trial that took its slot."""
    free = sorted(t["finish"] for t in trials[:slots])
    gaps = []
    for t in trials[slots:]:
        gaps.append(round(t["start"] - free.pop(0), 2))
        free = sorted([*free, t["finish"]])
    return gaps


def run_once(sweep: SweepConfig, text: str, work: Path, label: str,
             num_cpus: int | None, reuse_actors: bool = True) -> dict[str, Any]:  # fmt: skip
    """Run `sweep` once under a fresh local Ray; timings and per-trial records.
    `reuse_actors=False`: a what-if, every trial in a fresh process (pipeline/sweep.py sets
    Tune's reuse_actors=True: a trial starts in the process its predecessor ran in)."""
    import ray

    import pipeline.sweeping.run as sw

    log = work / f"{label}.trials.jsonl"
    exp_path = str(work / "sweeps" / sweep.name)
    cpus = sweep.base_config().resources.cpus_per_worker
    # the driver's phases, timed where run_sweep looks them up (its module's names)
    phases: dict[str, float] = {}
    timed_fns = [(sw, "connect_ray"), (sw, "cluster_nodes"), (sw, "check_fits"),
                 (sw, "preflight"), (sw, "start_tracker"), (sw, "build_tuner"),
                 (sw, "finish_sweep"), (sw, "run_trial")]  # fmt: skip
    originals = [(mod, name, getattr(mod, name)) for mod, name in timed_fns]
    for mod, name, fn in originals[:-1]:
        setattr(mod, name, _phase(fn, name, phases))
    sw.run_trial = make_timed_trial(originals[-1][2], str(log))
    tune_config = sw.tune.TuneConfig
    if not reuse_actors:
        sw.tune.TuneConfig = lambda **kw: tune_config(**{**kw, "reuse_actors": False})
    t0 = time.time()
    try:
        outcome = sw.run_sweep(sweep, text, exp_path, num_cpus=num_cpus)
    finally:
        t1 = time.time()
        for mod, name, fn in originals:
            setattr(mod, name, fn)
        sw.tune.TuneConfig = tune_config
        ray.shutdown()
    trials = read_trials(log)
    if not trials:
        raise RuntimeError(f"sweep {label!r} ran no trial (see the output above)")
    busy = [t["busy"] for t in trials]
    conc = sweep.concurrency or min(len(trials), int((num_cpus or os.cpu_count() or 1) / cpus))
    ideal = sum(busy) / conc
    wall = t1 - t0
    return {
        "label": label,
        "trials": len(trials),
        "stopped_at_last_report": sum(t["end"] is None for t in trials),
        "concurrency": conc,
        "exit_code": outcome.exit_code,
        "wall_s": wall,
        "busy_sum_s": sum(busy),
        "busy_over_concurrency_s": ideal,
        "longest_trial_s": max(busy),
        "ratio_wall_vs_busy": wall / ideal,
        "ratio_wall_vs_lower_bound": wall / max(ideal, max(busy)),
        "before_first_trial_s": trials[0]["start"] - t0,
        "driver_phases_s": phases,
        "handover_gaps_s": handover_gaps(trials, conc),
        "after_last_trial_s": t1 - max(t["finish"] for t in trials),
        "trial_to_first_step_s": _median(
            [t["first_forward"] - t["start"] for t in trials if "first_forward" in t]
        ),
        "trial_to_first_report_s": _median(
            [t["first_report"] - t["start"] for t in trials if "first_report" in t]
        ),
        "examples": sum(t["examples"] for t in trials),
        "examples_per_s": sum(t["examples"] for t in trials) / wall,
        "per_trial": [
            {
                "trial_id": t["trial_id"],
                "busy_s": round(t["busy"], 2),
                "to_first_step_s": round(t.get("first_forward", t["finish"]) - t["start"], 2),
                "to_first_report_s": round(t.get("first_report", t["finish"]) - t["start"], 2),
                "start_s": round(t["start"] - t0, 2),
                "finish_s": round(t["finish"] - t0, 2),
                "returned": t["end"] is not None,
            }
            for t in trials
        ],
    }


def _median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def prepare(
    path: Path, overrides: list[str], work: Path, name: str | None
) -> tuple[SweepConfig, str, float]:
    """The sweep with storage, data and MLflow moved under `work`; its dataset built."""
    from pipeline.sweeping.dataset import ensure_dataset

    data_uri = str(work / "data" / Path(path).stem)
    sets = [f"data.uri={data_uri}", f"checkpoint.storage_path={work / 'sweeps'}",
            f"tracking.uri=sqlite:///{work / 'mlflow.db'}", *overrides]  # fmt: skip
    sweep = SweepConfig.from_yaml(path, sets, name=name)
    t = time.time()
    ensure_dataset(sweep, data_uri)
    return sweep, f"{Path(path).read_text()}\n# benchmark overrides: {sets}\n", time.time() - t


def fraction_sweep(base: SweepConfig, cpus: float, trials: int, steps: int) -> SweepConfig:
    """`trials` identical trials (grid over seeds) at `cpus` CPUs each, all allowed at once."""
    d = base.to_dict()
    d["base"] = {**d["base"]}
    d["base"]["resources"] = {**d["base"].get("resources", {}), "cpus_per_worker": cpus}
    d["base"]["schedule"] = {**d["base"].get("schedule", {}), "steps": steps}
    d["base"]["eval"] = {**d["base"].get("eval", {}), "every": steps}
    d["base"]["checkpoint"] = {**d["base"].get("checkpoint", {}), "every": steps}
    d["space"] = {"data.seed": {"grid": list(range(trials))}}
    d["scheduler"] = {"type": "fifo"}
    d["search"] = {**d["search"], "algorithm": "grid"}
    d["concurrency"] = 0  # as many as fit: CPUs / cpus_per_worker
    d["name"] = f"{base.name}-cpus{str(cpus).replace('.', 'p')}"
    return SweepConfig.from_dict(d)


COLUMNS = [
    ("label", "sweep"), ("trials", "trials"), ("concurrency", "at once"),
    ("wall", "wall s"), ("busy", "Σbusy/concurrency s"), ("ratio", "wall / (Σbusy/conc)"),
    ("lb", "wall / lower bound"), ("first_step", "trial → first step s"),
    ("first_report", "trial → first report s"), ("before", "start → first trial s"),
    ("after", "last trial → end s"), ("ex_s", "examples/s"),
]  # fmt: skip


def show(r: dict[str, Any]) -> dict[str, str]:
    return {
        "label": r["label"], "trials": str(r["trials"]), "concurrency": str(r["concurrency"]),
        "wall": f"{r['wall_s']:.0f}", "busy": f"{r['busy_over_concurrency_s']:.0f}",
        "ratio": f"{r['ratio_wall_vs_busy']:.2f}", "lb": f"{r['ratio_wall_vs_lower_bound']:.2f}",
        "first_step": f"{r['trial_to_first_step_s']:.1f}",
        "first_report": f"{r['trial_to_first_report_s']:.1f}",
        "before": f"{r['before_first_trial_s']:.1f}", "after": f"{r['after_last_trial_s']:.1f}",
        "ex_s": f"{r['examples_per_s']:.0f}",
    }  # fmt: skip


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sweep", default=str(DEFAULT_SWEEP), help="sweep file (default: %(default)s)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="base run config override, as pipeline/sweep.py --set")  # fmt: skip
    ap.add_argument("--fractions", default=None,
                    help="CPUs per trial to compare ('' to skip; default 2,1,0.5, none with "
                         "--quick); trials/device = CPUs / this")  # fmt: skip
    ap.add_argument("--fraction-trials", type=int, default=4)
    ap.add_argument("--fraction-steps", type=int, default=200)
    ap.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local Ray cluster")
    ap.add_argument(
        "--quick", action="store_true", help="the smoke sweep only, no fractions: a smoke run"
    )
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    ap.add_argument("--what-if-fresh-processes", action="store_true",
                    help="run every trial in a fresh process (Tune reuse_actors=False), for "
                         "comparison with the sweep's reused trial processes")  # fmt: skip
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    if a.quick:
        a.sweep = str(SMOKE_SWEEP) if a.sweep == str(DEFAULT_SWEEP) else a.sweep
    if a.fractions is None:  # a quick run has none unless asked for
        a.fractions = "" if a.quick else "2,1,0.5"
    fractions = [float(f) for f in a.fractions.split(",") if f.strip()]
    if any(f <= 0 for f in fractions):
        ap.error("--fractions must be positive numbers")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    device = pick_device(None)
    result: dict[str, Any] = {"machine": machine(device, headline_clock(device, "wall")),
                              "sweep_file": str(Path(a.sweep).relative_to(ROOT))
                              if Path(a.sweep).resolve().is_relative_to(ROOT) else a.sweep}  # fmt: skip
    work = Path(tempfile.mkdtemp(prefix="trm-sweep-bench-"))
    try:
        sweep, text, data_s = prepare(Path(a.sweep), a.overrides, work, None)
        result["dataset_build_s"] = data_s
        print(f"# sweep_overhead: {sweep.name} ({sweep.num_trials} trials), work dir {work}",
              flush=True)  # fmt: skip
        result["reuse_actors"] = not a.what_if_fresh_processes
        result["sweep"] = run_once(sweep, text, work, sweep.name, a.num_cpus,
                                   result["reuse_actors"])  # fmt: skip
        print(table([show(result["sweep"])], COLUMNS), flush=True)
        result["fractions"] = []
        for cpus in fractions:
            fs = fraction_sweep(sweep, cpus, a.fraction_trials, a.fraction_steps)
            r = run_once(fs, text, work, fs.name, a.num_cpus)
            r["cpus_per_trial"] = cpus
            r["trials_per_device"] = (a.num_cpus or os.cpu_count() or 1) / cpus
            result["fractions"].append(r)
            print(f"  cpus/trial {cpus}: {r['examples_per_s']:.0f} examples/s, "
                  f"wall {r['wall_s']:.0f} s", flush=True)  # fmt: skip
    finally:
        if not a.keep:
            import shutil

            shutil.rmtree(work, ignore_errors=True)
    rows = [show(result["sweep"])] + [show(r) for r in result["fractions"]]
    print()
    print(table(rows, COLUMNS))
    if result["fractions"]:
        print()
        print(table(
            [{"cpus": str(r["cpus_per_trial"]), "tpd": f"{r['trials_per_device']:g}",
              "ex_s": f"{r['examples_per_s']:.0f}", "wall": f"{r['wall_s']:.0f}",
              "busy": f"{statistics.median(p['busy_s'] for p in r['per_trial']):.0f}"}
             for r in result["fractions"]],
            [("cpus", "CPUs per trial"), ("tpd", "trials per device (2 CPUs)"),
             ("ex_s", "examples/s, all trials"), ("wall", "wall s"), ("busy", "median trial s")],
        ))  # fmt: skip
    save(result, "sweep_overhead", device, a.quick, a.out)
    return result


if __name__ == "__main__":
    main()
