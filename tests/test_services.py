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
