"""The search space of a sweep: its domains, the config fields they may name, and
`trial_config`, the one place a trial's run config is made from the base and a point.

A point is a search-space assignment, dotted config key -> value (`{"model.H_cycles": 2}`).
Its values go into the base's nested dict as they are (no text in between) and the result is
validated once, as a `RunConfig`. The sweep file's checks, the driver's preflight, the cost
ordering of the grid, every trial and the summary all build trial configs through it.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any

from pipeline.config.fields import ConfigError, StrictConfig, is_num, require, with_values
from pipeline.config.run import RunConfig
from trm.config import is_int

DOMAINS = ("grid", "choice", "uniform", "loguniform", "randint")
# fields a sweep sets itself, per trial or per sweep; searching them would break it
FIXED_KEYS = {
    "name": "trial runs are named <sweep name>-<trial id>",
    "checkpoint.storage_path": "the sweep's storage is the base's checkpoint.storage_path",
    "checkpoint.metric": "a sweep ranks its trials' checkpoints by search.metric",
    "checkpoint.mode": "a sweep ranks its trials' checkpoints by search.metric and search.mode",
    "tracking": "every trial logs to the sweep's MLflow experiment, under its parent run",
    "resources": "resources are per sweep (Tune reserves them before a trial starts); "
    "set them in base.resources",
}


def trial_config(
    base: RunConfig | dict[str, Any],
    point: dict[str, Any],
    *,
    name: str | None = None,
    tags: dict[str, str] | None = None,
) -> RunConfig:
    """The run config of the trial at `point` (dotted key -> value): `base` with the point's
    values set in place; `name` and extra MLflow `tags` for a trial that runs."""
    d = with_values(base.to_dict() if isinstance(base, RunConfig) else base, point)
    if name is not None:
        d["name"] = name
    if tags:
        d["tracking"] = {**d.get("tracking", {})}
        d["tracking"]["tags"] = {**d["tracking"].get("tags", {}), **tags}
    return RunConfig.from_dict(d)


@dataclass
class Domain:
    """One entry of the search space."""

    key: str
    """As written: a dotted config key, or comma-joined keys whose values are tied."""
    names: list[str]
    kind: str
    values: list[Any]
    """grid/choice: the values (lists of len(names) for tied keys); ranges: [low, high]."""

    @classmethod
    def parse(cls, key: Any, spec: Any) -> Domain:
        where = f"space[{key!r}]"
        require(isinstance(key, str) and key.strip() != "", where, "keys must be dotted names")
        names = [n.strip() for n in key.split(",")]
        require(all(names), where, "empty name in a comma-joined key")
        require(
            isinstance(spec, dict) and len(spec) == 1,
            where,
            f"must be a mapping with exactly one of {DOMAINS}, e.g. {{grid: [1, 2]}}; got {spec!r}",
        )
        ((kind, values),) = spec.items()
        require(kind in DOMAINS, where, f"unknown domain {kind!r}; use one of {DOMAINS}")
        require(isinstance(values, list), where, f"{kind} needs a list, got {values!r}")
        if kind in ("grid", "choice"):
            require(len(values) > 0, where, f"{kind} has no values")
            if len(names) > 1:
                for v in values:
                    require(
                        isinstance(v, list) and len(v) == len(names),
                        where,
                        f"each value must be a list of {len(names)} (one per key), got {v!r}",
                    )
        else:
            require(len(names) == 1, where, f"tied keys need grid or choice, not {kind}")
            require(
                len(values) == 2 and all(is_num(v) for v in values),
                where,
                f"{kind} needs [low, high] numbers, got {values!r}",
            )
            lo, hi = values
            require(lo < hi, where, f"{kind} needs low < high, got {values!r}")
            if kind == "loguniform":
                require(lo > 0, where, f"loguniform needs low > 0, got {lo!r}")
            if kind == "randint":
                require(
                    all(is_int(v) for v in values),
                    where,
                    f"randint needs integers, got {values!r}",
                )
        return cls(key, names, kind, values)

    def assign(self, value: Any) -> dict[str, Any]:
        """dotted name -> value for one sampled value of this domain."""
        if len(self.names) == 1:
            return {self.names[0]: value}
        return dict(zip(self.names, value))

    def probe_values(self) -> list[Any]:
        """Values that represent the domain when checking it: all of a grid/choice, the bounds
        of a range."""
        if self.kind in ("grid", "choice"):
            return list(self.values)
        if self.kind == "randint":
            return [int(self.values[0]), int(self.values[1])]
        return [float(v) for v in self.values]

    def tune_domain(self) -> Any:
        from ray import tune

        if self.kind == "grid":
            return tune.grid_search(list(self.values))
        if self.kind == "choice":
            return tune.choice(list(self.values))
        lo, hi = self.values
        if self.kind == "uniform":
            return tune.uniform(float(lo), float(hi))
        if self.kind == "loguniform":
            return tune.loguniform(float(lo), float(hi))
        return tune.randint(int(lo), int(hi) + 1)  # Tune's upper bound is exclusive


# ---- config keys ----------------------------------------------------------------------------
def config_fields() -> list[str]:
    """Every dotted leaf key of a RunConfig (model.* = trm.TRMConfig fields)."""
    out: list[str] = []
    for name, f in RunConfig.model_fields.items():
        if isinstance(f.annotation, type) and issubclass(f.annotation, StrictConfig):
            keys = [k for k in f.annotation.model_fields if (name, k) != ("model", "batch_size")]
            out += [f"{name}.{k}" for k in keys]
        else:
            out.append(name)
    return out


def check_field(name: str, where: str) -> None:
    """`name` is a real config field (or a key under tracking.tags); else a `ConfigError` that
    names it and suggests the closest field."""
    known = config_fields()
    if name not in known and not name.startswith("tracking.tags."):
        close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
        hint = (
            f"; did you mean {close[0]!r}?" if close else "; see `python pipeline/train.py --help`"
        )
        raise ConfigError(f"{where}: {name!r} is not a run config field{hint}")
    for fixed, why in FIXED_KEYS.items():
        if name == fixed or name.startswith(fixed + "."):
            raise ConfigError(f"{where}: {name!r} cannot be swept: {why}")
