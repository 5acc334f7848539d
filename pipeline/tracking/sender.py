"""The background sender of a tracked run: the training thread hands metrics and artifacts to a
bounded buffer and goes on; one thread per run sends them to MLflow, batched, and keeps what
it could not send until the server answers again.

Why not MLflow's own asynchronous logging (`log_batch(..., synchronous=False)`): its queue is
unbounded, and a batch that fails (the server away for a minute) is logged and lost. Here a
failed send stays at the head of the buffer and is tried again after a growing pause
(`RETRY_BASE_S` .. `RETRY_MAX_S`); only a full buffer drops points, and the run records how
many (`DROPPED_TAG`, `DROPPED_METRIC`) when it ends. benchmarks/tracking_overhead.py measures
the training thread's share of time in tracking calls for both."""

from __future__ import annotations

import atexit
import collections
import io
import logging
import tempfile
import threading
import time
import weakref
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any

from pipeline.tracking.prometheus import count_tracking_failure
from pipeline.tracking.server import redact

MAX_POINTS = 100_000
"""Metric points held while the server is away (a default-sweep trial logs ~30 per minute)."""
MAX_JOBS = 256
"""Artifacts (figures, JSON, text) held while the server is away."""
BATCH = 1000  # MLflow's limit of metrics per log_batch request
BATCH_WAIT_S = 1.0
"""Points are gathered this long after a send before the next one: one request per second at
most per run, however often the loop logs."""
RETRY_BASE_S, RETRY_MAX_S = 2.0, 60.0
FLUSH_TIMEOUT_S = 30.0
"""At the end of a run, how long the sender may go without sending anything before it gives
up on what it still holds (a server that is away); while sends succeed it goes on, up to
`FLUSH_CAP_S` in all (a slow or loaded server still gets the run's last figures)."""
FLUSH_CAP_S = 120.0
TRIAL_RETURN_S = str(int(FLUSH_CAP_S) + 30)
"""What sweeps set TUNE_FUNCTION_THREAD_TIMEOUT_S to: how long a reused trial process waits for
the previous trial's function to return (its run's `close`) before Tune gives up on it; Tune's
default is 2 s."""
DROPPED_TAG, DROPPED_METRIC = "trm.tracking.dropped", "tracking/dropped_points"

logger = logging.getLogger("pipeline.tracking.tracker")
_OPEN: weakref.WeakSet[Sender] = weakref.WeakSet()


@atexit.register
def send_what_is_left() -> None:
    """Wait until every sender not yet closed has sent what it holds (at most `FLUSH_CAP_S` in
    all, each giving up after `FLUSH_TIMEOUT_S` without a send); at interpreter exit, and when
    Tune stops a sweep trial (`pipeline/sweeping/run.py`). Senders run on daemon threads, so
    without this a process that ends before its run's `close` is done loses the queue: Tune
    ends a trial's process right after it stopped the trial (ASHA, the budget) without waiting
    for the trial's function, and atexit handlers only run when that end is graceful."""
    deadline = time.monotonic() + FLUSH_CAP_S
    for sender in list(_OPEN):
        sender.flush(cap_s=max(0.0, deadline - time.monotonic()))


class Sender:
    """Sends a run's metrics and artifacts from its own thread (`put_metrics`, `put_job`);
    `close` sends what is left (at most `FLUSH_TIMEOUT_S`) and stops the thread."""

    def __init__(self, client: Any, run_id: str, uri: str, max_points: int = MAX_POINTS,
                 max_jobs: int = MAX_JOBS):  # fmt: skip
        self.client, self.run_id, self.uri = client, run_id, uri
        self.max_points, self.max_jobs = max_points, max_jobs
        self.dropped_points = self.dropped_jobs = 0
        self.sent_points = 0
        self._done = 0  # sends that succeeded (batches and jobs): what `flush` watches
        self._metrics: collections.deque = collections.deque()
        self._jobs: collections.deque[tuple[str, Callable[[], None]]] = collections.deque()
        self._cond = threading.Condition()
        self._closing, self._abandon = False, False
        self._failures, self._waited = 0, 0
        self._thread = threading.Thread(target=self._loop, name="mlflow-sender", daemon=True)
        self._thread.start()
        _OPEN.add(self)

    # ---- the training thread's side --------------------------------------------------------
    def put_metrics(self, items: list[Any]) -> None:
        """Queue metric points (`mlflow.entities.Metric`); those that do not fit are counted."""
        with self._cond:
            room = max(0, self.max_points - len(self._metrics))
            if len(items) > room:
                self._overflow(len(items) - room, "metric point(s)")
                self.dropped_points += len(items) - room
                count_tracking_failure("dropped", len(items) - room)
                items = items[:room]
            self._metrics.extend(items)
            self._cond.notify()

    def put_job(self, what: str, job: Callable[[], None]) -> None:
        """Queue an upload (`job()` raises when the server fails; it is then called again)."""
        with self._cond:
            if len(self._jobs) >= self.max_jobs:
                self._overflow(1, f"artifact(s) ({what})")
                self.dropped_jobs += 1
                count_tracking_failure("dropped")
                return
            self._jobs.append((what, job))
            self._cond.notify()

    def _overflow(self, n: int, what: str) -> None:
        if not (self.dropped_points or self.dropped_jobs):  # one line per run
            logger.warning(
                f"[tracking] MLflow {redact(self.uri)}: the send buffer is full; dropping {n} "
                f"{what} (the run records the count as {DROPPED_METRIC} when it ends)"
            )

    def unsent_metrics(self) -> list[Any]:
        """The metric points queued and not yet sent (a batch being sent counts as unsent)."""
        with self._cond:
            return list(self._metrics)

    def flush(self, idle_s: float = FLUSH_TIMEOUT_S, cap_s: float = FLUSH_CAP_S) -> bool:
        """Wait until everything queued so far is sent, as long as sends go on succeeding:
        at most `idle_s` without one, `cap_s` in all; whether everything was sent."""
        end = time.monotonic() + cap_s
        with self._cond:
            self._cond.notify()
            while self._pending() and self._thread.is_alive():
                done, left = self._done, min(idle_s, end - time.monotonic())
                if left <= 0 or not self._cond.wait_for(
                    lambda done=done: not self._pending() or self._done != done, timeout=left
                ):
                    break
            return not self._pending()

    def close(self, idle_s: float = FLUSH_TIMEOUT_S, cap_s: float = FLUSH_CAP_S) -> None:
        """Send what is held (`flush`), then stop; what is still held then counts as dropped."""
        with self._cond:
            self._closing = True
        if self.flush(idle_s, cap_s):  # all sent: the thread ends at once
            self._thread.join(1.0)
        _OPEN.discard(self)
        with self._cond:
            self._abandon = True
            self._cond.notify()
            if self._metrics or self._jobs:
                self.dropped_points += len(self._metrics)
                self.dropped_jobs += len(self._jobs)
                count_tracking_failure("dropped", len(self._metrics) + len(self._jobs))
                logger.warning(
                    f"[tracking] MLflow {redact(self.uri)}: {len(self._metrics)} metric "
                    f"point(s) and {len(self._jobs)} artifact(s) not sent by the run's end (no "
                    f"send succeeded for {idle_s:.0f} s, or {cap_s:.0f} s passed): dropped"
                )
                self._metrics.clear()
                self._jobs.clear()

    @property
    def dropped(self) -> int:
        return self.dropped_points + self.dropped_jobs

    # ---- the sender thread -----------------------------------------------------------------
    def _loop(self) -> None:
        last_send = 0.0
        while True:
            with self._cond:
                self._cond.wait_for(
                    lambda: self._abandon or self._closing or len(self._metrics) >= BATCH,
                    timeout=max(0.0, last_send + BATCH_WAIT_S - time.monotonic()),
                )
                self._cond.wait_for(lambda: self._abandon or self._closing or self._pending())
                if self._abandon or (self._closing and not self._pending()):
                    return
                batch = [self._metrics[i] for i in range(min(BATCH, len(self._metrics)))]
                what, job = ("metrics", None) if batch else self._jobs[0]
            last_send = time.monotonic()
            try:
                if batch:
                    self.client.log_batch(self.run_id, metrics=batch)
                else:
                    job()
            except Exception as e:
                self._failed(what, e)
                continue
            self._sent(len(batch))

    def _pending(self) -> bool:
        return bool(self._metrics or self._jobs)

    def _sent(self, points: int) -> None:
        with self._cond:
            if self._abandon:  # `close` gave up during this send and counted it as dropped
                return
            for _ in range(points):
                self._metrics.popleft()
            if not points:
                self._jobs.popleft()
            self.sent_points += points
            self._done += 1
            held = len(self._metrics) + len(self._jobs)
            self._cond.notify_all()  # a `flush` waiting
        if self._failures:
            logger.warning(
                f"[tracking] MLflow {redact(self.uri)} answers again; sending the {held} "
                f"item(s) held while it was away ({self._failures} failed tries)"
            )
            self._failures = 0

    def _failed(self, what: str, e: Exception) -> None:
        """Log the failure (once per pause) and wait before the next try; the item stays."""
        self._failures += 1
        count_tracking_failure("failed")
        pause = min(RETRY_MAX_S, RETRY_BASE_S * 2 ** (self._failures - 1))
        first = (str(e).strip().splitlines() or [""])[0][:200]
        logger.warning(
            f"[tracking] MLflow {redact(self.uri)}: sending {what} failed ({type(e).__name__}: "
            f"{first}); training goes on, the data is kept and sent again in {pause:.0f} s"
        )
        with self._cond:
            self._cond.wait_for(lambda: self._abandon, timeout=pause)


def upload_bytes(client: Any, run_id: str, data: bytes, artifact_file: str) -> None:
    """Upload `data` as the artifact `artifact_file` (e.g. `plots/x.png`) of run `run_id`."""
    path = PurePosixPath(artifact_file)
    with tempfile.TemporaryDirectory(prefix="trm-artifact-") as d:
        local = Path(d) / path.name
        local.write_bytes(data)
        client.log_artifact(run_id, str(local), str(path.parent) if path.parent.name else None)


def png_bytes(fig: Any) -> bytes:
    """A matplotlib figure as PNG bytes; the figure is closed."""
    import matplotlib.pyplot as plt

    try:
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=100)
        return buf.getvalue()
    finally:
        plt.close(fig)


class FigureJob:
    """An upload job that draws its figure on its first call (on the sender's thread, not the
    training loop's), then uploads the PNG; a failed upload keeps the PNG for the next try."""

    def __init__(self, client: Any, run_id: str, make: Callable[[], Any], artifact_file: str):
        self.client, self.run_id, self.make, self.path = client, run_id, make, artifact_file
        self.png: bytes | None = None

    def __call__(self) -> None:
        if self.png is None:
            try:
                self.png = png_bytes(self.make())
            except Exception as e:  # a drawing bug: not the server's, never tried again
                logger.warning(f"[tracking] figure {self.path} not drawn: {type(e).__name__}: {e}")
                return
        upload_bytes(self.client, self.run_id, self.png, self.path)
