"""`SweepConfig`: the typed, validated sweep file that `pipeline/sweep.py` runs.

A sweep file is a base run config (`pipeline.config.run.RunConfig`, the same sections as a
training config) plus a search space over any of its fields, addressed by dotted keys:

    name: depth                      # Tune experiment + MLflow parent run name (stable: --resume)
    base: {model: {...}, data: {uri: ...}, schedule: {...}, ...}
    dataset: {builder: sudoku, size: 4, num_train: 2000, num_test: 256}   # built when missing
    space:
      model.H_cycles: {grid: [1, 2, 3]}
      optim.lr: {loguniform: [1.0e-4, 1.0e-2]}
      model.L_layers,model.L_cycles: {grid: [[2, 6], [4, 3]]}             # tied values
    search: {algorithm: grid, num_samples: 1, metric: eval/exact_accuracy, mode: max}   # or optuna
    scheduler: {type: asha, time_attr: flops, max_t: 1.0e13, grace_period: 1.0e12}
    concurrency: 0                   # trials at once; 0 = as many as fit the cluster
    budget: {flops: 0, hours: 0}     # stop the whole sweep when spent; 0 = no limit
    max_failures: 2                  # retries of a trial failing on its own (lost nodes: no limit)
    register_top_k: 3                # best trials' models registered in MLflow under `name`

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

import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, PrivateAttr, model_validator

from pipeline.config.fields import (
    ConfigError,
    Float,
    StrictConfig,
    apply_overrides,
    check_name,
    require,
)
from pipeline.config.metric_names import check_metric
from pipeline.config.run import RunConfig
from pipeline.config.sections import PROTOCOLS
from pipeline.sweeping.dataset import check_builder_args
from pipeline.sweeping.space import Domain, check_field, trial_config

ALGORITHMS = ("grid", "random", "optuna")
MODES = ("train", "evaluate")
# the only fields an evaluate-mode sweep may vary: test-time settings of `TRM.predict`
EVAL_MODE_FIELDS = (
    "eval.protocol",
    "eval.halt_threshold",
    "eval.max_steps",
    "eval.depth",
    "eval.trajectories",
    "eval.noise_std",
    "eval.select",
    "eval.seed",
)
SCHEDULERS = ("fifo", "asha")
# sweep time axis -> the key every trial reports it under
TIME_ATTRS = {"steps": "step", "examples": "examples", "flops": "flops"}
# more grid points than this are checked key by key instead of point by point
MAX_CHECKED_POINTS = 2000


class SearchConfig(StrictConfig):
    """How trials are drawn from the space and what they are ranked by."""

    algorithm: Literal[ALGORITHMS] = "grid"  # type: ignore[valid-type]
    """'grid': every key is a grid, trials = their cross product (x num_samples). 'random':
    grid keys are crossed, every other key is drawn num_samples times per grid point.
    'optuna': num_samples trials, each drawn by Optuna's TPE from the results of the trials
    before it (Ray Tune's OptunaSearch); no grid keys (write `choice` instead)."""
    num_samples: int = Field(1, gt=0)
    """Repeats of each grid point (grid) / draws per grid point (random) / trials (optuna)."""
    metric: str = "eval/exact_accuracy"
    """Reported metric that ranks trials, drives ASHA and picks the best config."""
    mode: Literal["max", "min"] = "max"
    """'max' or 'min': which direction of `metric` is better."""
    seed: int = 0
    """Seed of the random draws (the same seed gives the same trials; for optuna, the same
    first trials and the same proposals from the same results)."""
    startup_trials: int = Field(10, gt=0)
    """optuna: trials drawn at random before TPE starts modelling the results (Optuna's
    n_startup_trials); with few trials in all, lower it or TPE never starts."""

    @model_validator(mode="after")
    def _check(self) -> SearchConfig:
        problem = check_metric(self.metric)
        require(not problem, "metric", problem)
        return self


class SchedulerConfig(StrictConfig):
    """Early stopping: FIFO (every trial runs to its end) or ASHA."""

    type: Literal[SCHEDULERS] = "fifo"  # type: ignore[valid-type]
    """'fifo' or 'asha' (asynchronous successive halving)."""
    time_attr: Literal[tuple(TIME_ATTRS)] = "steps"  # type: ignore[valid-type]
    """ASHA's time axis: 'steps' (optimiser steps), 'examples' (example-ACT-steps trained) or
    'flops' (model training FLOPs spent, trm.flops): with 'flops' a deeper model reaches each
    rung after fewer steps, so trials are compared at equal compute."""
    max_t: Float = Field(0, ge=0)
    """ASHA: longest time a trial may run, in time_attr units (0 = the longest
    schedule.steps of the space; required for 'examples' and 'flops')."""
    grace_period: Float = Field(0, ge=0)
    """ASHA: time every trial gets before it can be stopped (time_attr units; 0 = max_t / 8)."""
    reduction_factor: Float = Field(2, gt=1)
    """ASHA: 1/reduction_factor of the trials at a rung continue to the next."""

    @model_validator(mode="after")
    def _check(self) -> SchedulerConfig:
        if self.type == "asha" and self.time_attr != "steps":
            require(
                self.max_t > 0,
                "max_t",
                f"is required with time_attr {self.time_attr!r} (the most {self.time_attr} "
                "a trial may spend)",
            )
        if self.max_t and self.grace_period:
            require(
                self.grace_period <= self.max_t,
                "grace_period",
                f"({self.grace_period}) must not exceed max_t ({self.max_t})",
            )
        return self


class BudgetConfig(StrictConfig):
    """An optional compute budget: once spent, running trials stop and no new ones start."""

    flops: Float = Field(0, ge=0)
    """Model training FLOPs summed over all trials (trm.flops x examples); 0 = no limit."""
    hours: Float = Field(0, ge=0)
    """Wall-clock hours of one invocation of the sweep (--resume starts a new allowance);
    0 = no limit."""


class SweepConfig(StrictConfig):
    """One sweep: base run config, search space, search algorithm, scheduler, limits."""

    name: str = "sweep"
    """Sweep name: the Tune experiment directory under the storage path and the MLflow parent
    run. Stable (no timestamps): --resume finds the sweep by it."""
    base: dict[str, Any] = Field(default_factory=dict)
    """The run config every trial starts from (sections of pipeline/config/run.py's RunConfig)."""
    space: dict[str, Any] = Field(default_factory=dict)
    """Dotted config key (or comma-joined keys with tied values) -> one domain mapping."""
    search: SearchConfig = Field(default_factory=SearchConfig)
    """Search algorithm, samples, ranking metric."""
    scheduler: SchedulerConfig = Field(default_factory=SchedulerConfig)
    """FIFO or ASHA early stopping."""
    concurrency: int = Field(0, ge=0)
    """Trials running at once; 0 = as many as the cluster fits."""
    budget: BudgetConfig = Field(default_factory=BudgetConfig)
    """Compute budget that stops the sweep."""
    max_failures: int = Field(2, ge=-1)
    """Times a trial that fails on its own is retried from its last checkpoint (-1 = forever).
    A trial lost with its node or process (preemption, node failure) after reaching a new
    checkpoint is retried without limit and counted as a preemption in the summary; input
    that fails the same way every time ends the trial at once."""
    register_top_k: int = Field(3, ge=0)
    """At the end, the best models of this many best trials are registered in the MLflow Model
    Registry under the sweep's name (0 = none)."""
    dataset: dict[str, Any] = Field(default_factory=dict)
    """Optional: how to build base.data.uri when it holds no dataset yet: `builder` (sudoku,
    maze or arc) and the builder's keyword arguments (pipeline.data.build_*)."""
    mode: Literal[MODES] = "train"  # type: ignore[valid-type]
    """'train': every trial trains a run config. 'evaluate': no training; every trial
    evaluates `checkpoint` with one test-time setting (`pipeline.sweeping.eval_trial`); the
    space may only vary EVAL_MODE_FIELDS."""
    checkpoint: str = ""
    """evaluate mode: the checkpoint or run directory (local or s3://) every trial evaluates
    (`pipeline.checkpoints.restore`); `--checkpoint` replaces it."""

    _domains: dict[str, Domain] = PrivateAttr(default_factory=dict)
    _checked: list[tuple[dict[str, Any], RunConfig]] = PrivateAttr(default_factory=list)

    @property
    def domains(self) -> dict[str, Domain]:
        """Space key -> its parsed domain."""
        return self._domains

    @property
    def checked(self) -> list[tuple[dict[str, Any], RunConfig]]:
        """(point, its run config) of every checked point (`_check_values`); [] for an
        evaluate sweep not yet bound to its checkpoint."""
        return self._checked

    @model_validator(mode="after")
    def _check(self) -> SweepConfig:
        check_name(self.name, "name")
        require(
            "name" not in self.base,
            "base.name",
            "trial runs are named <sweep name>-<trial id>; remove it (the sweep has `name`)",
        )
        require(
            len(self.space) > 0,
            "space",
            "is empty: a sweep needs at least one key to vary (to train one config, use "
            "pipeline/train.py)",
        )
        if self.mode == "evaluate":
            self._check_evaluate()
        else:
            self.base_config()  # the base alone must be a valid run config
            self._check_ranking()
        self._domains = {key: Domain.parse(key, spec) for key, spec in self.space.items()}
        self._check_keys()
        if self.mode == "evaluate":
            self._check_eval_space()
        if self.mode == "train" or self.base.get("data", {}).get("uri"):
            self._check_values()
        if self.dataset:
            check_builder_args(self.dataset)
        return self

    def _check_keys(self) -> None:
        """Every space key names a real field, once; grid search has only grid domains."""
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
            require(
                self.search.algorithm != "grid" or dom.kind == "grid",
                f"space[{key!r}]",
                f"search.algorithm 'grid' needs grid domains, got {dom.kind!r} "
                "(use algorithm: random to draw from it)",
            )
            require(
                self.search.algorithm != "optuna" or dom.kind != "grid",
                f"space[{key!r}]",
                "search.algorithm 'optuna' cannot take a grid (it proposes every value "
                "itself): write {choice: [...]} for it to choose among the values",
            )

    def _check_ranking(self) -> None:
        """A base that ranks its checkpoints itself ranks them by the sweep's metric: the
        evaluations that beat a trial's best are what is checkpointed and kept, so the
        summary's best checkpoint holds its best value only when both rank alike."""
        ck, s = self.base.get("checkpoint", {}), self.search
        if not s.metric.startswith("eval/"):
            return
        for key, want in (("metric", s.metric), ("mode", s.mode)):
            require(
                key not in ck or ck[key] == want,
                f"base.checkpoint.{key}",
                f"({ck.get(key)!r}) differs from search.{key} ({want!r}): a sweep's trials keep "
                f"the checkpoints best by the sweep's metric; remove it",
            )

    def _check_evaluate(self) -> None:
        require(
            isinstance(self.checkpoint, str) and self.checkpoint.strip() != "",
            "checkpoint",
            "mode: evaluate needs the checkpoint (or run directory) to evaluate: set "
            "`checkpoint:` in the file or pass --checkpoint URI",
        )
        require(
            self.scheduler.type == "fifo",
            "scheduler.type",
            "an evaluate-mode sweep has no training to stop early: use fifo",
        )
        require(
            self.base.get("resources", {}).get("num_workers", 1) == 1,
            "base.resources.num_workers",
            "an evaluate-mode trial runs in one process: use 1 (pack trials with fractional "
            "gpus_per_worker instead)",
        )

    def _check_eval_space(self) -> None:
        """Only test-time fields vary, and every checked point gives a valid eval section."""
        from pipeline.config.run import EvalConfig

        for key, dom in self.domains.items():
            for name in dom.names:
                require(
                    name in EVAL_MODE_FIELDS,
                    f"space[{key!r}]",
                    f"{name!r} is a training field; an evaluate-mode sweep evaluates a trained "
                    f"checkpoint and can only vary {', '.join(EVAL_MODE_FIELDS)}",
                )
        for point in self.checked_points():
            section = dict(self.base.get("eval", {}))
            section.update({k.split(".", 1)[1]: v for k, v in point.items()})
            try:
                e = EvalConfig.build(section, "eval")
            except ConfigError as err:
                raise ConfigError(
                    f"space: the trial {point} is not a valid setting: {err}"
                ) from None
            parts = self.search.metric.split("/")  # eval/<protocol>/... names one protocol
            ranked = parts[1] if len(parts) == 3 else ""
            require(
                ranked not in PROTOCOLS or ranked == e.protocol,
                "search.metric",
                f"{self.search.metric} is reported by protocol {ranked} only; the trial "
                f"{point} runs protocol {e.protocol} (rank by eval/exact_accuracy instead)",
            )

    # ---- derived ---------------------------------------------------------------------------
    def base_config(self, point: dict[str, Any] | None = None) -> RunConfig:
        """The base with the search-space `point` (dotted key -> value) applied: the run
        config of that trial (`space.trial_config`), named after the sweep."""
        return trial_config({"name": self.name, **self.base}, point or {})

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
        cross-field rules such as checkpoint.every being a multiple of eval.every hold); kept
        as `self.checked` ((point, its run config) pairs) for the driver's dataset checks."""
        self._checked = [(point, self._check_point(point)) for point in self.checked_points()]

    def _check_point(self, point: dict[str, Any], key: str | None = None) -> RunConfig:
        try:
            return self.base_config(point)
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
        return self.model_dump()

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SweepConfig:
        """Build from nested dicts; unknown keys raise `ConfigError` naming the key."""
        return cls.build(d)

    @classmethod
    def from_yaml(
        cls,
        path: str | Path,
        overrides: list[str] | tuple[str, ...] = (),
        name: str | None = None,
        checkpoint: str | None = None,
    ) -> SweepConfig:
        """Load a sweep file; `overrides` ('section.key=value') apply to the base run config;
        `name` replaces the file's sweep name, `checkpoint` its checkpoint."""
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
        if name:
            d = {**d, "name": name}
        if checkpoint:
            d = {**d, "checkpoint": checkpoint}
        try:
            return cls.from_dict(d)
        except ConfigError as e:
            raise ConfigError(f"sweep file {str(path)!r}: {e}") from None


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


def effective_depth(model: dict[str, Any]) -> int:
    """Layers a z update passes through per ACT step: H_cycles x (L_cycles + 1) x L_layers."""
    from trm.config import TRMConfig

    m = TRMConfig.from_dict(model)
    return m.H_cycles * (m.L_cycles + 1) * m.L_layers


def iter_sweep_files(directory: str | Path) -> list[Path]:
    return sorted(Path(directory).glob("*.yaml"))
