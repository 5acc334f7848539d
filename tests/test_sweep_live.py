"""A sweep's MLflow runs while it runs, and its exit status (pipeline/sweeping/finalise.py,
pipeline/sweeping/run.py, pipeline/sweeping/cli.py), on a real local Ray cluster with the
embedded MLflow store: child runs finalised as their trials end (status, tags, swept params,
best metric, best model loadable with mlflow.pytorch), the parent's running summary, the
best models registered, and the statuses a shell sees."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest
import torch
from conftest import free_port
from mlflow.tracking import MlflowClient
from test_sweep import SMOKE, run, smoke_args

import pipeline.sweeping.report as report
import pipeline.sweeping.run as sweep_run
from pipeline.checkpoints.restore import restore
from pipeline.sweeping.cli import main
from pipeline.sweeping.run import PARENT_KEY_PREFIX
from pipeline.tracking.tracker import child_runs, find_run, read_run


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("sweep-live")


@pytest.mark.slow
def test_child_runs_are_finalised_when_their_trials_end(ray_local, work, monkeypatch):
    """~2 min: the smoke sweep with the end-of-sweep pass over child runs turned off, so only
    the live finalisation can end them; a poller sees a child ended and the parent's running
    summary while the sweep still runs."""
    import mlflow.pytorch

    monkeypatch.setattr(report, "end_children", lambda *a: None)
    uri = f"sqlite:///{work / 'mlflow.db'}"
    exp_path = str(work / "runs" / "smoke")
    fitting, seen = threading.Event(), {"ended_children": set(), "summary": None}
    fitting.set()

    def poll():  # every 2 s, until the summary lists a trial that ended
        parent = None
        while fitting.is_set() and not (seen["summary"] or {}).get("trials"):
            time.sleep(2)
            parent = parent or find_run(uri, "trm-sweeps", PARENT_KEY_PREFIX + exp_path)
            if parent:
                ended = child_runs(uri, "trm-sweeps", parent, tag="stop_reason")
                seen["ended_children"] |= {key for key, reason in ended.items() if reason}
            if seen["ended_children"]:
                local = MlflowClient(uri).download_artifacts(
                    parent, "summary/summary.json", str(work)
                )
                seen["summary"] = json.loads(Path(local).read_text())

    finish = sweep_run.finish_sweep

    def finish_after_poll(*a, **kw):  # the poller stops when the trials have all ended
        fitting.clear()
        poller.join()
        return finish(*a, **kw)

    monkeypatch.setattr(sweep_run, "finish_sweep", finish_after_poll)
    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    out = run(smoke_args(work))
    assert out.exit_code == 0
    assert seen["ended_children"], "no child run was finalised while the sweep ran"
    running = seen["summary"]
    assert running is not None and running["running"] is True and running["trials"]
    assert running["metric"] == "eval/accuracy" and running["best"]["value"] is not None

    rows = {r.trial_id: r for r in out.rows}
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)  # for runs:/ and models:/ URIs
    assert {r.stop_reason for r in rows.values()} >= {"completed", "early-stopped"}
    for r in rows.values():
        child = read_run(uri, r.run_id)
        assert child["status"] == ("FINISHED" if r.stop_reason == "completed" else "KILLED")
        assert child["tags"]["trm.stop_reason"] == r.stop_reason
        assert child["tags"]["stop_reason"] == {"early-stopped": "asha"}.get(
            r.stop_reason, r.stop_reason
        )
        assert child["tags"]["mlflow.runName"] == r.name
        assert child["params"]["swept.model.H_cycles"] == str(r.params["model.H_cycles"])
        assert float(child["params"]["swept.optim.lr"]) == r.params["optim.lr"]
        assert child["metrics"]["best/eval/accuracy"] == [(0, pytest.approx(r.best))]
        model = mlflow.pytorch.load_model(f"runs:/{r.run_id}/best_model")
        assert type(model).__name__ == "TRM" and model.config.H_cycles == r.params["model.H_cycles"]
        with contextlib.ExitStack() as stack:  # the weights of the checkpoint the summary ranks best
            kept = restore(r.checkpoint, stack, say=lambda _: None).model.state_dict()
        assert all(torch.equal(v, kept[k]) for k, v in model.state_dict().items())

    # the parent's best-so-far metric, and the 3 best trials' models in the registry
    parent = read_run(uri, out.parent_run_id)
    best = max(r.best for r in rows.values())
    assert max(parent["metrics"]["best/eval/accuracy"])[1] == pytest.approx(best)
    client = MlflowClient(uri, registry_uri=uri)
    versions = client.search_model_versions("name = 'smoke'")
    top3 = sorted(rows.values(), key=lambda r: -r.best)[:3]
    assert sorted(v.run_id for v in versions) == sorted(r.run_id for r in top3)
    loaded = mlflow.pytorch.load_model("models:/smoke/1")
    assert type(loaded).__name__ == "TRM"
    assert "MLflow Model Registry: 'smoke' versions 1, 2, 3" in out.where


def test_a_tracking_server_that_does_not_answer_exits_2_before_ray(work, monkeypatch, capsys):
    def no_ray(*a, **kw):
        raise AssertionError("Ray was started")

    monkeypatch.setattr(sweep_run, "connect_ray", no_ray)
    dead = f"http://127.0.0.1:{free_port()}"
    assert main(smoke_args(work, "dead-server", "--set", f"tracking.uri={dead}")) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: MLflow tracking server {dead} is not reachable")
    assert len(err.strip().splitlines()) == 1
    assert not (work / "runs" / "dead-server").exists()


class _Boom:
    def __init__(self, error: BaseException | None):
        self.error = error

    def fit(self):
        if self.error is None:  # a SIGTERM, as `kill` sends it
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(30)
        raise self.error


@pytest.mark.parametrize(
    ("error", "status", "code"),
    [
        (RuntimeError("driver bug"), "FAILED", None),
        (KeyboardInterrupt(), "KILLED", 130),
        (None, "KILLED", 130),
    ],
    ids=["raises", "ctrl-c", "sigterm"],
)
def test_the_parent_run_never_stays_running(ray_local, work, monkeypatch, capsys, error, status,
                                             code):  # fmt: skip
    """The driver raises, is interrupted or gets SIGTERM while Tune runs: the parent run ends
    FAILED or KILLED, and the command exits 130 when interrupted."""
    monkeypatch.setattr(sweep_run, "build_tuner", lambda *a, **kw: _Boom(error))
    name = f"boom-{type(error).__name__}"
    args = smoke_args(work, name)
    before = signal.getsignal(signal.SIGTERM)
    # Python's own Ctrl-C handler, as in a fresh driver: a real Tuner.fit earlier in this test
    # process can leave Tune's SIGINT handler installed, which would swallow the interrupt
    before_int = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        if code is None:
            with pytest.raises(RuntimeError, match="driver bug"):
                main(args)
        else:
            assert main(args) == code
            assert "interrupted; continue it with --resume" in capsys.readouterr().err
    finally:
        signal.signal(signal.SIGTERM, before)
        signal.signal(signal.SIGINT, before_int)
    uri = f"sqlite:///{work / 'mlflow.db'}"
    parent = find_run(uri, "trm-sweeps", PARENT_KEY_PREFIX + str(work / "runs" / name))
    assert read_run(uri, parent)["status"] == status


def test_exit_status_of_the_trials():
    """0: completed, scheduler- or budget-stopped; 1: any error; 130: trials left unfinished."""
    from pipeline.sweeping.rows import TrialRow

    def rows(*reasons):
        return [TrialRow(str(i), {}, 2, 2, 24, stop_reason=r) for i, r in enumerate(reasons)]

    assert report.exit_code(rows("completed", "early-stopped", "max_t", "budget",
                                 "not started (budget)")) == 0  # fmt: skip
    assert report.exit_code(rows("completed", "error", "interrupted")) == 1
    assert report.exit_code(rows("completed", "interrupted")) == 130
    assert SMOKE.is_file()
