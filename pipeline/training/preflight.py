"""Checks that run on the driver before any worker or trial starts: the dataset against the
model and batch, the storage path writable, and paths readable from every Ray node.

Node probes are Ray tasks pinned to each alive node (`probe_nodes`); one probe function serves
three questions: does a local path exist there (`exists`), can that node read a marker file the
driver just wrote (`marker`: shared storage, its credentials and endpoint), and can it read a
dataset's metadata (`dataset`). Used by `pipeline/train.py` and `pipeline.sweeping`.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pipeline.config.run import ConfigError, RunConfig
from pipeline.data.storage import is_local, open_storage

PROBE_TIMEOUT_S = 300


# ---- on the driver --------------------------------------------------------------------------
def check_dataset(cfg: RunConfig) -> Any:
    """Read the dataset's metadata (once per process, `cached_meta`) and check it against the
    model and batch; returns it."""
    from pipeline.data.errors import DatasetError
    from pipeline.data.meta import cached_meta
    from pipeline.tasks import task_of

    try:
        meta = cached_meta(cfg.data.uri)
    except Exception as e:
        raise ConfigError(f"data.uri {cfg.data.uri!r}: {e}") from None
    for split in ("train", "test"):
        if split not in meta.splits:
            raise ConfigError(f"data.uri {cfg.data.uri!r} has no {split!r} split")
    try:
        spec = task_of(meta)
    except DatasetError as e:
        raise ConfigError(f"data.uri {cfg.data.uri!r}: {e}") from None
    cfg.resolve(meta)  # raises on vocab/seq_len mismatch
    if spec.votes:  # pass@K needs the test-input counts; eval.arc_variants must fit
        from pipeline.evaluation.arc_vote import ArcVoting

        ArcVoting(cfg.data.uri, meta, pass_ks=cfg.eval.pass_ks, max_variants=cfg.eval.arc_variants)
    rows = meta.splits["train"].num_rows // cfg.resources.num_workers
    if rows < cfg.per_worker_batch:
        raise ConfigError(
            f"data.global_batch_size {cfg.data.global_batch_size}: each of "
            f"{cfg.resources.num_workers} workers gets {rows} training rows, fewer than its "
            f"batch of {cfg.per_worker_batch}"
        )
    return meta


def check_storage_writable(storage_path: str) -> None:
    """Write and delete a marker under `storage_path`; `ConfigError` if that fails."""
    key = f".trm-write-check-{uuid.uuid4().hex[:8]}"
    try:
        if is_local(storage_path):
            Path(storage_path).mkdir(parents=True, exist_ok=True)
        store = open_storage(storage_path)
        store.write_bytes(key, b"ok")
        store.delete(key)
    except Exception as e:
        raise ConfigError(
            f"checkpoint.storage_path {storage_path!r} is not writable: {type(e).__name__}: {e}"
        ) from None


def preflight(cfg: RunConfig, storage_path: str, *, cluster: bool) -> Any:
    """A run's checks that need no worker; returns the dataset's metadata. `cluster`: also
    check local paths against the Ray nodes (a cluster of more than one node)."""
    meta = check_dataset(cfg)
    check_storage_writable(storage_path)
    if cfg.tracking.enabled:  # a server that is down: one line now, not minutes of retries later
        from pipeline.tracking.server import check_tracking, resolve_tracking_uri

        check_tracking(resolve_tracking_uri(cfg.tracking.uri))
    if cluster:
        check_on_nodes(cfg, storage_path)
    return meta


def check_on_nodes(cfg: RunConfig, storage_path: str) -> None:
    """On a Ray cluster of more than one node: the local dataset and storage paths readable on
    every node (an s3:// one needs no check)."""
    import ray

    if len([n for n in ray.nodes() if n.get("Alive")]) > 1:
        if is_local(cfg.data.uri):
            meta_path = Path(cfg.data.uri.removeprefix("file://")) / "meta.json"
            check_readable_on_nodes(str(meta_path), "data.uri")
        if is_local(storage_path):
            check_readable_on_nodes(storage_path, "checkpoint.storage_path")


# ---- on every node --------------------------------------------------------------------------
def _probe(kind: str, uri: str, token: str) -> str:
    """Runs on one node: '' if `uri` is there and readable, else why not."""
    try:
        if kind == "exists":
            return "" if os.path.exists(uri) else "does not exist"
        if kind == "marker":
            store = open_storage(uri.rsplit("/", 1)[0], max_attempts=2)
            got = store.read_bytes(uri.rsplit("/", 1)[1]).decode()
            return "" if got == token else f"read {got!r}, expected this sweep's marker"
        if kind == "dataset":
            from pipeline.data.meta import read_meta

            read_meta(uri)
            return ""
        raise AssertionError(kind)
    except Exception as e:
        return f"{type(e).__name__}: {e}"


def probe_nodes(checks: list[tuple[str, str, str]]) -> list[dict[str, str]]:
    """Each (kind, uri, token) probed on every alive Ray node at once (one task per node and
    check); per check, node ('<id> (<address>)') -> why it failed, for the nodes that failed."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    probe = ray.remote(num_cpus=0, max_retries=0)(_probe)
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    refs = {
        (i, j): probe.options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)
        ).remote(*check)
        for i, check in enumerate(checks)
        for j, n in enumerate(nodes)
    }
    got = dict(zip(refs, ray.get(list(refs.values()), timeout=PROBE_TIMEOUT_S)))
    name = [f"{n['NodeID'][:8]} ({n.get('NodeManagerAddress', '?')})" for n in nodes]
    return [
        {name[j]: got[i, j] for j in range(len(nodes)) if got[i, j]} for i in range(len(checks))
    ]


def check_readable_on_nodes(path: str, what: str) -> None:
    """Every alive Ray node can see local `path`; `ConfigError` naming the nodes that cannot."""
    (blind,) = probe_nodes([("exists", path, "")])
    if blind:
        raise ConfigError(
            f"{what} {path!r} is a local path that Ray node(s) {', '.join(blind)} cannot read; "
            f"on a multi-node cluster use s3:// (or a filesystem mounted on every node)"
        )


def check_reachable(checks: list[tuple[str, str, str, str]]) -> None:
    """Each (what, kind, uri, token) must be readable from every alive Ray node; `ConfigError`
    naming the path and the nodes that cannot read it."""
    failed = probe_nodes([(kind, uri, token) for _, kind, uri, token in checks])
    for (what, _, uri, _), errors in zip(checks, failed):
        if errors:
            raise ConfigError(
                f"{what} {uri!r} is not reachable from every Ray node: "
                + "; ".join(f"node {node}: {why}" for node, why in errors.items())
                + ". Use storage every node can read (s3://, or a filesystem mounted on all "
                "nodes) and give every node the same credentials/endpoint"
            )


@contextlib.contextmanager
def markers(places: list[tuple[str, str]]) -> Iterator[list[tuple[str, str, str, str]]]:
    """A marker file with a fresh token in each (what, directory uri), as `check_reachable`
    checks; deleted afterwards."""
    token = uuid.uuid4().hex
    marker = f".trm-sweep-probe-{token[:8]}"
    stores = [open_storage(uri) for _, uri in places]
    try:
        for store in stores:
            store.write_bytes(marker, token.encode())
        yield [(what, "marker", f"{uri}/{marker}", token) for what, uri in places]
    finally:
        for store in stores:
            with contextlib.suppress(Exception):
                store.delete(marker)
