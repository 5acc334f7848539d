"""`SweepConfig`: the typed, validated sweep file that `pipeline/sweep.py` runs.

A sweep file is a base run config (`pipeline.config.RunConfig`, the same sections as a
training config) plus a search space over any of its fields, addressed by dotted keys:

    name: depth                      # Tune experiment + MLflow parent run name (stable: --resume)
    base: {model: {...}, data: {uri: ...}, schedule: {...}, ...}
    dataset: {builder: sudoku, size: 4, num_train: 2000, num_test: 256}   # built when missing
    space:
      model.H_cycles: {grid: [1, 2, 3]}
      optim.lr: {loguniform: [1.0e-4, 1.0e-2]}
      model.L_layers,model.L_cycles: {grid: [[2, 6], [4, 3]]}             # tied values
    search: {algorithm: grid, num_samples: 1, metric: eval/exact_accuracy, mode: max}
    scheduler: {type: asha, time_attr: flops, max_t: 1.0e13, grace_period: 1.0e12}
    concurrency: 0                   # trials at once; 0 = as many as fit the cluster
    budget: {flops: 0, hours: 0}     # stop the whole sweep when spent; 0 = no limit
    max_failures: 2                  # retries of a failed trial from its last checkpoint

String values may refer to the environment: `${TRM_DATA_URI:-s3://trm-data}/sudoku` (the
default after `:-`; an unset variable without one is an error).

Domains: `grid` (every value, crossed with the other grid keys), `choice` (one value drawn per
sample), `uniform` / `loguniform` ([low, high] floats), `randint` ([low, high] integers, both
ends included). Resources per trial are the base's `resources` section (workers, CPUs and GPUs
per worker, fractions allowed) and are the same for every trial.

Everything is checked on load, before Ray or any trial starts: unknown keys anywhere in the
file, space keys that name no config field (with the closest real field suggested), empty
domains, and every grid value (and each range's bounds) applied to the base must give a valid
`RunConfig`. Errors are `ConfigError` (a `ValueError`) naming the file and key.
"""

from __future__ import annotations

import difflib
import inspect
import json
import os
import re
import typing
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

import yaml

from pipeline.config import (
    ConfigError,
    RunConfig,
    apply_overrides,
    build_section,
    is_int,
    is_num,
    require,
)

DOMAINS = ("grid", "choice", "uniform", "loguniform", "randint")
ALGORITHMS = ("grid", "random")
SCHEDULERS = ("fifo", "asha")
# sweep time axis -> the key every trial reports it under
TIME_ATTRS = {"steps": "step", "examples": "examples", "flops": "flops"}
# metrics a trial reports at every evaluation (pipeline/evaluate.py, pipeline/metrics.py)
EVAL_METRICS = (
    "eval/exact_accuracy",
    "eval/accuracy",
    "eval/q_halt_accuracy",
    "eval/steps",
    "eval/exact_accuracy_at_halt",
)
TRAIN_METRICS = (
    "train/loss",
    "train/lm_loss",
    "train/q_halt_loss",
    "train/accuracy",
    "train/exact_accuracy",
    "train/q_halt_accuracy",
    "train/steps",
)
# fields a sweep sets itself, per trial or per sweep; searching them would break it
FIXED_KEYS = {
    "name": "trial runs are named <sweep name>-<trial id>",
    "checkpoint.storage_path": "the sweep's storage is the base's checkpoint.storage_path",
    "tracking": "every trial logs to the sweep's MLflow experiment, under its parent run",
    "resources": "resources are per sweep (Tune reserves them before a trial starts); "
    "set them in base.resources",
}
# more grid points than this are checked key by key instead of point by point
MAX_CHECKED_POINTS = 2000


@dataclass
class SearchConfig:
    """How trials are drawn from the space and what they are ranked by."""

    algorithm: str = "grid"
    """'grid': every key is a grid, trials = their cross product (x num_samples). 'random':
    grid keys are crossed, every other key is drawn num_samples times per grid point."""
    num_samples: int = 1
    """Repeats of each grid point (grid) / draws per grid point (random)."""
    metric: str = "eval/exact_accuracy"
    """Reported metric that ranks trials, drives ASHA and picks the best config."""
    mode: str = "max"
    """'max' or 'min': which direction of `metric` is better."""
    seed: int = 0
    """Seed of the random draws (the same seed gives the same trials)."""

    def __post_init__(self) -> None:
        require(
            self.algorithm in ALGORITHMS,
            "search.algorithm",
            f"must be one of {ALGORITHMS}, got {self.algorithm!r}",
        )
        require(
            is_int(self.num_samples) and self.num_samples > 0,
            "search.num_samples",
            f"must be a positive integer, got {self.num_samples!r}",
        )
        require(
            known_metric(self.metric),
            "search.metric",
            f"{self.metric!r} is not a metric trials report; use one of "
            f"{', '.join(EVAL_METRICS + TRAIN_METRICS)} (or eval/arc_pass_at_K on ARC)",
        )
        require(
            self.mode in ("max", "min"), "search.mode", f"must be max or min, got {self.mode!r}"
        )
        require(is_int(self.seed), "search.seed", f"must be an integer, got {self.seed!r}")


@dataclass
class SchedulerConfig:
    """Early stopping: FIFO (every trial runs to its end) or ASHA."""

    type: str = "fifo"
    """'fifo' or 'asha' (asynchronous successive halving)."""
    time_attr: str = "steps"
    """ASHA's time axis: 'steps' (optimiser steps), 'examples' (example-ACT-steps trained) or
    'flops' (model training FLOPs spent, trm.flops): with 'flops' a deeper model reaches each
    rung after fewer steps, so trials are compared at equal compute."""
    max_t: float = 0
    """ASHA: longest time a trial may run, in time_attr units (0 = the longest
    schedule.steps of the space; required for 'examples' and 'flops')."""
    grace_period: float = 0
    """ASHA: time every trial gets before it can be stopped (time_attr units; 0 = max_t / 8)."""
    reduction_factor: float = 2
    """ASHA: 1/reduction_factor of the trials at a rung continue to the next."""

    def __post_init__(self) -> None:
        require(
            self.type in SCHEDULERS,
            "scheduler.type",
            f"unknown scheduler {self.type!r}; use one of {SCHEDULERS}",
        )
        require(
            self.time_attr in TIME_ATTRS,
            "scheduler.time_attr",
            f"must be one of {tuple(TIME_ATTRS)}, got {self.time_attr!r}",
        )
        for name in ("max_t", "grace_period"):
            v = getattr(self, name)
            require(is_num(v) and v >= 0, f"scheduler.{name}", f"must be a number >= 0, got {v!r}")
        require(
            is_num(self.reduction_factor) and self.reduction_factor > 1,
            "scheduler.reduction_factor",
            f"must be a number > 1, got {self.reduction_factor!r}",
        )
        if self.type == "asha" and self.time_attr != "steps":
            require(
                self.max_t > 0,
                "scheduler.max_t",
                f"is required with time_attr {self.time_attr!r} (the most {self.time_attr} "
                "a trial may spend)",
            )
        if self.max_t and self.grace_period:
            require(
                self.grace_period <= self.max_t,
                "scheduler.grace_period",
                f"({self.grace_period}) must not exceed max_t ({self.max_t})",
            )


@dataclass
class BudgetConfig:
    """An optional compute budget: once spent, running trials stop and no new ones start."""

    flops: float = 0
    """Model training FLOPs summed over all trials (trm.flops x examples); 0 = no limit."""
    hours: float = 0
    """Wall-clock hours of one invocation of the sweep (--resume starts a new allowance);
    0 = no limit."""

    def __post_init__(self) -> None:
        for name in ("flops", "hours"):
            v = getattr(self, name)
            require(is_num(v) and v >= 0, f"budget.{name}", f"must be a number >= 0, got {v!r}")


@dataclass
class SweepConfig:
    """One sweep: base run config, search space, search algorithm, scheduler, limits."""

    name: str = "sweep"
    """Sweep name: the Tune experiment directory under the storage path and the MLflow parent
    run. Stable (no timestamps): --resume finds the sweep by it."""
    base: dict[str, Any] = field(default_factory=dict)
    """The run config every trial starts from (sections of pipeline/config.py's RunConfig)."""
    space: dict[str, Any] = field(default_factory=dict)
    """Dotted config key (or comma-joined keys with tied values) -> one domain mapping."""
    search: SearchConfig = field(default_factory=SearchConfig)
    """Search algorithm, samples, ranking metric."""
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    """FIFO or ASHA early stopping."""
    concurrency: int = 0
    """Trials running at once; 0 = as many as the cluster fits."""
    budget: BudgetConfig = field(default_factory=BudgetConfig)
    """Compute budget that stops the sweep."""
    max_failures: int = 2
    """Times a failed trial is retried from its last checkpoint (-1 = forever)."""
    dataset: dict[str, Any] = field(default_factory=dict)
    """Optional: how to build base.data.uri when it holds no dataset yet: `builder` (sudoku,
    maze or arc) and the builder's keyword arguments (pipeline.data.build_*)."""

    def __post_init__(self) -> None:
        require(
            isinstance(self.name, str)
            and self.name != ""
            and all(c.isalnum() or c in "-_." for c in self.name),
            "name",
            f"must be a non-empty string of letters, digits, '-', '_', '.', got {self.name!r}",
        )
        require(isinstance(self.base, dict), "base", "must be a mapping of run config sections")
        require(
            "name" not in self.base,
            "base.name",
            "trial runs are named <sweep name>-<trial id>; remove it (the sweep has `name`)",
        )
        require(
            is_int(self.concurrency) and self.concurrency >= 0,
            "concurrency",
            f"must be an integer >= 0, got {self.concurrency!r}",
        )
        require(
            is_int(self.max_failures) and self.max_failures >= -1,
            "max_failures",
            f"must be an integer >= -1, got {self.max_failures!r}",
        )
        require(isinstance(self.space, dict), "space", "must be a mapping of key -> domain")
        require(
            len(self.space) > 0,
            "space",
            "is empty: a sweep needs at least one key to vary (to train one config, use "
            "pipeline/train.py)",
        )
        self.base_config()  # the base alone must be a valid run config
        self.domains = {key: Domain.parse(key, spec) for key, spec in self.space.items()}
        seen: dict[str, str] = {}
        for key, dom in self.domains.items():
            for name in dom.names:
                check_field(name, f"space[{key!r}]")
                require(
                    name not in seen,
                    f"space[{key!r}]",
                    f"{name!r} is also set by {seen.get(name)!r}",
                )
                seen[name] = key
        if self.search.algorithm == "grid":
            for key, dom in self.domains.items():
                require(
                    dom.kind == "grid",
                    f"space[{key!r}]",
                    f"search.algorithm 'grid' needs grid domains, got {dom.kind!r} "
                    "(use algorithm: random to draw from it)",
                )
        self._check_values()
        if self.dataset:
            check_builder_args(self.dataset)

    # ---- derived ---------------------------------------------------------------------------
    def base_config(self, overrides: dict[str, Any] | None = None) -> RunConfig:
        """The base with `overrides` (dotted key -> value) applied, as a RunConfig."""
        d = {"name": self.name, **self.base}
        if overrides:
            d = apply_overrides(d, [f"{k}={json.dumps(v)}" for k, v in overrides.items()])
        return RunConfig.from_dict(d)

    def grid_points(self) -> list[dict[str, Any]]:
        """The grid's cross product as dotted key -> value (ranges left out)."""
        points: list[dict[str, Any]] = [{}]
        for dom in (d for d in self.domains.values() if d.kind == "grid"):
            points = [{**p, **dom.assign(v)} for p in points for v in dom.values]
        return points

    @property
    def num_trials(self) -> int:
        return len(self.grid_points()) * self.search.num_samples

    def checked_points(self) -> list[dict[str, Any]]:
        """Trials that stand for the whole space when checking it: every grid point crossed
        with the bounds of each range (every value of a choice); when that is more than
        MAX_CHECKED_POINTS, each key's values on their own."""
        corners: list[dict[str, Any]] = [{}]
        for dom in self.domains.values():
            if dom.kind != "grid":
                corners = [{**c, **dom.assign(v)} for c in corners for v in dom.probe_values()]
        grid = self.grid_points()
        if len(grid) * len(corners) <= MAX_CHECKED_POINTS:
            return [{**p, **c} for p in grid for c in corners]
        return [dom.assign(v) for dom in self.domains.values() for v in dom.probe_values()]

    def _check_values(self) -> None:
        """Every checked point, applied to the base, gives a valid RunConfig (whole points, so
        cross-field rules such as checkpoint.every being a multiple of eval.every hold)."""
        for point in self.checked_points():
            self._check_point(point)

    def _check_point(self, point: dict[str, Any], key: str | None = None) -> None:
        try:
            self.base_config(point)
        except ConfigError as e:
            where = f"space[{key!r}]" if key else "space"
            raise ConfigError(
                f"{where}: the trial {point} is not a valid run config: {e}"
            ) from None

    @property
    def time_key(self) -> str:
        return TIME_ATTRS[self.scheduler.time_attr]

    def max_steps(self) -> int:
        """The longest schedule.steps any trial can have."""
        dom = next((d for d in self.domains.values() if "schedule.steps" in d.names), None)
        if dom is None:
            return self.base_config().schedule.steps
        return max(int(p["schedule.steps"]) for v in dom.probe_values() for p in [dom.assign(v)])

    # ---- (de)serialisation -----------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "base": self.base,
            "space": self.space,
            "search": vars(self.search),
            "scheduler": vars(self.scheduler),
            "concurrency": self.concurrency,
            "budget": vars(self.budget),
            "max_failures": self.max_failures,
            "dataset": self.dataset,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SweepConfig:
        """Build from nested dicts; unknown keys raise `ConfigError` naming the key."""
        return build_section(cls, d, "")

    @classmethod
    def from_yaml(
        cls, path: str | Path, overrides: list[str] | tuple[str, ...] = ()
    ) -> SweepConfig:
        """Load a sweep file; `overrides` ('section.key=value') apply to the base run config."""
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"sweep file {str(path)!r} does not exist")
        try:
            d = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"sweep file {str(path)!r} is not valid YAML: {e}") from None
        if not isinstance(d, dict):
            raise ConfigError(f"sweep file {str(path)!r}: top level must be a mapping")
        try:
            d = expand_env(d)
        except ConfigError as e:
            raise ConfigError(f"sweep file {str(path)!r}: {e}") from None
        if overrides:
            base = d.get("base") or {}
            if not isinstance(base, dict):
                raise ConfigError(f"sweep file {str(path)!r}: base must be a mapping")
            d = {**d, "base": apply_overrides(base, overrides)}
        try:
            return cls.from_dict(d)
        except ConfigError as e:
            raise ConfigError(f"sweep file {str(path)!r}: {e}") from None


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


_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def expand_env(value: Any, where: str = "") -> Any:
    """`${VAR}` and `${VAR:-default}` in string values, from the environment: one sweep file
    serves clusters with different buckets (infra/k8s sets TRM_DATA_URI, TRM_STORAGE_URI).
    An unset variable without a default is a `ConfigError` naming it."""
    if isinstance(value, dict):
        return {k: expand_env(v, f"{where}.{k}" if where else str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [expand_env(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if not isinstance(value, str):
        return value

    def sub(m: re.Match) -> str:
        name, default = m.group(1), m.group(2)
        got = os.environ.get(name)
        if got:
            return got
        if default is None:
            raise ConfigError(f"{where}: environment variable {name} is not set (write "
                              f"${{{name}:-default}} for a default)")  # fmt: skip
        return default

    return _ENV_REF.sub(sub, value)


def known_metric(name: Any) -> bool:
    if not isinstance(name, str):
        return False
    if name in EVAL_METRICS or name in TRAIN_METRICS:
        return True
    prefix = "eval/arc_pass_at_"
    return name.startswith(prefix) and name[len(prefix) :].isdigit()


# ---- config keys ----------------------------------------------------------------------------
def config_fields() -> list[str]:
    """Every dotted leaf key of a RunConfig (model.* = trm.TRMConfig fields)."""
    from trm.config import TRMConfig

    out: list[str] = []
    hints = typing.get_type_hints(RunConfig)
    for f in fields(RunConfig):
        if f.name == "model":
            out += [f"model.{m.name}" for m in fields(TRMConfig) if m.name != "batch_size"]
        elif is_dataclass(hints[f.name]):
            out += [f"{f.name}.{s.name}" for s in fields(hints[f.name])]
        else:
            out.append(f.name)
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


# ---- dataset builders -----------------------------------------------------------------------
def builders() -> dict[str, Any]:
    from pipeline.data import build_arc, build_maze, build_sudoku

    return {"sudoku": build_sudoku, "maze": build_maze, "arc": build_arc}


def check_builder_args(spec: dict[str, Any]) -> None:
    """`dataset` names a known builder and only arguments it takes."""
    where = "dataset"
    require(isinstance(spec, dict), where, "must be a mapping with `builder` and its arguments")
    name = spec.get("builder")
    table = builders()
    require(name in table, f"{where}.builder", f"must be one of {tuple(table)}, got {name!r}")
    args = {k: v for k, v in spec.items() if k != "builder"}
    for bad in ("out_uri", "progress", "overwrite"):
        require(bad not in args, f"{where}.{bad}", "is set by the sweep; remove it")
    sig = inspect.signature(table[name])
    for k in args:
        require(
            k in sig.parameters,
            f"{where}.{k}",
            f"build_{name} takes no such argument; it takes "
            f"{', '.join(p for p in sig.parameters if p not in ('out_uri', 'progress'))}",
        )
    try:
        sig.bind("uri", **args)
    except TypeError as e:
        raise ConfigError(f"{where}: {e}") from None


def effective_depth(model: dict[str, Any]) -> int:
    """Layers a z update passes through per ACT step: H_cycles x (L_cycles + 1) x L_layers."""
    from trm.config import TRMConfig

    m = TRMConfig.from_dict(model)
    return m.H_cycles * (m.L_cycles + 1) * m.L_layers


def iter_sweep_files(directory: str | Path) -> list[Path]:
    return sorted(Path(directory).glob("*.yaml"))
