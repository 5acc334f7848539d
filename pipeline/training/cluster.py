"""The Ray cluster as a training run and a sweep see it: connecting, the GPU decision, what a
worker reserves, the Ray Train configs built from a run config, and whether trials can fit.

Shared by `pipeline/train.py` (one run) and `pipeline.sweeping` (a Tune sweep of runs), so that
both reserve the same bundle per worker and keep checkpoints the same way.
"""

from __future__ import annotations

import logging
import math
import os
from typing import Any

from pipeline.config.run import CheckpointConfig, ConfigError, RunConfig

# Custom Ray resource that drivers of multi-worker (TorchTrainer) trials ask for, so the driver
# takes no CPU from the workers; declared by `connect_ray` on a new local cluster and by the
# head node's `ray start --resources` (infra/k8s) on a remote one.
DRIVER_RESOURCE = "trial_driver"
LOCAL_DRIVER_SLOTS = 16
# node groups an autoscaler publishes without an upper bound count as this many nodes
UNBOUNDED_GROUP = 64


def connect_ray(address: str | None, num_cpus: int | None = None, *, reuse: bool = False) -> None:
    """Join the cluster at `address` (else $RAY_ADDRESS, as `ray job submit` sets it). Without
    one: `reuse` = whatever `ray.init()` finds (a local cluster already running, else a new
    one: `pipeline/train.py`), else always a new private local cluster with trial-driver slots
    (a sweep never silently joins another local cluster). No-op when Ray is connected."""
    import ray

    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    # trials checkpoint at every evaluation, by design; Tune warns about the resulting syncs
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address or reuse:
        ray.init(address=address, logging_level=logging.WARNING)
        return
    ray.init(
        address="local",
        num_cpus=num_cpus,
        resources={DRIVER_RESOURCE: LOCAL_DRIVER_SLOTS},
        logging_level=logging.WARNING,
    )


def cluster_nodes() -> list[dict[str, float]]:
    """Total resources of every alive node plus every node the autoscaler may still start
    (its node groups up to their max count)."""
    import ray

    nodes = [dict(n["Resources"]) for n in ray.nodes() if n.get("Alive")]
    try:  # what an autoscaler (KubeRay, cluster launcher) published; absent on a plain cluster
        from ray._private.state import state

        config = state.get_cluster_config()
    except Exception:
        config = None
    if config is not None:
        for group in config.node_group_configs:
            count = group.max_count if group.max_count >= 0 else UNBOUNDED_GROUP
            nodes += [dict(group.resources) for _ in range(count)]
    return nodes


def decide_use_gpu(cfg: RunConfig, nodes: list[dict[str, float]]) -> bool:
    """`resources.use_gpu` when set, else whether some node (alive or one the autoscaler may
    start) has a whole GPU."""
    if cfg.resources.use_gpu is not None:
        return cfg.resources.use_gpu
    return any(n.get("GPU", 0) >= 1 for n in nodes)


def worker_bundle(cfg: RunConfig, use_gpu: bool) -> dict[str, float]:
    """What one training worker reserves."""
    b = {"CPU": cfg.resources.cpus_per_worker}
    if use_gpu:
        b["GPU"] = cfg.resources.gpus_per_worker
    return b


def trial_resources(cfg: RunConfig, use_gpu: bool) -> dict[str, float]:
    """What Tune reserves for a trial: the worker itself (1-worker trials run in the trial's
    process) or only a driver slot (TorchTrainer trials reserve their workers through Ray
    Train)."""
    if cfg.resources.num_workers == 1:
        return worker_bundle(cfg, use_gpu)
    return {"CPU": 0, DRIVER_RESOURCE: 1}


def scaling_config(cfg: RunConfig, use_gpu: bool) -> Any:
    """The `ray.train.ScalingConfig` of a run's worker group."""
    import ray.train

    return ray.train.ScalingConfig(
        num_workers=cfg.resources.num_workers,
        use_gpu=use_gpu,
        resources_per_worker=worker_bundle(cfg, use_gpu),
    )


def checkpoint_config(ck: CheckpointConfig) -> Any:
    """The `ray.train.CheckpointConfig` of a run's checkpoint section: keep the `num_to_keep`
    best by `metric` (and the latest); time-based checkpoints rank last (`clock.SCORE`)."""
    import ray.train

    from pipeline.checkpoints.clock import SCORE

    return ray.train.CheckpointConfig(
        num_to_keep=ck.num_to_keep or None,
        checkpoint_score_attribute=SCORE,
        checkpoint_score_order=ck.mode,
    )


# ---- will the trials fit? ---------------------------------------------------------------------
def _slots(bundle: dict[str, float], nodes: list[dict[str, float]]) -> int:
    need = {r: v for r, v in bundle.items() if v > 0}
    return sum(
        min(math.floor(node.get(r, 0) / v + 1e-9) for r, v in need.items()) if need else 0
        for node in nodes
    )


def trials_that_fit(cfg: RunConfig, use_gpu: bool, nodes: list[dict[str, float]]) -> int:
    """How many trials of `cfg` can run at once on `nodes` (each a node's total resources);
    0 = not even one."""
    workers = _slots(worker_bundle(cfg, use_gpu), nodes) // cfg.resources.num_workers
    if cfg.resources.num_workers == 1:
        return workers
    return min(workers, _slots({DRIVER_RESOURCE: 1}, nodes))


def check_fits(cfg: RunConfig, use_gpu: bool, nodes: list[dict[str, float]]) -> int:
    """`trials_that_fit`, refusing trials that can never be placed (they would wait forever)."""
    n = trials_that_fit(cfg, use_gpu, nodes)
    if n > 0:
        return n
    W = cfg.resources.num_workers
    need = f"{W} worker(s) x {worker_bundle(cfg, use_gpu)}"
    if W > 1:
        need += f" plus a driver slot ({{{DRIVER_RESOURCE!r}: 1}})"
        if not _slots({DRIVER_RESOURCE: 1}, nodes):
            need += (
                f"; no node offers {DRIVER_RESOURCE!r}: start the head with "
                f"`ray start --head --resources='{{\"{DRIVER_RESOURCE}\": 8}}'`"
            )
    shown = ("CPU", "GPU", DRIVER_RESOURCE)
    have = "; ".join(
        "{" + ", ".join(f"{k}: {v:g}" for k, v in sorted(n.items()) if k in shown) + "}"
        for n in nodes
    )
    raise ConfigError(
        f"resources: a trial needs {need}, which no placement on this cluster can give "
        f"(nodes, incl. autoscaler limits: {have or 'none'}); it would wait forever. Lower "
        "base.resources (num_workers, cpus_per_worker, gpus_per_worker, use_gpu) or add nodes"
    )
