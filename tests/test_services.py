"""tests/services.py: the MLflow server as the cluster runs it (PostgreSQL backend store, S3
artifacts on moto) behind its request log, and its restart; used by benchmarks/sweep_scale.py
and the `mlflow_pg_s3` fixture."""

from __future__ import annotations

import pytest


@pytest.mark.slow
def test_mlflow_on_postgres_and_s3_logs_runs_and_survives_a_restart(mlflow_pg_s3, tmp_path):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(mlflow_pg_s3.url)
    exp = client.create_experiment("services-check")
    run = client.create_run(exp).info.run_id
    client.log_metric(run, "loss", 0.5, step=1)
    (tmp_path / "note.txt").write_text("hello")
    client.log_artifact(run, str(tmp_path / "note.txt"))
    keys = [o["Key"] for o in mlflow_pg_s3.s3.client().list_objects_v2(
        Bucket=mlflow_pg_s3.s3.bucket).get("Contents", [])]  # fmt: skip
    assert any(k.startswith("mlflow-artifacts/") and k.endswith("/note.txt") for k in keys), keys

    down = mlflow_pg_s3.server.restart(0.0)
    assert down > 0
    # the run lives in PostgreSQL, not in the server process: it is there after the restart
    again = MlflowClient(mlflow_pg_s3.url).get_run(run)
    assert again.data.metrics == {"loss": 0.5}
    requests = mlflow_pg_s3.server.requests()
    paths = {path for _, _, path, _, _ in requests}
    assert "/api/2.0/mlflow/runs/log-metric" in paths, paths
    assert all(secs >= 0 for *_, secs in requests)


@pytest.mark.slow
def test_models_logged_to_s3_artifacts_load_back_with_the_weights_of_their_checkpoint(
    mlflow_pg_s3, tmp_path, monkeypatch
):
    """Both ways a run's model reaches MLflow, through a server whose artifacts live on S3: a
    sweep trial's best checkpoint as an MLflow PyTorch model (`log_best_model`, loaded with
    `mlflow.pytorch.load_model`) and a training run's checkpoint file (`log_model`, loaded with
    `load_model`). Each loads back with the weights of the checkpoint it came from, and the
    objects are on S3 under the server's artifact root."""
    import contextlib

    import mlflow.pytorch
    import torch
    from drills import build_tiny_sudoku, tiny_config
    from mlflow.tracking import MlflowClient

    from pipeline.checkpoints import store as ckpt
    from pipeline.checkpoints.restore import load_model, restore
    from pipeline.sweeping.finalise import MODEL_PATH, log_best_model
    from pipeline.tracking.tracker import log_model
    from pipeline.train import run_info
    from pipeline.training.worker import run_in_process

    build_tiny_sudoku(str(tmp_path / "data"))
    cfg = tiny_config(str(tmp_path / "data"), tmp_path / "runs", "schedule.steps=4",
                      "checkpoint.every=4")  # fmt: skip
    run_in_process(cfg, run_info(cfg, "tiny", str(tmp_path / "runs")))
    trial_dir = str(tmp_path / "runs" / "tiny")
    client = MlflowClient(mlflow_pg_s3.url)
    run = client.create_run(client.create_experiment("models-on-s3")).info.run_id

    assert log_best_model(mlflow_pg_s3.url, run, trial_dir, "eval/exact_accuracy", "max")
    with contextlib.ExitStack() as stack:
        restored = restore(trial_dir, stack, say=lambda _: None)
        expected = {k: v.clone() for k, v in restored.model.state_dict().items()}
        log_model(mlflow_pg_s3.url, run, "final", ckpt.load(restored.checkpoint, ckpt.TRAINER_FILE))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_pg_s3.url)  # what runs:/ URIs resolve with
    for model in (mlflow.pytorch.load_model(f"runs:/{run}/{MODEL_PATH}"),
                  load_model(mlflow_pg_s3.url, run, "final")):  # fmt: skip
        got = model.state_dict()
        assert set(got) == set(expected)
        assert all(torch.equal(got[k], expected[k]) for k in expected), type(model)

    keys = [o["Key"] for o in mlflow_pg_s3.s3.client().list_objects_v2(
        Bucket=mlflow_pg_s3.s3.bucket, Prefix="mlflow-artifacts/").get("Contents", [])]  # fmt: skip
    assert any(f"/{run}/artifacts/{MODEL_PATH}/" in k for k in keys), keys
    assert any(k.endswith(f"/{run}/artifacts/checkpoints/final/model.pt") for k in keys), keys
