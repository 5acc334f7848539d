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

The directories that hold checkpoints (saving, listing, pruning, resuming) are
`pipeline.checkpoints.directory`.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
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


# ---- files beside a checkpoint's own ------------------------------------------------------------
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
