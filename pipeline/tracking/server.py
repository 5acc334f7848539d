"""Where the MLflow tracking store is and whether it answers: the URI resolved from the config,
$MLFLOW_TRACKING_URI or the embedded sqlite store; a check that a tracking server is
reachable before a run starts; URIs fit to print (password redacted) and links to a run.

The location is, in order: the run config's `tracking.uri`, the `MLFLOW_TRACKING_URI`
environment variable, or an embedded store in the working directory: `sqlite:///<cwd>/mlflow.db`
with artifacts in `<cwd>/mlruns/`, which `mlflow ui --backend-store-uri sqlite:///<cwd>/mlflow.db`
opens."""

from __future__ import annotations

import os
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

LOCAL_DB = "mlflow.db"


class TrackingError(ConnectionError):
    """The tracking server cannot be reached; the message names its URI."""


TRAINING_VIEW = "workflowType=machine_learning"
"""The UI query that opens a page in the model-training view: MLflow 3.17 opens a fresh
browser in its GenAI view (runs under "Evaluations") whatever the experiment's kind tag says."""


def resolve_tracking_uri(configured: str = "", cwd: str | Path | None = None) -> str:
    """The tracking URI to use: `configured`, else $MLFLOW_TRACKING_URI, else the embedded
    sqlite store in `cwd` (absolute path, so processes with other working dirs agree)."""
    if configured:
        return configured
    env = os.environ.get("MLFLOW_TRACKING_URI", "")
    if env:
        return env
    root = Path(cwd or os.getcwd()).resolve()
    return f"sqlite:///{root / LOCAL_DB}"


def redact(uri: str) -> str:
    """`uri` fit to print or log: a password in its user info (http://user:pw@host, which
    MLflow's HTTP client accepts) replaced by '***'."""
    parts = urllib.parse.urlsplit(uri)
    userinfo, at, hostport = parts.netloc.rpartition("@")
    if not at or ":" not in userinfo:
        return uri
    user = userinfo.split(":", 1)[0]
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}:***@{hostport}"))


def ui_command(uri: str) -> str:
    """The command that shows the runs of `uri` in a browser."""
    if uri.startswith("sqlite:///"):
        return f"mlflow ui --backend-store-uri {uri}"
    return f"open {redact(uri)} in a browser"


def is_server(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


def check_tracking(uri: str, timeout_s: float = 5.0) -> None:
    """`TrackingError` naming `uri` unless the tracking server there answers (its /health);
    a local store (sqlite, file) needs no check. Run it before any worker starts: MLflow's
    own client retries a refused connection for minutes before it gives up."""
    if not is_server(uri):
        return
    parts = urllib.parse.urlsplit(uri)
    netloc = parts.netloc.rpartition("@")[2]  # urllib takes no user:password in the URL
    url = urllib.parse.urlunsplit(parts._replace(netloc=netloc, query="", fragment=""))
    try:
        urllib.request.urlopen(
            url.rstrip("/") + "/health", timeout=timeout_s, context=_tls_context()
        ).close()
    except urllib.error.HTTPError as e:
        if e.code < 500:  # it answers (a proxy or an auth layer in front): usable
            return
        raise TrackingError(f"MLflow tracking server {redact(uri)} answers HTTP {e.code}") from None
    except (OSError, ValueError) as e:
        reason = getattr(e, "reason", e)
        raise TrackingError(
            f"MLflow tracking server {redact(uri)} is not reachable ({reason}): start it, point "
            "tracking.uri / MLFLOW_TRACKING_URI at a running one, or set tracking.enabled=false"
        ) from None


def _tls_context() -> Any:
    """TLS as MLflow's client does it: $MLFLOW_TRACKING_SERVER_CERT_PATH as the CA bundle,
    no verification when $MLFLOW_TRACKING_INSECURE_TLS is true."""
    import ssl

    if os.environ.get("MLFLOW_TRACKING_INSECURE_TLS", "").lower() == "true":
        return ssl._create_unverified_context()
    return ssl.create_default_context(cafile=os.environ.get("MLFLOW_TRACKING_SERVER_CERT_PATH"))


def run_url(uri: str, experiment_id: str, run_id: str) -> str:
    """The page of a run in the MLflow UI when `uri` is a tracking server, else '', opened in
    the model-training view (`TRAINING_VIEW`)."""
    if not is_server(uri):
        return ""
    base = redact(uri).rstrip("/")
    return f"{base}/#/experiments/{experiment_id}/runs/{run_id}?{TRAINING_VIEW}"


def run_link(uri: str, run_id: str) -> str:
    """Where a user finds run `run_id` of `uri`: its page on a tracking server, else the
    command that opens the local store (for a training run or a sweep's parent run)."""
    if not is_server(uri):
        return ui_command(uri)
    from mlflow.tracking import MlflowClient

    experiment_id = MlflowClient(tracking_uri=uri).get_run(run_id).info.experiment_id
    return run_url(uri, experiment_id, run_id)
