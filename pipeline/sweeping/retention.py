"""The checkpoints of a one-process sweep trial: which are kept, which one it resumes from.

Tune could prune them (`CheckpointConfig.num_to_keep`), but its list of a trial's checkpoints
is part of the experiment state it saves every few seconds. When the sweep driver is killed and
resumed, that list predates the deletions made just before the kill, and Tune's next pruning
fails on a checkpoint that is already gone, which errors the trial. So Tune keeps its whole
list and deletes nothing; the trial prunes its own directory in storage from what is actually
there, after each report. Each checkpoint carries the report it was made with
(`report.json`), which ranks it by the checkpoint metric (the step when there is none); the
best `num_to_keep` and the latest are kept, Tune's own rule.

A resumed trial continues from the highest-step complete checkpoint in its directory, not
from Tune's record of its latest, which may be older or already pruned. Tune numbers a
resumed trial's checkpoint directories from its saved state, so a directory name can be
reused for a later step; ordering by the step in `report.json` keeps that harmless.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.checkpoint import TRAINER_FILE
from pipeline.data.storage import join, open_storage

REPORT_FILE = "report.json"


@dataclass
class Stored:
    name: str
    """Directory name in the trial directory, e.g. `checkpoint_000003`."""
    keys: list[str]
    metrics: dict[str, Any] = field(default_factory=dict)

    @property
    def step(self) -> int:
        return int(self.metrics.get("step", -1))


def write_report(checkpoint_dir: str | Path, metrics: dict[str, Any]) -> None:
    """Put the report's scalar metrics beside the checkpoint files, before it is persisted."""
    scalars = {k: v for k, v in metrics.items() if isinstance(v, int | float | str | bool)}
    (Path(checkpoint_dir) / REPORT_FILE).write_text(json.dumps(scalars))


def stored(trial_uri: str) -> list[Stored]:
    """The checkpoints in a trial directory (local path or s3://), highest step first; one
    whose report is missing or unreadable sorts last."""
    storage = open_storage(trial_uri)
    found: dict[str, Stored] = {}
    for key in storage.list(""):
        name = key.split("/", 1)[0]
        if name.startswith("checkpoint_") and "/" in key:
            found.setdefault(name, Stored(name, [])).keys.append(key)
    for s in found.values():
        if f"{s.name}/{REPORT_FILE}" in s.keys:
            try:
                s.metrics = json.loads(storage.read_bytes(f"{s.name}/{REPORT_FILE}"))
            except ValueError:
                pass
    return sorted(found.values(), key=lambda s: (s.step, s.name), reverse=True)


def prune(trial_uri: str, num_to_keep: int, metric: str | None, mode: str) -> list[str]:
    """Delete all but the latest and the `num_to_keep` best checkpoints (0 keeps all); returns
    the names deleted. A checkpoint's trainer file goes first, so one whose deletion is cut
    short no longer counts as complete."""
    items = stored(trial_uri)
    if not num_to_keep or len(items) <= num_to_keep:
        return []
    sign = 1 if mode == "max" else -1

    def score(s: Stored) -> float:
        value = s.metrics.get(metric) if metric else s.step
        return sign * float(value) if isinstance(value, int | float) else -math.inf

    keep = {items[0].name} | {s.name for s in sorted(items, key=score, reverse=True)[:num_to_keep]}
    storage = open_storage(trial_uri)
    doomed = [s for s in items if s.name not in keep]
    for s in doomed:
        storage.discard(sorted(s.keys, key=lambda k: not k.endswith(f"/{TRAINER_FILE}")))
    return [s.name for s in doomed]


def resume_candidates(trial_uri: str) -> Iterator[tuple[str, Any]]:
    """(URI, context giving a local directory) of the trial's checkpoints, highest step first,
    for `pipeline.checkpoint.first_complete_checkpoint`."""
    import pyarrow.fs as pafs
    import ray.train

    uri = trial_uri if "://" in trial_uri else f"file://{trial_uri}"
    fs, root = pafs.FileSystem.from_uri(uri)
    for s in stored(trial_uri):
        checkpoint = ray.train.Checkpoint(f"{root}/{s.name}", filesystem=fs)
        yield join(trial_uri, s.name), checkpoint.as_directory()
