"""The sections of a run config (`pipeline.config.run.RunConfig`): optimiser, data, schedule,
evaluation, checkpointing, resources and tracking, each a typed `StrictConfig` (pydantic)
whose fields declare their type, bounds and meaning; what one field cannot say alone is a
validator that raises `ConfigError` naming the field."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from pipeline.config.fields import ConfigError, Float, StrictConfig, require
from pipeline.config.metric_names import PROTOCOLS, check_metric
from trm.model import SELECTS

COMPILE_SCOPES = ("off", "blocks", "model")
REGIMES = ("fixed_pool", "on_the_fly", "none")
"""`data.augment`: the augmentation regimes the data sampler runs (pipeline/data/sampler.py)."""
"""`eval.protocol`: ACT halting, or a fixed number of supervision steps."""
DEFAULT_STEPS = 1000
"""`schedule.steps` when neither it nor `schedule.epochs` is given."""


def epochs_to_steps(epochs: int, rows_per_epoch: int, global_batch: int) -> int:
    """Optimiser steps of `epochs` epochs of `rows_per_epoch` rows at `global_batch` rows per
    step: truncated, as the official trainer's int(...), and at least 1."""
    return max(1, epochs * rows_per_epoch // global_batch)


Fraction = Annotated[Float, Field(gt=0, lt=1)]
"""A number in (0, 1)."""


class OptimConfig(StrictConfig):
    """Optimisers, learning-rate schedule and EMA (the paper's recipe by default)."""

    lr: Float = Field(1e-4, gt=0)
    """Peak learning rate of AdamATan2 for the network parameters."""
    lr_min_ratio: Float = Field(1.0, ge=0, le=1)
    """Cosine decay floor as a fraction of the peak (1.0 = constant after warm-up)."""
    lr_warmup_steps: int = Field(2000, ge=0)
    """Linear warm-up length in optimiser steps (0 = none)."""
    weight_decay: Float = Field(1.0, ge=0)
    """Decoupled weight decay of AdamATan2 (paper: 1.0 Sudoku/Maze, 0.1 ARC)."""
    beta1: Float = Field(0.9, ge=0, lt=1)
    """AdamATan2 first-moment decay."""
    beta2: Float = Field(0.95, ge=0, lt=1)
    """AdamATan2 second-moment decay."""
    puzzle_emb_lr: Float = Field(1e-4, gt=0)
    """Peak learning rate of the SignSGD puzzle-embedding table (paper: 1e-4 Sudoku/Maze, 1e-2 ARC)."""
    puzzle_emb_weight_decay: Float = Field(1.0, ge=0)
    """Decoupled weight decay of the puzzle-embedding table."""
    ema: bool = True
    """Keep an exponential moving average of the parameters and evaluate with it."""
    ema_rate: Fraction = 0.999
    """EMA decay per optimiser step."""
    loss_type: Literal["stablemax", "softmax"] = "stablemax"
    """Token loss: 'stablemax' (paper) or 'softmax'."""


class DataConfig(StrictConfig):
    """Which dataset and how it is batched."""

    uri: str = ""
    """Dataset directory: a local path or s3://bucket/prefix (with meta.json, train/, test/)."""
    global_batch_size: int = Field(768, gt=0)
    """Examples per optimiser step over all workers; must divide evenly by the worker count."""
    eval_batch_size: int = Field(0, ge=0)
    """Examples per evaluation batch per worker (0 = the per-worker training batch)."""
    augment: Literal[REGIMES] = "on_the_fly"  # type: ignore[valid-type]
    """Training augmentation regime: 'fixed_pool' (the paper's: per puzzle a pool of 1 + num_aug
    variants, the original included, one drawn per epoch; on a materialised dataset the stored
    variants), 'on_the_fly' (a fresh random symmetry every epoch: unlimited augmentation) or
    'none' (rows as stored; on a materialised dataset the originals only)."""
    num_aug: int = 1000
    """fixed_pool only: augmented variants per puzzle besides the original (paper: 1000)."""
    seed: int = 0
    """Seed of the data order and augmentation; also seeds model init and ACT exploration."""

    @field_validator("augment", mode="before")
    @classmethod
    def _not_a_bool(cls, v: Any) -> Any:
        if isinstance(v, bool):
            raise ConfigError(
                f"must be one of {', '.join(REGIMES)}, got {v!r} (true/false were the old values)"
            )
        return v

    @model_validator(mode="after")
    def _check(self) -> DataConfig:
        require(self.uri.strip() != "", "uri",
                "is required: a local dataset directory or s3://bucket/prefix")  # fmt: skip
        require(
            self.num_aug >= 1 or self.augment != "fixed_pool",
            "num_aug",
            f"must be an integer >= 1 with augment fixed_pool, got {self.num_aug!r}",
        )
        return self


class ScheduleConfig(StrictConfig):
    """How long to train and how often to print progress."""

    steps: int | None = Field(None, gt=0)
    """Total optimiser steps (one per ACT step: deep supervision); null = 1000 unless `epochs`
    is given. Give `steps` or `epochs`, not both."""
    epochs: int = Field(0, ge=0)
    """Train this many epochs instead of `steps` (0 = train by `steps`). An epoch is one pass
    over the puzzle groups, one variant of each with all its examples, as the official loader
    samples; the run converts it once, when it starts, to steps = int(epochs x rows per epoch /
    data.global_batch_size) with the training split's real rows per epoch, and prints and logs
    both (`pipeline.training.schedule`)."""
    rows_per_epoch: int = Field(0, ge=0)
    """Written by the run when it converts `epochs` (not a setting): the training rows one
    epoch reads, from the dataset; with it, `steps` holds the converted count. A config built
    in code is converted by `pipeline.training.schedule.with_epoch_steps`."""
    log_every: int = Field(50, gt=0)
    """Steps between progress lines and logged training metrics."""
    report_every: int = Field(0, ge=0)
    """Steps between metric reports to Ray (what Tune schedulers see); 0 = at evaluations only.
    A report is a barrier across workers, so keep it sparse in worker groups."""

    @model_validator(mode="after")
    def _check(self) -> ScheduleConfig:
        written = "is written by the run, with schedule.steps, when it converts schedule.epochs"
        if not self.epochs:
            require(self.rows_per_epoch == 0, "rows_per_epoch", f"{written}; remove it")
            if self.steps is None:
                self.steps = DEFAULT_STEPS
            return self
        require(
            self.steps is None or self.rows_per_epoch > 0,
            "steps",
            f"cannot be given with schedule.epochs ({self.epochs}), its alternative: set "
            "schedule.epochs=0 to train by steps, or schedule.steps=null to train by epochs",
        )
        require(self.steps is not None or self.rows_per_epoch == 0, "rows_per_epoch",
                f"{written}; remove it")  # fmt: skip
        return self


class EvalConfig(StrictConfig):
    """Evaluation on the test split."""

    every: int = Field(500, gt=0)
    """Steps between evaluations (the last step is always evaluated)."""
    max_examples: int = Field(0, ge=0)
    """Evaluate on at most this many test examples (0 = the whole test split). ARC: rows, each a
    test input under one variant; test inputs left without a prediction count as unsolved in
    eval/arc_pass_at_k, whose denominator stays every test input (a truncated score is a lower
    bound, never inflated)."""
    depth_steps: int = Field(0, ge=0)
    """Longest ACT rollout of the depth curve (exact accuracy after each step 1..K); 0 (or any
    value up to model.halt_max_steps) = halt_max_steps, the official evaluation's cost. More is
    opt-in test-time recursion and costs K / halt_max_steps times the official evaluation."""
    halt_thresholds: list[Fraction] = Field(default_factory=lambda: [0.1, 0.3, 0.5, 0.7, 0.9])
    """Halting thresholds tau of the test-time ACT curve: per tau, mean ACT steps and exact
    accuracy when halting at sigmoid(q_halt) > tau (`eval/halt_tau_<tau>/*`), all read off the
    same rollout as the other metrics (no extra model calls); [] = no curve."""
    num_pictures: int = Field(4, ge=0)
    """Test puzzles drawn step by step (grid at each ACT step) as an image artifact; 0 = none."""
    pass_ks: list[Annotated[int, Field(gt=0)]] = Field(default_factory=lambda: [1, 2], min_length=1)
    """ARC only: report pass@k of the official voting over augmented variants for these k."""
    arc_variants: int = Field(0, ge=0)
    """ARC only: variants of each test input voted over; 0 = all the dataset holds (on the fly:
    the original + num_aug, e.g. 1001; materialised: every row of its test split). A positive
    value caps an on-the-fly dataset at variants 0..N-1 (the run logs the cap); materialised
    datasets take no cap."""
    arc_aggregate: bool = False
    """ARC only: also pool the votes of every evaluation of the run, as the official evaluator
    does by default (`aggregated_voting`; the paper's numbers), logged as
    `eval/arc_pooled_pass_at_<k>`; `eval/arc_pass_at_<k>` stays the score of the weights
    evaluated alone. The pool is not checkpointed."""
    # test-time compute settings: used by evaluate-mode sweeps (`TRM.run_trajectories` per
    # trial); the periodic evaluation of training keeps the official fixed-depth rollout
    protocol: Literal[PROTOCOLS] = "act"  # type: ignore[valid-type]
    """How long each trajectory runs at test time: 'act' (it stops at its own ACT halting
    step, at most `max_steps`) or 'fixed_depth' (every trajectory runs exactly `depth`
    supervision steps D and answers from its final state: the Probabilistic TRM protocol)."""
    halt_threshold: Fraction | None = None
    """'act' only: test-time halting threshold tau in (0, 1); unset (null) = the model's
    `halt_threshold`."""
    max_steps: int = Field(0, ge=0)
    """'act' only: most ACT steps per trajectory (a cap; most stop earlier); 0 = the model's
    halt_max_steps."""
    depth: int = Field(0, ge=0)
    """'fixed_depth' only: the depth D, supervision steps every trajectory runs; 0 = the
    model's halt_max_steps (the training evaluation's depth)."""
    trajectories: int = Field(1, ge=1)
    """K trajectories per example run side by side (`TRM.predict`); 1 = the plain answer."""
    noise_std: Float = Field(0.0, ge=0)
    """Std of the noise added to the latent z_L once per ACT step in each trajectory; 0 = none."""
    select: Literal[SELECTS] = "q_halt"  # type: ignore[valid-type]
    """How one of the K trajectories is picked: 'q_halt', 'vote' or 'first' (`TRM.predict`)."""
    seed: int = 0
    """Seed of the trajectories' noise (`torch.Generator().manual_seed(seed)`)."""

    @model_validator(mode="after")
    def _check(self) -> EvalConfig:
        if self.protocol == "act":
            require(self.depth == 0, "depth",
                    f"is the depth of protocol fixed_depth, got {self.depth} with protocol act "
                    "(act caps the steps with max_steps)")  # fmt: skip
            return self
        require(self.max_steps == 0, "max_steps",
                f"is the step cap of protocol act, got {self.max_steps} with protocol "
                "fixed_depth (fixed_depth runs exactly depth steps: set depth)")  # fmt: skip
        require(self.halt_threshold is None, "halt_threshold",
                f"is the halting threshold of protocol act, got {self.halt_threshold} with "
                "protocol fixed_depth (no trajectory halts there)")  # fmt: skip
        require(
            self.select != "first",
            "select",
            "'first' picks the trajectory that halted first; under protocol fixed_depth all "
            "run the same depth: use q_halt (best-Q@K) or vote (mode@K)",
        )
        return self

    def steps(self) -> int:
        """The step count of the protocol: `depth` under fixed_depth, else `max_steps` (0 =
        the model's halt_max_steps)."""
        return self.depth if self.protocol == "fixed_depth" else self.max_steps


class CheckpointConfig(StrictConfig):
    """Checkpoints through Ray Train, fault tolerance and best-k retention."""

    storage_path: str = "runs"
    """Where runs and checkpoints go: a local directory (made absolute) or s3://bucket/prefix."""
    every: int = Field(500, gt=0)
    """Steps between checkpoints (the last step is always checkpointed)."""
    every_minutes: Float = Field(0, ge=0)
    """Also checkpoint when this many wall-clock minutes have passed since the last checkpoint
    (0 = steps only), so a preempted run loses minutes rather than up to `every` steps. Rank 0's
    clock decides, for all ranks, at log steps (`schedule.log_every`). These checkpoints resume
    a run but are not ranked: their report.json holds no eval metrics, and Ray Train's retention
    of a multi-worker run ranks them last (`pipeline.checkpoints.clock.SCORE`)."""
    num_to_keep: int = Field(2, ge=0)
    """Checkpoints kept (best by `metric`, the latest always kept); 0 = keep all."""
    metric: str = "eval/exact_accuracy"
    """Metric that ranks checkpoints for `num_to_keep`; must be an eval metric, so checkpoints
    are taken at evaluation steps (`every` must be a multiple of `eval.every`)."""
    mode: Literal["max", "min"] = "max"
    """'max' or 'min': which direction of `metric` is better."""
    max_failures: int = Field(3, ge=-1)
    """Worker-group restarts from the last checkpoint before the run fails (-1 = unlimited)."""

    @model_validator(mode="after")
    def _check(self) -> CheckpointConfig:
        require(self.storage_path.strip() != "", "storage_path",
                "must be a directory or s3:// URI")  # fmt: skip
        require(
            self.metric.startswith("eval/"),
            "metric",
            f"must name an eval metric such as 'eval/exact_accuracy', got {self.metric!r}",
        )
        problem = check_metric(self.metric, "eval/")
        require(not problem, "metric", problem)
        return self


class ResourcesConfig(StrictConfig):
    """Workers and devices."""

    num_workers: int = Field(1, gt=0)
    """Data-parallel workers (one process per device)."""
    use_gpu: bool | None = None
    """Train on GPUs (NCCL); None = whatever the Ray cluster has."""
    cpus_per_worker: Float = Field(1.0, gt=0)
    """CPUs reserved per worker (fractions allowed; leave some for Ray itself on small boxes)."""
    gpus_per_worker: Float = Field(1.0, gt=0)
    """GPUs per worker when use_gpu (fractions share a GPU)."""
    peak_flops: Float = Field(0.0, ge=0)
    """Peak FLOP/s of one device for model-FLOPs utilisation; 0 = measure with a matmul probe."""
    compile: Literal[COMPILE_SCOPES] = "off"  # type: ignore[valid-type]
    """torch.compile scope: 'blocks' (each Block compiled once, its graph reused by all
    H_cycles x (L_cycles+1) x L_layers calls of the recursion), 'model' (the whole ACT step as
    one program, as the official trainer compiles it) or 'off'; YAML true/false = model/off.
    The GPU configs use 'blocks': nearly all FLOPs and all the fusable element-wise work (norms,
    SwiGLU, RoPE) are inside a block, so 'model' adds little but compiles the unrolled
    recursion for minutes, graph-breaks at the puzzle table, and is split again by DDP."""
    batch_chunk: int = Field(-1, ge=-1)
    """Run the recursion on slices of at most this many examples (`TRM.batch_chunk`: speed
    only, results unchanged); -1 = 8 on a CPU (keeps the MLP intermediates in cache), the whole
    batch on a GPU; 0 = the whole batch."""

    @field_validator("compile", mode="before")
    @classmethod
    def _old_boolean_form(cls, v: Any) -> Any:
        # the older boolean form: true compiled the model
        return ("model" if v else "off") if isinstance(v, bool) else v

    @model_validator(mode="after")
    def _check(self) -> ResourcesConfig:
        # use_gpu null may become true on a GPU cluster, after this check: refuse it too
        require(
            not (self.use_gpu is not False and self.num_workers > 1 and self.gpus_per_worker < 1),
            "gpus_per_worker",
            f"{self.gpus_per_worker} with {self.num_workers} workers: NCCL cannot place two "
            "ranks of one process group on one GPU; use whole GPUs (a 1-worker run may share)",
        )
        return self


class TrackingConfig(StrictConfig):
    """MLflow tracking (world rank 0 only)."""

    enabled: bool = True
    """Log the run to MLflow."""
    uri: str = ""
    """Tracking URI; empty = $MLFLOW_TRACKING_URI, else sqlite:///<cwd>/mlflow.db."""
    experiment: str = Field("trm", min_length=1)
    """MLflow experiment name."""
    variant: str = ""
    """Free-form variant tag (e.g. 'mlp-t', 'att'); empty = derived from the model."""
    tags: dict[str, str] = Field(default_factory=dict)
    """Extra MLflow tags (values are kept as strings)."""
    system_metrics: bool = False
    """Also log MLflow's system metrics (CPU, memory, GPU use every 10 s; needs psutil)."""

    @field_validator("tags", mode="before")
    @classmethod
    def _values_as_strings(cls, v: Any) -> Any:
        return {k: str(val) for k, val in v.items()} if isinstance(v, dict) else v
