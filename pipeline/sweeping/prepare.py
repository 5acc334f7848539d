"""Before any trial starts: the sweep resolved for trials that run on other nodes and in other
directories, and checked against its datasets, its storage and every Ray node."""

from __future__ import annotations

import os
from pathlib import Path

from pipeline.config.run import RunConfig
from pipeline.data.storage import absolute
from pipeline.sweeping.config import SweepConfig
from pipeline.sweeping.space import trial_config
from pipeline.sweeping.store import TRIALS_DIR
from pipeline.training.preflight import (
    check_dataset,
    check_reachable,
    check_storage_writable,
    markers,
)

DATA_KEY = "data.uri"


def resolve(sweep: SweepConfig, exp_path: str) -> RunConfig:
    """The base as trials need it: local data paths absolute, trial storage under the
    experiment, checkpoints ranked by the sweep's metric (when it is an eval metric),
    the tracking URI resolved on the driver."""
    from pipeline.tracking.server import resolve_tracking_uri

    d = {"name": sweep.name, **sweep.base}
    d["data"] = {**d.get("data", {}), "uri": absolute(d.get("data", {}).get("uri", ""))}
    d["checkpoint"] = {**d.get("checkpoint", {}), "storage_path": f"{exp_path}/{TRIALS_DIR}"}
    s = sweep.search
    if s.metric.startswith("eval/"):
        # keep the checkpoints best by the sweep's metric: the best trial's best one is kept
        # (a base ranking by another is refused, `SweepConfig._check_ranking`)
        d["checkpoint"].update(metric=s.metric, mode=s.mode)
    tracking = d.get("tracking", {})
    if tracking.get("enabled", True):
        d["tracking"] = {**tracking, "uri": resolve_tracking_uri(tracking.get("uri", ""))}
    return trial_config(d, {})


def with_absolute_data(sweep: SweepConfig) -> SweepConfig:
    """`sweep` with every local `data.uri` value of its space made absolute: trials run in
    their own directories (and the node probes must check the paths the trials will read)."""
    space = {}
    for key, dom in sweep.domains.items():
        if DATA_KEY not in dom.names or dom.kind not in ("grid", "choice"):
            space[key] = sweep.space[key]
            continue
        i = dom.names.index(DATA_KEY)
        if len(dom.names) == 1:
            values = [absolute(v) for v in dom.values]
        else:
            values = [[absolute(x) if j == i else x for j, x in enumerate(v)] for v in dom.values]
        space[key] = {dom.kind: values}
    if space == sweep.space:
        return sweep
    return SweepConfig.from_dict({**sweep.to_dict(), "space": space})


def preflight(sweep: SweepConfig, base: RunConfig, storage: str) -> None:
    """Driver-side checks: every trial's model and batch against its dataset, storage
    writable, then dataset/storage/tracking store readable from every node."""
    from pipeline.config.run import ConfigError

    # the sweep built these when it was loaded; only their data, model and batch matter here,
    # which the driver's resolution of `base` (paths, tracking, GPUs) leaves as they are
    for point, cfg in sweep.checked:
        try:
            check_dataset(cfg)
        except ConfigError as e:
            raise ConfigError(f"trial {point}: {e}") from None
    check_storage_writable(storage)
    # where trials write: the storage, and a local tracking database's directory
    places = [("storage path", storage)]
    uri = base.tracking.uri
    if base.tracking.enabled and uri.startswith("sqlite:///"):
        places.append(("tracking store", str(Path(uri.removeprefix("sqlite:///")).parent)))
    uris = {base.data.uri} | {absolute(p[DATA_KEY]) for p, _ in sweep.checked if DATA_KEY in p}
    with markers(places) as checks:
        checks += [(DATA_KEY, "dataset", u, "") for u in sorted(uris)]
        check_reachable(checks)


# set by Ray's job supervisor for the entrypoint of `ray job submit` (and of a KubeRay RayJob);
# RAY_JOB_ID is not a sign: Ray strips it from job entrypoints and sets it in every worker
RAY_JOB_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"


def in_ray_job() -> bool:
    return bool(os.environ.get(RAY_JOB_ENV))


def check_durable(base: RunConfig, exp_path: str) -> None:
    """A sweep submitted as a Ray job (`ray job submit --working-dir .`) runs in Ray's temporary
    copy of the working directory, which Ray deletes after the job: refuse to keep the MLflow
    store or the sweep's storage there, before anything starts."""
    from pipeline.config.run import ConfigError

    if not in_ray_job():
        return
    cwd = Path.cwd().resolve()
    lost = []
    if "://" not in exp_path and Path(exp_path).resolve().is_relative_to(cwd):
        lost.append(f"the sweep's storage ({exp_path})")
    uri = base.tracking.uri
    if base.tracking.enabled and uri.startswith("sqlite:///"):
        if Path(uri.removeprefix("sqlite:///")).resolve().is_relative_to(cwd):
            lost.append(f"the MLflow store ({uri})")
    if lost:
        raise ConfigError(
            f"running as a Ray job in a temporary working directory ({cwd}: Ray's copy of "
            f"--working-dir), which Ray deletes after the job: {' and '.join(lost)} would be "
            "lost; set "
            "MLFLOW_TRACKING_URI (an MLflow server) and --storage-path (s3://... or a shared "
            'disk), e.g. --runtime-env-json \'{"env_vars": {"MLFLOW_TRACKING_URI": ...}}\''
        )


def with_epoch_steps(sweep: SweepConfig, base: RunConfig) -> tuple[SweepConfig, RunConfig]:
    """A base trained by `schedule.epochs`: converted once, here, from the built dataset
    (`pipeline.training.schedule`), and set in the sweep too, so ASHA, the budget, the summary
    and every trial count the steps the trials will train. The space may then not vary the
    data or the schedule."""
    from pipeline.config.run import ConfigError
    from pipeline.training.schedule import with_epoch_steps as convert

    if not base.schedule.epochs or base.schedule.rows_per_epoch:
        return sweep, base
    varied = [n for d in sweep.domains.values() for n in d.names
              if n.startswith(("data.", "schedule."))]  # fmt: skip
    if varied:
        raise ConfigError(
            f"base.schedule.epochs: the space varies {', '.join(varied)}, which changes the steps "
            "an epoch is; give schedule.steps instead"
        )
    base = convert(base, lambda line: print(f"[sweep] {line}", flush=True))
    sch = base.schedule
    b = {**sweep.base, "schedule": {**sweep.base.get("schedule", {}), "steps": sch.steps,
                                    "rows_per_epoch": sch.rows_per_epoch}}  # fmt: skip
    return SweepConfig.from_dict({**sweep.to_dict(), "base": b}), base
