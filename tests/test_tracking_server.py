"""MLflow as its users meet it, against a real `mlflow server` (the `mlflow_server` fixture):
the server is checked before work starts, experiments open in the training view, the run's
page is printed, the dataset and the source commit are recorded, depth curves keep the
training-step axis, and a server that goes away mid-run costs metrics, never the run or a
checkpoint."""

from __future__ import annotations

import hashlib
import logging
import shutil
import urllib.parse
from pathlib import Path

import pytest
import torch
import yaml
from conftest import free_port
from drills import build_tiny_sudoku, tiny_config
from drills.proxy import FaultProxy
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


def test_server_gone_mid_run_costs_metrics_not_the_run(
    mlflow_server, data, tmp_path, monkeypatch, caplog
):
    """The server's port is reached through a fault proxy, which goes down at step 4 and comes
    back at step 9: every checkpoint is written, the outage is logged, and the run ends
    FINISHED in MLflow."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    port = urllib.parse.urlsplit(mlflow_server).port
    with FaultProxy(port) as proxy:
        uri = proxy.endpoint
        cfg = tiny_config(data, tmp_path / "runs", tracking_uri=uri)
        store = LocalCheckpoints(tmp_path / "runs" / "outage")

        def report(metrics, checkpoint_dir):
            store(metrics, checkpoint_dir)
            if metrics["step"] == 4:
                proxy.down(3600)
            elif metrics["step"] == 9:
                proxy.up()

        cfg = cfg.with_overrides(["schedule.report_every=1"])
        with caplog.at_level(logging.WARNING, logger="pipeline.tracking.tracker"):
            run_in_process(cfg, run_info(cfg, "outage", str(tmp_path / "runs")), report=report)
        run = read_run(uri, find_run(uri, "trm-drill", f"{tmp_path / 'runs'}/outage"))
    assert [m["step"] for m in store.history] == list(range(1, 13))
    assert sorted(p.name for p in (tmp_path / "runs" / "outage").glob("checkpoint_*")) == [
        f"checkpoint_{s:08d}" for s in (4, 8, 12)
    ]
    logged = caplog.text
    assert "failed" in logged and "training goes on, next try in 2 s" in logged
    assert "answers again" in logged and "dropped while it was away" in logged
    assert run["status"] == "FINISHED"
    steps = [s for s, _ in run["metrics"]["train/loss"]]
    assert steps[:4] == [1, 2, 3, 4] and 6 not in steps  # dropped while the server was away
