"""The checkpoints of a one-process sweep trial: where they are kept, which are kept, which
one a retried or resumed trial continues from.

The trial writes them to its directory in storage itself (`persist`, named by step) and
reports only metrics to Tune. Handing them to Tune instead ties resuming to Tune's record of a
trial's checkpoints, which is part of the experiment state Tune saves every few seconds (and
syncs to storage less often): after the sweep driver is killed and resumed, that record
predates the last checkpoints and deletions, and Tune refuses to restore a trial whose recorded
latest checkpoint is gone ("does not exist on storage anymore") or fails pruning one that is.

After each checkpoint the trial prunes its directory from what is actually there: the latest
and the `checkpoint.num_to_keep` best by `checkpoint.metric` (the step when there is none)
stay, Tune's own rule; each checkpoint's `report.json` holds its metrics. A retried or resumed
trial continues from the newest complete checkpoint there
(`pipeline.checkpoints.store.stored_checkpoints`).
"""

from __future__ import annotations

import contextlib
import math
from pathlib import Path

from pipeline.checkpoints import store as ckpt
from pipeline.data.storage import join


def persist(local_dir: str | Path, trial_uri: str, step: int) -> str:
    """Copy a checkpoint to `<trial_uri>/checkpoint_<step>` (local path or s3://); returns its
    URI. The trainer file goes last, so a copy cut short is not a complete checkpoint."""
    import pyarrow.fs as pafs

    fs, root = ckpt.filesystem(trial_uri)
    name = f"checkpoint_{step:08d}"
    fs.create_dir(f"{root}/{name}")
    files = sorted(Path(local_dir).iterdir(), key=lambda f: f.name == ckpt.TRAINER_FILE)
    for f in files:
        pafs.copy_files(str(f), f"{root}/{name}/{f.name}", destination_filesystem=fs)
    return join(trial_uri, name)


def prune(trial_uri: str, num_to_keep: int, metric: str | None, mode: str) -> list[str]:
    """Delete all but the latest and the `num_to_keep` best checkpoints in a trial directory
    (local path or s3://; 0 keeps all); returns the names deleted. A checkpoint's trainer file
    goes first, so one whose deletion is cut short no longer counts as complete, and one
    already gone is no error."""
    fs, root = ckpt.filesystem(trial_uri)
    items = ckpt.stored_in(fs, root)
    if not num_to_keep or len(items) <= num_to_keep:
        return []
    sign = 1 if mode == "max" else -1

    def score(s: ckpt.Stored) -> float:
        value = s.metrics.get(metric) if metric else s.step
        return sign * float(value) if isinstance(value, int | float) else -math.inf

    keep = {items[0].path} | {s.path for s in sorted(items, key=score, reverse=True)[:num_to_keep]}
    doomed = [s for s in items if s.path not in keep]
    for s in doomed:
        with contextlib.suppress(FileNotFoundError):
            fs.delete_file(f"{s.path}/{ckpt.TRAINER_FILE}")
        with contextlib.suppress(FileNotFoundError):
            fs.delete_dir(s.path)
    return [s.name for s in doomed]


def best_checkpoint(
    directory: str, metric: str, mode: str, stored: list[ckpt.Stored] | None = None
) -> tuple[str, int]:
    """(URI, step) of the checkpoint in a run's or trial's checkpoint directory (local path or
    s3://) with the best `metric` in its report (ties: the earliest, the step that first
    reached it), else of its newest; ('', 0) when it has none. `stored`: the directory's
    checkpoints when the caller has listed them already (a sweep lists all trials at once)."""
    if stored is None:
        stored = ckpt.stored_in(*ckpt.filesystem(directory))
    sign = 1 if mode == "max" else -1
    scored = [s for s in stored if isinstance(s.metrics.get(metric), int | float)]
    best = max(scored, key=lambda s: (sign * s.metrics[metric], -s.step)) if scored else None
    best = best or (stored[0] if stored else None)
    return (join(directory, best.name), max(best.step, 0)) if best else ("", 0)
