"""Checkpoint files: atomic writes with SHA-256 sidecars, verified on load; RNG capture.

A training checkpoint is one directory (handed to Ray Train, which copies it to local or
s3:// storage) holding:

- `trainer.pt` (world rank 0): model (incl. the puzzle table), both optimisers, EMA, the
  position in the schedule and data stream, the MLflow run id, the run config;
- `rank{r}.pt` (every rank r): that rank's ACT carry (examples mid-way through their ACT
  steps, so the resumed run continues them instead of restarting them) and its RNG states.

Each file `f` is written to a temp name, fsynced and renamed, with `f.sha256` beside it; a
load recomputes the digest and raises `CheckpointError` on a missing file or a mismatch, so a
truncated or corrupted checkpoint is reported instead of silently resuming from garbage.
Distinct file names per rank let Ray Train merge all ranks' files into one checkpoint.

Which checkpoint a run resumes from: `first_complete_checkpoint` takes the newest complete
one among candidates (`resume_candidates` for a Ray Train worker: its run directory in
storage and Ray Train's record; `local_checkpoints` for runs without Ray), skipping and naming
damaged or half-written ones. `stored_in` lists a directory's checkpoints newest first, by the
step in the `report.json` a sweep trial puts beside its files, else by name.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import random
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

TRAINER_FILE = "trainer.pt"
REPORT_FILE = "report.json"
"""The metrics reported with the checkpoint (sweep trials write it; it orders and ranks them)."""
UNSENT_FILE = "unsent_metrics.json"
"""Metric points rank 0's MLflow run had queued but not yet sent when the checkpoint was
written. A run resuming from the checkpoint sends them again: a process lost right after a
checkpoint (a preempted node) leaves no gap in the run's metric history. Sending a point twice
is harmless: MLflow keeps one copy of a point with the same key, step, timestamp and value."""


def rank_file(rank: int) -> str:
    return f"rank{rank}.pt"


class CheckpointError(RuntimeError):
    """A checkpoint file is missing or does not match its checksum."""


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def save(directory: str | Path, name: str, state: dict[str, Any]) -> Path:
    """Write `state` (torch-serialisable) to `directory/name` atomically with a checksum."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    torch.save(state, buf)
    data = buf.getvalue()
    path = directory / name
    _write_atomic(path, data)
    _write_atomic(path.with_name(name + ".sha256"), (_sha256(data) + "\n").encode())
    return path


def _read_verified(directory: str | Path, name: str) -> bytes:
    path = Path(directory) / name
    sidecar = path.with_name(name + ".sha256")
    if not path.is_file() or not sidecar.is_file():
        raise CheckpointError(f"checkpoint {str(directory)!r} has no {name} (or its .sha256)")
    data = path.read_bytes()
    expected = sidecar.read_text().strip()
    if _sha256(data) != expected:
        raise CheckpointError(
            f"checkpoint file {str(path)!r} is corrupted: sha256 {_sha256(data)[:12]}... "
            f"!= recorded {expected[:12]}..."
        )
    return data


def load(directory: str | Path, name: str) -> dict[str, Any]:
    """Read `directory/name`, verifying its checksum first."""
    data = _read_verified(directory, name)
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=False)


def verify(directory: str | Path) -> None:
    """`CheckpointError` unless `directory` is a complete checkpoint: `trainer.pt` and the rank
    file of every rank that wrote it, each present and matching its checksum. A checkpoint
    whose upload stopped part-way (some rank files missing) is incomplete, not resumable."""
    world = load(directory, TRAINER_FILE)["world_size"]
    for r in range(int(world)):
        _read_verified(directory, rank_file(r))


def exists(directory: str | Path, name: str) -> bool:
    return (Path(directory) / name).is_file()


def capture_rng() -> dict[str, Any]:
    """RNG states of python, numpy, torch CPU and (when present) CUDA."""
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---- the checkpoint to resume from ----------------------------------------------------------
def recorded_name(checkpoint: Any) -> str:
    """The directory name (`checkpoint_<step>`) of the checkpoint Ray Train hands over; ''
    when it hands over none."""
    return checkpoint.path.rstrip("/").rpartition("/")[2] if checkpoint is not None else ""


def resume_candidates(
    checkpoint: Any, run_dir: str, say: Callable[[str], None]
) -> Iterator[tuple[str, Any]]:
    """What a Ray Train worker may resume from, newest first: checkpoints in the run directory
    newer than the one Ray Train hands over, then that one and the older ones.

    Ray Train hands over the latest checkpoint its controller has recorded, and the controller
    records a report up to a poll interval (2 s) after the workers made it: a group that dies
    in that window, or storage that fails before the run snapshot is written, leaves complete
    checkpoints in storage that Ray Train does not know of. Resuming from an older one would
    lose more than a checkpoint interval; starting over (no record at all) would lose the run.
    """
    known = recorded_name(checkpoint)
    try:
        stored = list(stored_checkpoints(run_dir))
    except OSError as e:  # fail (Ray Train retries the group) rather than resume from less
        from pipeline.data.errors import StorageError

        raise StorageError(f"cannot list the checkpoints in {run_dir}: {e}") from e
    newer = [(name, opener) for name, opener in stored if name.rpartition("/")[2] > known]
    if newer:
        say(f"storage holds checkpoints newer than Ray Train's record ({known or 'none'}): "
            f"{', '.join(n.rpartition('/')[2] for n, _ in newer)}")  # fmt: skip
    yield from newer
    if checkpoint is not None:
        yield from _ray_checkpoints(checkpoint)


def _ray_checkpoints(checkpoint: Any) -> Iterator[tuple[str, Any]]:
    """(name, context giving a local directory) of the checkpoint Ray Train hands over, then of
    the run's older checkpoints in the same storage, newest first (names sort by step)."""
    yield checkpoint.path, checkpoint.as_directory()
    parent, _, name = checkpoint.path.rstrip("/").rpartition("/")
    for s in stored_in(checkpoint.filesystem, parent):
        if s.name < name:
            yield s.path, s.opener()


def stored_checkpoints(run_dir: str) -> Iterator[tuple[str, Any]]:
    """Candidates for `first_complete_checkpoint` in a run directory (local path or s3://):
    (URI, context giving a local directory), newest first (`stored_in`)."""
    from pipeline.data.storage import join

    for s in stored_in(*filesystem(run_dir)):
        yield join(run_dir, s.name), s.opener()


# ---- the checkpoints in a directory -----------------------------------------------------------
def write_report(directory: str | Path, metrics: dict[str, Any]) -> None:
    """Put a report's scalar metrics beside the checkpoint files (`REPORT_FILE`)."""
    scalars = {k: v for k, v in metrics.items() if isinstance(v, int | float | str | bool)}
    _write_atomic(Path(directory) / REPORT_FILE, json.dumps(scalars).encode())


def write_unsent(directory: str | Path, points: list[dict[str, Any]]) -> None:
    """Put the run's unsent metric points beside the checkpoint files (`UNSENT_FILE`)."""
    _write_atomic(Path(directory) / UNSENT_FILE, json.dumps(points).encode())


def read_unsent(directory: str | Path) -> list[dict[str, Any]]:
    """The points `write_unsent` put beside a checkpoint's files; [] when it has none."""
    path = Path(directory) / UNSENT_FILE
    return json.loads(path.read_text()) if path.is_file() else []


def read_report(directory: str | Path) -> dict[str, Any]:
    """The metrics `write_report` put beside a checkpoint's files; {} when it has none."""
    path = Path(directory) / REPORT_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


@dataclass
class Stored:
    """A checkpoint directory in storage and the report it was made with (empty if none)."""

    fs: Any
    """The `pyarrow.fs` filesystem it is on."""
    path: str
    metrics: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.path.rpartition("/")[2]

    @property
    def step(self) -> int:
        return int(self.metrics.get("step", -1))

    def opener(self) -> Any:
        """A context giving a local directory with its files (downloaded from s3://)."""
        import ray.train

        return ray.train.Checkpoint(self.path, filesystem=self.fs).as_directory()


def filesystem(uri: str) -> tuple[Any, str]:
    """(`pyarrow.fs` filesystem, path on it) of a local path or s3:// URI."""
    import pyarrow.fs as pafs

    from pipeline.data.storage import absolute

    return pafs.FileSystem.from_uri(uri if "://" in uri else f"file://{absolute(uri)}")


def stored_in(fs: Any, parent: str) -> list[Stored]:
    """The `checkpoint_*` directories under `parent`, newest first: by the step in their report
    where they have one, else by name (Ray Train names them by step; a resumed Tune trial may
    reuse a name for a later step)."""
    import pyarrow.fs as pafs

    infos = fs.get_file_info(pafs.FileSelector(parent, allow_not_found=True))
    found = [Stored(fs, i.path) for i in infos
             if i.type == pafs.FileType.Directory and i.base_name.startswith("checkpoint_")]  # fmt: skip
    for s in found:
        with contextlib.suppress(OSError, ValueError):
            with fs.open_input_stream(f"{s.path}/{REPORT_FILE}") as f:
                s.metrics = json.loads(f.read())
    return newest_first(found)


def newest_first(found: list[Stored]) -> list[Stored]:
    """Checkpoints ordered as `stored_in` orders them."""
    return sorted(found, key=lambda s: (s.step, s.name), reverse=True)


def first_complete_checkpoint(
    candidates: Iterable[tuple[str, Any]],
    stack: contextlib.ExitStack,
    say: Callable[[str], None] = print,
) -> str | None:
    """Local directory of the newest complete checkpoint among `candidates` (see
    `newest_complete`), or None when there are no candidates."""
    found = newest_complete(candidates, stack, say)
    return found[1] if found is not None else None


def newest_complete(
    candidates: Iterable[tuple[str, Any]],
    stack: contextlib.ExitStack,
    say: Callable[[str], None] = print,
) -> tuple[str, str] | None:
    """(name, local directory) of the newest complete checkpoint (`checkpoint.verify`) among
    `candidates`, (name, context giving a local directory) newest first, kept open by `stack`.
    Damaged or half-written ones are named and skipped; `CheckpointError` when there are
    checkpoints but none is complete (starting over silently would lose the run)."""
    bad = []
    for name, opener in candidates:
        with contextlib.ExitStack() as inner:
            directory = inner.enter_context(opener)
            try:
                verify(directory)
            except CheckpointError as e:
                bad.append(f"{name}: {e}")
                say(f"skipping checkpoint {name}: {e}")
                continue
            stack.enter_context(inner.pop_all())
            if bad:
                say(f"using the previous complete checkpoint {name}")
            return name, directory
    if bad:
        raise CheckpointError("no complete checkpoint: " + "; ".join(bad))
    return None


def local_checkpoints(directory: str | Path) -> Iterator[tuple[str, Any]]:
    """Candidates for `first_complete_checkpoint` under a local run directory, newest first."""
    found = sorted(Path(directory).glob("checkpoint_*")) if Path(directory).is_dir() else []
    for path in reversed(found):
        yield str(path), contextlib.nullcontext(str(path))


def latest_local_checkpoint(directory: str | Path) -> str | None:
    """The newest complete checkpoint under a local run directory, or None."""
    with contextlib.ExitStack() as stack:
        return first_complete_checkpoint(local_checkpoints(directory), stack)
