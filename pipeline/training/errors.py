"""The kinds of error the training loop and its driver agree on: errors of the input, which
the same input raises again on every attempt. The worker raises them without a traceback (their
message names the input); the driver's failure policy (`pipeline.training.failures`) never
retries them. Kept apart from both so that neither imports the other."""

from __future__ import annotations

from pipeline.checkpoints.store import CheckpointError
from pipeline.config.run import ConfigError
from pipeline.data.errors import DatasetError, InputError, StorageAccessError

DETERMINISTIC: tuple[type[BaseException], ...] = (
    DatasetError,
    InputError,
    ConfigError,
    CheckpointError,
    StorageAccessError,
    PermissionError,
)
"""Errors that the same input raises again on every attempt: never retried."""
