"""The dataset a sweep trains on, built on first use when the sweep file says how (its
`dataset` section: a builder and the builder's arguments)."""

from __future__ import annotations

import inspect
import time
from typing import TYPE_CHECKING, Any

from pipeline.config.run import ConfigError, require
from pipeline.tasks import get_task, task_names

if TYPE_CHECKING:
    from pipeline.sweeping.config import SweepConfig


def check_builder_args(spec: dict[str, Any]) -> None:
    """`dataset` names a known builder and only arguments it takes."""
    where = "dataset"
    require(isinstance(spec, dict), where, "must be a mapping with `builder` and its arguments")
    name = spec.get("builder")
    require(isinstance(name, str) and name in task_names(), f"{where}.builder",
            f"must be one of {', '.join(task_names())}, got {name!r}")  # fmt: skip
    args = {k: v for k, v in spec.items() if k != "builder"}
    for bad in ("out_uri", "progress", "overwrite"):
        require(bad not in args, f"{where}.{bad}", "is set by the sweep; remove it")
    builder = get_task(name).builder
    sig = inspect.signature(builder)
    for k in args:
        require(
            k in sig.parameters,
            f"{where}.{k}",
            f"{builder.__name__} takes no such argument; it takes "
            f"{', '.join(p for p in sig.parameters if p not in ('out_uri', 'progress'))}",
        )
    try:
        sig.bind("uri", **args)
    except TypeError as e:
        raise ConfigError(f"{where}: {e}") from None


def ensure_dataset(sweep: SweepConfig, uri: str) -> None:
    """Build the base dataset on first use when the sweep says how; one already there must
    have been built the way the sweep says (the builder checks its generator record), so a
    dataset from another version or other parameters is not trained on by mistake."""
    from pipeline.data.errors import DatasetError
    from pipeline.data.meta import META_FILE
    from pipeline.data.storage import open_storage

    if not sweep.dataset:
        return
    args = {k: v for k, v in sweep.dataset.items() if k != "builder"}
    exists = open_storage(uri).exists(META_FILE)
    if not exists:
        print(f"[sweep] building dataset {uri} ({sweep.dataset['builder']}, {args}) ...",
              flush=True)  # fmt: skip
    t = time.perf_counter()
    try:
        meta = get_task(sweep.dataset["builder"]).builder(uri, **args)
    except DatasetError as e:
        if not exists:
            raise
        raise ConfigError(
            f"dataset: the sweep's `dataset` section does not describe the dataset already at "
            f"{uri} ({e}); delete it to have it rebuilt, or set base.data.uri elsewhere"
        ) from None
    if not exists:
        rows = {k: s.num_rows for k, s in meta.splits.items()}
        print(f"[sweep] dataset built in {time.perf_counter() - t:.0f} s: {rows}", flush=True)
