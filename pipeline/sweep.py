"""Sweep TRM run configs with Ray Tune, tracked in MLflow: one parent run per sweep, one child
run per trial, and at the end a summary (table, best config, plots) on the console and on the
parent run.

    python pipeline/sweep.py                                   # the CPU default: depth on 4x4 Sudoku
    python pipeline/sweep.py --sweep sweeps/smoke.yaml         # any sweep file (sweeps/*.yaml)
    python pipeline/sweep.py --sweep sweeps/smoke.yaml --resume          # continue after a crash
    python pipeline/sweep.py --sweep sweeps/act_study.yaml --dry-run     # check and list trials
    python pipeline/sweep.py --sweep S --set data.uri=s3://b/sudoku --storage-path s3://b/sweeps
    ray job submit --address http://HEAD:8265 --working-dir . -- python pipeline/sweep.py --sweep S

Three layers, as in Ray's Train + Tune examples: the per-worker loop (`pipeline.worker`), a
trial (`run_trial`: 1-worker trials run that loop in the Tune trial's own process,
`pipeline.worker.run_in_process`, without the ~20 s a TorchTrainer costs; multi-worker trials
build a `TorchTrainer` through `pipeline.train.run_training`), and the `Tuner` built here. Trial
runs are named `<sweep>-<trial id>`, never from timestamps, so `--resume` (`Tuner.restore`)
finds them, their checkpoints and their MLflow runs again; the MLflow parent run is found by its
run key.

Every check that can fail before a trial starts runs first: the sweep file (pipeline/
sweep_config.py), the dataset against every trial's model and batch, storage writable and
readable from every Ray node, and trial resources against the cluster (alive nodes plus what the
autoscaler may add), so a sweep never waits forever for a trial that cannot be placed.

Trials report to Tune at evaluation steps: every training metric plus `step`, `examples`
(example-ACT-steps trained) and `flops` (model training FLOPs spent, `trm.flops`), the time axes
of the ASHA scheduler and the compute budget.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script (also by `ray job submit`): import the repo
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import yaml
from ray import tune
from ray.tune.integration.ray_train import TuneReportCallback

from pipeline.config import ConfigError, RunConfig, apply_overrides
from pipeline.sweep_config import SweepConfig, builders

DEFAULT_SWEEP = Path(__file__).resolve().parents[1] / "sweeps" / "default.yaml"
# Custom Ray resource that drivers of multi-worker (TorchTrainer) trials ask for, so the driver
# takes no CPU from the workers; declared by `sweep.py` on a local cluster and by the head node's
# `ray start --resources` (infra/k8s) on a remote one.
DRIVER_RESOURCE = "trial_driver"
STORED_SWEEP = "sweep.yaml"
STORED_RESOLVED = "sweep.resolved.yaml"
TRIALS_DIR = "trials"
COMPLETED_DIR = "completed"
# keys Tune adds to every result; a trial's own metrics are the rest
_TUNE_KEYS = {"done", "training_iteration", "trial_id", "date", "timestamp", "time_this_iter_s",
              "time_total_s", "pid", "hostname", "node_ip", "time_since_restore",
              "iterations_since_restore", "checkpoint_dir_name", "config", "experiment_tag",
              "should_checkpoint"}  # fmt: skip
PARENT_KEY_PREFIX = "sweep:"


# ---- what every trial gets ------------------------------------------------------------------
@dataclass
class SweepContext:
    """Everything a trial needs besides its sampled values; resolved on the driver."""

    name: str
    exp_path: str
    """Tune experiment directory (storage root / sweep name); local absolute path or s3://."""
    base: dict[str, Any]
    """Base run config with absolute paths and the resolved tracking URI."""
    keys: dict[str, list[str]]
    """Search-space key -> the config fields it sets (several for tied keys)."""
    metric: str
    mode: str
    use_gpu: bool
    code_version: str
    parent_run_id: str = ""
    tracking_uri: str = ""

    @property
    def trials_path(self) -> str:
        return f"{self.exp_path}/{TRIALS_DIR}"

    def trial_name(self, trial_id: str) -> str:
        return f"{self.name}-{trial_id}"

    def run_key(self, trial_id: str) -> str:
        """MLflow run key of a trial (`pipeline.tracking`: storage path / run name)."""
        return f"{self.trials_path}/{self.trial_name(trial_id)}"

    def assignments(self, params: dict[str, Any]) -> dict[str, Any]:
        """Tune's sampled values -> dotted config field -> value."""
        out: dict[str, Any] = {}
        for key, names in self.keys.items():
            if key in params:
                value = params[key]
                out.update({names[0]: value} if len(names) == 1 else dict(zip(names, value)))
        return out

    def trial_config(self, params: dict[str, Any], trial_id: str) -> RunConfig:
        d = apply_overrides(
            self.base, [f"{k}={json.dumps(v)}" for k, v in self.assignments(params).items()]
        )
        d["name"] = self.trial_name(trial_id)
        d["checkpoint"]["storage_path"] = self.trials_path
        d["tracking"]["tags"] = {
            **d["tracking"].get("tags", {}),
            "trm.sweep": self.name,
            "trm.trial_id": trial_id,
        }
        return RunConfig.from_dict(d)


def is_eval_step(cfg: RunConfig, step: int) -> bool:
    return step % cfg.eval.every == 0 or step == cfg.schedule.steps


def flops_per_example(cfg: RunConfig, meta: Any = None) -> float:
    """Model training FLOPs per example-ACT-step (trm.flops) of this run's model; `meta`: its
    dataset's metadata when the caller has it already (read from cfg.data.uri otherwise)."""
    from pipeline.data.meta import read_meta
    from pipeline.train_state import model_config
    from trm import flops

    meta = meta if meta is not None else read_meta(cfg.data.uri)
    return float(flops(model_config(cfg, meta))["train_step"])


def with_time_axes(metrics: dict[str, Any], cfg: RunConfig, flops_per_row: float) -> dict:
    """The report plus the sweep's time axes: examples (example-ACT-steps) and model FLOPs."""
    examples = int(metrics["step"]) * cfg.data.global_batch_size
    return {**metrics, "examples": examples, "flops": examples * flops_per_row}


class TuneReporter:
    """The `report` of an in-process trial: evaluation reports (with checkpoints) to Tune."""

    def __init__(self, cfg: RunConfig, flops_per_row: float):
        self.cfg, self.flops_per_row = cfg, flops_per_row

    def __call__(self, metrics: dict[str, Any], checkpoint_dir: str | None) -> None:
        if checkpoint_dir is None and not is_eval_step(self.cfg, int(metrics["step"])):
            return  # training-only reports go to MLflow; Tune ranks on evaluations
        report = with_time_axes(metrics, self.cfg, self.flops_per_row)
        ck = tune.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
        tune.report(report, checkpoint=ck)  # copies the checkpoint to storage before returning


class SweepReportCallback(TuneReportCallback):
    """Forwards rank 0's evaluation reports of a TorchTrainer trial to Tune, with time axes
    (runs in the Train controller; made inside the trial, as Tune requires)."""

    def __init__(self, cfg: RunConfig, flops_per_row: float):
        super().__init__()
        self.cfg, self.flops_per_row = cfg, flops_per_row

    def after_report(self, run_context, metrics, checkpoint):
        m = metrics[0]
        if checkpoint is None and not is_eval_step(self.cfg, int(m["step"])):
            return
        report = with_time_axes(m, self.cfg, self.flops_per_row)
        super().after_report(run_context, [report], checkpoint)


def record_completed(exp_path: str, trial_id: str, result: dict[str, Any]) -> None:
    """Record (durably, beside the experiment) that a trial ended, with its final metrics."""
    from pipeline.data.storage import open_storage

    own = {k: v for k, v in result.items()
           if k not in _TUNE_KEYS and isinstance(v, (int, float, str, bool))}  # fmt: skip
    open_storage(exp_path).write_bytes(f"{COMPLETED_DIR}/{trial_id}.json", json.dumps(own).encode())


def completed_result(exp_path: str, trial_id: str) -> dict[str, Any] | None:
    text = _storage_text(exp_path, f"{COMPLETED_DIR}/{trial_id}.json")
    return json.loads(text) if text is not None else None


def run_trial(config: dict[str, Any], ctx: SweepContext) -> None:
    """One Tune trial: train the base config with this trial's values."""
    trial_id = tune.get_context().get_trial_id()
    done = completed_result(ctx.exp_path, trial_id)
    if done is not None:
        # The trial ended before the sweep driver stopped, but Tune's saved experiment state
        # (written at most every 10 s, synced to storage less often) still had it running:
        # hand Tune its final result again instead of training it again.
        tune.report(done)
        return
    cfg = ctx.trial_config(config, trial_id)
    fpr = flops_per_example(cfg)
    if cfg.resources.num_workers > 1:
        from pipeline.train import run_training

        # Train V2 resumes a run with the same name and storage from its own checkpoints, so a
        # retried trial continues where its worker group stopped
        run_training(
            cfg,
            name=cfg.name,
            storage_path=ctx.trials_path,
            callbacks=[SweepReportCallback(cfg, fpr)],
            parent_run_id=ctx.parent_run_id,
        )
        return

    import torch

    from pipeline.worker import RunInfo, run_in_process

    torch.set_num_threads(max(1, int(cfg.resources.cpus_per_worker)))
    info = RunInfo(
        name=cfg.name,
        run_key=ctx.run_key(trial_id),
        tracking_uri=ctx.tracking_uri if cfg.tracking.enabled else "",
        code_version=ctx.code_version,
        parent_run_id=ctx.parent_run_id,
    )
    device = torch.device("cuda" if ctx.use_gpu else "cpu")
    ck = tune.get_checkpoint()  # set when Tune retries the trial or the sweep is resumed
    try:
        with ck.as_directory() if ck else contextlib.nullcontext() as resume_dir:
            run_in_process(
                cfg, info, report=TuneReporter(cfg, fpr), resume_dir=resume_dir, device=device
            )
    finally:
        # Tune runs the next trial in this process (reuse_actors): free this one's memory,
        # including what CUDA's caching allocator holds, for the trials sharing the GPU
        import gc

        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()


# ---- stop reasons and the compute budget (driver side) ---------------------------------------
class SweepMonitor(tune.Callback, tune.Stopper):
    """Driver-side Tune callback and stopper in one object (the same instance is passed as both,
    so it survives `Tuner.restore` as one): marks the result on which the scheduler stopped a
    trial (`stop_reason`, kept in the trial's last result), prints one line per finished trial,
    and stops the sweep when the compute budget is spent (FLOPs summed over every trial's last
    report, restored trials included; wall hours of this invocation)."""

    def __init__(
        self,
        keys: dict[str, list[str]],
        base_steps: int,
        time_key: str,
        max_t: float,
        metric: str,
        mode: str,
        budget_flops: float = 0,
        budget_hours: float = 0,
        status_every_s: float = 30,
        exp_path: str = "",
    ):
        self.exp_path = exp_path
        """Where ended trials are recorded (`record_completed`); empty = not recorded."""
        self.keys, self.base_steps, self.time_key, self.max_t = keys, base_steps, time_key, max_t
        self.metric, self.sign = metric, 1 if mode == "max" else -1
        self.status_every_s, self.last_status = status_every_s, 0.0
        self.budget_flops, self.budget_hours = budget_flops, budget_hours
        self.spent = 0.0
        self.tripped = ""
        self.started = time.monotonic()

    def setup(self, **info: Any) -> None:
        self.started = self.last_status = time.monotonic()
        self.tripped = ""

    def total_steps(self, config: dict[str, Any]) -> int:
        for key, names in self.keys.items():
            if "schedule.steps" in names and key in config:
                value = config[key]
                return int(value if len(names) == 1 else value[names.index("schedule.steps")])
        return self.base_steps

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        if result.get("done") and int(result.get("step", 0)) < self.total_steps(trial.config):
            at_max = self.max_t and float(result.get(self.time_key, 0)) >= self.max_t
            result["stop_reason"] = "max_t" if at_max else "early-stopped"
        self._account(trials, trial, result)

    def on_step_begin(self, iteration, trials, **info) -> None:
        self._account(trials)  # before Tune starts more trials (a resumed sweep included)

    def _account(self, trials, current: Any = None, result: dict | None = None) -> None:
        """FLOPs spent = every trial's latest report (cumulative per trial); trip the budget."""
        self.spent = sum(
            float((result if t is current else t.last_result or {}).get("flops", 0)) for t in trials
        )
        if self.tripped:
            return
        if self.budget_flops and self.spent >= self.budget_flops:
            self.tripped = f"flops budget {self.budget_flops:.3g} spent ({self.spent:.3g})"
        elif self.budget_hours and time.monotonic() - self.started >= self.budget_hours * 3600:
            self.tripped = f"time budget {self.budget_hours:g} h spent"
        if self.tripped:
            print(f"[sweep] {self.tripped}: stopping every trial", flush=True)

    def on_step_end(self, iteration, trials, **info) -> None:
        now = time.monotonic()
        if now - self.last_status < self.status_every_s:
            return
        self.last_status = now
        counts: dict[str, int] = {}
        for t in trials:
            counts[t.status] = counts.get(t.status, 0) + 1
        done = [t for t in trials if self.metric in (t.last_result or {})]
        best = ""
        if done:
            t = max(done, key=lambda t: self.sign * float(t.last_result[self.metric]))
            best = f"; best so far {self.metric} {t.last_result[self.metric]:.4f} ({t.trial_id})"
        state = ", ".join(f"{n} {s.lower()}" for s, n in sorted(counts.items()))
        print(
            f"[sweep] {_clock(now - self.started)}: {state}; {self.spent:.3g} FLOPs spent{best}",
            flush=True,
        )

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        r = trial.last_result or {}
        exp_path = getattr(self, "exp_path", "")  # monitors pickled before it existed lack it
        if exp_path:  # before the line below: an ended trial is never trained again
            record_completed(exp_path, trial.trial_id, r)
        if self.metric in r:
            print(
                f"[sweep] trial {trial.trial_id} ended at step {int(r.get('step', 0))}: "
                f"{self.metric} {r[self.metric]:.4f} ({r.get('stop_reason', 'completed')})",
                flush=True,
            )

    def on_trial_recover(self, iteration, trials, trial, **info) -> None:
        print(
            f"[sweep] trial {trial.trial_id} failed; retrying it from its last checkpoint "
            f"(failure {trial.num_failures})",
            flush=True,
        )

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        print(f"[sweep] trial {trial.trial_id} failed for good (retries used up)", flush=True)

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        return False  # trials are stopped one by one by the scheduler, all at once by stop_all

    def stop_all(self) -> bool:
        return bool(self.tripped)


def _clock(seconds: float) -> str:
    s = round(seconds)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def trial_dirname(trial: Any) -> str:
    return f"trial_{trial.trial_id}"


# ---- the cluster: resources and reachability --------------------------------------------------
def worker_bundle(cfg: RunConfig, use_gpu: bool) -> dict[str, float]:
    b = {"CPU": cfg.resources.cpus_per_worker}
    if use_gpu:
        b["GPU"] = cfg.resources.gpus_per_worker
    return b


def trial_resources(cfg: RunConfig, use_gpu: bool) -> dict[str, float]:
    """What Tune reserves for a trial: the worker itself (in-process trials) or only a driver
    slot (TorchTrainer trials reserve their workers through Ray Train)."""
    if cfg.resources.num_workers == 1:
        return worker_bundle(cfg, use_gpu)
    return {"CPU": 0, DRIVER_RESOURCE: 1}


def _slots(bundle: dict[str, float], nodes: list[dict[str, float]]) -> int:
    need = {r: v for r, v in bundle.items() if v > 0}
    return sum(
        min(math.floor(node.get(r, 0) / v + 1e-9) for r, v in need.items()) if need else 0
        for node in nodes
    )


def trials_that_fit(cfg: RunConfig, use_gpu: bool, nodes: list[dict[str, float]]) -> int:
    """How many trials of `cfg` can run at once on `nodes` (each a node's total resources);
    0 = not even one."""
    workers = _slots(worker_bundle(cfg, use_gpu), nodes) // cfg.resources.num_workers
    if cfg.resources.num_workers == 1:
        return workers
    return min(workers, _slots({DRIVER_RESOURCE: 1}, nodes))


def cluster_nodes() -> list[dict[str, float]]:
    """Total resources of every alive node plus every node the autoscaler may still start
    (its node groups up to their max count)."""
    import ray

    nodes = [dict(n["Resources"]) for n in ray.nodes() if n.get("Alive")]
    try:  # what an autoscaler (KubeRay, cluster launcher) published; absent on a plain cluster
        from ray._private.state import state

        config = state.get_cluster_config()
    except Exception:
        config = None
    if config is not None:
        for group in config.node_group_configs:
            count = group.max_count if group.max_count >= 0 else 64
            nodes += [dict(group.resources) for _ in range(count)]
    return nodes


def check_fits(cfg: RunConfig, use_gpu: bool, nodes: list[dict[str, float]]) -> int:
    """`trials_that_fit`, refusing a sweep whose trials can never be placed."""
    n = trials_that_fit(cfg, use_gpu, nodes)
    if n > 0:
        return n
    W = cfg.resources.num_workers
    need = f"{W} worker(s) x {worker_bundle(cfg, use_gpu)}"
    if W > 1:
        need += f" plus a driver slot ({{{DRIVER_RESOURCE!r}: 1}})"
        if not _slots({DRIVER_RESOURCE: 1}, nodes):
            need += (
                f"; no node offers {DRIVER_RESOURCE!r}: start the head with "
                f"`ray start --head --resources='{{\"{DRIVER_RESOURCE}\": 8}}'`"
            )
    have = "; ".join(
        "{"
        + ", ".join(
            f"{k}: {v:g}" for k, v in sorted(n.items()) if k in ("CPU", "GPU", DRIVER_RESOURCE)
        )
        + "}"
        for n in nodes
    )
    raise ConfigError(
        f"resources: a trial needs {need}, which no placement on this cluster can give "
        f"(nodes, incl. autoscaler limits: {have or 'none'}); it would wait forever. Lower "
        "base.resources (num_workers, cpus_per_worker, gpus_per_worker, use_gpu) or add nodes"
    )


def _probe(kind: str, uri: str, token: str) -> str:
    """Runs on one node: '' if `uri` is readable there, else why not."""
    try:
        if kind == "marker":
            from pipeline.data.storage import open_storage

            store = open_storage(uri.rsplit("/", 1)[0], max_attempts=2)
            got = store.read_bytes(uri.rsplit("/", 1)[1]).decode()
            return "" if got == token else f"read {got!r}, expected this sweep's marker"
        if kind == "dataset":
            from pipeline.data.meta import read_meta

            read_meta(uri)
            return ""
        raise AssertionError(kind)
    except Exception as e:
        return f"{type(e).__name__}: {e}"


def check_reachable(checks: list[tuple[str, str, str, str]]) -> None:
    """Each (what, kind, uri, token) must be readable from every alive Ray node (one probe task
    per node); `ConfigError` naming the path and the nodes that cannot read it."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    probe = ray.remote(num_cpus=0, max_retries=0)(_probe)
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    refs = {
        (i, j): probe.options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)
        ).remote(kind, uri, token)
        for i, (_, kind, uri, token) in enumerate(checks)
        for j, n in enumerate(nodes)
    }
    got = dict(zip(refs, ray.get(list(refs.values()), timeout=300)))
    for i, (what, _, uri, _) in enumerate(checks):
        errors = [
            f"node {n['NodeID'][:8]} ({n.get('NodeManagerAddress', '?')}): {got[i, j]}"
            for j, n in enumerate(nodes)
            if got[i, j]
        ]
        if errors:
            raise ConfigError(
                f"{what} {uri!r} is not reachable from every Ray node: {'; '.join(errors)}. "
                "Use storage every node can read (s3://, or a filesystem mounted on all nodes) "
                "and give every node the same credentials/endpoint"
            )


# ---- preparing a sweep ------------------------------------------------------------------------
def absolute(uri: str) -> str:
    from pipeline.train import is_local

    return str(Path(uri.removeprefix("file://")).expanduser().resolve()) if is_local(uri) else uri


def ensure_dataset(sweep: SweepConfig, uri: str) -> None:
    """Build the base dataset on first use when the sweep says how; one already there must
    have been built the way the sweep says (the builder checks its generator record), so a
    dataset from another version or other parameters is not trained on by mistake."""
    from pipeline.data.errors import DatasetError
    from pipeline.data.meta import META_FILE
    from pipeline.data.storage import open_storage

    if not sweep.dataset:
        return
    args = {k: v for k, v in sweep.dataset.items() if k != "builder"}
    exists = open_storage(uri).exists(META_FILE)
    if not exists:
        print(f"[sweep] building dataset {uri} ({sweep.dataset['builder']}, {args}) ...",
              flush=True)  # fmt: skip
    t = time.perf_counter()
    try:
        meta = builders()[sweep.dataset["builder"]](uri, **args)
    except DatasetError as e:
        if not exists:
            raise
        raise ConfigError(
            f"dataset: the sweep's `dataset` section does not describe the dataset already at "
            f"{uri} ({e}); delete it to have it rebuilt, or set base.data.uri elsewhere"
        ) from None
    if not exists:
        rows = {k: s.num_rows for k, s in meta.splits.items()}
        print(f"[sweep] dataset built in {time.perf_counter() - t:.0f} s: {rows}", flush=True)


def preflight(sweep: SweepConfig, base: RunConfig, storage: str) -> None:
    """Driver-side checks: every trial's model and batch against its dataset, storage
    writable, then dataset/storage/tracking store readable from every node."""
    from pipeline.train import check_dataset, check_storage_writable

    for point in sweep.checked_points():
        cfg = RunConfig.from_dict(
            apply_overrides(base.to_dict(), [f"{k}={json.dumps(v)}" for k, v in point.items()])
        )
        try:
            check_dataset(cfg)
        except ConfigError as e:
            raise ConfigError(f"trial {point}: {e}") from None
    check_storage_writable(storage)
    # where trials write: the storage, and a local tracking database's directory
    places = [("storage path", storage)]
    uri = base.tracking.uri
    if base.tracking.enabled and uri.startswith("sqlite:///"):
        places.append(("tracking store", str(Path(uri.removeprefix("sqlite:///")).parent)))
    uris = {base.data.uri} | {p["data.uri"] for p in sweep.checked_points() if "data.uri" in p}
    with _markers(places) as checks:
        checks += [("data.uri", "dataset", absolute(u), "") for u in sorted(uris)]
        check_reachable(checks)


@contextlib.contextmanager
def _markers(places: list[tuple[str, str]]):
    """A marker file with a fresh token in each (what, directory uri), for the node probes;
    deleted afterwards."""
    from pipeline.data.storage import open_storage

    token = uuid.uuid4().hex
    marker = f".trm-sweep-probe-{token[:8]}"
    stores = [open_storage(uri) for _, uri in places]
    try:
        for store in stores:
            store.write_bytes(marker, token.encode())
        yield [(what, "marker", f"{uri}/{marker}", token) for what, uri in places]
    finally:
        for store in stores:
            with contextlib.suppress(Exception):
                store.delete(marker)


def decide_use_gpu(base: RunConfig, nodes: list[dict[str, float]]) -> bool:
    if base.resources.use_gpu is not None:
        return base.resources.use_gpu
    return any(n.get("GPU", 0) >= 1 for n in nodes)


def resolve_base(sweep: SweepConfig, exp_path: str) -> RunConfig:
    """The base with what trials on other nodes and in other directories need: absolute
    local paths, the tracking URI resolved on the driver."""
    from pipeline.tracking import resolve_tracking_uri

    base = sweep.base_config()
    d = base.to_dict()
    d["data"]["uri"] = absolute(base.data.uri)
    d["checkpoint"]["storage_path"] = f"{exp_path}/{TRIALS_DIR}"
    if base.tracking.enabled:
        d["tracking"]["uri"] = resolve_tracking_uri(base.tracking.uri)
    return RunConfig.from_dict(d)


# ---- the driver -------------------------------------------------------------------------------
@dataclass
class SweepOutcome:
    exp_path: str
    parent_run_id: str
    tracking_uri: str
    rows: list[Any] = field(default_factory=list)
    summary_text: str = ""
    exit_code: int = 0


def connect_ray(address: str | None, num_cpus: int | None) -> None:
    """Join the cluster at `address` ($RAY_ADDRESS, as set by `ray job submit`), else start a
    private local one (never silently join another local cluster)."""
    import logging

    import ray

    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    # trials checkpoint at every evaluation, by design; Tune warns about the resulting syncs
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address:
        ray.init(address=address, logging_level=logging.WARNING)
    else:
        ray.init(
            address="local",
            num_cpus=num_cpus,
            resources={DRIVER_RESOURCE: 16},
            logging_level=logging.WARNING,
        )


def _storage_text(uri: str, key: str) -> str | None:
    from pipeline.data.storage import open_storage

    store = open_storage(uri)
    return store.read_bytes(key).decode() if store.exists(key) else None


def load_sweep(
    path: str | Path, overrides: Sequence[str], storage: str | None, name: str | None = None
) -> tuple[SweepConfig, str, str]:
    """(sweep, its file's text, experiment path = storage root / sweep name)."""
    from pipeline.train import resolve_storage_path

    sweep = SweepConfig.from_yaml(path, list(overrides))
    if name:
        sweep = SweepConfig.from_dict({**sweep.to_dict(), "name": name})
    root = resolve_storage_path(storage or sweep.base_config().checkpoint.storage_path)
    return sweep, Path(path).read_text(), f"{root}/{sweep.name}"


def stored_sweep(sweep: SweepConfig, exp_path: str) -> tuple[SweepConfig, str]:
    """The sweep (and file text) stored when the sweep at `exp_path` first started: a resumed
    sweep must not change under its trials, so it wins over the file given now."""
    stored = _storage_text(exp_path, STORED_RESOLVED)
    if stored is None:
        raise ConfigError(
            f"--resume: no sweep was started at {exp_path} (no {STORED_RESOLVED}); "
            "run without --resume to start it"
        )
    old = SweepConfig.from_dict(yaml.safe_load(stored))
    if old.to_dict() != sweep.to_dict():
        print(
            f"[sweep] note: the sweep file (with --set) differs from the one stored at "
            f"{exp_path}; resuming the stored one",
            flush=True,
        )
    return old, _storage_text(exp_path, STORED_SWEEP) or ""


def run_sweep(
    sweep: SweepConfig,
    sweep_text: str,
    exp_path: str,
    *,
    resume: bool = False,
    address: str | None = None,
    num_cpus: int | None = None,
) -> SweepOutcome:
    """Check, then run (or resume) `sweep`; returns the summary."""
    from pipeline.data.storage import open_storage
    from pipeline.sweep_report import finish_sweep
    from pipeline.tracking import code_version, start_tracker

    t_start = time.time()
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    base = resolve_base(sweep, exp_path)
    ensure_dataset(sweep, base.data.uri)
    connect_ray(address, num_cpus)
    nodes = cluster_nodes()
    use_gpu = decide_use_gpu(base, nodes)
    base = base.with_overrides([f"resources.use_gpu={str(use_gpu).lower()}"])
    fits = check_fits(base, use_gpu, nodes)
    root = exp_path.rsplit("/", 1)[0]
    preflight(sweep, base, root)

    exists = tune.Tuner.can_restore(exp_path)
    if exists and not resume:
        raise ConfigError(
            f"a sweep named {sweep.name!r} already exists at {exp_path}: continue it with "
            "--resume, or start a new one under another --name"
        )
    was_interrupted = resume and not exists
    if was_interrupted:  # stopped before Tune saved anything: nothing to restore
        print("[sweep] no trial had started before the interruption; starting the sweep")
        resume = False
    parent_key = PARENT_KEY_PREFIX + exp_path
    if not exists:
        store = open_storage(exp_path)
        store.write_bytes(STORED_SWEEP, sweep_text.encode())
        resolved = yaml.safe_dump(sweep.to_dict(), sort_keys=False)
        store.write_bytes(STORED_RESOLVED, resolved.encode())
        if base.tracking.enabled and not was_interrupted:
            # a parent run of an earlier sweep whose storage was deleted is not continued
            from pipeline.tracking import RUN_KEY_TAG, tag_run

            tag_run(base.tracking.uri, base.tracking.experiment, parent_key,
                    {RUN_KEY_TAG: f"{parent_key}#replaced-{uuid.uuid4().hex[:8]}"})  # fmt: skip

    tracker = start_tracker(
        base.tracking.enabled,
        uri=base.tracking.uri,
        experiment=base.tracking.experiment,
        run_name=sweep.name,
        run_key=parent_key,
        params=sweep_params(sweep, base, fits),
        tags={"trm.kind": "sweep", "trm.sweep": sweep.name, "trm.storage": exp_path},
    )
    if tracker.run_id:
        continuing = getattr(tracker, "resumed", False)
        verb = "continuing" if continuing else "created"
        print(f"[sweep] MLflow parent run {tracker.run_id} ({verb}): {tracker.url}", flush=True)
        if not continuing:
            tracker.log_text(sweep_text, "sweep/sweep.yaml")
            tracker.log_text(
                yaml.safe_dump(sweep.to_dict(), sort_keys=False), "sweep/resolved.yaml"
            )

    ctx = SweepContext(
        name=sweep.name,
        exp_path=exp_path,
        base=base.to_dict(),
        keys={k: d.names for k, d in sweep.domains.items()},
        metric=sweep.search.metric,
        mode=sweep.search.mode,
        use_gpu=use_gpu,
        code_version=code_version(),
        parent_run_id=tracker.run_id or "",
        tracking_uri=base.tracking.uri if base.tracking.enabled else "",
    )
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, ctx=ctx), trial_resources(base, use_gpu)
    )
    concurrency = sweep.concurrency or fits
    print(
        f"[sweep] {sweep.name}: {sweep.num_trials} trial(s), {concurrency} at a time "
        f"({fits} fit), each {trial_resources(base, use_gpu)}"
        f"{' + workers' if base.resources.num_workers > 1 else ''}; storage {exp_path}",
        flush=True,
    )
    try:
        if resume:
            tuner = tune.Tuner.restore(
                exp_path, trainable=trainable, resume_unfinished=True, resume_errored=True
            )
        else:
            tuner = build_tuner(sweep, base, trainable, exp_path, concurrency)
        results = tuner.fit()
    except BaseException:
        tracker.set_tags({"trm.status": "interrupted"})
        raise
    outcome = finish_sweep(sweep, ctx, results, tracker, time.time() - t_start)
    tracker.finish("FINISHED" if outcome.exit_code == 0 else "FAILED")
    return outcome


def sweep_params(sweep: SweepConfig, base: RunConfig, fits: int) -> dict[str, Any]:
    s = sweep.search
    return {
        "sweep.name": sweep.name,
        "sweep.num_trials": sweep.num_trials,
        "sweep.space": ", ".join(sweep.space),
        "search.algorithm": s.algorithm,
        "search.num_samples": s.num_samples,
        "search.metric": s.metric,
        "search.mode": s.mode,
        "scheduler.type": sweep.scheduler.type,
        "scheduler.time_attr": sweep.scheduler.time_attr,
        "budget.flops": sweep.budget.flops,
        "budget.hours": sweep.budget.hours,
        "concurrency": sweep.concurrency or fits,
        "max_failures": sweep.max_failures,
        "data.uri": base.data.uri,
        "resources.num_workers": base.resources.num_workers,
        "resources.cpus_per_worker": base.resources.cpus_per_worker,
        "resources.gpus_per_worker": base.resources.gpus_per_worker,
        "resources.use_gpu": base.resources.use_gpu,
    }


def grid_longest_first(sweep: SweepConfig, base: RunConfig) -> dict[str, list[Any]]:
    """Each grid axis's values, the costliest first: the training FLOPs (`trm.flops` per
    example-ACT-step x steps x global batch) of the base config with that one value; values
    that cost the same keep the file's order. Tune enumerates the grid from its costliest
    corner, so the last free slots run the cheapest trials instead of the whole sweep waiting
    on its biggest one (longest-processing-time-first scheduling)."""
    import functools

    from pipeline.data.meta import read_meta

    meta_of = functools.cache(read_meta)  # a data.uri axis may name several datasets

    def cost(dom: Any, value: Any) -> float:
        cfg = base.with_overrides([f"{k}={json.dumps(v)}" for k, v in dom.assign(value).items()])
        per_example = flops_per_example(cfg, meta_of(cfg.data.uri))
        return per_example * cfg.schedule.steps * cfg.data.global_batch_size

    return {
        key: sorted(dom.values, key=lambda v, dom=dom: cost(dom, v), reverse=True)  # stable
        for key, dom in sweep.domains.items()
        if dom.kind == "grid" and len(dom.values) > 1
    }


def build_tuner(
    sweep: SweepConfig, base: RunConfig, trainable: Any, exp_path: str, concurrency: int
) -> Any:
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from ray.tune.search.basic_variant import BasicVariantGenerator

    sch = sweep.scheduler
    max_t = sch.max_t or (sweep.max_steps() if sch.time_attr == "steps" else 0)
    if sch.type == "asha":
        scheduler = ASHAScheduler(
            time_attr=sweep.time_key,
            max_t=max_t,
            grace_period=sch.grace_period or max(max_t / 8, 1),
            reduction_factor=sch.reduction_factor,
        )
    else:
        scheduler = FIFOScheduler()
    monitor = SweepMonitor(
        keys={k: d.names for k, d in sweep.domains.items()},
        base_steps=base.schedule.steps,
        time_key=sweep.time_key,
        max_t=max_t if sch.type == "asha" else 0,
        metric=sweep.search.metric,
        mode=sweep.search.mode,
        budget_flops=sweep.budget.flops,
        budget_hours=sweep.budget.hours,
        exp_path=exp_path,
    )
    ck = base.checkpoint
    root, name = exp_path.rsplit("/", 1)
    param_space = {k: d.tune_domain() for k, d in sweep.domains.items()}
    param_space.update({k: tune.grid_search(v) for k, v in grid_longest_first(sweep, base).items()})
    return tune.Tuner(
        trainable,
        param_space=param_space,
        tune_config=tune.TuneConfig(
            metric=sweep.search.metric,
            mode=sweep.search.mode,
            num_samples=sweep.search.num_samples,
            search_alg=BasicVariantGenerator(
                max_concurrent=concurrency, random_state=sweep.search.seed
            ),
            scheduler=scheduler,
            # a trial starts in the process its predecessor ran in: no process start and no
            # imports per trial (3-21 s each on a small box); see benchmarks/sweep_overhead.py
            reuse_actors=True,
            trial_dirname_creator=trial_dirname,
        ),
        run_config=tune.RunConfig(
            name=name,
            storage_path=root,
            stop=monitor,
            callbacks=[monitor],
            failure_config=tune.FailureConfig(max_failures=sweep.max_failures),
            checkpoint_config=tune.CheckpointConfig(
                num_to_keep=ck.num_to_keep or None,
                checkpoint_score_attribute=ck.metric,
                checkpoint_score_order=ck.mode,
            ),
            verbose=0,  # the monitor prints a status line and one line per finished trial
        ),
    )


# ---- CLI --------------------------------------------------------------------------------------
def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python pipeline/sweep.py",
        description=(
            "Sweep TRM run configs with Ray Tune (grid/random search, FIFO/ASHA, compute "
            "budget), tracked in MLflow.\nWithout arguments: the CPU default sweep "
            "(sweeps/default.yaml) on a local Ray cluster."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(
            "Sweep file format: see pipeline/sweep_config.py and sweeps/*.yaml. Config keys: "
            "python pipeline/train.py --help.\nMLflow: $MLFLOW_TRACKING_URI, else "
            "sqlite:///<cwd>/mlflow.db (mlflow ui --backend-store-uri sqlite:///$PWD/mlflow.db)"
        ),
    )
    p.add_argument("--sweep", default=str(DEFAULT_SWEEP), help="sweep file (default: %(default)s)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a base run config key, e.g. --set data.uri=s3://b/sudoku (repeatable)",
    )
    p.add_argument("--name", help="sweep name (default: the file's `name`)")
    p.add_argument(
        "--storage-path", help="where the sweep lives (default: base checkpoint.storage_path)"
    )
    p.add_argument("--resume", action="store_true", help="continue an interrupted sweep")
    p.add_argument(
        "--dry-run", action="store_true", help="check the sweep file and list its trials; no Ray"
    )
    p.add_argument(
        "--address",
        default=None,
        help="Ray cluster to join (default: $RAY_ADDRESS, as `ray job submit` sets it; "
        "else a new local cluster)",
    )
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs of a new local cluster")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        sweep, text, exp_path = load_sweep(args.sweep, args.overrides, args.storage_path, args.name)
        if args.resume:
            sweep, text = stored_sweep(sweep, exp_path)
        if args.dry_run:
            print(dry_run_text(sweep, exp_path))
            return 0
        outcome = run_sweep(
            sweep, text, exp_path, resume=args.resume, address=args.address, num_cpus=args.num_cpus
        )
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return outcome.exit_code


def dry_run_text(sweep: SweepConfig, exp_path: str) -> str:
    lines = [
        f"sweep {sweep.name!r}: {sweep.num_trials} trial(s) "
        f"({sweep.search.algorithm}, {sweep.search.num_samples} sample(s) per grid point), "
        f"scheduler {sweep.scheduler.type}, metric {sweep.search.metric} ({sweep.search.mode})",
        f"storage: {exp_path}",
    ]
    ranges = {k: f"{d.kind}{d.values}" for k, d in sweep.domains.items() if d.kind != "grid"}
    for i, point in enumerate(sweep.grid_points()):
        lines.append(f"  grid point {i}: " + ", ".join(f"{k}={v}" for k, v in point.items()))
    for k, r in ranges.items():
        lines.append(f"  drawn per sample: {k} ~ {r}")
    return "\n".join(lines)


if __name__ == "__main__":
    # run the importable module's main, so that what Tune pickles (the trainable, the monitor)
    # refers to `pipeline.sweep`, which trial processes can import, not to `__main__`
    from pipeline.sweep import main as _main

    sys.exit(_main())
