"""Drill 7, secrets: recognisable fake AWS keys, an AWS session token and MLflow credentials (in
the environment and in MLFLOW_TRACKING_URI's user info) must not appear in anything a run
writes: MLflow params, tags, metric names and artifacts (read back through a real `mlflow
server`), printed output and logs, checkpoints, and the config `--dry-run` prints.

The data is read from the real S3-compatible server with those credentials, so they are in use,
not just present. The Ray Train variant (slow, ~1 min) also scans everything in the private Ray
session directory (worker logs, runtime-env and controller logs).
"""

from __future__ import annotations

import base64
import os
import time
import urllib.parse
from pathlib import Path

import pytest
import yaml
from drills import build_tiny_sudoku, record, tiny_config

from pipeline.tracking.tracker import find_run, read_run
from pipeline.train import main

SECRETS = {
    "AWS_ACCESS_KEY_ID": "AKIADRILL7QX2ZV4FAKE",
    "AWS_SECRET_ACCESS_KEY": "drillSECRETkey9w2Zq8Lr5Vt3Nx7Bm1Yc4Hd6Jf0",
    "AWS_SESSION_TOKEN": "FwoGZXIvYXdzDRILLsessionTOKEN0123456789abcdefXYZ",
    "MLFLOW_TRACKING_PASSWORD": "drillMLFLOWpass8z1q",
    "MLFLOW_TRACKING_TOKEN": "drillMLFLOWtoken4c7e",
}
USER, URI_PASSWORD = "drilluser", "drillURIpass5k2m"


def needles() -> dict[str, str]:
    """Each secret, and the forms it could take on the way out (URL-quoted, HTTP basic auth)."""
    out = {}
    for name, value in {**SECRETS, "tracking URI password": URI_PASSWORD}.items():
        out[name] = value
        out[f"{name} (url-quoted)"] = urllib.parse.quote(value, safe="")
    for pw in (SECRETS["MLFLOW_TRACKING_PASSWORD"], URI_PASSWORD):
        out[f"basic auth with {pw}"] = base64.b64encode(f"{USER}:{pw}".encode()).decode()
    return out


def leaks(where: str, data: str | bytes) -> list[str]:
    """'<secret> in <where>: ...context...' for each secret found in `data`."""
    text = data.decode("latin-1") if isinstance(data, bytes) else data
    found = []
    for name, value in needles().items():
        if (i := text.find(value)) >= 0:
            found.append(f"{name} in {where}: ...{text[max(0, i - 80) : i + 40]!r}...")
    return found


def scan_tree(root: Path, label: str) -> tuple[list[str], int]:
    found, n = [], 0
    for p in sorted(root.rglob("*")):
        if p.is_file():
            n += 1
            found += leaks(f"{label}/{p.relative_to(root)}", p.read_bytes())
    return found, n


def scan_mlflow(uri: str, experiment: str, run_key: str, tmp: Path) -> tuple[list[str], int]:
    from mlflow.tracking import MlflowClient

    run_id = find_run(uri, experiment, run_key)
    assert run_id, f"no MLflow run for {run_key}"
    run = read_run(uri, run_id)
    assert run["params"] and run["metrics"] and run["artifacts"]  # there is something to scan
    found = leaks("MLflow params", repr(sorted(run["params"].items())))
    found += leaks("MLflow tags", repr(sorted(run["tags"].items())))
    found += leaks("MLflow metric names", repr(sorted(run["metrics"])))
    dst = tmp / "artifacts"
    dst.mkdir()
    MlflowClient(tracking_uri=uri).download_artifacts(run_id, "", str(dst))
    more, n = scan_tree(dst, "MLflow artifacts")
    return found + more, n


@pytest.fixture
def secret_env(s3_env, mlflow_server, monkeypatch):
    """S3 and MLflow reached with the fake secrets; returns (data URI, credentialled MLflow URI)."""
    for k, v in SECRETS.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", USER)
    host = mlflow_server.removeprefix("http://")
    uri = f"http://{USER}:{URI_PASSWORD}@{host}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    data = f"s3://{s3_env.bucket}/data/sudoku4"
    build_tiny_sudoku(data)  # with the secret credentials (moto accepts any)
    return data, uri


def test_secrets_never_written_by_a_run(secret_env, tmp_path, capfd):
    data, uri = secret_env
    storage = tmp_path / "runs"
    cfg = tiny_config(data, storage, "eval.num_pictures=1", "schedule.steps=4")
    cfg = cfg.with_overrides(["tracking.enabled=true", "tracking.experiment=drill-secrets"])
    assert cfg.tracking.uri == ""  # the URI comes from the environment, as on a cluster
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg.to_dict()))

    t = time.perf_counter()
    assert main([str(path), "--dry-run"]) == 0
    dry = capfd.readouterr()
    assert "tracking:" in dry.out  # the config was printed
    assert main([str(path), "--local"]) == 0
    run = capfd.readouterr()
    assert "final:" in run.out

    found = leaks("--dry-run output", dry.out + dry.err)
    found += leaks("run output", run.out + run.err)
    more, n_ckpt = scan_tree(storage, "checkpoints")
    assert n_ckpt >= 4  # trainer.pt, rank0.pt and their checksums at least
    found += more
    more, n_art = scan_mlflow(uri, "drill-secrets", f"{storage}/{cfg.name}", tmp_path)
    found += more
    assert not found, found
    record("secrets.local", runs=1, files_scanned=n_ckpt + n_art, seconds=time.perf_counter() - t)


@pytest.mark.slow
def test_secrets_never_written_by_a_ray_train_run(secret_env, tmp_path):
    """~60 s: the same on a 2-worker Ray Train run checkpointing to S3; also scans every file
    in the private Ray session directory and the S3 checkpoint objects."""
    import boto3
    from drills import LocalRay

    from pipeline.train import run_training

    data, uri = secret_env
    bucket = data.split("/")[2]
    storage = f"s3://{bucket}/runs"
    cfg = tiny_config(data, storage, "eval.num_pictures=2", "schedule.steps=8",
                      "resources.num_workers=2", "tracking.enabled=true")  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k.startswith(("AWS_", "MLFLOW_"))}
    t = time.perf_counter()
    with LocalRay(2, env) as ray_:
        result = run_training(cfg, name="secrets")
        assert result.metrics["step"] == 8
        found, n_ray = scan_tree(Path(ray_.temp_dir), "ray session")
    s3 = boto3.client("s3")
    n_s3 = 0
    for o in s3.list_objects_v2(Bucket=bucket, Prefix="runs/")["Contents"]:
        n_s3 += 1
        found += leaks(
            f"s3://{bucket}/{o['Key']}", s3.get_object(Bucket=bucket, Key=o["Key"])["Body"].read()
        )
    more, n_art = scan_mlflow(uri, "trm-drill", f"{storage}/secrets", tmp_path)
    found += more
    assert n_ray > 10 and n_s3 >= 4
    assert not found, found
    record(
        "secrets.ray", runs=1, files_scanned=n_ray + n_s3 + n_art, seconds=time.perf_counter() - t
    )
