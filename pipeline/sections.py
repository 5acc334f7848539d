"""The sections of a run config (`pipeline.config.RunConfig`): optimiser, data, schedule,
evaluation, checkpointing, resources and tracking, each a dataclass that checks its own fields
on construction and raises `ConfigError` naming the field."""

from __future__ import annotations

from dataclasses import dataclass, field

from pipeline.fields import is_num, require
from trm.config import is_int

LOSS_TYPES = ("stablemax", "softmax")
COMPILE_SCOPES = ("off", "blocks", "model")


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
