"""Errors raised by the dataset code; each message names the input and what is wrong with it."""

from __future__ import annotations


class DatasetError(ValueError):
    """A dataset's content is wrong: missing or invalid meta.json, a shard whose size, checksum,
    schema or row count does not match its metadata, an unknown split."""


class InputError(ValueError):
    """A source record (CSV row, JSON task, puzzle) is malformed, unsolvable or ambiguous.

    `source` names the file or URI, `where` the record ('line 17', "task '007bbfc7' test pair 1").
    """

    def __init__(self, source: str, where: str | None, problem: str):
        self.source, self.where, self.problem = source, where, problem
        super().__init__(f"{source}, {where}: {problem}" if where else f"{source}: {problem}")

    def __reduce__(self):  # rebuilt from its fields when it crosses a process boundary
        return (InputError, (self.source, self.where, self.problem))


class StorageError(OSError):
    """Storage cannot be used: missing bucket, missing credentials, unreachable endpoint, a path
    that is not a directory. The message names the bucket/endpoint/path."""


class StorageAccessError(StorageError):
    """Storage refuses us: no usable credentials, access denied. Unlike an unreachable endpoint,
    retrying does not help."""
