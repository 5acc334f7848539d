"""What a sweep keeps beside its Tune experiment (`<storage>/<sweep name>/`): the sweep file as
given and as resolved when it first started (a resumed sweep runs the stored one), and one
record per ended trial (so a trial that ended just before the driver died is not trained
again on `--resume`). `SweepListing` reads all of it for the end of a sweep with one listing."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import yaml

from pipeline.config.run import CheckpointConfig, ConfigError
from pipeline.data.storage import absolute, open_storage
from pipeline.sweeping.config import SweepConfig

STORED_SWEEP = "sweep.yaml"
STORED_RESOLVED = "sweep.resolved.yaml"
TRIALS_DIR = "trials"
COMPLETED_DIR = "completed"
FAILED_DIR = "failed"
ATTEMPTS_DIR = "attempts"
# keys Tune adds to every result; a trial's own metrics are the rest
_TUNE_KEYS = {"done", "training_iteration", "trial_id", "date", "timestamp", "time_this_iter_s",
              "time_total_s", "pid", "hostname", "node_ip", "time_since_restore",
              "iterations_since_restore", "checkpoint_dir_name", "config", "experiment_tag",
              "should_checkpoint"}  # fmt: skip


def storage_text(where: Any, key: str) -> str | None:
    """The text stored at `key` under `where` (a URI, or its open storage), None if none."""
    store = _storage(where)
    return store.read_bytes(key).decode() if store.exists(key) else None


def load_sweep(
    path: str | Path,
    overrides: Sequence[str],
    storage: str | None,
    name: str | None = None,
    checkpoint: str | None = None,
) -> tuple[SweepConfig, str, str]:
    """(sweep, its file's text, experiment path = storage root / sweep name)."""
    sweep = SweepConfig.from_yaml(path, list(overrides), name=name, checkpoint=checkpoint)
    default = sweep.base.get("checkpoint", {}).get(
        "storage_path", CheckpointConfig.model_fields["storage_path"].default
    )
    root = absolute(storage or default)
    return sweep, Path(path).read_text(), f"{root}/{sweep.name}"


def store_sweep(exp_path: str, sweep: SweepConfig, sweep_text: str) -> None:
    """Keep the sweep file as given and as resolved beside the experiment."""
    store = open_storage(exp_path)
    store.write_bytes(STORED_SWEEP, sweep_text.encode())
    store.write_bytes(STORED_RESOLVED, resolved_text(sweep).encode())


def resolved_text(sweep: SweepConfig) -> str:
    return yaml.safe_dump(sweep.to_dict(), sort_keys=False)


def sweep_started(exp_path: str) -> bool:
    """Whether a sweep was started at `exp_path` (its file is stored there before any trial)."""
    return open_storage(exp_path).exists(STORED_RESOLVED)


def stored_sweep(sweep: SweepConfig, exp_path: str) -> tuple[SweepConfig, str]:
    """The sweep (and file text) stored when the sweep at `exp_path` first started: a resumed
    sweep must not change under its trials, so it wins over the file given now."""
    stored = storage_text(exp_path, STORED_RESOLVED)
    if stored is None:
        raise ConfigError(
            f"--resume: no sweep was started at {exp_path} (no {STORED_RESOLVED}); "
            "run without --resume to start it"
        )
    old = SweepConfig.from_dict(yaml.safe_load(stored))
    if old.to_dict() != sweep.to_dict():
        print(
            f"[sweep] note: the sweep file (with --set) differs from the one stored at "
            f"{exp_path}; resuming the stored one",
            flush=True,
        )
    return old, storage_text(exp_path, STORED_SWEEP) or ""


def _storage(where: Any) -> Any:
    """`where` as storage: a sweep directory's URI is opened; an open storage (the driver keeps
    one per sweep: a new S3 client costs ~0.15 s of CPU) is used as it is."""
    return open_storage(where) if isinstance(where, str) else where


def record_completed(where: Any, trial_id: str, result: dict[str, Any]) -> None:
    """Record (durably, beside the experiment) that a trial ended, with its final metrics.
    `where`: the sweep directory, or its open storage."""
    own = {k: v for k, v in result.items()
           if k not in _TUNE_KEYS and isinstance(v, (int, float, str, bool))}  # fmt: skip
    _storage(where).write_bytes(f"{COMPLETED_DIR}/{trial_id}.json", json.dumps(own).encode())


def completed_result(exp_path: str, trial_id: str) -> dict[str, Any] | None:
    """The final metrics `record_completed` kept for a trial, None if it has not ended."""
    text = storage_text(exp_path, f"{COMPLETED_DIR}/{trial_id}.json")
    return json.loads(text) if text is not None else None


def record_failed(exp_path: str, trial_id: str, line: str) -> None:
    """Record (durably) that a trial stopped on an error its input makes every time."""
    open_storage(exp_path).write_bytes(f"{FAILED_DIR}/{trial_id}.txt", line.encode())


def failed_line(where: Any, trial_id: str) -> str | None:
    """The one-line error `record_failed` kept for a trial, None if it has none. `where`: the
    sweep directory, or its open storage."""
    return storage_text(where, f"{FAILED_DIR}/{trial_id}.txt")


READERS = 16
"""Concurrent reads of small files at the end of a sweep (one shared client)."""


class SweepListing:
    """Everything under a sweep's directory, listed once (one paginated listing on S3 instead
    of one listing and a few HEAD requests per trial), read through one storage client: the
    failed-trial records, the attempt records and every trial's checkpoints with their reports
    (`checkpoints`)."""

    def __init__(self, exp_path: str) -> None:
        from pipeline.checkpoints.store import REPORT_FILE

        self.exp_path = exp_path.rstrip("/")
        self.store = open_storage(self.exp_path)
        keys = set(self.store.list())
        self._failed = {k.removeprefix(f"{FAILED_DIR}/").removesuffix(".txt")
                        for k in keys if k.startswith(f"{FAILED_DIR}/")}  # fmt: skip
        self._checkpoints: dict[str, set[str]] = {}  # directory -> checkpoint names
        reports = []
        for key in keys:
            parts = key.split("/")
            for i, part in enumerate(parts[:-1]):
                if part.startswith("checkpoint_"):
                    self._checkpoints.setdefault("/".join(parts[:i]), set()).add(part)
                    if parts[i + 1 :] == [REPORT_FILE]:
                        reports.append(key)
                    break
        # every trial that started has an attempt record: read side by side with the reports
        # (one by one they were most of the end of a 1,000-trial sweep)
        attempts = [k for k in keys if k.startswith(f"{ATTEMPTS_DIR}/")]
        with ThreadPoolExecutor(READERS) as pool:  # the shared client is thread-safe
            read = dict(zip(reports + attempts, pool.map(self._read_json, reports + attempts)))
        self._reports = {k: read[k] for k in reports}
        self._attempts = {k: read[k] for k in attempts}

    def failed_line(self, trial_id: str) -> str | None:
        """As `failed_line`, from the listing (a read only for trials that have a record)."""
        if trial_id not in self._failed:
            return None
        return self.store.read_bytes(f"{FAILED_DIR}/{trial_id}.txt").decode()

    def checkpoints(self, directory: str) -> list[Any]:
        """The `checkpoint_*` directories under `directory` (a URI under the sweep directory)
        with their reports, as `pipeline.checkpoints.directory.Stored`, ordered as `stored_in`
        orders them."""
        from pipeline.checkpoints.directory import Stored, newest_first
        from pipeline.checkpoints.store import REPORT_FILE

        rel = directory.removeprefix(self.exp_path).strip("/")
        return newest_first([
            Stored(None, f"{directory}/{name}",
                   self._reports.get(f"{rel}/{name}/{REPORT_FILE}", {}))
            for name in self._checkpoints.get(rel, ())
        ])  # fmt: skip

    def _read_json(self, key: str) -> dict[str, Any]:
        try:
            return json.loads(self.store.read_bytes(key))
        except (OSError, ValueError):  # a half-written report: as `stored_in`, no metrics
            return {}

    def preemptions(self, trial_id: str) -> int:
        """The trial's lost attempts (`trial_attempts`; 0 without a record)."""
        return self._attempts.get(f"{ATTEMPTS_DIR}/{trial_id}.json", {}).get("lost", 0)


def trial_attempts(exp_path: str, trial_id: str) -> dict[str, Any]:
    """A trial's attempt record: `lost` (attempts that went away with their node, or with their
    process after reaching a new checkpoint: preemption, node failure, a stopped driver),
    `errors` (attempts that failed on their own, including those whose process went away
    without progress on a node still alive), `open`, `step` and `node` (the attempt now
    running, the checkpoint step it started from, the Ray node it runs on)."""
    text = storage_text(exp_path, f"{ATTEMPTS_DIR}/{trial_id}.json")
    return json.loads(text) if text else {"lost": 0, "errors": 0, "open": False, "step": -1}


def begin_attempt(
    exp_path: str,
    trial_id: str,
    step: int,
    node: str = "",
    node_alive: Callable[[str], bool] = lambda node: True,
) -> dict[str, Any]:
    """Record that an attempt of the trial starts from checkpoint `step` (-1: none) on Ray node
    `node`. A previous attempt still open went away without an error of its own: lost if its
    node is gone (`node_alive`) or it got further than it started (a checkpoint of a higher
    step exists now), else an error (a process that dies before its first checkpoint every
    time on a node that stays up, say from memory, must not retry forever)."""
    a = trial_attempts(exp_path, trial_id)
    if a["open"]:
        before = a.get("node", "")
        # node_alive may wait for Ray to declare a node dead: asked only when it decides
        lost = step > a["step"] or (before not in ("", node) and not node_alive(before))
        a["lost" if lost else "errors"] += 1
    a.update(open=True, step=step, node=node)
    _write_attempts(exp_path, trial_id, a)
    return a


def end_attempt_with_error(exp_path: str, trial_id: str) -> int:
    """Record that the running attempt failed on its own; returns the trial's error count."""
    a = trial_attempts(exp_path, trial_id)
    a.update(open=False, errors=a["errors"] + 1)
    _write_attempts(exp_path, trial_id, a)
    return a["errors"]


def _write_attempts(exp_path: str, trial_id: str, a: dict[str, Any]) -> None:
    open_storage(exp_path).write_bytes(f"{ATTEMPTS_DIR}/{trial_id}.json", json.dumps(a).encode())
