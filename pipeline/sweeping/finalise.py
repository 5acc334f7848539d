"""A sweep's MLflow runs kept current while it runs (`LiveRuns`, a driver-side Tune callback),
and its best models registered at the end (`register_top`).

When a trial ends, its child run gets its final status (FINISHED; KILLED when the scheduler or
the budget stopped it; FAILED on an error), its `stop_reason` tag, `swept.*` params,
`best/<metric>` and its best checkpoint's model as an MLflow model (`MODEL_PATH`, loadable with
`mlflow.pytorch.load_model("runs:/<run id>/best_model")`). The parent run's
`summary/summary.json` and `best/<metric>` are rewritten after trial ends (coalesced: one write
covers every trial that ended while it waited) and every `SUMMARY_EVERY_S`, so MLflow's
comparison view is current during a multi-day sweep; the end of the sweep
(`pipeline.sweeping.report`) writes the full summary over it."""

from __future__ import annotations

import contextlib
import json
import logging
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from ray import tune

from pipeline.checkpoints.directory import CheckpointStore
from pipeline.sweeping.report import end_child
from pipeline.sweeping.store import failed_line

SUMMARY_EVERY_S = 180.0
MODEL_PATH = "best_model"
RUNNING_SUMMARY = "summary/summary.json"

logger = logging.getLogger(__name__)


def stop_reason(result: dict[str, Any], total_steps: int, budget_spent: bool) -> str:
    """Why a trial that Tune ended (not on an error) stopped, as the summary says it."""
    if "step" not in result:
        return "not started"
    if int(result["step"]) >= total_steps:
        return "completed"
    return str(result.get("stop_reason") or ("budget" if budget_spent else "interrupted"))


class LiveRuns(tune.Callback):
    """Finalises each trial's child run when it ends and keeps the parent run's summary
    current. Tune calls it on the driver's event loop, which also starts the next trials, so
    the loop only records what ended; every MLflow and storage call runs on one background
    thread, in order, and summary writes asked for while one is queued coalesce into it.
    Pickled with the Tune experiment (it survives `Tuner.restore`): the client, the lock and
    the thread are made on first use, never pickled."""

    def __init__(self, ctx: Any, experiment: str, scheduler: str, monitor: Any):
        self.ctx, self.experiment, self.scheduler = ctx, experiment, scheduler
        self.monitor = monitor
        self.sign = 1 if ctx.mode == "max" else -1
        self.best: dict[str, tuple[float, int]] = {}
        """trial id -> (best value of the sweep's metric, its step) so far."""
        self.ended: dict[str, dict[str, Any]] = {}
        self.running: list[str] = []
        self.last_summary = 0.0
        self.__setstate__(self.__dict__)

    def __getstate__(self) -> dict[str, Any]:
        with self._lock:  # copies: the background thread may update an entry meanwhile
            state = {k: v for k, v in self.__dict__.items()
                     if k not in ("_client", "_pool", "_lock", "_summary_queued")}  # fmt: skip
            state["ended"] = {tid: dict(entry) for tid, entry in self.ended.items()}
            state["best"] = dict(self.best)
            return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._client: Any = None
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        self._summary_queued = False

    @property
    def client(self) -> Any:
        if self._client is None:
            from mlflow.tracking import MlflowClient

            self._client = MlflowClient(tracking_uri=self.ctx.tracking_uri)
        return self._client

    # ---- Tune's event loop: no I/O -------------------------------------------------------
    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        value = result.get(self.ctx.metric)
        old = self.best.get(trial.trial_id)
        if isinstance(value, int | float) and (
            old is None or self.sign * value > self.sign * old[0]
        ):
            with self._lock:
                self.best[trial.trial_id] = (float(value), int(result.get("step", 0)))

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        total = self.monitor.total_steps(trial.config)
        reason = stop_reason(trial.last_result or {}, total, bool(self.monitor.tripped))
        self._end(trial, reason, "", trials)  # a recorded input error overrides it (`_finalise`)

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        error = trial.get_error()
        lines = str(error or "").strip().splitlines()
        line = f"{type(error).__name__}: {lines[-1][:200]}" if lines else ""
        self._end(trial, "error", line, trials)

    def on_step_end(self, iteration, trials, **info) -> None:
        if time.monotonic() - self.last_summary >= SUMMARY_EVERY_S:
            self._ask_summary(trials)

    def on_experiment_end(self, trials, **info) -> None:
        self._ask_summary(trials)
        if self._pool is not None:
            self._pool.shutdown(wait=True)  # every trial finalised before the sweep's end
            self._pool = None

    def _end(self, trial: Any, reason: str, error: str, trials: list[Any]) -> None:
        if not self.ctx.parent_run_id:
            return
        tid, ctx = trial.trial_id, self.ctx
        best, best_step = self.best.get(tid, (None, 0))
        entry = {"trial_id": tid, "name": ctx.display_name(trial.config, tid),
                 "params": ctx.assignments(trial.config), "best": best, "best_step": best_step,
                 "step": int((trial.last_result or {}).get("step", 0)),
                 "stop_reason": reason, "error": error, "run_id": ""}  # fmt: skip
        with self._lock:
            self.ended[tid] = entry
        self._background(self._finalise, entry)
        self._ask_summary(trials)  # before the model: it takes seconds
        self._background(self._log_model, entry)

    def _ask_summary(self, trials: list[Any] | None) -> None:
        self.last_summary = time.monotonic()
        if not self.ctx.parent_run_id:
            return
        with self._lock:
            if trials is not None:
                self.running = [t.trial_id for t in trials if t.status == "RUNNING"]
            if self._summary_queued:  # the queued write will show this too
                return
            self._summary_queued = True
        self._background(self._summary)

    def _background(self, job: Any, *args: Any) -> None:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="sweep-live-runs")
        self._pool.submit(self._guarded, job, *args)

    @staticmethod
    def _guarded(job: Any, *args: Any) -> None:
        try:
            job(*args)
        except Exception as e:  # the sweep goes on; its end sets the runs' state again
            logger.warning(f"[sweep] MLflow not updated ({job.__name__}): {e}")

    # ---- the background thread -----------------------------------------------------------
    def _finalise(self, entry: dict[str, Any]) -> None:
        from pipeline.tracking.tracker import find_run

        tid, ctx = entry["trial_id"], self.ctx
        failed = failed_line(self.monitor.records(), tid) if ctx.exp_path else None
        if failed and entry["stop_reason"] != "error":  # input that fails every time
            with self._lock:
                entry.update(stop_reason="error", error=failed)
        run_id = find_run(ctx.tracking_uri, self.experiment, ctx.run_key(tid))
        if run_id is None:
            return
        with self._lock:
            entry["run_id"] = run_id
        end_child(ctx.tracking_uri, run_id, entry["name"], tid, entry["stop_reason"],
                  self.scheduler, entry["params"], {ctx.metric: entry["best"]})  # fmt: skip

    def _log_model(self, entry: dict[str, Any]) -> None:
        ctx = self.ctx
        if entry["run_id"]:
            directory = ctx.checkpoint_dir(entry["trial_id"], ctx.base.resources.num_workers)
            try:
                log_best_model(ctx.tracking_uri, entry["run_id"], directory, ctx.metric, ctx.mode)
            except Exception as e:
                logger.warning(f"[sweep] best model of trial {entry['trial_id']} not logged: {e}")

    def _summary(self) -> None:
        """The parent run's running summary and best-so-far value."""
        with self._lock:
            self._summary_queued = False
            ranked = [(v, s, t) for t, (v, s) in self.best.items()]
            top = max(ranked, key=lambda x: self.sign * x[0]) if ranked else None
            summary = json.dumps(
                {"metric": self.ctx.metric, "mode": self.ctx.mode, "running": True,
                 "best": {"value": top[0], "step": top[1], "trial_id": top[2]} if top else None,
                 "trials_ended": len(self.ended), "trials_running": list(self.running),
                 "trials": list(self.ended.values())}, indent=1, default=str)  # fmt: skip
            ended = len(self.ended)
        self.client.log_text(self.ctx.parent_run_id, summary, RUNNING_SUMMARY)
        if top is not None:
            self.client.log_metric(self.ctx.parent_run_id, f"best/{self.ctx.metric}", top[0],
                                   step=ended)  # fmt: skip


def log_best_model(uri: str, run_id: str, directory: str, metric: str, mode: str) -> bool:
    """The model of the best checkpoint in a trial's checkpoint `directory` (by `metric` in
    direction `mode`, else its newest), logged to run `run_id` as the MLflow PyTorch model
    `MODEL_PATH`; False when the trial kept no checkpoint."""
    import mlflow.pytorch
    from mlflow.tracking import MlflowClient

    from pipeline.checkpoints.restore import restore

    checkpoint, _ = CheckpointStore(directory).best(metric, mode)
    if not checkpoint:
        return False
    with contextlib.ExitStack() as stack, tempfile.TemporaryDirectory(prefix="trm-model-") as d:
        model = restore(checkpoint, stack, say=lambda _: None).model
        path = Path(d) / MODEL_PATH
        quiet = logging.getLogger("mlflow.pytorch")  # its pickle-format caution, once per trial
        level, quiet.level = quiet.level, logging.ERROR
        try:
            # pickle: a TRM needs no example input (pt2 traces one); requirements given, not
            # inferred (inference imports the model in a subprocess: seconds per trial); the
            # loader needs this project installed (`pip install -e .`) for the TRM class
            mlflow.pytorch.save_model(model, str(path), serialization_format="pickle",
                                      pip_requirements=[f"torch=={torch_version()}"])  # fmt: skip
        finally:
            quiet.setLevel(level)
        MlflowClient(tracking_uri=uri).log_artifacts(run_id, str(path), MODEL_PATH)
    return True


def torch_version() -> str:
    import torch

    return torch.__version__.split("+")[0]


def register_top(uri: str, name: str, rows: list[Any], mode: str, k: int) -> list[str]:
    """Register the best models of the `k` best trials (rows with a run and a logged model)
    in the MLflow Model Registry under `name`; returns the versions made."""
    from mlflow.tracking import MlflowClient

    if k <= 0:
        return []
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    sign = 1 if mode == "max" else -1
    ranked = sorted(
        (r for r in rows if r.best is not None and r.run_id), key=lambda r: -sign * r.best
    )
    versions = []
    for r in ranked:
        if len(versions) == k:
            break
        if not client.list_artifacts(r.run_id, MODEL_PATH):
            continue
        if not versions and not client.search_registered_models(f"name = '{name}'"):
            client.create_registered_model(name, description=f"Best models of sweep {name!r}")
        source = f"{client.get_run(r.run_id).info.artifact_uri}/{MODEL_PATH}"
        v = client.create_model_version(name, source, run_id=r.run_id,
                                        tags={"trial_id": r.trial_id, "best": str(r.best)})  # fmt: skip
        versions.append(v.version)
    return versions
