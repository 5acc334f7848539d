"""Start the MLflow tracking server on the cluster: PostgreSQL backend (RDS), artifacts in S3.

RDS generates the database password and keeps (and rotates) it in Secrets Manager. This reads it
at start-up through the pod's identity (EKS Pod Identity), so it never sits in a manifest, a helm
value or Terraform state; a restart picks up a rotated password. Artifacts are served through the
server (``mlflow-artifacts:/``), so Ray pods need no access to the mlflow/ prefix.

Run by the MLflow Deployment of infra/terraform/k8s-addons (image: infra/docker/Dockerfile):

    python /app/infra/docker/mlflow_server.py

Environment: MLFLOW_DB_SECRET_ARN, MLFLOW_DB_ENDPOINT (host:port), MLFLOW_DB_NAME,
MLFLOW_ARTIFACTS_DESTINATION (s3://bucket/prefix), MLFLOW_ALLOWED_HOSTS (comma-separated),
optional MLFLOW_PORT (5000) and MLFLOW_WORKERS (2). AWS region and credentials: standard chain.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from urllib.parse import quote

REQUIRED = (
    "MLFLOW_DB_SECRET_ARN",
    "MLFLOW_DB_ENDPOINT",
    "MLFLOW_DB_NAME",
    "MLFLOW_ARTIFACTS_DESTINATION",
    "MLFLOW_ALLOWED_HOSTS",
)


def require_env(env: Mapping[str, str]) -> dict[str, str]:
    """The required settings, or a ValueError naming every one that is missing or empty."""
    missing = [k for k in REQUIRED if not env.get(k)]
    if missing:
        raise ValueError(f"mlflow_server: missing environment variable(s): {', '.join(missing)}")
    if not env["MLFLOW_ARTIFACTS_DESTINATION"].startswith("s3://"):
        raise ValueError(
            "mlflow_server: MLFLOW_ARTIFACTS_DESTINATION must be an s3:// URI, "
            f"got {env['MLFLOW_ARTIFACTS_DESTINATION']!r}"
        )
    return {k: env[k] for k in REQUIRED}


def backend_store_uri(secret_string: str, endpoint: str, database: str) -> str:
    """SQLAlchemy URI for the RDS secret (JSON with username and password), TLS required."""
    try:
        secret = json.loads(secret_string)
        user, password = secret["username"], secret["password"]
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(
            "mlflow_server: the database secret must be JSON with 'username' and 'password'"
        ) from e
    host, sep, port = endpoint.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"mlflow_server: MLFLOW_DB_ENDPOINT must be host:port, got {endpoint!r}")
    # RDS passwords may hold any printable character: quote both parts of the userinfo.
    userinfo = f"{quote(user, safe='')}:{quote(password, safe='')}"
    return f"postgresql://{userinfo}@{host}:{port}/{quote(database, safe='')}?sslmode=require"


def server_command(env: Mapping[str, str], backend_uri: str) -> list[str]:
    """The `mlflow server` command line (listening on all pod addresses, ClusterIP in front)."""
    port = env.get("MLFLOW_PORT", "5000")
    return [
        "mlflow",
        "server",
        "--backend-store-uri",
        backend_uri,
        "--artifacts-destination",
        env["MLFLOW_ARTIFACTS_DESTINATION"],
        "--host",
        "0.0.0.0",
        "--port",
        port,
        "--workers",
        env.get("MLFLOW_WORKERS", "2"),
        # MLflow 3 only answers requests whose Host header it knows (DNS-rebinding guard).
        "--allowed-hosts",
        env["MLFLOW_ALLOWED_HOSTS"],
    ]


def fetch_secret(arn: str) -> str:
    import boto3  # only the server pod needs it at this point

    return boto3.client("secretsmanager").get_secret_value(SecretId=arn)["SecretString"]


def main() -> None:
    env = require_env(os.environ)
    uri = backend_store_uri(
        fetch_secret(env["MLFLOW_DB_SECRET_ARN"]), env["MLFLOW_DB_ENDPOINT"], env["MLFLOW_DB_NAME"]
    )
    cmd = server_command(os.environ, uri)
    os.execvp(cmd[0], cmd)


if __name__ == "__main__":
    main()
