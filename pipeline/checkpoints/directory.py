"""The checkpoint store: a run's or a trial's checkpoint directory (a local path or s3://) holding
one `checkpoint_<step>` directory per checkpoint, and everything done to it. `CheckpointStore`
saves into it, lists it (`stored_in`, the one listing), prunes it to the latest and the best,
ranks it and finds the newest complete checkpoint to resume from.

Who saves and prunes: a one-process sweep trial and a `train.py --local` run save each
checkpoint here themselves (`save`, the trainer file last so a copy cut short is not complete)
and prune after it (`prune`: the latest and the `checkpoint.num_to_keep` best by
`checkpoint.metric`, or by step when there is none: Ray Train's own rule). A one-process trial
reports only metrics to Tune: handing checkpoints to Tune would tie resuming to Tune's record
of them, which is part of the experiment state Tune saves every few seconds; after the sweep
driver is killed and resumed, that record predates the last checkpoints and deletions, and
Tune refuses to restore a trial whose recorded latest checkpoint is gone.

A Ray Train worker group's checkpoints are saved and pruned by Ray Train (every rank's files
merge into one directory; its controller deletes by its own record, which a second pruner
would leave pointing at deleted checkpoints); listing, ranking and resuming go through this
module for them too (`resume_candidates` adds Ray Train's record to the listing).

Listed newest first: by the step in the `report.json` beside a checkpoint's files where it has
one, else by name (Ray Train names them by step; a resumed Tune trial may reuse a name for a
later step). `newest_complete` skips and names damaged or half-written checkpoints.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.checkpoints.store import REPORT_FILE, TRAINER_FILE, CheckpointError, verify
from pipeline.data.storage import join


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
        import pyarrow.fs as pafs

        if isinstance(self.fs, pafs.LocalFileSystem):
            return contextlib.nullcontext(self.path)
        import ray.train

        return ray.train.Checkpoint(self.path, filesystem=self.fs).as_directory()


def filesystem(uri: str) -> tuple[Any, str]:
    """(`pyarrow.fs` filesystem, path on it) of a local path or s3:// URI."""
    import pyarrow.fs as pafs

    from pipeline.data.storage import absolute

    return pafs.FileSystem.from_uri(uri if "://" in uri else f"file://{absolute(uri)}")


def stored_in(fs: Any, parent: str) -> list[Stored]:
    """The `checkpoint_*` directories under `parent`, newest first (see the module docstring)."""
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


@dataclass(frozen=True)
class CheckpointStore:
    """The checkpoint directory at `uri` (a local path or s3://)."""

    uri: str

    def stored(self) -> list[Stored]:
        """Its checkpoints, newest first."""
        return stored_in(*filesystem(self.uri))

    def candidates(self) -> Iterator[tuple[str, Any]]:
        """(URI, context giving a local directory) of each checkpoint, newest first: what
        `newest_complete` picks from."""
        for s in self.stored():
            yield join(self.uri, s.name), s.opener()

    def newest_complete(self, stack: contextlib.ExitStack,
                        say: Callable[[str], None] = print) -> tuple[str, str] | None:  # fmt: skip
        """(URI, local directory) of its newest complete checkpoint, kept open by `stack`, or
        None when it has none (`newest_complete`)."""
        return newest_complete(self.candidates(), stack, say)

    def save(self, local_dir: str | Path, step: int) -> str:
        """Copy the checkpoint in `local_dir` to `checkpoint_<step>`; its URI. The trainer file
        goes last, so a copy cut short is not a complete checkpoint."""
        import pyarrow.fs as pafs

        fs, root = filesystem(self.uri)
        name = f"checkpoint_{step:08d}"
        fs.create_dir(f"{root}/{name}")
        files = sorted(Path(local_dir).iterdir(), key=lambda f: f.name == TRAINER_FILE)
        for f in files:
            pafs.copy_files(str(f), f"{root}/{name}/{f.name}", destination_filesystem=fs)
        return join(self.uri, name)

    def prune(self, num_to_keep: int, metric: str | None, mode: str) -> list[str]:
        """Delete all but the latest and the `num_to_keep` best checkpoints (0 keeps all);
        the names deleted. A checkpoint's trainer file goes first, so one whose deletion is cut
        short no longer counts as complete; one already gone is no error."""
        fs, root = filesystem(self.uri)
        items = stored_in(fs, root)
        if not num_to_keep or len(items) <= num_to_keep:
            return []
        sign = 1 if mode == "max" else -1

        def score(s: Stored) -> float:
            value = s.metrics.get(metric) if metric else s.step
            return sign * float(value) if isinstance(value, int | float) else -math.inf

        best = sorted(items, key=score, reverse=True)[:num_to_keep]
        keep = {items[0].path} | {s.path for s in best}
        doomed = [s for s in items if s.path not in keep]
        for s in doomed:
            with contextlib.suppress(FileNotFoundError):
                fs.delete_file(f"{s.path}/{TRAINER_FILE}")
            with contextlib.suppress(FileNotFoundError):
                fs.delete_dir(s.path)
        return [s.name for s in doomed]

    def best(self, metric: str, mode: str, stored: list[Stored] | None = None) -> tuple[str, int]:
        """(URI, step) of the checkpoint with the best `metric` in its report (ties: the
        earliest, the step that first reached it), else of the newest; ('', 0) when there is
        none. `stored`: its checkpoints when the caller has listed them already (a sweep lists
        all trials at once)."""
        stored = self.stored() if stored is None else stored
        sign = 1 if mode == "max" else -1
        scored = [s for s in stored if isinstance(s.metrics.get(metric), int | float)]
        best = max(scored, key=lambda s: (sign * s.metrics[metric], -s.step)) if scored else None
        best = best or (stored[0] if stored else None)
        return (join(self.uri, best.name), max(best.step, 0)) if best else ("", 0)


def newest_complete(
    candidates: Iterable[tuple[str, Any]],
    stack: contextlib.ExitStack,
    say: Callable[[str], None] = print,
) -> tuple[str, str] | None:
    """(name, local directory) of the newest complete checkpoint (`store.verify`) among
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
        stored = list(CheckpointStore(run_dir).candidates())
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
