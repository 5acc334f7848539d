"""Real services on loopback for tests and benchmarks, each started on a free port in a
directory of the caller's and stopped by pid:

- `moto_process(log)`: an S3 (all AWS services) server, moto's server mode.
- `postgres(root)`: a PostgreSQL server of its own (Debian's `postgresql` package: `initdb` and
  `pg_ctl`, run as the `postgres` user when this process is root, since PostgreSQL refuses to
  run as root); yields its SQLAlchemy URI.
- `MlflowServer`: `mlflow server` with any backend store (PostgreSQL here, as on the cluster)
  and any artifact destination (S3 here), behind `RequestLog`, a small reverse proxy that
  writes one line per request (method, path, status, seconds), so a benchmark can count the
  requests a sweep makes and read the server's latency. `restart(down_s)` stops the server and
  starts it again on the same port (the proxy answers 502 meanwhile, as a load balancer would).

    with moto_process(log) as s3, postgres(root) as db, MlflowServer(root, db, "s3://b/a") as ml:
        ml.url   # the proxy: what clients use
        ml.requests()   # [(t, method, path, status, seconds), ...]

`python tests/services.py proxy --port P --upstream URL --log FILE` runs the proxy (the
`MlflowServer` starts it so, in its own process, so that it never competes with the caller's
threads).
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import http.client
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

PORTS_FROM = 20_000
"""Services get ports from here up to the kernel's ephemeral range, never inside it: a port
from `bind(0)` is only free until someone else binds, and Ray's many servers (in other test
workers too) bind ephemeral ports all the time; below 20000 are Ray's worker ports."""


def _ephemeral_floor() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32_768  # Linux's default


def free_port() -> int:
    """A TCP port free now on 127.0.0.1, chosen at random between `PORTS_FROM` and the
    kernel's ephemeral range, where no `bind(0)` or outgoing connection can take it before
    the service binds it (`bind(0)` when the kernel's range leaves no room)."""
    floor = _ephemeral_floor()
    for _ in range(100 if floor - PORTS_FROM > 1000 else 0):
        port = random.randrange(PORTS_FROM, floor)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def venv_tool(name: str) -> str | None:
    """`name` beside this interpreter (the venv's console scripts), else on the PATH."""
    exe = Path(sys.executable).with_name(name)
    return str(exe) if exe.exists() else shutil.which(name)


def _wait_healthy(url: str, proc: subprocess.Popen, log: Path, what: str, limit_s: float) -> None:
    deadline = time.monotonic() + limit_s
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}: {log.read_text()[-3000:]}")
        try:
            urllib.request.urlopen(url, timeout=2).close()
            return
        except (OSError, http.client.HTTPException):  # not up yet, or not ours: it exits
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"{what} not healthy after {limit_s:.0f} s: {log.read_text()[-3000:]}"
                ) from None
            time.sleep(0.2)


def _stop(proc: subprocess.Popen, group: bool, timeout: float = 15) -> None:
    """SIGTERM (to its process group when `group`), SIGKILL after `timeout` s."""
    if proc.poll() is not None:
        return
    kill = (lambda s: os.killpg(proc.pid, s)) if group else (lambda s: os.kill(proc.pid, s))
    with contextlib.suppress(ProcessLookupError):
        kill(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            kill(signal.SIGKILL)
        proc.wait()


@contextlib.contextmanager
def moto_process(log: Path, env: dict[str, str] | None = None) -> Iterator[str]:
    """A moto server (all AWS services) on a free loopback port, with `env` added to its
    environment; yields its URL once healthy and stops it by pid on exit."""
    exe = venv_tool("moto_server")
    if exe is None:
        raise RuntimeError("moto_server not installed (pip install 'moto[server]')")
    port = free_port()
    with open(log, "wb") as out:
        proc = subprocess.Popen([exe, "-H", "127.0.0.1", "-p", str(port)], stdout=out,
                                stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(f"{url}/moto-api/", proc, log, "moto_server", 30)
        yield url
    finally:
        _stop(proc, group=False, timeout=10)


# ---- PostgreSQL ----------------------------------------------------------------------------
def pg_tool(name: str) -> str:
    """Path of PostgreSQL's `name` (initdb, pg_ctl): on the PATH, else where Debian puts it."""
    found = shutil.which(name) or next(
        iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)), None
    )
    if found is None:
        raise RuntimeError(
            f"PostgreSQL's {name} not found: install the server (apt-get install -y postgresql)"
        )
    return found


def _as_postgres_user(cmd: list[str]) -> list[str]:
    # PostgreSQL refuses to run as root; Debian's package creates the `postgres` user
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


@contextlib.contextmanager
def postgres(log_dir: Path) -> Iterator[str]:
    """A PostgreSQL server of its own on a free loopback port (data in a fresh temp dir,
    trust authentication, fsync off: a throwaway database); yields
    `postgresql+psycopg2://mlflow@127.0.0.1:PORT/postgres` and stops it (`pg_ctl stop`) on exit."""
    initdb, pg_ctl = pg_tool("initdb"), pg_tool("pg_ctl")
    # its own dir under /tmp: the postgres user must reach it (pytest's tmp dirs are private)
    root = Path(tempfile.mkdtemp(prefix="trm-pg-", dir="/tmp"))
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
    data, port = root / "data", free_port()
    log = log_dir / "postgres.log"
    try:
        out = subprocess.run(_as_postgres_user([initdb, "-D", str(data), "-U", "mlflow",
                             "--auth=trust", "-E", "UTF8", "--no-sync"]),
                             capture_output=True, text=True, timeout=120)  # fmt: skip
        if out.returncode != 0:
            raise RuntimeError(f"initdb failed: {out.stdout}{out.stderr}")
        opts = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off " \
               "-c max_connections=200"  # fmt: skip
        out = subprocess.run(_as_postgres_user([pg_ctl, "-D", str(data), "-l", str(root / "pg.log"),
                             "-o", opts, "-w", "-t", "60", "start"]),
                             capture_output=True, text=True, timeout=120)  # fmt: skip
        if out.returncode != 0:
            raise RuntimeError(f"pg_ctl start failed: {out.stdout}{out.stderr}")
        yield f"postgresql+psycopg2://mlflow@127.0.0.1:{port}/postgres"
    finally:
        if (data / "postmaster.pid").exists():
            subprocess.run(_as_postgres_user([pg_ctl, "-D", str(data), "-m", "fast", "-w",
                                              "stop"]), capture_output=True, timeout=60)  # fmt: skip
        with contextlib.suppress(OSError):
            shutil.copy(root / "pg.log", log)
        shutil.rmtree(root, ignore_errors=True)


# ---- MLflow server behind a request log ------------------------------------------------------
class MlflowServer:
    """`mlflow server` (backend `backend_uri`, proxied artifacts at `artifacts`) behind a
    `RequestLog` proxy; a context manager. `url` is the proxy's; `env` is added to the server's
    environment (S3 credentials and endpoint for S3 artifacts)."""

    def __init__(self, root: Path, backend_uri: str, artifacts: str, *,
                 env: dict[str, str] | None = None, workers: int = 2) -> None:  # fmt: skip
        self.root, self.backend_uri, self.artifacts = root, backend_uri, artifacts
        self.env, self.workers = env or {}, workers
        self.port, self.proxy_port = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.proxy_port}"
        self.request_log = root / "requests.tsv"
        self._server: subprocess.Popen | None = None
        self._proxy: subprocess.Popen | None = None
        self._starts = 0

    def __enter__(self) -> MlflowServer:
        exe = venv_tool("mlflow")
        if exe is None:
            raise RuntimeError("mlflow not installed")
        self._exe = exe
        try:
            self._start_server()
            log = self.root / "proxy.log"
            with open(log, "wb") as out:
                self._proxy = subprocess.Popen(
                    [sys.executable, __file__, "proxy", "--port", str(self.proxy_port),
                     "--upstream", f"127.0.0.1:{self.port}", "--log", str(self.request_log)],
                    stdout=out, stderr=subprocess.STDOUT)  # fmt: skip
            _wait_healthy(f"{self.url}/health", self._proxy, log, "MLflow request log", 30)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        for proc, group in ((self._proxy, False), (self._server, True)):
            if proc is not None:
                _stop(proc, group)

    def _start_server(self) -> None:
        self._starts += 1
        log = self.root / f"server.{self._starts}.log"
        cmd = [self._exe, "server", "--host", "127.0.0.1", "--port", str(self.port),
               "--workers", str(self.workers), "--backend-store-uri", self.backend_uri,
               "--artifacts-destination", self.artifacts]  # fmt: skip
        # tracking needs no server-side job runner (it starts a pool of worker processes)
        env = {**os.environ, **self.env, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        with open(log, "wb") as out:
            self._server = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT,
                                            start_new_session=True, env=env)  # fmt: skip
        # a cold start creates the schema (~20 s); on a loaded machine more
        _wait_healthy(f"http://127.0.0.1:{self.port}/health", self._server, log,
                      "mlflow server", 180)  # fmt: skip

    @property
    def server_pid(self) -> int:
        """Pid of the running server, the leader of its process group (`os.killpg` pauses or
        resumes the server whole)."""
        assert self._server is not None, "the server is not running"
        return self._server.pid

    def restart(self, down_s: float = 0.0) -> float:
        """Stop the server (its whole process group), wait `down_s`, start it again on the same
        port; returns the seconds it did not answer."""
        t = time.time()
        if self._server is not None:
            _stop(self._server, group=True)
        time.sleep(down_s)
        self._start_server()
        return time.time() - t

    def requests(self) -> list[tuple[float, str, str, int, float]]:
        """(time, method, path, status, seconds) of every request the proxy has passed on."""
        out = []
        if self.request_log.exists():
            for line in self.request_log.read_text().splitlines():
                t, method, path, status, secs = line.split("\t")
                out.append((float(t), method, path, int(status), float(secs)))
        return out


def _proxy_handler(upstream: str, log: Path) -> type[BaseHTTPRequestHandler]:
    lock, local = threading.Lock(), threading.local()
    sink = open(log, "a", buffering=1)  # open for the process's life

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as clients use the server

        def log_message(self, *args: object) -> None:
            pass

        def _relay(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
            t0 = time.time()
            status, payload, rheaders = 502, b"upstream down", []
            # a kept-alive upstream connection may have been closed while idle: one retry on
            # a fresh connection before answering 502 (what a server outage gets)
            for _ in range(2):
                try:
                    conn = getattr(local, "conn", None) or http.client.HTTPConnection(
                        upstream, timeout=300
                    )
                    local.conn = conn
                    conn.request(self.command, self.path, body=body, headers=headers)
                    resp = conn.getresponse()
                    status, payload, rheaders = resp.status, resp.read(), resp.getheaders()
                    break
                except OSError:
                    conn.close()
                    local.conn = None
            secs = time.time() - t0
            with lock:
                sink.write(f"{t0:.3f}\t{self.command}\t{self.path.split('?')[0]}\t{status}\t"
                           f"{secs:.4f}\n")  # fmt: skip
            self.send_response(status)
            for k, v in rheaders:
                if k.lower() not in ("transfer-encoding", "content-length", "connection"):
                    self.send_header(k, v)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = _relay

    return Handler


def serve_proxy(port: int, upstream: str, log: Path) -> None:
    """Relay every request on 127.0.0.1:`port` to `upstream` (host:port), logging each."""
    server = ThreadingHTTPServer(("127.0.0.1", port), _proxy_handler(upstream, log))
    server.daemon_threads = True
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    server.serve_forever()


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description="tests/services.py proxy: the MLflow request log")
    ap.add_argument("command", choices=["proxy"])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--upstream", required=True)
    ap.add_argument("--log", type=Path, required=True)
    a = ap.parse_args()
    serve_proxy(a.port, a.upstream, a.log)
