"""A large sweep, measured: N tiny real TRM trials (default 1,000) through `pipeline/sweep.py`'s
driver on a local multi-node Ray cluster shaped like the real one, tracked by a real MLflow
server with a PostgreSQL backend and S3 artifacts, trial storage on that S3.

The cluster (`infra/k8s/cluster/ray-cluster.gpu.yaml`): a head that runs no trials (0 CPUs,
the `trial_driver` slots of infra/k8s/base/cluster-shape.yaml) and `--nodes` worker raylets, each declaring `--gpus-per-node` GPUs
with Ray's fake `num_gpus`, as a KubeRay GPU pod does. Trials ask for GPUs the way the GPU
sweep files do (`use_gpu: true`, `gpus_per_worker: 0.5`: two trials per GPU) and compute on
the CPU because the benchmark sets the pipeline's simulation switch `TRM_SIMULATE_GPUS=1`
(`pipeline.training.device`). Services (tests/services.py): moto S3, PostgreSQL, `mlflow
server` behind a request-log proxy that times every request.

Each trial: a few training steps, one evaluation, one checkpoint (the smoke sweep's model on
4x4 Sudoku); the grid is 2 learning rates x N/2 data seeds, FIFO (every trial runs to its end).
Reported (table on stdout, JSON in benchmarks/results/sweep_scale[_quick][_LABEL].json):

- wall time against the ideal: sum of trial busy time (trial function start to end) / the
  number of trials that run at once;
- per-trial overhead: trial start to its first training step, and its last report to the next
  trial in the same trial process (Tune reuses trial processes), split into the trial's tail
  (last report to its function's end) and the hand-off (that end to the next trial's start);
- the driver's event loop: seconds spent in the sweep's Tune callbacks (`loop_callbacks_s`, per
  callback class; the loop also starts the next trials, so time there delays them);
- MLflow requests per trial and the server's p50/p99 latency (at the proxy);
- the driver's peak memory (this process's max RSS: the sweep driver runs here);
- end of sweep: the last trial's end to the printed summary, and its two parts: Tune's end of
  the experiment (its last state save to storage, the result grid) and the pipeline's
  `finish_sweep` (summary, child runs, best models), with the seconds of each of its parts
  (`end_phases_s`: rows, MLflow runs, plots, child-run ends, model registration);
- trials lost: a trial without a finished child run (status FINISHED, `swept.*` params,
  `best/<metric>`), a checkpoint on S3, and a summary row.

    python benchmarks/sweep_scale.py                      # 1,000 trials
    python benchmarks/sweep_scale.py --quick              # 50 trials (the tests run 16)
    python benchmarks/sweep_scale.py --trials 200 --restart-mlflow-at 0.3 --kill-raylet-at 0.5

Timestamps are wall-clock on whatever machine runs it: on a shared machine read the ratios.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import os
import resource
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import yaml
from common import ROOT, machine, pick_device, save, table
from services import MlflowServer, moto_process, postgres
from stack_sampler import StackSampler
from sweep_overhead import make_timed_trial, read_trials

SMOKE_SWEEP = ROOT / "sweeps" / "smoke.yaml"
BUCKET = "trm-scale"
FIELDS = ["trials", "concurrency", "wall_s", "ideal_s", "ratio_wall_vs_ideal",
          "to_first_step_s", "report_to_next_trial_s", "trial_tail_s", "handoff_s",
          "loop_callbacks_s", "loop_callbacks_ms_per_trial", "mlflow_requests",
          "mlflow_requests_per_trial", "mlflow_p50_ms", "mlflow_p99_ms", "mlflow_errors",
          "driver_peak_rss_mib", "last_trial_to_summary_s", "finish_sweep_s", "tune_end_s",
          "trials_lost", "lost", "events"]  # fmt: skip


def scale_sweep(trials: int, work: Path, tracking_uri: str, steps: int) -> dict[str, Any]:
    """The sweep file: the smoke sweep's model and data, GPU resources as the GPU sweep files
    ask for them, `trials` trials (2 learning rates x trials/2 seeds), FIFO."""
    d = yaml.safe_load(SMOKE_SWEEP.read_text())
    base = d["base"]
    base["data"]["uri"] = str(work / "data")
    base["schedule"] = {"steps": steps, "log_every": max(1, steps // 2)}
    base["eval"] = {**base["eval"], "every": steps, "num_pictures": 1}
    base["checkpoint"] = {"storage_path": f"s3://{BUCKET}/sweeps", "every": steps,
                          "num_to_keep": 1}  # fmt: skip
    base["resources"] = {"num_workers": 1, "use_gpu": True, "gpus_per_worker": 0.5,
                         "cpus_per_worker": 1}  # fmt: skip
    base["tracking"] = {"uri": tracking_uri, "experiment": "trm-scale"}
    d["name"] = f"scale-{trials}"
    d["space"] = {"optim.lr": {"grid": [3.0e-3, 1.0e-3]},
                  "data.seed": {"grid": list(range((trials + 1) // 2))}}  # fmt: skip
    d["scheduler"] = {"type": "fifo"}
    d["concurrency"] = 0  # as many as the cluster fits
    d["max_failures"] = 3  # a trial on a killed raylet starts again elsewhere
    return d


def driver_slots() -> int:
    """The head's `trial_driver` slots in the cluster's shape (infra/k8s/base)."""
    shape = yaml.safe_load((ROOT / "infra" / "k8s" / "base" / "cluster-shape.yaml").read_text())
    return int(shape["spec"]["trial_driver_slots"])


@contextlib.contextmanager
def gpu_cluster(nodes: int, gpus: int, cpus: int, temp_dir: str):
    """A local Ray cluster as KubeRay runs it: a head with trial-driver slots and no CPUs for
    trials, `nodes` worker raylets with `cpus` CPUs and `gpus` fake GPUs each. Ray records
    the cluster's address for `ray.init()` under RAY_TMPDIR: pointed into `temp_dir`, so no
    other Ray user of this machine joins the cluster, and made to exist (a fresh machine has
    no /tmp/ray)."""
    from ray.cluster_utils import Cluster

    os.environ["RAY_TMPDIR"] = temp_dir
    (Path(temp_dir) / "ray").mkdir(parents=True, exist_ok=True)
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 0, "resources": {"trial_driver": driver_slots()}, "temp_dir": temp_dir,
        "include_dashboard": False})  # fmt: skip
    workers = [cluster.add_node(num_cpus=cpus, num_gpus=gpus) for _ in range(nodes)]
    cluster.wait_for_nodes()
    try:
        yield cluster, workers
    finally:
        import ray

        ray.shutdown()
        cluster.shutdown()


def ended(log: Path) -> int:
    """Trials that have ended so far (lines of the trial event log)."""
    if not log.exists():
        return 0
    return sum('"event": "end"' in line for line in log.read_text().splitlines())


def when_ended(log: Path, at: int, act: Any) -> None:
    """In a thread: once `at` trials have ended, run `act()`."""

    def watch() -> None:
        while ended(log) < at:
            time.sleep(1)
        act()

    threading.Thread(target=watch, daemon=True).start()


def disrupt(log: Path, at: int, what: str, act: Any, events: list[dict[str, Any]]) -> None:
    """Once `at` trials have ended, run `act()` and record it."""

    def run() -> None:
        t = time.time()
        detail = act()
        events.append({"event": what, "t": t, "after_trials": at, "detail": detail})
        print(f"# sweep_scale: {what} after {at} trials: {detail}", flush=True)

    when_ended(log, at, run)


def sample_end(log: Path, trials: int) -> StackSampler:
    """A sampler of the driver's (main) thread that starts once every trial has ended."""
    sampler = StackSampler(threading.main_thread().ident, interval=0.2)
    when_ended(log, trials, sampler.start)
    return sampler


def run_sweep_timed(sweep_dict: dict[str, Any], log: Path, address: str) -> dict[str, Any]:
    """Run the sweep through the pipeline's driver with timed trials; wall, finish phase, the
    outcome and when the summary was printed."""
    import pipeline.sweeping.run as sw
    from pipeline.sweeping.config import SweepConfig

    sweep = SweepConfig.from_dict(sweep_dict)
    text = yaml.safe_dump(sweep_dict, sort_keys=False)
    exp_path = f"s3://{BUCKET}/sweeps/{sweep.name}"
    original_trial, original_finish = sw.run_trial, sw.finish_sweep
    finish: dict[str, float] = {}

    def timed_finish(*a: Any, **k: Any) -> Any:
        finish["start"] = time.time()
        try:
            return original_finish(*a, **k)
        finally:
            finish["end"] = time.time()

    sw.run_trial, sw.finish_sweep = make_timed_trial(original_trial, str(log)), timed_finish
    t0 = time.time()
    phases: dict[str, float] = {}
    loop: dict[str, float] = {}
    try:
        with timed_phases(phases), timed_callbacks(loop):
            outcome = sw.run_sweep(sweep, text, exp_path, address=address)
        print(outcome.console_text(), flush=True)
    finally:
        sw.run_trial, sw.finish_sweep = original_trial, original_finish
    return {"t0": t0, "printed": time.time(), "finish": finish, "outcome": outcome,
            "sweep": sweep, "exp_path": exp_path, "end_phases": phases,
            "loop_callbacks": loop}  # fmt: skip


# the end of a sweep, part by part: (module, function) the driver calls by module-global name
END_PHASES = [("pipeline.sweeping.report", "collect_rows"), ("pipeline.sweeping.report", "attach_runs"),
              ("pipeline.sweeping.report", "_log_plots"), ("pipeline.sweeping.report", "end_children"),
              ("pipeline.sweeping.finalise", "register_top")]  # fmt: skip


@contextlib.contextmanager
def timed_phases(spent: dict[str, float]) -> Any:
    """Seconds spent in each of END_PHASES while the block runs, into `spent`."""
    import importlib

    targets = [(importlib.import_module(m), name, name) for m, name in END_PHASES]
    with _timed(targets, spent):
        yield spent


# the sweep's Tune callbacks: what the driver's event loop runs besides Tune itself
LOOP_CALLBACKS = [("pipeline.sweeping.monitor", "SweepMonitor"),
                  ("pipeline.sweeping.results_file", "ResultsFile"),
                  ("pipeline.sweeping.finalise", "LiveRuns")]  # fmt: skip
LOOP_HOOKS = ("on_trial_start", "on_trial_result", "on_trial_complete", "on_trial_error",
              "on_step_begin", "on_step_end", "on_checkpoint", "on_trial_restore")  # fmt: skip


@contextlib.contextmanager
def timed_callbacks(spent: dict[str, float]) -> Any:
    """Seconds the event loop spends in each of LOOP_CALLBACKS' per-trial hooks, into `spent`
    (class name -> s; the end of the experiment is measured apart, as `tune_end_s`)."""
    import importlib

    classes = [(getattr(importlib.import_module(m), c), c) for m, c in LOOP_CALLBACKS]
    targets = [(cls, hook, name) for cls, name in classes for hook in LOOP_HOOKS
               if hook in cls.__dict__]  # fmt: skip
    with _timed(targets, spent):
        yield spent


@contextlib.contextmanager
def _timed(targets: list[tuple[Any, str, str]], spent: dict[str, float]) -> Any:
    """Wraps each (owner, attribute, key) so the seconds its calls take add up in spent[key];
    puts the originals back at the end."""
    originals = [(owner, attr, owner.__dict__[attr]) for owner, attr, _ in targets]
    for (owner, attr, key), (_, _, original) in zip(targets, originals, strict=True):

        def timed(*a: Any, _f: Any = original, _key: str = key, **k: Any) -> Any:
            t = time.perf_counter()
            try:
                return _f(*a, **k)
            finally:
                spent[_key] = spent.get(_key, 0.0) + time.perf_counter() - t

        setattr(owner, attr, timed)
    try:
        yield
    finally:
        for owner, attr, original in originals:
            setattr(owner, attr, original)


def lost_trials(run: dict[str, Any], tracking_uri: str, expected: int) -> dict[str, Any]:
    """Trials without all three of: a finished child run with swept params and best metric, a
    checkpoint object on S3, a row in summary.json. Also how many of each are missing."""
    import json

    import boto3
    from mlflow.tracking import MlflowClient

    sweep, outcome = run["sweep"], run["outcome"]
    metric = f"best/{sweep.search.metric}"
    s3 = boto3.client("s3")
    prefix = run["exp_path"].removeprefix(f"s3://{BUCKET}/")
    summary = json.loads(s3.get_object(Bucket=BUCKET, Key=f"{prefix}/summary.json")["Body"].read())
    rows = {t["trial_id"]: t for t in summary["trials"]}
    keys: set[str] = set()
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix):
        keys.update(o["Key"] for o in page.get("Contents", []))
    with_ckpt = {tid for tid, r in rows.items()
                 if r["checkpoint"] and any(k.startswith(r["checkpoint"].removeprefix(
                     f"s3://{BUCKET}/")) for k in keys)}  # fmt: skip
    client = MlflowClient(tracking_uri)
    finished, token = set(), None
    flt = f"tags.mlflow.parentRunId = '{outcome.parent_run_id}'"
    exp = client.get_experiment_by_name(sweep.base_config().tracking.experiment)
    while True:
        page = client.search_runs([exp.experiment_id], flt, max_results=1000, page_token=token)
        for r in page:
            ok = (r.info.status == "FINISHED" and metric in r.data.metrics
                  and any(p.startswith("swept.") for p in r.data.params))  # fmt: skip
            if ok:
                finished.add(r.data.tags.get("trm.trial_id", ""))
        token = page.token
        if not token:
            break
    good = set(rows) & with_ckpt & finished
    return {"trials_lost": expected - len(good),
            "lost": {"summary_rows": len(rows), "with_checkpoint": len(with_ckpt),
                     "finished_child_runs": len(finished),
                     "ids": sorted(set(rows) - good)[:50]}}  # fmt: skip


def _pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def report_gaps(trials: list[dict[str, Any]]) -> list[tuple[float, float]]:
    """Per trial process, per hand-over: (its trial's last report to that trial's end, that end
    to the start of the next trial it ran)."""
    by_pid: dict[int, list[dict[str, Any]]] = {}
    for t in trials:
        by_pid.setdefault(t.get("pid", 0), []).append(t)
    gaps = []
    for ts in by_pid.values():
        ts.sort(key=lambda t: t["start"])
        for prev, nxt in itertools.pairwise(ts):
            last = prev.get("last_report", prev["finish"])
            gaps.append((prev["finish"] - last, nxt["start"] - prev["finish"]))
    return gaps


def _spread(xs: list[float]) -> dict[str, float] | None:
    if not xs:
        return None
    return {"median": round(statistics.median(xs), 2), "p90": round(_pct(xs, 0.9), 2)}


def measure(run: dict[str, Any], log: Path, server: MlflowServer, conc: int) -> dict[str, Any]:
    trials = read_trials(log)
    busy = [t["busy"] for t in trials]
    wall = run["printed"] - run["t0"]
    ideal = sum(busy) / conc
    requests = [r for r in server.requests() if r[0] >= run["t0"]]
    lat = [r[4] * 1000 for r in requests if r[3] < 500]
    first = [t["first_forward"] - t["start"] for t in trials if "first_forward" in t]
    gaps = report_gaps(trials)
    return {
        "trials": len(trials), "concurrency": conc, "wall_s": round(wall, 1),
        "ideal_s": round(ideal, 1), "ratio_wall_vs_ideal": round(wall / ideal, 2),
        "to_first_step_s": _spread(first),
        "report_to_next_trial_s": _spread([a + b for a, b in gaps]),
        "trial_tail_s": _spread([a for a, _ in gaps]),
        "handoff_s": _spread([b for _, b in gaps]),
        "loop_callbacks_s": {k: round(v, 1) for k, v in run["loop_callbacks"].items()},
        "loop_callbacks_ms_per_trial": round(
            1000 * sum(run["loop_callbacks"].values()) / max(1, len(trials)), 1),
        "mlflow_requests": len(requests),
        "mlflow_requests_per_trial": round(len(requests) / max(1, len(trials)), 1),
        "mlflow_p50_ms": round(_pct(lat, 0.5), 1), "mlflow_p99_ms": round(_pct(lat, 0.99), 1),
        "mlflow_errors": sum(r[3] >= 500 for r in requests),
        "mlflow_error_paths": dict(Counter(f"{r[3]} {r[2]}" for r in requests if r[3] >= 500)),
        "driver_peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "last_trial_to_summary_s": round(run["printed"] - max(t["finish"] for t in trials), 1),
        "finish_sweep_s": round(run["finish"]["end"] - run["finish"]["start"], 1),
        # Tune's end of the experiment: its last state save to storage, the result grid
        "tune_end_s": round(run["finish"]["start"] - max(t["finish"] for t in trials), 1),
        "end_phases_s": {k: round(v, 2) for k, v in run["end_phases"].items()},
    }  # fmt: skip


COLUMNS = [("label", "run"), ("trials", "trials"), ("concurrency", "at once"),
           ("wall", "wall s"), ("ideal", "ideal s"), ("ratio", "wall/ideal"),
           ("first", "start→1st step s (p50/p90)"), ("gap", "last report→next trial s"),
           ("req", "MLflow req/trial"), ("lat", "MLflow p50/p99 ms"), ("rss", "driver peak MiB"),
           ("end", "last trial→summary s"), ("lost", "trials lost")]  # fmt: skip


def show(label: str, r: dict[str, Any]) -> dict[str, str]:
    def pair(d: dict[str, float] | None) -> str:
        return f"{d['median']}/{d['p90']}" if d else "-"

    return {"label": label, "trials": str(r["trials"]), "concurrency": str(r["concurrency"]),
            "wall": f"{r['wall_s']:.0f}", "ideal": f"{r['ideal_s']:.0f}",
            "ratio": f"{r['ratio_wall_vs_ideal']:.2f}", "first": pair(r["to_first_step_s"]),
            "gap": pair(r["report_to_next_trial_s"]), "req": f"{r['mlflow_requests_per_trial']}",
            "lat": f"{r['mlflow_p50_ms']}/{r['mlflow_p99_ms']}",
            "rss": str(r["driver_peak_rss_mib"]), "end": f"{r['last_trial_to_summary_s']}",
            "lost": str(r["trials_lost"])}  # fmt: skip


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--trials", type=int, default=1000)
    ap.add_argument("--quick", action="store_true", help="50 trials (what the tests run)")
    ap.add_argument("--steps", type=int, default=4, help="training steps per trial")
    ap.add_argument("--nodes", type=int, default=4, help="worker raylets (at least 4)")
    ap.add_argument("--gpus-per-node", type=int, default=1, help="fake GPUs per raylet")
    ap.add_argument("--cpus-per-node", type=int, default=2, help="logical CPUs per raylet")
    ap.add_argument(
        "--restart-mlflow-at",
        type=float,
        default=None,
        metavar="FRACTION",
        help="restart the MLflow server once this fraction of trials has ended",
    )
    ap.add_argument("--mlflow-down-s", type=float, default=20.0)
    ap.add_argument(
        "--kill-raylet-at",
        type=float,
        default=None,
        metavar="FRACTION",
        help="kill one worker raylet (no grace) once this fraction has ended",
    )
    ap.add_argument("--profile-end", action="store_true",
                    help="sample the driver's stack from the last trial's end to the summary "
                         "(end_profile in the result)")  # fmt: skip
    ap.add_argument("--label", default="", help="suffix of the result file (before, after...)")
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    if a.quick:
        a.trials = 50
    if a.trials < 2 or a.nodes < 1 or a.steps < 1:
        ap.error("--trials must be >= 2, --nodes and --steps >= 1")
    for f in (a.restart_mlflow_at, a.kill_raylet_at):
        if f is not None and not 0 < f < 1:
            ap.error("--restart-mlflow-at and --kill-raylet-at are fractions in (0, 1)")
    return a


def main(argv: list[str] | None = None) -> dict[str, Any]:
    a = parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="trm-scale-", dir="/tmp"))
    events: list[dict[str, Any]] = []
    try:
        with moto_process(work / "moto.log") as s3_url:
            aws = {"AWS_ENDPOINT_URL": s3_url, "AWS_ACCESS_KEY_ID": "testing",
                   "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}  # fmt: skip
            os.environ.update(aws)  # the driver, and every raylet started below, inherit these
            os.environ.update({"TRM_SIMULATE_GPUS": "1", "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR":
                               "false", "RAY_DEDUP_LOGS": "1"})  # fmt: skip
            import boto3

            boto3.client("s3").create_bucket(Bucket=BUCKET)
            with postgres(work) as db, MlflowServer(
                work, db, f"s3://{BUCKET}/mlflow-artifacts",
                env={**aws, "MLFLOW_S3_ENDPOINT_URL": s3_url},
            ) as server, gpu_cluster(a.nodes, a.gpus_per_node, a.cpus_per_node,
                                     str(work / "ray")) as (cluster, workers):  # fmt: skip
                log = work / "trials.jsonl"
                sweep = scale_sweep(a.trials, work, server.url, a.steps)
                if a.restart_mlflow_at:
                    disrupt(log, int(a.trials * a.restart_mlflow_at), "mlflow_restart",
                            lambda: f"down {server.restart(a.mlflow_down_s):.1f} s", events)  # fmt: skip
                if a.kill_raylet_at:
                    disrupt(log, int(a.trials * a.kill_raylet_at), "raylet_killed",
                            lambda: cluster.remove_node(workers[-1], allow_graceful=False) or
                            "one worker raylet removed without grace", events)  # fmt: skip
                print(f"# sweep_scale: {a.trials} trials on {a.nodes} raylets x "
                      f"{a.gpus_per_node} fake GPU, work dir {work}; watch it in the MLflow "
                      f"UI at {server.url} (experiment trm-scale)", flush=True)  # fmt: skip
                sampler = sample_end(log, a.trials) if a.profile_end else None
                run = run_sweep_timed(sweep, log, cluster.address)
                if sampler is not None:
                    sampler.stop()
                conc = a.nodes * a.gpus_per_node * 2  # two trials per GPU (gpus_per_worker 0.5)
                result = measure(run, log, server, conc)
                result.update(lost_trials(run, server.url, run["sweep"].num_trials))
                if sampler is not None:
                    result["end_profile"] = sampler.top(40)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result["events"] = events
    result["machine"] = machine(pick_device(None), "wall")
    result["args"] = vars(a)
    missing = [f for f in FIELDS if f not in result]
    if missing:
        raise RuntimeError(f"result lacks {missing}")
    label = a.label or ("quick" if a.quick else f"{a.trials}")
    print(table([show(label, result)], COLUMNS), flush=True)
    save(result, "sweep_scale" + (f"_{a.label}" if a.label else ""), pick_device(None),
         a.quick, a.out)  # fmt: skip
    return result


if __name__ == "__main__":
    main()
