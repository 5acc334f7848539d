"""MLflow as its users meet it, against a real `mlflow server` (the `mlflow_server` fixture):
the server is checked before work starts, experiments open in the training view, the run's
page is printed, the dataset and the source commit are recorded, depth curves keep the
training-step axis, and a server that goes away mid-run costs metrics, never the run or a
checkpoint."""

from __future__ import annotations

import hashlib
import logging
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from conftest import free_port
from drills import build_tiny_sudoku, tiny_config
from mlflow.tracking import MlflowClient

from pipeline.checkpoints import store as ckpt
from pipeline.checkpoints.restore import load_model
from pipeline.data import read_meta
from pipeline.tracking.provenance import code_version, source_digest
from pipeline.tracking.server import TrackingError, check_tracking
from pipeline.tracking.tracker import EXPERIMENT_KIND, find_run, read_run
from pipeline.train import main, run_info
from pipeline.training.worker import LocalCheckpoints, run_in_process

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> str:
    uri = str(tmp_path_factory.mktemp("data") / "sudoku4")
    build_tiny_sudoku(uri)
    return uri


def test_check_tracking_names_a_server_that_does_not_answer(mlflow_server):
    check_tracking(mlflow_server)  # answers
    check_tracking("sqlite:////nonexistent/mlflow.db")  # a local store needs no server
    dead = f"http://user:secret@127.0.0.1:{free_port()}"
    with pytest.raises(TrackingError, match=r"http://user:\*\*\*@127\.0\.0\.1:\d+ is not reach"):
        check_tracking(dead)


def test_a_run_on_the_server_as_users_expect(mlflow_server, data, tmp_path, capsys):
    cfg = tiny_config(data, tmp_path / "runs", "schedule.steps=8", tracking_uri=mlflow_server)
    cfg = cfg.with_overrides(["tracking.experiment=trm-ux"])
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg.to_dict()))
    assert main([str(path), "--local"]) == 0
    out = capsys.readouterr().out
    run_id = find_run(mlflow_server, "trm-ux", f"{tmp_path / 'runs'}/drill")
    client = MlflowClient(mlflow_server)
    exp = client.get_experiment_by_name("trm-ux")
    assert exp.tags[EXPERIMENT_KIND[0]] == "custom_model_development"  # the training view
    url = f"{mlflow_server}/#/experiments/{exp.experiment_id}/runs/{run_id}?workflowType=machine_learning"
    assert out.strip().splitlines()[-1] == f"MLflow: {url}"
    assert f"[drill] MLflow: {url}" in out

    run = client.get_run(run_id)
    (ds,) = run.inputs.dataset_inputs
    digest = hashlib.sha256(read_meta(data).to_json().encode()).hexdigest()[:16]
    assert ds.dataset.name == "sudoku" and ds.dataset.digest == digest
    assert data in ds.dataset.source
    assert run.data.tags["code_version"].startswith(run.data.tags["mlflow.source.git.commit"])

    m = read_run(mlflow_server, run_id)["metrics"]
    for k in (1, 2, 3):  # halt_max_steps 2, depth_steps 3
        assert [s for s, _ in m[f"depth_curve/exact_accuracy_at_step_{k}"]] == [4, 8]

    # the final checkpoint's model loads back with one call: the EMA weights it evaluated with
    model = load_model(mlflow_server, run_id, "final")
    state = ckpt.load(tmp_path / "runs" / "drill" / "checkpoint_00000008", ckpt.TRAINER_FILE)
    for name, p in model.named_parameters():
        assert torch.equal(p.detach(), state["ema"]["shadow"][name]), name
    assert not model.training


def test_code_version_without_git(tmp_path, monkeypatch):
    for d in ("trm", "pipeline"):
        shutil.copytree(REPO / d, tmp_path / d, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.delenv("TRM_CODE_VERSION", raising=False)
    version = code_version(tmp_path)
    assert version == source_digest(tmp_path) and version.startswith("src-")
    (tmp_path / "trm" / "__init__.py").write_text("# changed\n")
    assert code_version(tmp_path) != version
    monkeypatch.setenv("TRM_CODE_VERSION", "abc123")
    assert code_version(tmp_path) == "abc123"


def test_server_paused_mid_run_costs_no_step_and_no_metric(data, tmp_path, monkeypatch, caplog):
    """A real `mlflow server` of the test's own is paused (SIGSTOP, whole process group) at
    step 4 and resumed from the training loop at step 10: the loop steps on while it is away
    (it would hang otherwise: only step 10 resumes it; a watchdog resumes it after 120 s and
    the test then fails), every checkpoint is written, and every metric of the outage arrives
    once it answers again; the run ends FINISHED with nothing dropped."""
    import os
    import signal
    import threading
    import time

    from services import MlflowServer

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    root = tmp_path / "server"
    root.mkdir()
    with MlflowServer(root, f"sqlite:///{root / 'mlflow.db'}", str(root / "artifacts"),
                      workers=1) as server:  # fmt: skip
        uri, pid = server.url, server.server_pid
        cfg = tiny_config(data, tmp_path / "runs", "schedule.report_every=1", "schedule.log_every=1",
                          tracking_uri=uri)  # fmt: skip
        store = LocalCheckpoints(tmp_path / "runs" / "outage")
        watchdog = threading.Timer(120, os.killpg, (pid, signal.SIGCONT))
        stepped_while_away = []

        def report(metrics, checkpoint_dir):
            store(metrics, checkpoint_dir)
            if metrics["step"] == 4:
                os.killpg(pid, signal.SIGSTOP)
                watchdog.start()
            elif 4 < metrics["step"] <= 10 and watchdog.is_alive():
                stepped_while_away.append(metrics["step"])
            if metrics["step"] == 10:
                # away until the sender has tried (and failed) at least once
                deadline = time.monotonic() + 60
                while "failed" not in caplog.text and time.monotonic() < deadline:
                    time.sleep(0.2)
                os.killpg(pid, signal.SIGCONT)
                watchdog.cancel()

        with caplog.at_level(logging.WARNING, logger="pipeline.tracking.tracker"):
            run_in_process(cfg, run_info(cfg, "outage", str(tmp_path / "runs")), report=report)
        run = read_run(uri, find_run(uri, "trm-drill", f"{tmp_path / 'runs'}/outage"))
    assert stepped_while_away == [5, 6, 7, 8, 9, 10]
    assert [m["step"] for m in store.history] == list(range(1, 13))
    assert sorted(p.name for p in (tmp_path / "runs" / "outage").glob("checkpoint_*")) == [
        f"checkpoint_{s:08d}" for s in (4, 8, 12)
    ]
    logged = caplog.text
    assert "failed" in logged and "the data is kept and sent again" in logged
    assert "answers again" in logged
    assert run["status"] == "FINISHED"
    assert [s for s, _ in run["metrics"]["train/loss"]] == list(range(1, 13))
    assert [s for s, _ in run["metrics"]["eval/exact_accuracy"]] == [4, 8, 12]
    assert "tracking/dropped_points" not in run["metrics"]
    assert "trm.tracking.dropped" not in run["tags"]
    assert any(p.startswith("depth_curve/step_00000008") for p in run["artifacts"])


def test_a_full_send_buffer_drops_points_and_the_run_says_how_many(
    mlflow_server, data, tmp_path, monkeypatch
):
    """With room for 5 metric points while the server cannot be reached, the points that do not
    fit are dropped, counted and recorded on the run when it ends: never silently."""
    import pipeline.tracking.sender as sender
    from pipeline.tracking.tracker import Tracker

    counted = []  # the Prometheus counter (its export: tests/test_infra_monitoring.py)
    monkeypatch.setattr(sender, "count_tracking_failure", lambda kind, n=1: counted.append((kind, n)))
    tracker = Tracker(mlflow_server, "trm-overflow", "overflow", f"{tmp_path}/overflow", {}, {})
    tracker.sender.close()  # the run's own sender stopped: a tiny one, never sending
    tracker.sender = sender.Sender(tracker.client, tracker.run_id, mlflow_server, max_points=5)
    with tracker.sender._cond:  # holds the sender thread back, as a server that is away would
        for step in range(1, 4):
            tracker.log_metrics({"a": step, "b": step}, step)  # 6 points, room for 5
    tracker.finish()
    run = read_run(mlflow_server, tracker.run_id)
    assert run["status"] == "FINISHED"
    assert [s for s, _ in run["metrics"]["a"]] == [1, 2, 3]
    assert [s for s, _ in run["metrics"]["b"]] == [1, 2]
    assert run["metrics"]["tracking/dropped_points"] == [(0, 1.0)]
    assert run["tags"]["trm.tracking.dropped"] == "1 metric points, 0 artifacts"
    assert counted == [("dropped", 1)]


def test_closing_waits_for_a_slow_server_and_gives_up_on_one_that_stopped_answering(
    mlflow_server, tmp_path
):
    """At a run's end the sender goes on while its sends succeed, however long they take in all
    (a loaded server still gets the run's last figures), and gives up only after a stretch
    with none: six uploads of 0.4 s each take longer in all than the 1 s allowed without a
    send, and all arrive; an upload that hangs longer than that is dropped and counted, and
    so is what was queued behind it."""
    import time

    import pipeline.tracking.sender as sender
    from pipeline.tracking.tracker import Tracker

    tracker = Tracker(mlflow_server, "trm-close", "close", f"{tmp_path}/close", {}, {})

    def slow(name: str, pause: float):
        def job():
            time.sleep(pause)
            sender.upload_bytes(tracker.client, tracker.run_id, b"x", f"slow/{name}.txt")

        return job

    tracker.sender.close()
    tracker.sender = sender.Sender(tracker.client, tracker.run_id, mlflow_server)
    for i in range(6):
        tracker.sender.put_job(f"{i}", slow(f"{i}", 0.4))
    tracker.sender.close(idle_s=1.0)
    assert tracker.sender.dropped == 0
    tracker.sender = sender.Sender(tracker.client, tracker.run_id, mlflow_server)
    tracker.sender.put_job("hung", slow("hung", 5.0))
    tracker.sender.put_job("behind", slow("behind", 0.0))
    tracker.sender.close(idle_s=1.0)
    assert (tracker.sender.dropped_jobs, tracker.sender.dropped_points) == (2, 0)
    tracker.finish()  # records what was dropped
    run = read_run(mlflow_server, tracker.run_id)
    assert [a for a in run["artifacts"] if a.startswith("slow/")] == [
        f"slow/{i}.txt" for i in range(6)
    ]
    assert run["tags"]["trm.tracking.dropped"] == "0 metric points, 2 artifacts"


def test_a_send_that_ends_after_close_gave_up_on_it_is_not_counted_twice():
    """`close` gives up on a send that hangs and counts what it held as dropped; when that send
    returns afterwards, the sender thread ends quietly (it once popped from the emptied buffer
    and died with an IndexError). The client here is in-process: what it stands in for, a hung
    upload to a real server, is the test above."""
    import threading

    import pipeline.tracking.sender as sender

    release, errors = threading.Event(), []

    class Hanging:
        def log_batch(self, run_id, metrics):
            release.wait(30)

    hook, threading.excepthook = threading.excepthook, errors.append
    try:
        s = sender.Sender(Hanging(), "run", "http://nowhere")
        s.put_metrics([1, 2, 3])
        s.close(idle_s=0.2, cap_s=0.5)
        assert (s.dropped_points, s.dropped_jobs) == (3, 0)
        release.set()
        s._thread.join(10)
        assert not s._thread.is_alive()
    finally:
        threading.excepthook = hook
    assert errors == []


def test_a_process_ending_before_its_run_closes_still_sends_the_queue(mlflow_server, tmp_path):
    """Tune ends a stopped trial's process without waiting for the trial (Ray runs the process's
    atexit handlers); the sender's thread is a daemon, so the queue would die with it. At exit
    the sender is waited for: an upload still in progress when the process ends arrives."""
    import subprocess
    import sys

    script = f"""
import time
from pipeline.tracking.tracker import Tracker
tracker = Tracker({mlflow_server!r}, "trm-exit", "exit", {str(tmp_path / "exit")!r}, {{}}, {{}})
def slow_upload():
    time.sleep(1.5)
    tracker.client.log_metric(tracker.run_id, "late", 1.0, step=7)
tracker.sender.put_job("slow", slow_upload)
tracker.log_metrics({{"queued": 2.0}}, 8)
print(tracker.run_id, flush=True)
"""  # ends at once: no tracker.finish()
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True,
                          text=True, timeout=180)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    run = read_run(mlflow_server, proc.stdout.split()[-1])
    assert run["metrics"].get("late") == [(7, 1.0)], run["metrics"]
    assert run["metrics"].get("queued") == [(8, 2.0)], run["metrics"]


class _Lost(Exception):
    pass


def test_points_a_lost_run_never_sent_are_sent_by_the_run_that_resumes(data, tmp_path, monkeypatch):
    """A run lost right after a checkpoint (a preempted node) with points still queued (the
    server slow or away): the checkpoint keeps them, and the run resuming from it sends them,
    so the metric history has no gap; resending what had arrived adds no duplicate."""
    import pipeline.tracking.sender as sender

    uri = f"sqlite:///{tmp_path / 'm.db'}"
    cfg = tiny_config(data, tmp_path / "runs", "schedule.steps=8", "schedule.log_every=2",
                      "eval.every=4", "checkpoint.every=4", tracking_uri=uri)  # fmt: skip
    info = run_info(cfg, "lost", str(tmp_path / "runs"))
    saver = LocalCheckpoints(tmp_path / "runs" / "lost")

    def lost_after_step_4(metrics, directory):
        saver(metrics, directory)
        if metrics["step"] == 4:
            raise _Lost

    with monkeypatch.context() as m:
        m.setattr(sender.Sender, "_loop", lambda self: None)  # sends nothing: all is lost
        with pytest.raises(_Lost):
            run_in_process(cfg, info, report=lost_after_step_4)
    run_in_process(cfg, info)  # resumes from step 4
    run_id = find_run(uri, cfg.tracking.experiment, info.run_key)
    history = MlflowClient(uri).get_metric_history(run_id, "train/loss")
    assert sorted(m.step for m in history) == [2, 4, 6, 8]
