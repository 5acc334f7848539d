"""Shared fixtures, test tiers and time limits.

Tiers: every test gets markers from the fixtures it uses and the file it is in (see
`pytest_collection_modifyitems`): `ray` (a Ray cluster), `server` (moto or an MLflow server),
`infra` (terraform, kubectl, checkov), `benchmark`, `drill`, plus the hand-set `slow`; a test
with none of them is `fast`. `pytest -m fast` is the quick signal after a change; `pytest` runs
everything (CI). Each tier has its own time limit (pytest-timeout, thread method: the fuzz
drill uses SIGALRM itself).

Strict CI: a test whose tool or file is missing calls `unavailable(reason)`, which skips it on a
developer's machine and fails it under `CI=true`, where .ci/run and the repository provide all.

S3: `s3_server` starts one real S3-compatible HTTP server (moto's server mode) on a free loopback
port for the whole session and stops it by pid; `s3_env` points the standard AWS variables at it
and creates a fresh bucket per test. Code under test then talks to it through the ordinary
credential chain and `AWS_ENDPOINT_URL`, exactly as it would to a real store.

    def test_upload(s3_env):
        uri = f"s3://{s3_env.bucket}/some/prefix"      # s3_env.endpoint, s3_env.client() too
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path
from typing import NoReturn

import pytest
from hypothesis import settings
from services import MlflowServer, free_port, moto_process, postgres

from pipeline.tracking.sender import TRIAL_RETURN_S

# CI: the same examples every run (a failure there can be replayed), and a bound on how many
settings.register_profile("ci", derandomize=True, max_examples=50, deadline=None, database=None)
if os.environ.get("CI") == "true":
    settings.load_profile("ci")

# ---- tiers and time limits ------------------------------------------------------------------
FIXTURE_TIERS = {
    "ray_local": "ray", "_ray_head_cluster": "ray", "local_ray": "ray",
    "s3_server": "server", "mlflow_server": "server", "mlflow_pg_s3": "server",
}  # fmt: skip
FILE_TIERS = {"test_drill_": "drill", "test_infra_": "infra", "test_benchmarks": "benchmark"}
TIERS = ("ray", "server", "infra", "benchmark", "drill", "slow")
# seconds per test, setup and teardown included (a module's Ray cluster starts in its first
# test); the first tier a test has in this order sets its limit; fast tests keep the default
# of pyproject.toml's `timeout`
TIER_TIMEOUTS = {"drill": 2400, "slow": 2400, "benchmark": 1800, "ray": 1800, "infra": 1800,
                 "server": 900}  # fmt: skip


def pytest_collection_modifyitems(config, items):
    for item in items:
        file = Path(str(item.fspath)).name
        tiers = {t for f, t in FIXTURE_TIERS.items() if f in item.fixturenames}
        tiers |= {t for prefix, t in FILE_TIERS.items() if file.startswith(prefix)}
        for tier in tiers:
            item.add_marker(tier)
        marked = {m.name for m in item.iter_markers()}
        if not marked & set(TIERS):
            item.add_marker("fast")
        limit = next((TIER_TIMEOUTS[t] for t in TIER_TIMEOUTS if t in marked), None)
        if limit and item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(limit))


# ---- the order files run in (tests/file_order.py) --------------------------------------------
def pytest_addoption(parser):
    parser.addoption("--store-file-durations", action="store_true",
                     help="write each test file's seconds to tests/file_durations.json, which "
                          "orders the files between test processes (longest first)")  # fmt: skip


def pytest_configure(config):
    if config.getoption("store_file_durations") and not hasattr(config, "workerinput"):
        from file_order import DurationRecorder

        config.pluginmanager.register(DurationRecorder(), "trm-file-durations")


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    if config.getoption("dist") == "loadfile":
        from file_order import LongestFileFirst

        return LongestFileFirst(config, log)
    return None


def unavailable(reason: str) -> NoReturn:
    """Skip: a tool or file this test needs is missing here. Under CI=true, where .ci/run and
    the repository provide every one, fail instead, so a broken CI cannot pass by skipping."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (under CI=true a failure: CI provides it)",
                    pytrace=False)  # fmt: skip
    pytest.skip(reason)


def two_ranks(target, *args) -> dict[int, object]:
    """Run `target(rank, port, *args, out)` in two spawned processes that form a gloo group on
    127.0.0.1:port; each puts (rank, value) on `out`. Returns rank -> value."""
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=target, args=(r, port, *args, out)) for r in (0, 1)]
    for p in procs:
        p.start()
    got = dict(out.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    return got


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """Endpoint URL (http://127.0.0.1:PORT) of a moto S3 server running for the session."""
    with moto_process(tmp_path_factory.mktemp("moto") / "moto.log") as url:
        yield url


@dataclasses.dataclass
class S3Env:
    endpoint: str
    bucket: str

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1")


def s3_vars(endpoint: str) -> dict[str, str]:
    """The standard AWS variables for `endpoint` with test credentials (AWS_PROFILE and
    AWS_SESSION_TOKEN must be unset beside them)."""
    return {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}  # fmt: skip


def use_s3(monkeypatch, endpoint: str, bucket: str | None = None) -> S3Env:
    """Point the standard AWS environment at `endpoint` with test credentials; create `bucket`
    (a fresh unique name when None). Returns the S3Env."""
    for k, v in s3_vars(endpoint).items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    env = S3Env(endpoint, bucket or f"test-{uuid.uuid4().hex[:12]}")
    env.client().create_bucket(Bucket=env.bucket)
    return env


@pytest.fixture
def s3_env(s3_server, monkeypatch) -> S3Env:
    """AWS env vars pointed at the session's moto server, and a fresh empty bucket."""
    return use_s3(monkeypatch, s3_server)


# ---- training (pipeline/train.py): a real MLflow tracking server and a local Ray cluster ----
@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """URI (http://127.0.0.1:PORT) of a real `mlflow server` process with a sqlite backend and
    proxied artifacts (behind tests/services.py's request log), running for the session."""
    root = tmp_path_factory.mktemp("mlflow-server")
    with MlflowServer(root, f"sqlite:///{root / 'mlflow.db'}", str(root / "artifacts"),
                      workers=1) as server:  # fmt: skip
        yield server.url


@dataclasses.dataclass
class MlflowStack:
    url: str
    """The tracking URI (the server's request-log proxy)."""
    server: MlflowServer
    """`restart(down_s)`, `requests()`: see tests/services.py."""
    s3: S3Env
    """The bucket holding the server's artifacts; tests may use it for their own storage."""


@pytest.fixture(scope="session")
def mlflow_pg_s3(s3_server, tmp_path_factory):
    """A real `mlflow server` as the cluster runs it: PostgreSQL backend store (a server of its
    own, tests/services.py `postgres`), artifacts on the session's moto S3; for the session."""
    root = tmp_path_factory.mktemp("mlflow-pg-s3")
    mp = pytest.MonkeyPatch()
    s3 = use_s3(mp, s3_server)
    aws = {k: os.environ[k] for k in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID",
                                      "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")}  # fmt: skip
    try:
        with postgres(root) as db, MlflowServer(root, db, f"s3://{s3.bucket}/mlflow-artifacts",
                                                env={**aws, "MLFLOW_S3_ENDPOINT_URL": s3_server}
                                                ) as server:  # fmt: skip
            yield MlflowStack(server.url, server, s3)
    finally:
        mp.undo()


@dataclasses.dataclass
class RayLocal:
    s3: S3Env
    """AWS variables of every Ray process point at the session's moto server; a fresh bucket."""
    dashboard: str
    """http://host:port of this cluster's dashboard: pass as `address` to ray.util.state calls
    (auto-detection fails when other Ray clusters run on the machine)."""

    def actor_pids(self, class_name: str) -> list[int]:
        """Pids of this cluster's live actors of `class_name`, found by process title among
        this test process's descendants (`drills.actor_pids`)."""
        from drills import actor_pids

        return actor_pids(class_name)


@pytest.fixture(scope="module")
def ray_local(s3_server):
    """A real local Ray cluster (2 CPUs, dashboard on for the State API) for one test module.
    Its processes inherit AWS variables pointed at the moto server, so workers reach S3."""
    import ray

    mp = pytest.MonkeyPatch()
    env = use_s3(mp, s3_server)
    mp.setenv("RAY_TRAIN_V2_ENABLED", "1")
    # what pipeline/sweeping/run.py sets for the local clusters it starts: a reused trial
    # process waits this long for the previous trial's function to return (Tune's 2 s are
    # too short on a loaded machine)
    mp.setenv("TUNE_FUNCTION_THREAD_TIMEOUT_S", TRIAL_RETURN_S)
    # address="local": a new cluster even when /tmp/ray/ray_current_cluster names another one
    # (a `ray start` elsewhere on the machine), which ray.init() would otherwise join
    ctx = ray.init(address="local", num_cpus=2, include_dashboard=True, log_to_driver=True)
    try:
        yield RayLocal(env, f"http://{ctx.dashboard_url}")
    finally:
        ray.shutdown()
        mp.undo()


# ---- sweeps (pipeline/sweep.py): a `ray start --head` cluster on loopback --------------------
@dataclasses.dataclass
class RayHead:
    address: str
    """GCS address (127.0.0.1:PORT) for `ray.init(address=...)` / `sweep.py --address`."""
    dashboard: str
    """Job API address (http://127.0.0.1:PORT) for `ray job submit --address`."""
    env: dict
    """Environment for CLI calls against this cluster (venv first on PATH, token auth, S3)."""
    s3: S3Env | None
    """This module's bucket (None only on the session's cluster itself)."""


def _ray_head_processes(temp_dir: str) -> list:
    """This head's processes: those naming its private temp dir, and their descendants."""
    import psutil

    found = {}
    for p in psutil.process_iter(["pid", "cmdline"]):
        try:
            if any(temp_dir in part for part in p.info["cmdline"] or []):
                found[p.pid] = p
                for c in p.children(recursive=True):
                    found[c.pid] = c
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return list(found.values())


@pytest.fixture(scope="session")
def _ray_head_cluster(s3_server):
    """A real `ray start --head` cluster (2 CPUs, 4 `trial_driver` slots, dashboard and job
    API) on loopback, in a private temp dir with free ports so it never meets another Ray on
    the machine; one for the session (no test stops it; `ray_head` gives each module its own
    bucket). Its processes see AWS variables pointed at the moto server and the venv's
    python first on PATH (job entrypoints resolve `python` through the raylet's PATH). Stopped
    by pid (never `ray stop`, which stops every Ray of the user)."""
    import tempfile

    import psutil

    temp_dir = tempfile.mkdtemp(prefix="trm-ray-", dir="/tmp")  # short: unix socket paths
    venv_bin = str(Path(sys.executable).parent)
    env = {
        **{k: v for k, v in os.environ.items() if k not in ("AWS_PROFILE", "AWS_SESSION_TOKEN")},
        **s3_vars(s3_server),
        "PATH": venv_bin + os.pathsep + os.environ.get("PATH", ""),
        "RAY_AUTH_MODE": "token",
        "RAY_TRAIN_V2_ENABLED": "1",
        "TUNE_FUNCTION_THREAD_TIMEOUT_S": TRIAL_RETURN_S,  # as in ray_local
    }
    _ensure_ray_auth_token(venv_bin, env)
    gcs, dash = free_port(), free_port()
    cmd = [
        str(Path(venv_bin) / "ray"), "start", "--head", "--node-ip-address=127.0.0.1",
        f"--port={gcs}", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}",
        f"--ray-client-server-port={free_port()}", f"--dashboard-agent-listen-port={free_port()}",
        f"--dashboard-agent-grpc-port={free_port()}", f"--runtime-env-agent-port={free_port()}",
        f"--metrics-export-port={free_port()}", "--num-cpus=2",
        '--resources={"trial_driver": 4}', f"--temp-dir={temp_dir}", "--disable-usage-stats",
    ]  # fmt: skip
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    try:
        if out.returncode != 0:
            raise RuntimeError(f"ray start failed: {out.stdout}\n{out.stderr}")
        yield RayHead(f"127.0.0.1:{gcs}", f"http://127.0.0.1:{dash}", env, None)
    finally:
        procs = _ray_head_processes(temp_dir)
        for p in procs:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.terminate()
        _, alive = psutil.wait_procs(procs, timeout=3)
        for p in alive:  # gcs_server and the autoscaler monitor ignore SIGTERM for a while
            with contextlib.suppress(psutil.NoSuchProcess):
                p.kill()
        psutil.wait_procs(alive, timeout=10)
        shutil.rmtree(temp_dir, ignore_errors=True)


def _ensure_ray_auth_token(venv_bin: str, env: dict[str, str]) -> None:
    """Token authentication needs a token file; a fresh machine has none, and `ray start`
    does not make one. Generated once, never overwritten (a running cluster may use it)."""
    path = Path(env.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")
    if not path.exists() and not env.get("RAY_AUTH_TOKEN"):
        subprocess.run([str(Path(venv_bin) / "ray"), "get-auth-token", "--generate"], env=env,
                       capture_output=True, check=True, timeout=120)  # fmt: skip


@pytest.fixture(scope="module")
def ray_head(_ray_head_cluster, s3_server):
    """The session's `ray start --head` cluster, with AWS variables pointed at the moto server
    and a fresh bucket for this module."""
    mp = pytest.MonkeyPatch()
    s3 = use_s3(mp, s3_server)
    try:
        yield dataclasses.replace(_ray_head_cluster, s3=s3)
    finally:
        mp.undo()
