"""Each trial's Tune results as `result.json` (JSON lines: the evaluation history the summary reads
through `Result.metrics_dataframe`), written straight into the sweep's storage, never into the
driver's staging directory.

Tune uploads the driver's whole staging directory, one file after another, at every
experiment-state save and once more at the sweep's end, changed or not. One file per trial there
made each save cost O(trials) requests: 18 s per save at 1,000 trials against an S3 server on
loopback (`benchmarks/experiment_save.py`), and most of the 47 s between a 1,000-trial sweep's
last trial and Tune handing back its results. Here one background thread writes a trial's file
whenever it has new results (writes of one trial coalesce), so the saves carry only the
experiment's own few files. Tune's default loggers are off (`run.py` sets
TUNE_DISABLE_AUTO_CALLBACK_LOGGERS).
"""

from __future__ import annotations

import json
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from ray import tune
from ray.tune.utils.util import SafeFallbackEncoder

logger = logging.getLogger(__name__)

NAME = "result.json"  # Tune's name: `ExperimentAnalysis` reads it back for the `ResultGrid`


class ResultsFile(tune.Callback):
    """Keeps each trial's results in memory and writes them to `<trial dir>/result.json` in
    storage off Tune's loop. Pickled with the experiment state without the results (a resumed
    trial reads its stored file back before adding to it) or the thread."""

    def __init__(self) -> None:
        self._lines: dict[str, list[str]] = {}
        self._queued: set[str] = set()
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self._made: set[str] = set()
        """Trial directories made in storage (by the writer thread only)."""
        self._staging_cleared = False

    def __getstate__(self) -> dict[str, Any]:
        return {}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__()

    def on_step_begin(self, iteration: int, trials: list, **info: Any) -> None:
        # a restored experiment downloads every stored result.json into the staging
        # directory: drop those copies, or each save would upload them all again
        if not self._staging_cleared:
            self._staging_cleared = True
            for trial in trials:
                Path(trial.local_path, NAME).unlink(missing_ok=True)

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict,
                        **info: Any) -> None:  # fmt: skip
        line = json.dumps(result, cls=SafeFallbackEncoder)
        stored = None if trial.trial_id in self._lines else _stored(trial)
        with self._lock:
            self._lines.setdefault(trial.trial_id, stored or []).append(line)
            if trial.trial_id in self._queued:
                return  # the queued write will carry this line too
            self._queued.add(trial.trial_id)
        if self._pool is None:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="trm-results")
        self._pool.submit(self._write, trial.trial_id, trial.storage)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        _remove_if_empty(trial.local_path)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        _remove_if_empty(trial.local_path)

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        """Every file written before Tune reads them back for its `ResultGrid`."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def _write(self, trial_id: str, storage: Any) -> None:
        with self._lock:
            self._queued.discard(trial_id)
            body = "".join(f"{line}\n" for line in self._lines[trial_id]).encode()
        fs, directory = storage.storage_filesystem, storage.trial_fs_path
        try:
            if directory not in self._made:  # once per trial: on S3 each call is a request
                fs.create_dir(directory, recursive=True)
                self._made.add(directory)
            with fs.open_output_stream(f"{directory}/{NAME}") as f:
                f.write(body)
        except Exception as e:  # the sweep goes on; its summary lacks this trial's history
            logger.warning(f"[sweep] results of trial {trial_id} not written to {directory}: {e}")


def _stored(trial: Any) -> list[str]:
    """The lines a trial that resumes (it has a checkpoint) already has in storage."""
    if not trial.checkpoint:
        return []
    fs, path = trial.storage.storage_filesystem, f"{trial.storage.trial_fs_path}/{NAME}"
    try:
        with fs.open_input_stream(path) as f:
            return f.readall().decode().splitlines()
    except FileNotFoundError:
        return []


def _remove_if_empty(path: str) -> None:
    try:
        Path(path).rmdir()
    except OSError:  # gone already, or Tune left something in it
        pass
