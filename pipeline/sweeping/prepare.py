"""Before any trial starts: the sweep resolved for trials that run on other nodes and in other
directories, and checked against its datasets, its storage and every Ray node."""

from __future__ import annotations

from pathlib import Path

from pipeline.config import RunConfig
from pipeline.data.storage import absolute
from pipeline.preflight import check_dataset, check_reachable, check_storage_writable, markers
from pipeline.sweeping.config import SweepConfig
from pipeline.sweeping.space import trial_config
from pipeline.sweeping.store import TRIALS_DIR

DATA_KEY = "data.uri"


def resolve(sweep: SweepConfig, exp_path: str) -> RunConfig:
    """The base as trials need it: local data paths absolute, trial storage under the
    experiment, the tracking URI resolved on the driver."""
    from pipeline.tracking import resolve_tracking_uri

    d = {"name": sweep.name, **sweep.base}
    d["data"] = {**d.get("data", {}), "uri": absolute(d.get("data", {}).get("uri", ""))}
    d["checkpoint"] = {**d.get("checkpoint", {}), "storage_path": f"{exp_path}/{TRIALS_DIR}"}
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
    from pipeline.config import ConfigError

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
