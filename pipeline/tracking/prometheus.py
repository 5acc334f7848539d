"""The pipeline's own Prometheus metrics, exported through Ray's metrics agent on every Ray
node's metrics port (8080 on the cluster; `infra/k8s/monitoring` scrapes it and its Grafana
dashboard plots them beside Ray's GPU metrics):

    ray_trm_sweep_trials_total{sweep, event}    trial events: started, completed, failed, retried
    ray_trm_tracking_failures_total{kind}       MLflow logging calls that failed, points dropped

Ray prefixes `ray_` and adds `_total` to counters. Counters, not gauges: Ray exports a gauge
only in the interval it was set, while a counter persists. Outside a Ray worker process the
calls do nothing (no metrics agent reads them)."""

from __future__ import annotations

import functools

SWEEP_TRIALS = "trm_sweep_trials"
TRACKING_FAILURES = "trm_tracking_failures"


@functools.cache
def _counter(name: str, description: str, tag_keys: tuple[str, ...]):
    from ray.util.metrics import Counter

    return Counter(name, description=description, tag_keys=tag_keys)


def _in_ray_worker() -> bool:
    """Ray exports metrics from its worker processes (trials, training workers); a driver's
    own calls never reach the metrics port, so counting is done where the work runs."""
    import ray

    return ray.is_initialized() and ray.get_runtime_context().worker.mode == ray.WORKER_MODE


def count_trial(sweep: str, event: str) -> None:
    """Count a trial event (`started`, `completed`, `failed`, `retried`) of a sweep, from the
    trial's process."""
    if _in_ray_worker():
        _counter(SWEEP_TRIALS, "Sweep trial events.", ("sweep", "event")).inc(
            1, tags={"sweep": sweep, "event": event}
        )


def count_tracking_failure(kind: str, n: int = 1) -> None:
    """Count MLflow logging failures: `failed` calls, or `dropped` points a full buffer lost."""
    if n > 0 and _in_ray_worker():
        _counter(TRACKING_FAILURES, "MLflow logging failures and dropped points.", ("kind",)).inc(
            n, tags={"kind": kind}
        )
