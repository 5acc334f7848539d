"""infra/docker/mlflow_server.py: the MLflow server's start-up on the cluster.

The database secret is read from a real Secrets Manager API (moto's server on loopback, started
here and stopped by pid), the way the pod reads RDS's managed secret through its pod identity.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "infra" / "docker" / "mlflow_server.py"

spec = importlib.util.spec_from_file_location("mlflow_server", SCRIPT)
mlflow_server = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mlflow_server)

ENV = {
    "MLFLOW_DB_SECRET_ARN": "arn:aws:secretsmanager:us-east-1:123456789012:secret:rds!db-1",
    "MLFLOW_DB_ENDPOINT": "trm-mlflow.abc.us-east-1.rds.amazonaws.com:5432",
    "MLFLOW_DB_NAME": "mlflow",
    "MLFLOW_ARTIFACTS_DESTINATION": "s3://trm-artifacts-123456789012/mlflow",
    "MLFLOW_ALLOWED_HOSTS": "mlflow,localhost:5000",
}


def test_backend_uri_quotes_any_password():
    password = "p@ss/w:rd?#%&="
    uri = mlflow_server.backend_store_uri(
        json.dumps({"username": "mlflow", "password": password}),
        ENV["MLFLOW_DB_ENDPOINT"],
        "mlflow",
    )
    parts = urlsplit(uri)
    assert parts.scheme == "postgresql"
    assert unquote(parts.password) == password and parts.username == "mlflow"
    assert parts.hostname == "trm-mlflow.abc.us-east-1.rds.amazonaws.com" and parts.port == 5432
    assert parts.path == "/mlflow" and parts.query == "sslmode=require"


@pytest.mark.parametrize(
    ("secret", "endpoint", "message"),
    [
        ("not json", "h:5432", "'username' and 'password'"),
        ('{"username": "u"}', "h:5432", "'username' and 'password'"),
        ('{"username": "u", "password": "p"}', "h", "host:port"),
    ],
)
def test_backend_uri_rejects_bad_input(secret, endpoint, message):
    with pytest.raises(ValueError, match=message):
        mlflow_server.backend_store_uri(secret, endpoint, "mlflow")


def test_require_env_names_every_missing_variable():
    env = dict(ENV, MLFLOW_DB_NAME="")
    del env["MLFLOW_ALLOWED_HOSTS"]
    with pytest.raises(ValueError, match="MLFLOW_DB_NAME, MLFLOW_ALLOWED_HOSTS"):
        mlflow_server.require_env(env)
    with pytest.raises(ValueError, match="s3:// URI"):
        mlflow_server.require_env(dict(ENV, MLFLOW_ARTIFACTS_DESTINATION="/tmp/artifacts"))


def test_server_command_listens_behind_clusterip_with_allowed_hosts():
    cmd = mlflow_server.server_command(mlflow_server.require_env(ENV), "postgresql://x")
    args = dict(zip(cmd[2::2], cmd[3::2]))
    assert cmd[:2] == ["mlflow", "server"]
    assert args["--backend-store-uri"] == "postgresql://x"
    assert args["--artifacts-destination"] == ENV["MLFLOW_ARTIFACTS_DESTINATION"]
    assert args["--host"] == "0.0.0.0" and args["--port"] == "5000"
    assert args["--allowed-hosts"] == ENV["MLFLOW_ALLOWED_HOSTS"]


@pytest.fixture
def secrets_manager(s3_env, monkeypatch):
    """The session's moto server (it serves Secrets Manager as well as S3); the AWS
    environment points boto3 at it."""
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    return s3_env.endpoint


def test_fetches_the_rds_secret_and_builds_the_backend_uri(secrets_manager):
    import boto3

    secret = {"username": "mlflow", "password": "s3cr3t/with:odd@chars", "engine": "postgres"}
    arn = boto3.client("secretsmanager").create_secret(
        Name="rds!db-1", SecretString=json.dumps(secret)
    )["ARN"]
    uri = mlflow_server.backend_store_uri(
        mlflow_server.fetch_secret(arn), ENV["MLFLOW_DB_ENDPOINT"], "mlflow"
    )
    assert unquote(urlsplit(uri).password) == secret["password"]
    assert os.environ["AWS_ENDPOINT_URL"] == secrets_manager
