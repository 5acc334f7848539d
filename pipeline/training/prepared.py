"""A run prepared once on the driver, before any worker starts.

`prepare_run` turns a validated `RunConfig` into a `PreparedRun`: local data and storage paths
made absolute (workers run in other directories), the run's storage path fixed, the tracking
URI resolved (a relative sqlite path means the driver's directory), the dataset's metadata read
and checked against the model, storage and tracking server checked (`preflight`), and
`schedule.epochs` converted to steps. The drivers (`pipeline/train.py`, a sweep's multi-worker
trials) pass the prepared run on instead of resolving and checking again at each layer.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pipeline.config.run import RunConfig
from pipeline.data.storage import absolute
from pipeline.training.preflight import preflight
from pipeline.training.schedule import with_epoch_steps
from pipeline.training.worker import RunInfo


@dataclass(frozen=True)
class PreparedRun:
    cfg: RunConfig
    """Paths absolute, `checkpoint.storage_path` the run's, epochs converted to steps."""
    name: str
    """The run's name: its directory under the storage path and its MLflow run name."""
    storage_path: str
    """Absolute local path or s3:// URI."""
    tracking_uri: str
    """Resolved on the driver; '' when tracking is off."""
    meta: Any = None
    """The dataset's metadata; None where a sweep checked the datasets of all its trials."""

    @property
    def run_dir(self) -> str:
        """Where its checkpoints live; also the key of its MLflow run across restarts."""
        return f"{self.storage_path}/{self.name}"

    def info(self, parent_run_id: str = "") -> RunInfo:
        """What its workers need besides the config."""
        from pipeline.tracking.provenance import code_version

        return RunInfo(name=self.name, run_key=self.run_dir, tracking_uri=self.tracking_uri,
                       code_version=code_version(), parent_run_id=parent_run_id)  # fmt: skip


def prepare_run(
    cfg: RunConfig,
    *,
    name: str | None = None,
    storage_path: str | None = None,
    say: Callable[[str], None] | None = None,
) -> PreparedRun:
    """`cfg` resolved and checked once (see the module docstring). `name` and `storage_path`
    default to the config's; `say` tells how epochs became steps (`with_epoch_steps`)."""
    from pipeline.tracking.server import resolve_tracking_uri

    storage = absolute(storage_path or cfg.checkpoint.storage_path)
    cfg = with_absolute_paths(cfg, storage)
    meta = preflight(cfg, storage, cluster=False)
    uri = resolve_tracking_uri(cfg.tracking.uri) if cfg.tracking.enabled else ""
    return PreparedRun(with_epoch_steps(cfg, say), name or cfg.name, storage, uri, meta)


def with_absolute_paths(cfg: RunConfig, storage_path: str) -> RunConfig:
    """`cfg` with its local data path made absolute (workers run in other directories) and
    `storage_path` (absolute already) as its storage path."""
    return cfg.with_values({"data.uri": absolute(cfg.data.uri),
                            "checkpoint.storage_path": storage_path})  # fmt: skip
