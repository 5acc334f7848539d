"""Running a `name` again: what may change before it resumes, and `--fresh`.

The driver keeps the resolved config of a run (the run config plus the model config filled
from the dataset) in `<storage>/<name>/run_config.json`. When the same name runs again and its
run directory holds checkpoints, the new resolved config is compared with the stored one:

- changes that a checkpoint cannot take are an error before any worker starts, listing the
  keys: the model (shapes, recursion, ACT settings, and the dataset encoding it was filled
  from: vocab, sequence length, puzzle ids) and `data.global_batch_size` (the ACT carry holds
  one row per batch slot);
- anything else (more steps, evaluation, checkpoint and tracking settings, learning rates) is
  allowed and printed.

`--fresh` (`discard_run`) deletes the run directory (checkpoints and Ray Train's record of
them) and retires the MLflow run of that name, so the run starts over.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from typing import Any

from pipeline.config.run import ConfigError, flatten
from pipeline.data.storage import open_storage

RECORD = "run_config.json"
FIXED = ("model.", "data.global_batch_size")
"""Keys (prefixes) whose change a checkpoint cannot take."""


def resolved(cfg: Any, model_dict: dict[str, Any]) -> dict[str, Any]:
    """The flat resolved config: `cfg` with its model section as the model actually built."""
    d = cfg.to_dict()
    d["model"] = {k: v for k, v in model_dict.items() if k != "batch_size"}
    return flatten(d)


def changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Keys whose value differs, as 'key: old -> new'."""
    keys = sorted(set(old) | set(new))
    return [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys if old.get(k) != new.get(k)]


def check_resume(run_dir: str, new: dict[str, Any], say: Callable[[str], None] = print) -> None:
    """Compare `new` (from `resolved`) with the config stored in `run_dir` when it holds
    checkpoints; `ConfigError` listing the keys that cannot change, else the allowed changes
    printed. Then store `new` as the run's config."""
    store = open_storage(run_dir)
    new = json.loads(json.dumps(new))  # as it reads back (tuples become lists)
    if store.exists(RECORD) and _has_checkpoints(store):
        old = json.loads(store.read_bytes(RECORD))
        diff = changes(old, new)
        fixed = [d for d in diff if d.startswith(FIXED)]
        if fixed:
            raise ConfigError(
                f"{run_dir} holds checkpoints of another config; it cannot resume with "
                f"{'; '.join(fixed)}. Use --name for a new run, or --fresh to discard it"
            )
        if diff:
            say(f"resuming {run_dir} with changed settings: {'; '.join(diff)}")
    store.write_bytes(RECORD, json.dumps(new, indent=1, sort_keys=True).encode())


def _has_checkpoints(store: Any) -> bool:
    return any(k.startswith("checkpoint_") for k in store.list())


def discard_run(run_dir: str, say: Callable[[str], None] = print) -> None:
    """Delete everything under `run_dir` (saying so, with the number of checkpoints)."""
    store = open_storage(run_dir)
    keys = store.list()
    if not keys:
        return
    found = {k.split("/", 1)[0] for k in keys if k.startswith("checkpoint_")}
    say(f"--fresh: discarding {run_dir} ({len(found)} checkpoint(s)); the run starts over")
    if not run_dir.startswith("s3://"):  # directories too: an empty checkpoint_* is not one
        shutil.rmtree(run_dir)
        return
    for key in keys:
        store.delete(key)
