"""`RunConfig`: the typed, validated config of one training run.

One run = model (a `trm.TRMConfig`) + optimiser + data + schedule +
evaluation + checkpointing + resources + tracking. A YAML file gives the sections; `--set
section.key=value` overrides any field (values parsed as YAML: `--set model.H_cycles=2`,
`--set optim.ema=false`). Every section is a typed pydantic model (`StrictConfig`): unknown
keys, wrong types and nonsense values raise `ConfigError` (a `ValueError`) of one line naming
the dotted key, on construction, before anything starts. The dataset-derived model fields are
filled by `RunConfig.resolve(meta)`.

Across a Ray boundary the config travels as `cfg.to_dict()` and is rebuilt with
`RunConfig.from_dict(d)` on the other side.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, model_validator

from pipeline.config.fields import (
    ConfigError,
    StrictConfig,
    apply_overrides,
    check_name,
    flatten,
    require,
    type_name,
    with_values,
)
from pipeline.config.sections import (
    CheckpointConfig,
    DataConfig,
    EvalConfig,
    OptimConfig,
    ResourcesConfig,
    ScheduleConfig,
    TrackingConfig,
    epochs_to_steps,
)
from trm.config import TRMConfig

# Fields of TRMConfig that a dataset determines; a run config may omit them.
DATASET_FIELDS = ("seq_len", "vocab_size", "num_puzzle_identifiers")


def check_data_against(data: DataConfig, meta: Any) -> None:
    """`ConfigError` naming the key when the augmentation regime cannot run on the dataset."""
    from pipeline.data.sampler import regime_problem

    problem = regime_problem(meta, data.augment, data.num_aug)
    if problem is not None:
        raise ConfigError(f"{problem[0]}: {problem[1]} (dataset {data.uri!r})")


class RunConfig(StrictConfig):
    """One training run."""

    name: str = "trm"
    """Run name: Ray Train run directory under storage_path and the MLflow run name. Stable (no
    timestamps): re-running the same name resumes from its latest checkpoint."""
    model: TRMConfig = Field(default_factory=TRMConfig)
    """The model (trm.TRMConfig); seq_len, vocab_size and num_puzzle_identifiers default to
    the dataset's and must match it when given (`resolve`)."""
    optim: OptimConfig = Field(default_factory=OptimConfig)
    """Optimisers, schedule and EMA."""
    data: DataConfig = Field(default={}, validate_default=True)  # data.uri has no default
    """Dataset and batching."""
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    """Training length and logging interval."""
    eval: EvalConfig = Field(default_factory=EvalConfig)
    """Evaluation."""
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)
    """Checkpoints and fault tolerance."""
    resources: ResourcesConfig = Field(default_factory=ResourcesConfig)
    """Workers and devices."""
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    """MLflow."""

    @model_validator(mode="after")
    def _check(self) -> RunConfig:
        check_name(self.name, "name")
        require(
            "batch_size" not in self.model.model_fields_set,
            "model.batch_size",
            "is set by data.global_batch_size / resources.num_workers; remove it",
        )
        n = self.resources.num_workers
        require(
            self.data.global_batch_size % n == 0,
            "data.global_batch_size",
            f"({self.data.global_batch_size}) must be divisible by resources.num_workers ({n})",
        )
        sch = self.schedule
        if sch.rows_per_epoch:  # converted from epochs: the steps must follow from them
            steps = epochs_to_steps(sch.epochs, sch.rows_per_epoch, self.data.global_batch_size)
            require(
                sch.steps == steps,
                "schedule.steps",
                f"({sch.steps}) does not follow from schedule.epochs {sch.epochs} x "
                f"schedule.rows_per_epoch {sch.rows_per_epoch} / data.global_batch_size "
                f"{self.data.global_batch_size} = {steps}; give schedule.epochs alone (the run "
                "converts it) or schedule.steps alone",
            )
        require(
            self.checkpoint.every % self.eval.every == 0,
            "checkpoint.every",
            f"({self.checkpoint.every}) must be a multiple of eval.every ({self.eval.every}): "
            f"checkpoints are ranked by {self.checkpoint.metric!r}, measured at evaluations",
        )
        return self

    # ---- derived values ------------------------------------------------------------------
    @property
    def per_worker_batch(self) -> int:
        return self.data.global_batch_size // self.resources.num_workers

    @property
    def halt_max_steps(self) -> int:
        return self.model.halt_max_steps

    @property
    def depth_steps(self) -> int:
        return max(self.eval.depth_steps, self.halt_max_steps)

    def resolve(self, meta: Any) -> TRMConfig:
        """The model this run trains on the dataset `meta`: the dataset fields (DATASET_FIELDS)
        the config leaves out filled from it, batch_size the per-worker batch. A given value
        that contradicts the dataset, or an augmentation regime it cannot run, is a
        `ConfigError` naming the key."""
        check_data_against(self.data, meta)
        d = self.model.model_dump(exclude_unset=True)
        for name in DATASET_FIELDS:
            have = getattr(meta, name)
            if name in d:
                ok = d[name] >= have if name == "num_puzzle_identifiers" else d[name] == have
                if not ok:
                    raise ConfigError(
                        f"model.{name} = {d[name]} does not match the dataset at "
                        f"{self.data.uri!r} ({name} = {have}); remove it from the config to "
                        "use the dataset's"
                    )
            else:
                d[name] = have
        return TRMConfig.build({**d, "batch_size": self.per_worker_batch}, "model")

    # ---- (de)serialisation ---------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain nested dicts; the model section holds the fields the config gives (the
        dataset's and derived ones stay unset, so overrides and `resolve` still fill them)."""
        return {**self.model_dump(), "model": self.model.model_dump(exclude_unset=True)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunConfig:
        """Build from nested dicts; an unknown key or a bad value is a `ConfigError` naming
        the dotted key."""
        return cls.build(d)

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
        """Load a YAML file and apply `key.sub=value` overrides (values parsed as YAML)."""
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {str(path)!r} does not exist")
        try:
            d = yaml.safe_load(path.read_text()) or {}
        except (yaml.YAMLError, UnicodeDecodeError) as e:
            raise ConfigError(f"{path} is not a valid YAML file: {e}") from None
        if not isinstance(d, dict):
            raise ConfigError(f"{path}: top level must be a mapping of sections")
        return cls.from_dict(apply_overrides(d, overrides))

    def with_overrides(self, overrides: list[str] | tuple[str, ...]) -> RunConfig:
        """`self` with command-line `key.sub=value` strings applied (values parsed as YAML)."""
        return RunConfig.from_dict(apply_overrides(self.to_dict(), overrides))

    def with_values(self, values: dict[str, Any]) -> RunConfig:
        """`self` with dotted key -> value set, the values taken as they are (a name "2024"
        stays a string), and validated again: how code changes a config."""
        return RunConfig.from_dict(with_values(self.to_dict(), values))

    def flat(self) -> dict[str, Any]:
        """Dotted keys -> leaf values (for MLflow params)."""
        return flatten(self.to_dict())


def describe() -> str:
    """Every config key with its type, default and meaning (used by `train.py --help`), from
    the fields' declarations."""
    lines: list[str] = []
    for name, sec in RunConfig.model_fields.items():
        doc = " ".join((sec.description or "").split())
        if not (isinstance(sec.annotation, type) and issubclass(sec.annotation, StrictConfig)):
            lines.append(f"{name} = {sec.default!r}  {doc}")
            continue
        lines.append(f"{name}:  ({doc})")
        for key, f in sec.annotation.model_fields.items():
            default = f.get_default(call_default_factory=True)
            if (name, key) == ("data", "uri"):
                default = "<required>"
            elif name == "model" and key in DATASET_FIELDS:
                default = "<from dataset>"
            elif (name, key) == ("model", "batch_size"):
                continue
            lines.append(
                f"  {name}.{key}: {type_name(f.annotation)} = {default!r}\n"
                f"      {' '.join((f.description or '').split())}"
            )
    return "\n".join(lines)
