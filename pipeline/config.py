"""`RunConfig`: the typed, validated config of one training run.

One run = model (a `trm.TRMConfig` as a dict of its fields) + optimiser + data + schedule +
evaluation + checkpointing + resources + tracking. A YAML file gives the sections; `--set
section.key=value` overrides any field (values parsed as YAML: `--set model.H_cycles=2`,
`--set optim.ema=false`). Unknown keys, wrong types and nonsense values raise `ValueError`
naming the field, on construction, before anything starts.

Across a Ray boundary the config travels as `cfg.to_dict()` and is rebuilt with
`RunConfig.from_dict(d)` on the other side.
"""

from __future__ import annotations

import typing
from dataclasses import MISSING, asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

import yaml

from pipeline.fields import (
    ConfigError,
    apply_overrides,
    build_section,
    check_name,
    field_docs,
    flatten,
    require,
    type_name,
)
from pipeline.sections import (
    CheckpointConfig,
    DataConfig,
    EvalConfig,
    OptimConfig,
    ResourcesConfig,
    ScheduleConfig,
    TrackingConfig,
)

TASKS_WITH_VOTING = ("arc",)
# Fields of TRMConfig that a dataset determines; a run config may omit them.
DATASET_FIELDS = ("seq_len", "vocab_size", "num_puzzle_identifiers")


def check_data_against(data: DataConfig, meta: Any) -> None:
    """`ConfigError` naming the key when the augmentation regime cannot run on the dataset."""
    from pipeline.data.sampler import regime_problem

    problem = regime_problem(meta, data.augment, data.num_aug)
    if problem is not None:
        raise ConfigError(f"{problem[0]}: {problem[1]} (dataset {data.uri!r})")


@dataclass
class RunConfig:
    """One training run."""

    name: str = "trm"
    """Run name: Ray Train run directory under storage_path and the MLflow run name. Stable (no
    timestamps): re-running the same name resumes from its latest checkpoint."""
    model: dict[str, Any] = field(default_factory=dict)
    """trm.TRMConfig fields (see `--help`); seq_len, vocab_size and num_puzzle_identifiers
    default to the dataset's and must match it when given."""
    optim: OptimConfig = field(default_factory=OptimConfig)
    """Optimisers, schedule and EMA."""
    data: DataConfig = field(default_factory=DataConfig)
    """Dataset and batching."""
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    """Training length and logging interval."""
    eval: EvalConfig = field(default_factory=EvalConfig)
    """Evaluation."""
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    """Checkpoints and fault tolerance."""
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)
    """Workers and devices."""
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    """MLflow."""

    def __post_init__(self) -> None:
        check_name(self.name, "name")
        require(isinstance(self.model, dict), "model", "must be a mapping of TRMConfig fields")
        from trm.config import TRMConfig

        try:
            TRMConfig.from_dict({**self.model, "batch_size": None})
        except ValueError as e:
            raise ConfigError(f"model: {e}") from None
        require(
            "batch_size" not in self.model,
            "model.batch_size",
            "is set by data.global_batch_size / resources.num_workers; remove it",
        )
        n = self.resources.num_workers
        require(
            self.data.global_batch_size % n == 0,
            "data.global_batch_size",
            f"({self.data.global_batch_size}) must be divisible by resources.num_workers ({n})",
        )
        require(
            self.checkpoint.every % self.eval.every == 0,
            "checkpoint.every",
            f"({self.checkpoint.every}) must be a multiple of eval.every ({self.eval.every}): "
            f"checkpoints are ranked by {self.checkpoint.metric!r}, measured at evaluations",
        )

    # ---- derived values ------------------------------------------------------------------
    @property
    def per_worker_batch(self) -> int:
        return self.data.global_batch_size // self.resources.num_workers

    @property
    def halt_max_steps(self) -> int:
        from trm.config import TRMConfig

        return TRMConfig.from_dict(self.model).halt_max_steps

    @property
    def depth_steps(self) -> int:
        return max(self.eval.depth_steps, self.halt_max_steps)

    # ---- (de)serialisation ---------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunConfig:
        """Build from nested dicts; unknown keys raise `ConfigError` naming the dotted key."""
        return build_section(cls, d, "")

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
        return RunConfig.from_dict(apply_overrides(self.to_dict(), overrides))

    def flat(self) -> dict[str, Any]:
        """Dotted keys -> leaf values (for MLflow params)."""
        return flatten(self.to_dict())


def describe() -> str:
    """Every config key with its type, default and meaning (used by `train.py --help`)."""
    from trm.config import TRMConfig

    lines: list[str] = []
    for sec in fields(RunConfig):
        hint = typing.get_type_hints(RunConfig)[sec.name]
        if sec.name == "model":
            lines.append("model:  (trm.TRMConfig; dataset fields default to the dataset's)")
            sub_cls: type | None = TRMConfig
        elif is_dataclass(hint):
            lines.append(f"{sec.name}:  ({field_docs(RunConfig)[sec.name]})")
            sub_cls = hint
        else:
            default = sec.default if sec.default is not MISSING else ""
            lines.append(f"{sec.name} = {default!r}  {field_docs(RunConfig)[sec.name]}")
            sub_cls = None
        if sub_cls is None:
            continue
        docs = field_docs(sub_cls)
        hints = typing.get_type_hints(sub_cls)
        for f in fields(sub_cls):
            if sub_cls is TRMConfig and f.name == "batch_size":
                continue
            if f.default is not MISSING:
                default = f.default
            elif f.default_factory is not MISSING:
                default = f.default_factory()
            else:
                default = "<required>"
            if sub_cls is DataConfig and f.name == "uri":
                default = "<required>"
            if sub_cls is TRMConfig and f.name in DATASET_FIELDS:
                default = "<from dataset>"
            lines.append(
                f"  {sec.name}.{f.name}: {type_name(hints[f.name])} = {default!r}\n"
                f"      {docs.get(f.name, '')}"
            )
    return "\n".join(lines)
