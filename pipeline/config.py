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

import ast
import inspect
import itertools
import math
import textwrap
import types
import typing
from dataclasses import MISSING, asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

import yaml

from trm.config import is_int

TASKS_WITH_VOTING = ("arc",)
LOSS_TYPES = ("stablemax", "softmax")
COMPILE_SCOPES = ("off", "blocks", "model")
# Fields of TRMConfig that a dataset determines; a run config may omit them.
DATASET_FIELDS = ("seq_len", "vocab_size", "num_puzzle_identifiers")


class ConfigError(ValueError):
    """A run config that cannot run; the message names the field and what is wrong."""


def require(ok: bool, where: str, msg: str) -> None:
    """Raise `ConfigError("<where>: <msg>")` unless `ok` (`where` names the config field)."""
    if not ok:
        raise ConfigError(f"{where}: {msg}")


def is_num(v: Any) -> bool:
    """A finite int or float that is not a bool."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


@dataclass
class OptimConfig:
    """Optimisers, learning-rate schedule and EMA (the paper's recipe by default)."""

    lr: float = 1e-4
    """Peak learning rate of AdamATan2 for the network parameters."""
    lr_min_ratio: float = 1.0
    """Cosine decay floor as a fraction of the peak (1.0 = constant after warm-up)."""
    lr_warmup_steps: int = 2000
    """Linear warm-up length in optimiser steps (0 = none)."""
    weight_decay: float = 1.0
    """Decoupled weight decay of AdamATan2 (paper: 1.0 Sudoku/Maze, 0.1 ARC)."""
    beta1: float = 0.9
    """AdamATan2 first-moment decay."""
    beta2: float = 0.95
    """AdamATan2 second-moment decay."""
    puzzle_emb_lr: float = 1e-4
    """Peak learning rate of the SignSGD puzzle-embedding table (paper: 1e-4 Sudoku/Maze, 1e-2 ARC)."""
    puzzle_emb_weight_decay: float = 1.0
    """Decoupled weight decay of the puzzle-embedding table."""
    ema: bool = True
    """Keep an exponential moving average of the parameters and evaluate with it."""
    ema_rate: float = 0.999
    """EMA decay per optimiser step."""
    loss_type: str = "stablemax"
    """Token loss: 'stablemax' (paper) or 'softmax'."""

    def __post_init__(self) -> None:
        w = "optim"
        for name in ("lr", "puzzle_emb_lr"):
            v = getattr(self, name)
            require(is_num(v) and v > 0, f"{w}.{name}", f"must be a positive number, got {v!r}")
        for name in ("weight_decay", "puzzle_emb_weight_decay"):
            v = getattr(self, name)
            require(is_num(v) and v >= 0, f"{w}.{name}", f"must be a number >= 0, got {v!r}")
        require(
            is_num(self.lr_min_ratio) and 0 <= self.lr_min_ratio <= 1,
            f"{w}.lr_min_ratio",
            f"must be in [0, 1], got {self.lr_min_ratio!r}",
        )
        require(
            is_int(self.lr_warmup_steps) and self.lr_warmup_steps >= 0,
            f"{w}.lr_warmup_steps",
            f"must be an integer >= 0, got {self.lr_warmup_steps!r}",
        )
        for name in ("beta1", "beta2"):
            v = getattr(self, name)
            require(is_num(v) and 0 <= v < 1, f"{w}.{name}", f"must be in [0, 1), got {v!r}")
        require(isinstance(self.ema, bool), f"{w}.ema", f"must be true/false, got {self.ema!r}")
        require(
            is_num(self.ema_rate) and 0 < self.ema_rate < 1,
            f"{w}.ema_rate",
            f"must be in (0, 1), got {self.ema_rate!r}",
        )
        require(
            self.loss_type in LOSS_TYPES,
            f"{w}.loss_type",
            f"must be one of {LOSS_TYPES}, got {self.loss_type!r}",
        )


@dataclass
class DataConfig:
    """Which dataset and how it is batched."""

    uri: str = ""
    """Dataset directory: a local path or s3://bucket/prefix (with meta.json, train/, test/)."""
    global_batch_size: int = 768
    """Examples per optimiser step over all workers; must divide evenly by the worker count."""
    eval_batch_size: int = 0
    """Examples per evaluation batch per worker (0 = the per-worker training batch)."""
    augment: str = "on_the_fly"
    """Training augmentation regime: 'fixed_pool' (the paper's: per puzzle a pool of 1 + num_aug
    variants, the original included, one drawn per epoch; on a materialised dataset the stored
    variants), 'on_the_fly' (a fresh random symmetry every epoch: unlimited augmentation) or
    'none' (rows as stored; on a materialised dataset the originals only)."""
    num_aug: int = 1000
    """fixed_pool only: augmented variants per puzzle besides the original (paper: 1000)."""
    seed: int = 0
    """Seed of the data order and augmentation; also seeds model init and ACT exploration."""

    def __post_init__(self) -> None:
        require(
            isinstance(self.uri, str) and self.uri.strip() != "",
            "data.uri",
            "is required: a local dataset directory or s3://bucket/prefix",
        )
        require(
            is_int(self.global_batch_size) and self.global_batch_size > 0,
            "data.global_batch_size",
            f"must be a positive integer, got {self.global_batch_size!r}",
        )
        require(
            is_int(self.eval_batch_size) and self.eval_batch_size >= 0,
            "data.eval_batch_size",
            f"must be an integer >= 0, got {self.eval_batch_size!r}",
        )
        from pipeline.data.sampler import REGIMES

        require(
            self.augment in REGIMES and not isinstance(self.augment, bool),
            "data.augment",
            f"must be one of {', '.join(REGIMES)}, got {self.augment!r}"
            + (" (true/false were the old values)" if isinstance(self.augment, bool) else ""),
        )
        require(
            is_int(self.num_aug) and (self.num_aug >= 1 or self.augment != "fixed_pool"),
            "data.num_aug",
            f"must be an integer >= 1 with augment fixed_pool, got {self.num_aug!r}",
        )
        require(is_int(self.seed), "data.seed", f"must be an integer, got {self.seed!r}")


def check_data_against(data: DataConfig, meta: Any) -> None:
    """`ConfigError` naming the key when the augmentation regime cannot run on the dataset."""
    from pipeline.data.sampler import regime_problem

    problem = regime_problem(meta, data.augment, data.num_aug)
    if problem is not None:
        raise ConfigError(f"{problem[0]}: {problem[1]} (dataset {data.uri!r})")


@dataclass
class ScheduleConfig:
    """How long to train and how often to print progress."""

    steps: int = 1000
    """Total optimiser steps (one per ACT step: deep supervision)."""
    log_every: int = 50
    """Steps between progress lines and logged training metrics."""
    report_every: int = 0
    """Steps between metric reports to Ray (what Tune schedulers see); 0 = at evaluations only.
    A report is a barrier across workers, so keep it sparse in worker groups."""

    def __post_init__(self) -> None:
        for name in ("steps", "log_every"):
            v = getattr(self, name)
            require(
                is_int(v) and v > 0, f"schedule.{name}", f"must be a positive integer, got {v!r}"
            )
        require(
            is_int(self.report_every) and self.report_every >= 0,
            "schedule.report_every",
            f"must be an integer >= 0, got {self.report_every!r}",
        )


@dataclass
class EvalConfig:
    """Evaluation on the test split."""

    every: int = 500
    """Steps between evaluations (the last step is always evaluated)."""
    max_examples: int = 0
    """Evaluate on at most this many test examples (0 = the whole test split). ARC: rows, each a
    test input under one variant; test inputs left without a prediction count as unsolved in
    eval/arc_pass_at_k, whose denominator stays every test input (a truncated score is a lower
    bound, never inflated)."""
    depth_steps: int = 0
    """Longest ACT rollout of the depth curve (exact accuracy after each step 1..K); 0 (or any
    value up to model.halt_max_steps) = halt_max_steps, the official evaluation's cost. More is
    opt-in test-time recursion and costs K / halt_max_steps times the official evaluation."""
    halt_thresholds: list[float] = field(default_factory=lambda: [0.1, 0.3, 0.5, 0.7, 0.9])
    """Halting thresholds tau of the test-time ACT curve: per tau, mean ACT steps and exact
    accuracy when halting at sigmoid(q_halt) > tau (`eval/halt_tau_<tau>/*`), all read off the
    same rollout as the other metrics (no extra model calls); [] = no curve."""
    num_pictures: int = 4
    """Test puzzles drawn step by step (grid at each ACT step) as an image artifact; 0 = none."""
    pass_ks: list[int] = field(default_factory=lambda: [1, 2])
    """ARC only: report pass@k of the official voting over augmented variants for these k."""
    arc_variants: int = 0
    """ARC only: variants of each test input voted over; 0 = all the dataset holds (on the fly:
    the original + num_aug, e.g. 1001; materialised: every row of its test split). A positive
    value caps an on-the-fly dataset at variants 0..N-1 (the run logs the cap); materialised
    datasets take no cap."""
    arc_aggregate: bool = False
    """ARC only: pool the votes of every evaluation of the run, as the official evaluator does
    by default (`aggregated_voting`), so later scores include predictions of earlier weights.
    Off: each evaluation scores the weights it evaluated. The pool is not checkpointed."""
    # test-time compute settings: used by evaluate-mode sweeps (`TRM.predict` per trial);
    # the periodic evaluation of training keeps the official fixed-depth rollout
    halt_threshold: float | None = None
    """Test-time halting threshold tau in (0, 1) of `TRM.predict(halt=True)`; unset (null) =
    the model's `halt_threshold`."""
    max_steps: int = 0
    """Most ACT steps per trajectory at test time; 0 = the model's halt_max_steps."""
    trajectories: int = 1
    """K trajectories per example run side by side (`TRM.predict`); 1 = the plain answer."""
    noise_std: float = 0.0
    """Std of the noise added to the latent z_L once per ACT step in each trajectory; 0 = none."""
    select: str = "q_halt"
    """How one of the K trajectories is picked: 'q_halt', 'vote' or 'first' (`TRM.predict`)."""
    seed: int = 0
    """Seed of the trajectories' noise (`torch.Generator().manual_seed(seed)`)."""

    def __post_init__(self) -> None:
        require(
            is_int(self.every) and self.every > 0,
            "eval.every",
            f"must be a positive integer, got {self.every!r}",
        )
        for name in ("max_examples", "depth_steps", "num_pictures", "arc_variants"):
            v = getattr(self, name)
            require(is_int(v) and v >= 0, f"eval.{name}", f"must be an integer >= 0, got {v!r}")
        require(
            isinstance(self.halt_thresholds, list)
            and all(
                isinstance(t, (int, float)) and not isinstance(t, bool) and 0 < t < 1
                for t in self.halt_thresholds
            ),
            "eval.halt_thresholds",
            f"must be a list of numbers in (0, 1), got {self.halt_thresholds!r}",
        )
        require(
            isinstance(self.pass_ks, list)
            and len(self.pass_ks) > 0
            and all(is_int(k) and k > 0 for k in self.pass_ks),
            "eval.pass_ks",
            f"must be a non-empty list of positive integers, got {self.pass_ks!r}",
        )
        require(isinstance(self.arc_aggregate, bool), "eval.arc_aggregate", "must be true/false")
        self._check_test_time()

    def _check_test_time(self) -> None:
        from trm.model import SELECTS

        tau = self.halt_threshold
        require(
            tau is None or (is_num(tau) and 0 < tau < 1),
            "eval.halt_threshold",
            f"must be a number in (0, 1) or null (the model's), got {tau!r}",
        )
        require(
            is_int(self.max_steps) and self.max_steps >= 0,
            "eval.max_steps",
            f"must be an integer >= 1 (0 = the model's halt_max_steps), got {self.max_steps!r}",
        )
        require(
            is_int(self.trajectories) and self.trajectories >= 1,
            "eval.trajectories",
            f"must be an integer >= 1, got {self.trajectories!r}",
        )
        require(
            is_num(self.noise_std) and self.noise_std >= 0,
            "eval.noise_std",
            f"must be a number >= 0, got {self.noise_std!r}",
        )
        require(self.select in SELECTS, "eval.select",
                f"must be one of {SELECTS}, got {self.select!r}")  # fmt: skip
        require(is_int(self.seed), "eval.seed", f"must be an integer, got {self.seed!r}")


@dataclass
class CheckpointConfig:
    """Checkpoints through Ray Train, fault tolerance and best-k retention."""

    storage_path: str = "runs"
    """Where runs and checkpoints go: a local directory (made absolute) or s3://bucket/prefix."""
    every: int = 500
    """Steps between checkpoints (the last step is always checkpointed)."""
    num_to_keep: int = 2
    """Checkpoints kept (best by `metric`, the latest always kept); 0 = keep all."""
    metric: str = "eval/exact_accuracy"
    """Metric that ranks checkpoints for `num_to_keep`; must be an eval metric, so checkpoints
    are taken at evaluation steps (`every` must be a multiple of `eval.every`)."""
    mode: str = "max"
    """'max' or 'min': which direction of `metric` is better."""
    max_failures: int = 3
    """Worker-group restarts from the last checkpoint before the run fails (-1 = unlimited)."""

    def __post_init__(self) -> None:
        require(
            isinstance(self.storage_path, str) and self.storage_path.strip() != "",
            "checkpoint.storage_path",
            "must be a directory or s3:// URI",
        )
        require(
            is_int(self.every) and self.every > 0,
            "checkpoint.every",
            f"must be a positive integer, got {self.every!r}",
        )
        require(
            is_int(self.num_to_keep) and self.num_to_keep >= 0,
            "checkpoint.num_to_keep",
            f"must be an integer >= 0, got {self.num_to_keep!r}",
        )
        require(
            isinstance(self.metric, str) and self.metric.startswith("eval/"),
            "checkpoint.metric",
            f"must name an eval metric such as 'eval/exact_accuracy', got {self.metric!r}",
        )
        require(
            self.mode in ("max", "min"), "checkpoint.mode", f"must be max or min, got {self.mode!r}"
        )
        require(
            is_int(self.max_failures) and self.max_failures >= -1,
            "checkpoint.max_failures",
            f"must be an integer >= -1, got {self.max_failures!r}",
        )


@dataclass
class ResourcesConfig:
    """Workers and devices."""

    num_workers: int = 1
    """Data-parallel workers (one process per device)."""
    use_gpu: bool | None = None
    """Train on GPUs (NCCL); None = whatever the Ray cluster has."""
    cpus_per_worker: float = 1.0
    """CPUs reserved per worker (fractions allowed; leave some for Ray itself on small boxes)."""
    gpus_per_worker: float = 1.0
    """GPUs per worker when use_gpu (fractions share a GPU)."""
    peak_flops: float = 0.0
    """Peak FLOP/s of one device for model-FLOPs utilisation; 0 = measure with a matmul probe."""
    compile: str = "off"
    """torch.compile scope: 'blocks' (each Block compiled once, its graph reused by all
    H_cycles x (L_cycles+1) x L_layers calls of the recursion), 'model' (the whole ACT step as
    one program, as the official trainer compiles it) or 'off'; YAML true/false = model/off.
    The GPU configs use 'blocks': nearly all FLOPs and all the fusable element-wise work (norms,
    SwiGLU, RoPE) are inside a block, so 'model' adds little but compiles the unrolled
    recursion for minutes, graph-breaks at the puzzle table, and is split again by DDP."""
    batch_chunk: int = -1
    """Run the recursion on slices of at most this many examples (`TRM.batch_chunk`: speed
    only, results unchanged); -1 = 8 on a CPU (keeps the MLP intermediates in cache), the whole
    batch on a GPU; 0 = the whole batch."""

    def __post_init__(self) -> None:
        require(
            is_int(self.num_workers) and self.num_workers > 0,
            "resources.num_workers",
            f"must be a positive integer, got {self.num_workers!r}",
        )
        require(
            self.use_gpu is None or isinstance(self.use_gpu, bool),
            "resources.use_gpu",
            f"must be true, false or null, got {self.use_gpu!r}",
        )
        for name in ("cpus_per_worker", "gpus_per_worker"):
            v = getattr(self, name)
            require(is_num(v) and v > 0, f"resources.{name}", f"must be a number > 0, got {v!r}")
        require(
            is_num(self.peak_flops) and self.peak_flops >= 0,
            "resources.peak_flops",
            f"must be a number >= 0, got {self.peak_flops!r}",
        )
        if isinstance(self.compile, bool):  # the older boolean form: true compiled the model
            self.compile = "model" if self.compile else "off"
        require(
            self.compile in COMPILE_SCOPES,
            "resources.compile",
            f"must be one of {', '.join(COMPILE_SCOPES)} (or true/false), got {self.compile!r}",
        )
        # use_gpu null may become true on a GPU cluster, after this check: refuse it too
        require(
            not (self.use_gpu is not False and self.num_workers > 1 and self.gpus_per_worker < 1),
            "resources.gpus_per_worker",
            f"{self.gpus_per_worker} with {self.num_workers} workers: NCCL cannot place two "
            "ranks of one process group on one GPU; use whole GPUs (a 1-worker run may share)",
        )
        require(
            is_int(self.batch_chunk) and self.batch_chunk >= -1,
            "resources.batch_chunk",
            f"must be an integer >= -1 (-1 = auto, 0 = whole batch), got {self.batch_chunk!r}",
        )


@dataclass
class TrackingConfig:
    """MLflow tracking (world rank 0 only)."""

    enabled: bool = True
    """Log the run to MLflow."""
    uri: str = ""
    """Tracking URI; empty = $MLFLOW_TRACKING_URI, else sqlite:///<cwd>/mlflow.db."""
    experiment: str = "trm"
    """MLflow experiment name."""
    variant: str = ""
    """Free-form variant tag (e.g. 'mlp-t', 'att'); empty = derived from the model."""
    tags: dict[str, str] = field(default_factory=dict)
    """Extra MLflow tags."""
    system_metrics: bool = False
    """Also log MLflow's system metrics (CPU, memory, GPU use every 10 s; needs psutil)."""

    def __post_init__(self) -> None:
        require(isinstance(self.enabled, bool), "tracking.enabled", "must be true/false")
        require(
            isinstance(self.system_metrics, bool), "tracking.system_metrics", "must be true/false"
        )
        require(isinstance(self.uri, str), "tracking.uri", "must be a string")
        require(
            isinstance(self.experiment, str) and self.experiment != "",
            "tracking.experiment",
            "must be a non-empty string",
        )
        require(isinstance(self.variant, str), "tracking.variant", "must be a string")
        require(
            isinstance(self.tags, dict) and all(isinstance(k, str) for k in self.tags),
            "tracking.tags",
            "must be a mapping of strings",
        )
        self.tags = {k: str(v) for k, v in self.tags.items()}


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


def check_name(name: Any, where: str) -> None:
    """A run/sweep name that is safe as a directory and MLflow name; `ConfigError` if not."""
    require(
        isinstance(name, str) and name != "" and all(c.isalnum() or c in "-_." for c in name),
        where,
        f"must be a non-empty string of letters, digits, '-', '_', '.', got {name!r}",
    )


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v and k != "tags":
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def set_dotted(d: dict[str, Any], key: str, value: Any, where: str = "") -> None:
    """Set `d["a"]["b"]["c"] = value` for the dotted `key` "a.b.c", in place, creating missing
    sections; `ConfigError` (naming `where`, else the key) if a part of the path is a value."""
    parts = key.split(".")
    if not all(parts):
        raise ConfigError(f"{where or repr(key)}: bad key {key!r}")
    node = d
    for p in parts[:-1]:
        nxt = node.setdefault(p, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"{where or repr(key)}: {p!r} is not a section")
        node = nxt
    node[parts[-1]] = value


def apply_overrides(d: dict[str, Any], overrides: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """Return a copy of `d` with each 'a.b.c=value' applied; value parsed as YAML."""
    import copy

    d = copy.deepcopy(d)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like section.key=value")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw.strip() != "" else ""
        except yaml.YAMLError as e:
            raise ConfigError(f"override {item!r}: value is not valid YAML ({e})") from None
        set_dotted(d, key.strip(), value, where=f"override {item!r}")
    return d


def build_section(cls: type, d: Any, where: str) -> Any:
    """The dataclass `cls` from the mapping `d`, nested sections included; an unknown key or a
    value of the wrong type is a `ConfigError` naming `where.key`."""
    if isinstance(d, cls):
        return d
    if not isinstance(d, dict):
        raise ConfigError(f"{where or 'config'}: must be a mapping, got {type(d).__name__}")
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in fields(cls)}
    kwargs = {}
    for key, value in d.items():
        dotted = f"{where}.{key}" if where else str(key)
        if key not in known:
            raise ConfigError(
                f"unknown config key {dotted!r}; known keys here: {', '.join(sorted(known))}"
            )
        hint = hints[key]
        if is_dataclass(hint):
            kwargs[key] = build_section(hint, value, dotted)
        else:
            kwargs[key] = _coerce(value, hint)
    try:
        return cls(**kwargs)
    except TypeError as e:  # e.g. a required field missing
        raise ConfigError(f"{where or 'config'}: {e}") from None


def _coerce(value: Any, hint: Any) -> Any:
    # YAML reads 1e-4 as a float but `1e4` as a string and `5` where a float is wanted as an
    # int; accept those. Everything else is checked by the dataclass's own validation.
    if hint is float and is_int(value):
        return float(value)
    if hint is float and isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


# ---- documentation for --help ---------------------------------------------------------------
def field_docs(cls: type) -> dict[str, str]:
    """Attribute docstrings (the string literal under each field) of a dataclass."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs: dict[str, str] = {}
    for node, nxt in itertools.pairwise(body):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(nxt, ast.Expr)
            and isinstance(nxt.value, ast.Constant)
            and isinstance(nxt.value.value, str)
        ):
            docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def _type_name(hint: Any) -> str:
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return " | ".join(_type_name(a) for a in typing.get_args(hint))
    if hint is type(None):
        return "null"
    return getattr(hint, "__name__", str(hint)).replace("NoneType", "null")


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
                f"  {sec.name}.{f.name}: {_type_name(hints[f.name])} = {default!r}\n"
                f"      {docs.get(f.name, '')}"
            )
    return "\n".join(lines)
