"""The TRM training loop, shared by every way a run executes.

`train_loop(cfg, info, session)` reads like the recipe it runs (docs/trm-behaviour.md,
"Training recipe"): build a `TrainState` (or resume one), then repeat `train_step` on the next
batch, summing metrics in a `MetricWindow`; every `eval.every` steps an `Evaluator` scores the
EMA weights on the test split, every `checkpoint.every` steps the state is saved, and so is the
state of every evaluation that beats the run's best `checkpoint.metric` so far (retention keeps
the best, so the run's best evaluation is always in a checkpoint). The parts
live in their own modules: `pipeline.training.state` (TrainState, train_step, learning rates),
`pipeline.training.metrics` (train/* metrics, MFU), `pipeline.evaluation.evaluator` (Evaluator). A `Session` says
where the loop runs:

- `train_loop_per_worker(config)`: a Ray Train worker (`TorchTrainer`, data parallel);
  reporting and checkpoints go through `ray.train.report`.
- `run_in_process(cfg, info, report=..., resume_dir=...)`: one process, no worker group: the CLI's
  `--local` mode and 1-worker sweep trials (a plain Tune function trainable passes a `report`
  that calls `tune.report`), without the ~20 s a `TorchTrainer` costs per trial.

`report(metrics, checkpoint_dir)` is called by every rank at the same steps: at each
evaluation step, every `schedule.report_every` steps (if set), and at each checkpoint step with
checkpoint_dir = a temp directory holding this rank's files (deleted after `report` returns);
a checkpoint's metrics also hold `checkpoint_score`, what Ray Train's retention ranks it by
(`pipeline.checkpoints.clock.SCORE`).
`metrics` holds `step`, `epoch`, the `train/*` metrics of the last logging interval and the
latest `eval/*` metrics: every name is in `pipeline.config.metric_names`. Console
lines and MLflow step metrics come every `schedule.log_every` steps, independently of reports.

Resume is exact: the checkpoint holds the model, optimisers, EMA, step, data position
(epoch, batch in epoch), every rank's ACT carry and RNG state, so the resumed run takes the
same steps on the same data with the same exploration draws as an uninterrupted run.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch

import trm
from pipeline.checkpoints import store as ckpt
from pipeline.checkpoints.clock import CheckpointClock, scored, unranked
from pipeline.checkpoints.directory import (
    CheckpointStore,
    newest_complete,
    recorded_name,
    resume_candidates,
)
from pipeline.checkpoints.upload import upload_checked
from pipeline.config.run import ConfigError, RunConfig, flatten
from pipeline.evaluation.evaluator import Evaluator
from pipeline.tasks import adopt_tasks, carried_tasks
from pipeline.tracking.provenance import source_tags
from pipeline.tracking.tracker import NullTracker, start_tracker
from pipeline.training.device import compile_model, to_device
from pipeline.training.distributed import main_decides
from pipeline.training.metrics import MetricWindow, peak_flops
from pipeline.training.schedule import with_epoch_steps
from pipeline.training.state import TrainState, train_step

Report = Callable[[dict[str, Any], "str | None"], None]


@dataclass
class RunInfo:
    """What a run needs besides its config; resolved on the driver (see `train.run_info`)."""

    name: str
    """Run name (Ray Train run directory, MLflow run name)."""
    run_key: str
    """Identifies the run across restarts (storage path + name): MLflow run lookup."""
    tracking_uri: str = ""
    code_version: str = "unknown"
    parent_run_id: str = ""
    """MLflow parent run (a sweep's run); empty = none."""


@dataclass
class Session:
    """Where the loop runs: rank, device, how to report, what to resume from."""

    world_rank: int
    world_size: int
    device: torch.device
    report: Report
    resume_dir: str | None = None
    """A local directory holding the checkpoint to resume from, or None."""
    resume_unrecorded: bool = False
    """The checkpoint resumed from is one Ray Train has no record of (see
    `pipeline.checkpoints.store.resume_candidates`)."""
    wrap_model: Callable[[torch.nn.Module], torch.nn.Module] = lambda m: m
    """Ray Train's prepare_model (DDP) in a worker group; identity in one process."""
    say: Callable[[str], None] = print
    """Where rank 0's progress lines go."""


# ---- the loop -------------------------------------------------------------------------------
def train_loop(cfg: RunConfig, info: RunInfo, session: Session) -> dict[str, float]:
    """Train `cfg` to `schedule.steps`; returns the last reported metrics."""
    from pipeline.data.meta import cached_meta

    rank, world, device = session.world_rank, session.world_size, session.device
    if world != cfg.resources.num_workers:
        raise ConfigError(
            f"resources.num_workers is {cfg.resources.num_workers} but {world} workers run"
        )
    if cfg.schedule.steps is None:  # the driver converts: pipeline.training.schedule
        raise ConfigError(f"schedule.epochs {cfg.schedule.epochs} reached a worker unconverted")
    meta = cached_meta(cfg.data.uri)  # the driver of an in-process trial read it already
    mcfg = cfg.resolve(meta)
    state = TrainState.create(cfg, mcfg, rank, device)
    if session.resume_dir is not None:
        _resume(state, session, info.name)
    net = session.wrap_model(state.model)
    net = compile_model(state.model, net, cfg.resources.compile)
    train_stream = _train_stream(cfg, meta, session)
    tracker, peak = _start_tracking(cfg, info, session, meta, state.model)
    if session.resume_dir is not None and rank == 0:
        tracker.resend(ckpt.read_unsent(session.resume_dir))
    evaluator = Evaluator(cfg, meta, mcfg.halt_max_steps, rank=rank, world=world, device=device,
                          tracker=tracker, say=session.say, name=info.name,
                          halt_threshold=mcfg.halt_threshold)  # fmt: skip
    window = MetricWindow(trm.flops(mcfg)["train_step"], peak, world, device)
    saved_with = {"mlflow_run_id": tracker.run_id or "", "config": cfg.to_dict(),
                  "model_config": mcfg.to_dict()}  # fmt: skip
    total, last_metrics = cfg.schedule.steps, {}
    clock = CheckpointClock(cfg.checkpoint.every_minutes, device)
    try:
        with contextlib.closing(_batches(train_stream, state, device)) as batches:
            net.train()
            while state.step < total:
                t0 = time.perf_counter()
                batch = next(batches)
                waited = time.perf_counter() - t0
                window.add(train_step(state, net, batch, cfg), waited)
                due = _due(cfg, state.step)
                if not due.log:
                    continue
                timed = not due.checkpoint and clock.due()  # a collective: at log steps only
                train = window.summary(state.lr)
                if rank == 0:
                    session.say(_progress_line(info.name, state, total, train, window))
                    tracker.log_metrics(train, state.step)
                best = False
                if due.eval:
                    state.last_eval = evaluator(state.eval_model(), state.step)
                    # a new best is checkpointed (and kept by retention), so the run's best
                    # evaluation can be reproduced from a checkpoint; rank 0 decides for all
                    best = main_decides(state.improves(state.last_eval, cfg.checkpoint.metric,
                                                       cfg.checkpoint.mode), device)  # fmt: skip
                last_metrics = {"step": state.step, "epoch": state.epoch, **train,
                                **state.last_eval}  # fmt: skip
                if due.checkpoint or best or timed:
                    # a time-based checkpoint is not ranked unless it holds a new best
                    ranked = last_metrics if best or not timed else unranked(last_metrics)
                    _checkpoint(state, session, saved_with, last_metrics, ranked,
                                tracker.unsent_metrics())  # fmt: skip
                    clock.restart()
                elif due.report:
                    session.report(last_metrics, None)
                window.restart()
    except BaseException as e:
        _finish_on_error(tracker, e)
        raise
    if not last_metrics and session.resume_dir is not None:
        # resumed from its final checkpoint (the run had ended, but whatever drove it had not
        # recorded the end): that checkpoint's report is the run's result, reported again
        last_metrics = ckpt.read_report(session.resume_dir)
        if last_metrics:
            _report_again(session, last_metrics, saved_with["config"]["checkpoint"])
    if rank == 0:
        session.say(f"[{info.name}] done: step {state.step}, {_summary(last_metrics)}")
    tracker.finish("FINISHED")
    return last_metrics


def _checkpoint(state: TrainState, session: Session, saved_with: dict[str, Any],
                metrics: dict[str, Any], report: dict[str, Any],
                unsent: list[dict[str, Any]]) -> None:  # fmt: skip
    """Save a checkpoint with `report` (what it scored, to rank and order checkpoints by) and
    the MLflow points not sent yet (`ckpt.UNSENT_FILE`), and report `metrics` with it, scored
    by `report` for Ray Train's retention (`clock.SCORE`)."""
    rank, world = session.world_rank, session.world_size
    with tempfile.TemporaryDirectory(prefix="trm-ckpt-") as d:
        state.save(d, rank, world, saved_with)
        if rank == 0:
            ckpt.write_report(d, report)
            if unsent:
                ckpt.write_unsent(d, unsent)
        session.report(scored(metrics, report, saved_with["config"]["checkpoint"]), d)


def _report_again(session: Session, metrics: dict[str, Any], ck: dict[str, Any]) -> None:
    """Report the final checkpoint's `metrics` again. When Ray Train has no record of that
    checkpoint (the group died after writing it, before the controller recorded it), rank 0
    reports a copy of it too: the run's result then names the final checkpoint, not the one
    before it. Ray Train copies a reported directory into storage, so a copy is reported,
    never the stored directory itself, scored by the checkpoint section `ck`."""
    if not session.resume_unrecorded or session.world_rank != 0:
        session.report(metrics, None)
        return
    with tempfile.TemporaryDirectory(prefix="trm-ckpt-") as d:
        shutil.copytree(session.resume_dir, d, dirs_exist_ok=True)
        session.report(scored(metrics, metrics, ck), d)


def _finish_on_error(tracker: Any, e: BaseException) -> None:
    """End the MLflow run of a loop that raised. SystemExit: Tune stopped the trial (the
    scheduler, at max_t too; the budget): what is queued is sent, and the sweep driver sets
    the run's final status (pipeline.sweeping.finalise), knowing whether it completed."""
    if isinstance(e, SystemExit):
        tracker.finish(None)
    else:
        tracker.finish("KILLED" if isinstance(e, KeyboardInterrupt) else "FAILED")


def _resume(state: TrainState, session: Session, name: str) -> None:
    rank, world = session.world_rank, session.world_size
    per_rank = state.load(session.resume_dir, rank, world)
    if rank != 0:
        return
    if not per_rank:
        session.say(
            f"[{name}] the checkpoint holds no ACT carry for {world} workers (it was written by "
            f"another number of workers): examples mid-way through their ACT steps restart"
        )
    session.say(
        f"[{name}] resumed from step {state.step} (epoch {state.epoch}, "
        f"batch {state.batch_in_epoch})"
    )


def _train_stream(cfg: RunConfig, meta: Any, session: Session) -> Any:
    """This rank's training stream. Every rank takes the same number of batches per epoch (a
    pure function of the config and the dataset: pipeline/data/sampler.py)."""
    from pipeline.data.stream import ShardStream

    B = cfg.per_worker_batch
    stream = ShardStream(
        cfg.data.uri, "train", batch_size=B, rank=session.world_rank,
        world_size=session.world_size, seed=cfg.data.seed, shuffle=True,
        augment=cfg.data.augment, num_aug=cfg.data.num_aug, epoch=0, drop_last=True, meta=meta,
    )  # fmt: skip
    if stream.num_batches == 0:
        raise ConfigError(
            f"data: an epoch of the train split ({stream.rows_per_epoch} rows) holds fewer"
            f" rows than one global batch ({B * session.world_size}); lower"
            " data.global_batch_size"
        )
    return stream


def _batches(
    stream: Any, state: TrainState, device: torch.device
) -> Iterator[dict[str, torch.Tensor]]:
    """Training batches on `device` from the data position in `state` on, epoch after epoch;
    advances `state.epoch` and `state.batch_in_epoch` as it yields."""
    epoch_stream = stream.set_epoch(state.epoch, state.batch_in_epoch)
    it = iter(epoch_stream)
    try:
        while True:
            if state.batch_in_epoch >= epoch_stream.num_batches:  # epochs differ by <= 1 batch
                state.epoch, state.batch_in_epoch = state.epoch + 1, 0
                it.close()  # stops the finished epoch's prefetch thread
                epoch_stream = stream.set_epoch(state.epoch, 0)
                it = iter(epoch_stream)
            batch = to_device(next(it), device)
            state.batch_in_epoch += 1
            yield batch
    finally:
        # stop the prefetch thread now, not when the frame is collected: a sweep runs the next
        # trial in this same process (Tune reuses the trial actor)
        it.close()


def _start_tracking(
    cfg: RunConfig, info: RunInfo, session: Session, meta: Any, model: torch.nn.Module
) -> tuple[NullTracker, float]:
    """(the run's tracker, peak FLOP/s for MFU). Rank 0 starts the MLflow run with the
    resolved config as params; the other ranks get a `NullTracker`."""
    if session.world_rank != 0:
        return NullTracker(), cfg.resources.peak_flops
    device, say = session.device, session.say
    peak, peak_source = peak_flops(cfg.resources.peak_flops, device, model.dtype)
    resolved = cfg.to_dict()
    resolved["model"] = model.config.to_dict()
    params = {
        **flatten(resolved),
        "num_params": model.num_params(),
        "dataset.task": meta.task,
        "resources.peak_flops_used": peak,
        "resources.peak_flops_source": peak_source,
    }
    tags = {
        "task": meta.task,
        "variant": cfg.tracking.variant or ("mlp-t" if model.config.mlp_t else "attention"),
        **source_tags(info.code_version),
        "dataset": cfg.data.uri,
        **cfg.tracking.tags,
    }
    tracker = start_tracker(
        cfg.tracking.enabled and bool(info.tracking_uri),
        uri=info.tracking_uri,
        experiment=cfg.tracking.experiment,
        run_name=info.name,
        run_key=info.run_key,
        params=params,
        tags=tags,
        parent_run_id=info.parent_run_id or None,
        system_metrics=cfg.tracking.system_metrics,
    )
    if tracker.run_id:
        say(f"[{info.name}] MLflow: {tracker.url}")
        tracker.log_dataset(meta.task, cfg.data.uri, meta.to_json())
    say(
        f"[{info.name}] {model.num_params():,} params, {session.world_size} worker(s) x "
        f"{cfg.per_worker_batch} rows, {cfg.schedule.steps} steps, device {device.type}"
    )
    return tracker, peak


class _Due(NamedTuple):
    eval: bool
    checkpoint: bool
    report: bool
    log: bool


def _due(cfg: RunConfig, step: int) -> _Due:
    """What happens after `step`: evaluation, checkpoint, report, log line (each implies
    the next ones); the last step does all of them."""
    last = step == cfg.schedule.steps
    do_eval = step % cfg.eval.every == 0 or last
    do_ckpt = step % cfg.checkpoint.every == 0 or last
    every = cfg.schedule.report_every
    do_report = do_eval or do_ckpt or (every > 0 and step % every == 0)
    return _Due(do_eval, do_ckpt, do_report, do_report or step % cfg.schedule.log_every == 0)


def _progress_line(
    name: str, state: TrainState, total: int, train: dict[str, float], window: MetricWindow
) -> str:
    return (
        f"[{name}] step {state.step}/{total} ep {state.epoch} | loss {train['train/loss']:.4f}"
        f" | exact {train['train/exact_accuracy']:.3f} | {train['train/examples_per_s']:,.0f} ex/s"
        f" | wait {train['train/data_wait_fraction']:.0%} | mfu {train['train/mfu']:.1%}"
        f" | lr {train['train/lr']:.2e} | ETA {window.eta(total - state.step)}"
    )


def _summary(m: dict[str, Any]) -> str:
    keys = ("train/loss", "eval/exact_accuracy", "eval/accuracy")
    return ", ".join(f"{k} {m[k]:.4f}" for k in keys if k in m)


# ---- ways to run the loop -------------------------------------------------------------------
def loop_config(cfg: RunConfig, info: RunInfo) -> dict[str, Any]:
    """The `train_loop_config` of a TorchTrainer running `train_loop_per_worker`."""
    # a family registered on the driver only is sent along (workers start with the built-ins)
    return {"run": cfg.to_dict(), "info": dataclasses.asdict(info), "tasks": carried_tasks()}


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train worker entry point: `config` = `loop_config(cfg, info)`."""
    import ray.train
    import ray.train.torch

    adopt_tasks(config.get("tasks", ()))
    cfg = RunConfig.from_dict(config["run"])
    info = RunInfo(**config["info"])
    ctx = ray.train.get_context()
    # Ray Train logs every report (with all metrics) at INFO; boto logs every S3 client
    quiet = ("ray.train", "botocore", "boto3", "urllib3")
    for name in [*quiet, *logging.root.manager.loggerDict]:
        if name.startswith(quiet) or "/ray/train/" in name:  # some are named by file path
            logging.getLogger(name).setLevel(logging.WARNING)

    def report(metrics: dict[str, Any], checkpoint_dir: str | None) -> None:
        if checkpoint_dir is None:
            ray.train.report(metrics)
        else:
            ray.train.report(
                metrics,
                checkpoint=ray.train.Checkpoint.from_directory(checkpoint_dir),
                checkpoint_dir_name=f"checkpoint_{int(metrics['step']):08d}",
                checkpoint_upload_fn=upload_checked,
            )

    say = lambda msg: print(msg, file=sys.__stdout__, flush=True)  # noqa: E731
    checkpoint = ray.train.get_checkpoint()
    with _without_traceback(), contextlib.ExitStack() as stack:
        # the directory is only valid inside this block; train_loop reads it before training
        candidates = resume_candidates(checkpoint, info.run_key, say)
        found = newest_complete(candidates, stack, say)
        session = Session(
            world_rank=ctx.get_world_rank(),
            world_size=ctx.get_world_size(),
            device=ray.train.torch.get_device(),
            report=report,
            resume_dir=found[1] if found else None,
            resume_unrecorded=found is not None
            and found[0].rpartition("/")[2] != recorded_name(checkpoint),
            wrap_model=lambda m: ray.train.torch.prepare_model(
                m, parallel_strategy_kwargs=_no_buffer_sync()
            ),
            # Ray Train routes print() through its logger (twice when stdout is wrapped)
            say=say,
        )
        train_loop(cfg, info, session)


@contextlib.contextmanager
def _without_traceback() -> Iterator[None]:
    """Errors of the input (`pipeline.training.errors.DETERMINISTIC`) leave the worker without
    their traceback: their message names the input, and Ray Train logs the traceback of every
    worker error in full."""
    from pipeline.training.errors import DETERMINISTIC

    try:
        yield
    except DETERMINISTIC as e:
        # a copy: contextmanager puts the original traceback back on the same object
        raise copy.copy(e).with_traceback(None) from None


def _no_buffer_sync() -> dict[str, bool]:
    """DDP kwargs that keep the puzzle table (a buffer, updated identically on every rank by
    SignSGD) from being re-broadcast each forward; torch 2.13 renamed the flag."""
    import inspect

    from torch.nn.parallel import DistributedDataParallel

    params = inspect.signature(DistributedDataParallel.__init__).parameters
    if "forward_sync_buffers" in params:
        return {"forward_sync_buffers": False}
    return {"broadcast_buffers": False}


def default_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def run_in_process(
    cfg: RunConfig,
    info: RunInfo,
    *,
    report: Report | None = None,
    resume_dir: str | None = None,
    device: torch.device | None = None,
) -> dict[str, float]:
    """Run the loop in this process (world size 1, no Ray worker group).

    `report(metrics, checkpoint_dir)` receives every report (see the module docstring); by
    default checkpoints are copied to `<storage_path>/<name>/checkpoint_<step>` (local paths
    only) and the latest one there is resumed from, like a Ray Train run.
    """
    if cfg.resources.num_workers != 1:
        cfg = cfg.with_values({"resources.num_workers": 1})
    cfg = with_epoch_steps(cfg)  # this process is the driver (nothing to do when converted)
    with contextlib.ExitStack() as stack:
        if report is None:
            store = Path(cfg.checkpoint.storage_path) / info.name
            if resume_dir is None:
                found = CheckpointStore(str(store)).newest_complete(stack)
                resume_dir = found[1] if found else None
            report = LocalCheckpoints(store, cfg.checkpoint.num_to_keep, cfg.checkpoint.metric,
                                      cfg.checkpoint.mode)  # fmt: skip
        session = Session(0, 1, device or default_device(), report, resume_dir)
        return train_loop(cfg, info, session)


class LocalCheckpoints:
    """A `report` for in-process runs without Ray: keeps checkpoints under a local directory
    (the latest and the `num_to_keep` best by `metric`: `CheckpointStore.prune`)."""

    def __init__(self, directory: str | Path, num_to_keep: int = 0,
                 metric: str = "eval/exact_accuracy", mode: str = "max"):  # fmt: skip
        if str(directory).startswith("s3://"):
            raise ConfigError("in-process runs without Ray keep checkpoints on a local path only")
        self.store = CheckpointStore(str(directory))
        self.num_to_keep, self.metric, self.mode = num_to_keep, metric, mode
        self.history: list[dict[str, Any]] = []

    def __call__(self, metrics: dict[str, Any], checkpoint_dir: str | None) -> None:
        self.history.append(dict(metrics))
        if checkpoint_dir is None:
            return
        self.store.save(checkpoint_dir, int(metrics["step"]))
        self.store.prune(self.num_to_keep, self.metric, self.mode)
