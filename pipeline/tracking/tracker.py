"""MLflow tracking of training runs: the live `Tracker` and the reads and edits of stored runs;
with `pipeline.tracking.server` (where the store is), the only modules that talk to MLflow.

Only world rank 0 makes a `Tracker`; the other ranks get a `NullTracker` with the same
methods. The tracking URI (`pipeline.tracking.server.resolve_tracking_uri`) is resolved once, on
the driver, and sent to the workers (whose working directories differ).

A run is identified by a `run_key` tag (storage path + run name): a restarted or resumed
training run finds its MLflow run again and keeps logging into it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from pipeline.tracking.sender import (
    DROPPED_METRIC,
    DROPPED_TAG,
    FigureJob,
    Sender,
    upload_bytes,
)
from pipeline.tracking.server import redact, run_url

RUN_KEY_TAG = "trm.run_key"
LOCAL_ARTIFACTS = "mlruns"
MODEL_FILE = "model.pt"
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")
"""The experiment's type in MLflow 3 (model training, not GenAI). MLflow 3.17's UI still opens a
fresh browser in its GenAI view, so the links we print add `tracking_server.TRAINING_VIEW`."""
logger = logging.getLogger(__name__)


def _artifact_location(uri: str, experiment: str) -> str | None:
    # MLflow puts sqlite-store artifacts under the creating process's CWD; Ray workers run in
    # their own directories, so pin them next to the database instead.
    if uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///") :])
        return (db.parent / LOCAL_ARTIFACTS / experiment).as_uri()
    return None


class NullTracker:
    """Tracker of ranks other than 0 and of runs with tracking disabled: does nothing."""

    run_id: str | None = None
    url: str = ""

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        pass

    def unsent_metrics(self) -> list[dict[str, Any]]:
        return []

    def resend(self, points: list[dict[str, Any]]) -> None:
        pass

    def log_figure(self, make: Any, artifact_file: str) -> None:
        pass

    def log_bytes(self, data: bytes, artifact_file: str) -> None:
        pass

    def log_dict(self, d: dict, artifact_file: str) -> None:
        pass

    def log_text(self, text: str, artifact_file: str) -> None:
        pass

    def log_dataset(self, name: str, source: str, meta_json: str) -> None:
        pass

    def set_tags(self, tags: dict[str, str]) -> None:
        pass

    def finish(self, status: str | None = "FINISHED") -> None:
        pass


class Tracker(NullTracker):
    """One MLflow run, logged through `MlflowClient` (no global active-run state, so several
    runs can share a process, e.g. Tune function trainables).

    Opening the run needs the server. Once it is open, metrics and artifacts go through a
    `Sender`: the caller (the training loop) only queues them, figures are drawn on the
    sender's thread, and a server that stops answering costs no training time; what it missed
    is sent when it answers again, and `finish` sends what is left (bounded) before it ends
    the run. MLflow's own per-request retries are cut from ~4 minutes to a few seconds (unless
    $MLFLOW_HTTP_REQUEST_MAX_RETRIES is set), so a stuck request never holds up the end of a
    run for long."""

    def __init__(
        self,
        uri: str,
        experiment: str,
        run_name: str,
        run_key: str,
        params: dict[str, Any],
        tags: dict[str, str],
        parent_run_id: str | None = None,
        system_metrics: bool = False,
    ):
        from mlflow.tracking import MlflowClient

        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
        self.uri = uri
        self.client = MlflowClient(tracking_uri=uri)
        exp_id = self._experiment_id(experiment)
        existing = _runs_with_key(self.client, exp_id, run_key)
        all_tags = {**tags, RUN_KEY_TAG: run_key}
        if parent_run_id:
            all_tags["mlflow.parentRunId"] = parent_run_id
        if existing:
            run = existing[0]
            self.run_id = run.info.run_id
            self.client.update_run(self.run_id, status="RUNNING")
            self.resumed = True
        else:
            run = self.client.create_run(exp_id, run_name=run_name, tags=all_tags)
            self.run_id = run.info.run_id
            self.resumed = False
        self.set_tags(all_tags)
        self._log_params(params, skip=set(run.data.params) if existing else set())
        self.url = run_url(uri, exp_id, self.run_id) or (
            f"{redact(uri)} experiment={experiment} run={self.run_id}"
        )
        self._system = _system_metrics(self.run_id, uri) if system_metrics else None
        self.sender = Sender(self.client, self.run_id, uri)

    def _experiment_id(self, name: str) -> str:
        """The experiment's id (created when missing), tagged for MLflow's training view."""
        exp = self.client.get_experiment_by_name(name)
        if exp is None:
            try:
                self.client.create_experiment(
                    name, artifact_location=_artifact_location(self.uri, name)
                )
            except Exception:
                # another process created it between the lookup and the create
                if self.client.get_experiment_by_name(name) is None:
                    raise
            exp = self.client.get_experiment_by_name(name)
        if exp.tags.get(EXPERIMENT_KIND[0]) is None:
            self.client.set_experiment_tag(exp.experiment_id, *EXPERIMENT_KIND)
        return exp.experiment_id

    def _log_params(self, params: dict[str, Any], skip: set[str]) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)[:6000]) for k, v in sorted(params.items()) if k not in skip]
        for i in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[i : i + 100])

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        self.sender.put_metrics([Metric(k, float(v), ts, int(step)) for k, v in metrics.items()])

    def unsent_metrics(self) -> list[dict[str, Any]]:
        """The metric points queued and not yet sent, as JSON-ready dicts (`resend` takes them):
        a checkpoint keeps them, so a run lost before sending them can send them on resume."""
        return [{"key": m.key, "value": m.value, "timestamp": m.timestamp, "step": m.step}
                for m in self.sender.unsent_metrics()]  # fmt: skip

    def resend(self, points: list[dict[str, Any]]) -> None:
        """Queue points from `unsent_metrics` again, with their own steps and timestamps."""
        from mlflow.entities import Metric

        if points:
            self.sender.put_metrics([Metric(**p) for p in points])

    def log_figure(self, make: Any, artifact_file: str) -> None:
        """`make()` (a matplotlib figure, drawn on the sender's thread) as a PNG artifact."""
        self.sender.put_job(artifact_file, FigureJob(self.client, self.run_id, make, artifact_file))

    def log_bytes(self, data: bytes, artifact_file: str) -> None:
        self.sender.put_job(
            artifact_file, lambda: upload_bytes(self.client, self.run_id, data, artifact_file)
        )

    def log_dict(self, d: dict, artifact_file: str) -> None:
        self.sender.put_job(
            artifact_file, lambda: self.client.log_dict(self.run_id, d, artifact_file)
        )

    def log_text(self, text: str, artifact_file: str) -> None:
        self.sender.put_job(
            artifact_file, lambda: self.client.log_text(self.run_id, text, artifact_file)
        )

    def log_dataset(self, name: str, source: str, meta_json: str) -> None:
        """The run's dataset as an MLflow dataset input (the run page's 'Datasets used'):
        `source` its URI, the digest the SHA-256 of its meta.json (which holds every shard's
        SHA-256), so two runs on the same data show the same digest."""
        from mlflow.entities import Dataset, DatasetInput, InputTag

        digest = hashlib.sha256(meta_json.encode()).hexdigest()[:16]
        ds = Dataset(name=name, digest=digest, source_type="trm-shards",
                     source=json.dumps({"uri": source}))  # fmt: skip
        inputs = [DatasetInput(ds, tags=[InputTag("mlflow.data.context", "train")])]
        self.sender.put_job("dataset", lambda: self.client.log_inputs(self.run_id, datasets=inputs))

    def set_tags(self, tags: dict[str, str]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def finish(self, status: str | None = "FINISHED") -> None:
        """Send what is held (bounded: `sender.FLUSH_TIMEOUT_S`), record how many points and
        artifacts were dropped (a full buffer, or the server still away), end the run with
        `status` (None: leave the status to whoever stopped it, e.g. the sweep driver)."""
        if self._system is not None:
            self._system.finish()
        self.sender.close()
        try:
            if self.sender.dropped:
                self.set_tags({DROPPED_TAG: f"{self.sender.dropped_points} metric points, "
                                            f"{self.sender.dropped_jobs} artifacts"})  # fmt: skip
                self.client.log_metric(self.run_id, DROPPED_METRIC, self.sender.dropped_points)
            if status is not None:
                _set_terminated(self.client, self.uri, self.run_id, status)
        except Exception as e:
            logger.warning(
                f"[tracking] MLflow {redact(self.uri)}: ending run {self.run_id} as {status} "
                f"failed ({type(e).__name__}: {str(e)[:200]})"
            )


def depth_curve_metrics(curve: list[float]) -> dict[str, float]:
    """A test-time depth curve (exact accuracy after ACT step k = 1, 2, ...) as one metric per
    depth, logged at the training step of the evaluation: each depth's history over training
    keeps MLflow's step axis honest (an ACT-step axis zigzags when a run is extended)."""
    return {f"depth_curve/exact_accuracy_at_step_{k}": v for k, v in enumerate(curve, 1)}


def _system_metrics(run_id: str, uri: str) -> Any:
    """MLflow's system-metrics sampler (CPU, memory, GPU) logging into `run_id`; None (with a
    warning) where it cannot run."""
    try:
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor
    except ImportError as e:
        logger.warning(f"[tracking] tracking.system_metrics is on but unavailable: {e}")
        return None
    monitor = SystemMetricsMonitor(run_id, resume_logging=True, tracking_uri=uri)
    monitor.start()
    return monitor


def _set_terminated(client: Any, uri: str, run_id: str, status: str) -> None:
    """End a run. MLflow prints the run's URL to stdout when it does, with the URI's password:
    not when the URI carries one."""
    if redact(uri) == uri:
        client.set_terminated(run_id, status=status)
        return
    key, old = (
        "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT",
        os.environ.get("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"),
    )
    os.environ[key] = "true"
    try:
        client.set_terminated(run_id, status=status)
    finally:
        if old is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = old


def start_tracker(enabled: bool, **kwargs: Any) -> NullTracker:
    """`Tracker(**kwargs)` when `enabled` (call on world rank 0 only), else a `NullTracker`."""
    return Tracker(**kwargs) if enabled else NullTracker()


def read_run(uri: str, run_id: str) -> dict[str, Any]:
    """Params, tags, metric histories and artifact paths of a run (for reports and tests)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(run_id)
    metrics = {
        key: [(m.step, m.value) for m in client.get_metric_history(run_id, key)]
        for key in run.data.metrics
    }

    def walk(path: str | None) -> list[str]:
        out = []
        for f in client.list_artifacts(run_id, path):
            out.extend(walk(f.path) if f.is_dir else [f.path])
        return out

    return {
        "status": run.info.status,
        "params": dict(run.data.params),
        "tags": dict(run.data.tags),
        "metrics": metrics,
        "artifacts": sorted(walk(None)),
    }


def find_run(uri: str, experiment: str, run_key: str) -> str | None:
    """Run id of the run tagged with `run_key`, if any."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return None
    runs = _runs_with_key(client, exp.experiment_id, run_key)
    return runs[0].info.run_id if runs else None


def _runs_with_key(client: Any, experiment_id: str, run_key: str) -> list[Any]:
    return client.search_runs(
        [experiment_id], filter_string=f"tags.`{RUN_KEY_TAG}` = '{run_key}'", max_results=1
    )


def download_artifact(uri: str, run_id: str, path: str) -> str:
    """Local copy of one artifact (in a temp dir)."""
    from mlflow.tracking import MlflowClient

    dst = tempfile.mkdtemp(prefix="trm-artifact-")
    return MlflowClient(tracking_uri=uri).download_artifacts(run_id, path, dst)


def tag_run(uri: str, experiment: str, run_key: str, tags: dict[str, str]) -> str | None:
    """Set tags on the run tagged with `run_key` (e.g. the final checkpoint, from the driver);
    returns its id, or None when there is no such run."""
    from mlflow.entities import RunTag
    from mlflow.tracking import MlflowClient

    run_id = find_run(uri, experiment, run_key)
    if run_id is not None:
        MlflowClient(tracking_uri=uri).log_batch(
            run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()]
        )
    return run_id


def log_model(uri: str, run_id: str, which: str, state: dict[str, Any]) -> None:
    """Log a training checkpoint's model as `checkpoints/<which>/model.pt` of run `run_id`:
    the weights it evaluates with (the EMA average when EMA is on), its model config and
    step; `pipeline.checkpoints.restore.load_model` builds the model from it."""
    import torch
    from mlflow.tracking import MlflowClient

    from trm.optim import EMA

    weights = EMA.fold(state["model"], state.get("ema"))
    payload = {"model_config": state["model_config"], "state_dict": weights, "step": state["step"]}
    with tempfile.TemporaryDirectory(prefix="trm-model-") as d:
        path = Path(d) / MODEL_FILE
        torch.save(payload, path)
        MlflowClient(tracking_uri=uri).log_artifact(run_id, str(path), f"checkpoints/{which}")


def logged_model(uri: str, run_id: str, which: str = "best") -> dict[str, Any]:
    """What `log_model` logged as `which` ('best' or 'final') for run `run_id`, on the CPU:
    {'model_config', 'state_dict', 'step'} (`pipeline.checkpoints.restore.load_model` builds
    the model from it)."""
    import torch
    from mlflow.tracking import MlflowClient

    with tempfile.TemporaryDirectory(prefix="trm-model-") as dst:
        path = f"checkpoints/{which}/{MODEL_FILE}"
        local = MlflowClient(tracking_uri=uri).download_artifacts(run_id, path, dst)
        return torch.load(local, map_location="cpu", weights_only=False)


def retire_run(uri: str, experiment: str, run_key: str) -> str | None:
    """Detach the run tagged `run_key` from that key (`train.py --fresh`): a new run of the
    same name then gets a new MLflow run, and the old one stays readable. Its id, or None."""
    from mlflow.entities import RunTag
    from mlflow.tracking import MlflowClient

    run_id = find_run(uri, experiment, run_key)
    if run_id is not None:
        tag = RunTag(RUN_KEY_TAG, f"{run_key} (discarded {time.strftime('%Y-%m-%dT%H:%M:%S')})")
        MlflowClient(tracking_uri=uri).log_batch(run_id, tags=[tag])
    return run_id


# ---- sweeps (pipeline/sweep.py): a parent run per sweep, a child run per trial ---------------
def child_runs(uri: str, experiment: str, parent_run_id: str, tag: str = "") -> dict[str, str]:
    """`run_key` -> run id of every run nested under `parent_run_id` (with `tag`: -> that
    tag's value, '' where the run lacks it or still runs)."""
    found = child_run_states(uri, experiment, parent_run_id, tag)
    return {key: ended if tag else run_id for key, (run_id, ended) in found.items()}


def child_run_states(
    uri: str, experiment: str, parent_run_id: str, tag: str
) -> dict[str, tuple[str, str]]:
    """`run_key` -> (run id, value of `tag` once the run ended: '' while it runs or where it
    lacks the tag) of every run nested under `parent_run_id`, in one paged search."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return {}
    out: dict[str, tuple[str, str]] = {}
    token = None
    while True:
        page = client.search_runs(
            [exp.experiment_id],
            filter_string=f"tags.`mlflow.parentRunId` = '{parent_run_id}'",
            max_results=1000,
            page_token=token,
        )
        for run in page:
            ended = run.data.tags.get(tag, "") if run.info.status != "RUNNING" else ""
            out[run.data.tags.get(RUN_KEY_TAG, run.info.run_id)] = (run.info.run_id, ended)
        token = page.token
        if not token:
            return out


def end_run(
    uri: str,
    run_id: str,
    status: str,
    tags: dict[str, str],
    params: dict[str, Any] | None = None,
    metrics: dict[str, float] | None = None,
    client: Any | None = None,
) -> None:
    """Set tags (`mlflow.runName` renames the run), params, metrics (at step 0) and the final
    status (FINISHED, KILLED, FAILED) of a run that another process logged, e.g. a trial that
    the sweep stopped early. A param logged again must keep its value (a resumed sweep does).
    `client`: an `MlflowClient` for `uri` to share across many runs (else a new one)."""
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.tracking import MlflowClient

    client = client or MlflowClient(tracking_uri=uri)
    ts = int(time.time() * 1000)
    client.log_batch(
        run_id,
        tags=[RunTag(k, str(v)) for k, v in tags.items()],
        params=[Param(k, str(v)) for k, v in (params or {}).items()],
        metrics=[Metric(k, float(v), ts, 0) for k, v in (metrics or {}).items()],
    )
    _set_terminated(client, uri, run_id, status)


def list_artifacts(uri: str, run_id: str, path: str | None = None) -> list[str]:
    """Paths of the artifacts directly under `path` of a run."""
    from mlflow.tracking import MlflowClient

    return [f.path for f in MlflowClient(tracking_uri=uri).list_artifacts(run_id, path)]


def load_dict_artifact(uri: str, run_id: str, path: str) -> dict:
    """A JSON artifact of a run (as written by `Tracker.log_dict`)."""
    import json
    import shutil

    from mlflow.tracking import MlflowClient

    dst = tempfile.mkdtemp(prefix="trm-artifact-")
    try:
        local = MlflowClient(tracking_uri=uri).download_artifacts(run_id, path, dst)
        return json.loads(Path(local).read_text())
    finally:
        shutil.rmtree(dst, ignore_errors=True)
