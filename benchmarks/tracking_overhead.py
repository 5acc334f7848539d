"""The training thread's share of time spent in MLflow tracking calls, measured in the trial's
own loop (`pipeline.training.worker.run_in_process`, what a 1-worker sweep trial runs) at the
default sweep's logging rates (sweeps/default.yaml: metrics every 100 steps, an evaluation
with its depth/halt curves and 2 refinement pictures every 100 steps), against a real
`mlflow server` (sqlite backend, proxied artifacts) started here.

Three ways of sending, the same run each time:

    sync          every call sends on the training thread (log_batch, figures drawn and
                  uploaded there): what the loop did before pipeline/tracking/sender.py
    mlflow_async  metrics through MLflow's own `log_batch(..., synchronous=False)`; artifacts
                  and figures still on the training thread (MLflow has no asynchronous upload)
    sender        the project's background sender (pipeline/tracking/sender.py): every call
                  only queues; figures are drawn and uploaded on the sender's thread

For each: seconds inside tracking calls on the training thread, the loop's wall time (run start
and end excluded), their ratio, and the seconds `finish` took (the sender's flush).

    python benchmarks/tracking_overhead.py            # 300 steps per way
    python benchmarks/tracking_overhead.py --quick    # 40 steps, rates 10x (the tests)
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.common import machine, save, table  # noqa: E402

CALLS = ("log_metrics", "log_figure", "log_bytes", "log_dict", "log_text", "log_dataset",
         "set_tags")  # fmt: skip
MODES = ("sync", "mlflow_async", "sender")


@contextlib.contextmanager
def mlflow_server(root: Path):
    """A real `mlflow server` on a free loopback port; stopped by pid (its process group)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    exe = shutil.which("mlflow") or str(Path(sys.executable).with_name("mlflow"))
    cmd = [exe, "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
           "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
           "--artifacts-destination", str(root / "artifacts")]  # fmt: skip
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    with open(root / "server.log", "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                urllib.request.urlopen(f"{url}/health", timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError((root / "server.log").read_text()[-2000:]) from None
                time.sleep(0.25)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


class InlineSender:
    """Sends on the caller's thread, as the tracker did before the background sender
    (`mlflow_async`: metrics through MLflow's asynchronous log_batch, flushed at close)."""

    dropped = dropped_points = dropped_jobs = 0

    def __init__(self, client: Any, run_id: str, mlflow_async: bool):
        self.client, self.run_id, self.mlflow_async, self.pending = client, run_id, mlflow_async, []

    def put_metrics(self, items: list[Any]) -> None:
        if self.mlflow_async:
            self.pending.append(self.client.log_batch(self.run_id, metrics=items,
                                                      synchronous=False))  # fmt: skip
        else:
            self.client.log_batch(self.run_id, metrics=items)

    def put_job(self, what: str, job: Any) -> None:
        job()

    def unsent_metrics(self) -> list[Any]:
        return []  # every point has gone out by the time put_metrics returns

    def close(self, timeout_s: float = 0) -> None:
        for op in self.pending:
            op.wait()


class Timed:
    """The run's tracker, with the time spent inside each logging call summed."""

    def __init__(self, inner: Any):
        self.inner, self.in_calls, self.calls, self.finish_s = inner, 0.0, 0, 0.0

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.inner, name)
        if name not in CALLS and name != "finish":
            return attr

        def timed(*a: Any, **kw: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return attr(*a, **kw)
            finally:
                dt = time.perf_counter() - t0
                if name == "finish":
                    self.finish_s += dt
                else:
                    self.in_calls, self.calls = self.in_calls + dt, self.calls + 1

        return timed


def measure(cfg: Any, mode: str, storage: Path) -> dict[str, Any]:
    """One run of `cfg` with tracking sent the `mode` way."""
    import pipeline.training.worker as worker
    from pipeline.tracking.tracker import Tracker
    from pipeline.training.worker import RunInfo, run_in_process

    made: list[Timed] = []
    started: list[float] = []

    def start(enabled: bool, **kw: Any) -> Timed:
        t0 = time.perf_counter()
        tracker = Tracker(**kw)
        if mode != "sender":
            tracker.sender.close()
            tracker.sender = InlineSender(tracker.client, tracker.run_id, mode == "mlflow_async")
        made.append(Timed(tracker))
        started.append(time.perf_counter() - t0)
        return made[-1]

    original, worker.start_tracker = worker.start_tracker, start
    info = RunInfo(name=f"overhead-{mode}", run_key=f"{storage}/overhead-{mode}",
                   tracking_uri=cfg.tracking.uri)  # fmt: skip
    try:
        t0 = time.perf_counter()
        run_in_process(cfg, info, report=lambda m, d: None)
        wall = time.perf_counter() - t0
    finally:
        worker.start_tracker = original
    t = made[0]
    loop_s = wall - started[0] - t.finish_s
    return {"mode": mode, "steps": cfg.schedule.steps, "calls": t.calls,
            "in_calls_s": round(t.in_calls, 3), "loop_s": round(loop_s, 2),
            "share": round(t.in_calls / loop_s, 4), "finish_s": round(t.finish_s, 2),
            "dropped": t.inner.sender.dropped}  # fmt: skip


def run_config(data: str, uri: str, storage: Path, quick: bool, steps: int) -> Any:
    """The default sweep's base (its logging and evaluation rates) on `data`."""
    from pipeline.config.run import RunConfig
    from pipeline.sweeping.config import SweepConfig

    sweep = SweepConfig.from_yaml(ROOT / "sweeps" / "default.yaml", [])
    over = [f"data.uri={data}", f"schedule.steps={steps}", f"tracking.uri={uri}",
            "tracking.enabled=true", f"checkpoint.storage_path={storage}",
            f"checkpoint.every={steps}"]  # fmt: skip
    if quick:  # rates 10x, so a short run still logs and evaluates several times
        over += ["schedule.log_every=10", "eval.every=10", "model.hidden_size=16",
                 "model.num_heads=2"]  # fmt: skip
    return RunConfig.from_dict(sweep.base).with_overrides(over), sweep


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--out", default=None)
    args = p.parse_args()
    import torch

    from pipeline.data import build_sudoku

    torch.set_num_threads(1)
    measured_on = machine(torch.device("cpu"), "wall")  # the load before the runs
    steps = 40 if args.quick else args.steps
    with tempfile.TemporaryDirectory(prefix="trm-overhead-") as d, mlflow_server(Path(d)) as uri:
        data = str(Path(d) / "data")
        cfg, sweep = run_config(data, uri, Path(d) / "runs", args.quick, steps)
        ds = {k: v for k, v in sweep.dataset.items() if k != "builder"}
        if args.quick:
            ds.update(num_train=256, num_test=64)
        build_sudoku(data, **ds)
        rows = [measure(cfg, mode, Path(d) / "runs") for mode in MODES]
    print(table(rows, [("mode", "way"), ("calls", "calls"), ("in_calls_s", "s in calls"),
                       ("loop_s", "loop s"), ("share", "share"), ("finish_s", "finish s"),
                       ("dropped", "dropped")]))  # fmt: skip
    result = {"machine": measured_on, "command": sys.argv,
              "rates": {"log_every": cfg.schedule.log_every, "eval_every": cfg.eval.every,
                        "num_pictures": cfg.eval.num_pictures}, "runs": rows}  # fmt: skip
    save(result, "tracking_overhead", torch.device("cpu"), args.quick, args.out)


if __name__ == "__main__":
    main()
