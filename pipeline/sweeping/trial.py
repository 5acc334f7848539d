"""One Tune trial (`run_trial`) and what it needs from the driver (`SweepContext`).

1-worker trials run the training loop in the Tune trial's own process
(`pipeline.training.worker.run_in_process`), without the ~20 s a TorchTrainer costs; multi-worker trials
build a `TorchTrainer` through `pipeline.train.run_training`. Trials report to Tune at
evaluation steps: every training metric plus `step`, `examples` (example-ACT-steps trained) and
`flops` (model training FLOPs spent, `trm.flops`), the time axes of the ASHA scheduler and the
compute budget.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

import ray
from ray import tune
from ray.tune.integration.ray_train import TuneReportCallback

from pipeline.checkpoints.directory import CheckpointStore
from pipeline.config.run import RunConfig
from pipeline.sweeping.space import trial_config
from pipeline.sweeping.store import (
    TRIALS_DIR,
    begin_attempt,
    completed_result,
    end_attempt_with_error,
    record_failed,
)
from pipeline.tasks import adopt_tasks
from pipeline.tracking.prometheus import count_trial
from pipeline.tracking.sender import TRIAL_RETURN_S
from pipeline.training.failures import deterministic, root_cause


def trial_dirname(trial_id: str) -> str:
    """A trial's directory in the experiment directory."""
    return f"trial_{trial_id}"


@dataclass
class SweepContext:
    """Everything a trial needs besides its sampled values; resolved on the driver."""

    name: str
    exp_path: str
    """Tune experiment directory (storage root / sweep name); local absolute path or s3://."""
    base: RunConfig
    """Base run config with absolute paths and the resolved tracking URI (`prepare.resolve`);
    each trial's config is built from it and the trial's point (`trial_config`)."""
    keys: dict[str, list[str]]
    """Search-space key -> the config fields it sets (several for tied keys)."""
    metric: str
    mode: str
    use_gpu: bool
    code_version: str
    parent_run_id: str = ""
    tracking_uri: str = ""
    tasks: tuple[Any, ...] = ()
    """Puzzle families registered on the driver beyond the built-in ones (`carried_tasks`):
    trials register them before reading data."""
    max_failures: int = 2
    """Attempts of a trial that may fail on their own before it ends (-1 = no limit); attempts
    lost with their process (preemption, node failure) do not count."""
    unique_points: bool = True
    """Every trial has its own swept values (a grid, one sample per point): display names need
    no trial number."""

    @property
    def trials_path(self) -> str:
        return f"{self.exp_path}/{TRIALS_DIR}"

    def checkpoint_dir(self, trial_id: str, num_workers: int) -> str:
        """Where a trial's checkpoints are: its Tune trial directory (one-process trials keep
        them there, `CheckpointStore`), or its Ray Train run directory (multi-worker trials)."""
        if num_workers > 1:
            return f"{self.trials_path}/{self.trial_name(trial_id)}"
        return f"{self.exp_path}/{trial_dirname(trial_id)}"

    def trial_name(self, trial_id: str) -> str:
        """The trial's stable name (Train run directory, MLflow run key: --resume finds the
        trial by it)."""
        return f"{self.name}-{trial_id}"

    def display_name(self, params: dict[str, Any], trial_id: str) -> str:
        """The MLflow run name shown for a trial: its swept values in short form, e.g.
        `H3-L2-layers2-seed1`; the trial number is appended when values can repeat."""
        point = self.assignments(params)
        name = "-".join(f"{short_key(k, list(point))}{short_value(v)}" for k, v in point.items())
        if not self.unique_points or not name:
            name += f"{'-' if name else ''}{trial_id.rsplit('_', 1)[-1]}"
        return name

    def run_key(self, trial_id: str) -> str:
        """MLflow run key of a trial (`pipeline.tracking.tracker`: storage path / run name)."""
        return f"{self.trials_path}/{self.trial_name(trial_id)}"

    def assignments(self, params: dict[str, Any]) -> dict[str, Any]:
        """Tune's sampled values -> dotted config field -> value."""
        out: dict[str, Any] = {}
        for key, names in self.keys.items():
            if key in params:
                value = params[key]
                out.update({names[0]: value} if len(names) == 1 else dict(zip(names, value)))
        return out

    def trial_config(self, params: dict[str, Any], trial_id: str) -> RunConfig:
        """The run config of the trial `trial_id` that Tune gave `params`."""
        return trial_config(
            self.base,
            self.assignments(params),
            name=self.trial_name(trial_id),
            tags={"trm.sweep": self.name, "trm.trial_id": trial_id},
        )


SHORT_KEYS = {"H_cycles": "H", "L_cycles": "L", "L_layers": "layers", "hidden_size": "hidden",
              "halt_max_steps": "halt", "global_batch_size": "batch"}  # fmt: skip


def short_key(key: str, keys: list[str]) -> str:
    """`model.H_cycles` -> `H`; the last part of other keys, the whole key when two keys end
    alike."""
    last = key.split(".")[-1]
    if sum(k.split(".")[-1] == last for k in keys) > 1:
        return key.replace(".", "_")
    return SHORT_KEYS.get(last, last)


def short_value(value: Any) -> str:
    """A swept value in a run name: `0.003`, `1e-06`, a path's last part, lists joined by x."""
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return "x".join(short_value(v) for v in value)
    text = PurePosixPath(str(value)).name if isinstance(value, str) else str(value)
    return re.sub(r"[^A-Za-z0-9._+]", "_", text)


def is_eval_step(cfg: RunConfig, step: int) -> bool:
    return step % cfg.eval.every == 0 or step == cfg.schedule.steps


def flops_per_example(cfg: RunConfig) -> float:
    """Model training FLOPs per example-ACT-step (trm.flops) of this run's model."""
    from pipeline.data.meta import cached_meta
    from trm import flops

    return float(flops(cfg.resolve(cached_meta(cfg.data.uri)))["train_step"])


def with_time_axes(metrics: dict[str, Any], cfg: RunConfig, flops_per_row: float) -> dict:
    """The report plus the sweep's time axes: examples (example-ACT-steps) and model FLOPs."""
    examples = int(metrics["step"]) * cfg.data.global_batch_size
    return {**metrics, "examples": examples, "flops": examples * flops_per_row}


class TuneReporter:
    """The `report` of an in-process trial: evaluation reports to Tune; checkpoints to the
    trial's directory, pruned there (`CheckpointStore`)."""

    def __init__(self, cfg: RunConfig, flops_per_row: float, trial_uri: str):
        self.cfg, self.flops_per_row, self.trial_uri = cfg, flops_per_row, trial_uri

    def __call__(self, metrics: dict[str, Any], checkpoint_dir: str | None) -> None:
        if checkpoint_dir is None and not is_eval_step(self.cfg, int(metrics["step"])):
            return  # training-only reports go to MLflow; Tune ranks on evaluations
        if checkpoint_dir is not None:  # stored before Tune sees the report
            ck = self.cfg.checkpoint
            store = CheckpointStore(self.trial_uri)
            store.save(checkpoint_dir, int(metrics["step"]))
            store.prune(ck.num_to_keep, ck.metric, ck.mode)
        tune.report(with_time_axes(metrics, self.cfg, self.flops_per_row))


class SweepReportCallback(TuneReportCallback):
    """Forwards rank 0's evaluation reports of a TorchTrainer trial to Tune, with time axes
    (runs in the Train controller; made inside the trial, as Tune requires)."""

    def __init__(self, cfg: RunConfig, flops_per_row: float):
        super().__init__()
        self.cfg, self.flops_per_row = cfg, flops_per_row

    def after_report(self, run_context, metrics, checkpoint):
        m = metrics[0]
        if checkpoint is None and not is_eval_step(self.cfg, int(m["step"])):
            return
        report = with_time_axes(m, self.cfg, self.flops_per_row)
        super().after_report(run_context, [report], checkpoint)


def run_trial(config: dict[str, Any], ctx: SweepContext) -> None:
    """One Tune trial: train the base config with this trial's values."""
    adopt_tasks(ctx.tasks)
    # Tune reads it in this process when it reuses it for the next trial (as run_sweep sets it
    # for clusters that do not inherit the driver's environment)
    os.environ.setdefault("TUNE_FUNCTION_THREAD_TIMEOUT_S", TRIAL_RETURN_S)
    trial_id = tune.get_context().get_trial_id()
    done = completed_result(ctx.exp_path, trial_id)
    if done is not None:
        # The trial ended before the sweep driver stopped, but Tune's saved experiment state
        # (written at most every 10 s, synced to storage less often) still had it running:
        # hand Tune its final result again instead of training it again.
        tune.report(done)
        return
    cfg = ctx.trial_config(config, trial_id)
    if not _begin_attempt(ctx, cfg, trial_id):
        return
    count_trial(ctx.name, "started")  # a trial the scheduler stops counts no end event
    try:
        if cfg.resources.num_workers > 1:
            _train_with_workers(cfg, ctx)
        else:
            _train_in_process(cfg, ctx, config, trial_id)
    except Exception as e:
        if deterministic(e) is None:
            errors = end_attempt_with_error(ctx.exp_path, trial_id)
            if ctx.max_failures < 0 or errors <= ctx.max_failures:
                count_trial(ctx.name, "retried")
                raise  # Tune retries it from the trial's last checkpoint
            count_trial(ctx.name, "failed")
            record_failed(ctx.exp_path, trial_id, f"{root_cause(e)} (failed {errors} times)")
            return
        # the same input fails every attempt: end the trial instead of Tune retrying it, and
        # leave its one line for the monitor and the summary
        count_trial(ctx.name, "failed")
        record_failed(ctx.exp_path, trial_id, root_cause(e))
    else:
        count_trial(ctx.name, "completed")


def _begin_attempt(ctx: SweepContext, cfg: RunConfig, trial_id: str) -> bool:
    """Count this attempt (`store.begin_attempt`); False when the attempts before it that went
    away without progress used up max_failures (the trial ends with that line). Tune itself
    retries every trial without limit (`tuner`): the count of the trial's own failures is
    kept here, so that preemptions and lost nodes cost no retries."""
    stored = CheckpointStore(ctx.checkpoint_dir(trial_id, cfg.resources.num_workers)).stored()
    newest = stored[0] if stored else None
    a = begin_attempt(ctx.exp_path, trial_id, newest.step if newest else -1,
                      ray.get_runtime_context().get_node_id(), _node_alive)  # fmt: skip
    if a["lost"]:
        print(f"[sweep] trial {trial_id}: attempt after {a['lost']} lost with its node or "
              f"process (preemptions), from step {max(a['step'], 0)}", flush=True)  # fmt: skip
    if 0 <= ctx.max_failures < a["errors"]:
        record_failed(ctx.exp_path, trial_id, f"lost {a['errors']} times before reaching a new "
                      "checkpoint (crashing as it starts? out of memory?)")  # fmt: skip
        return False
    return True


# How long an attempt that follows one lost without progress waits for Ray to declare the
# earlier attempt's node dead: the actor's connection breaks at once and Tune retries within
# seconds, while the GCS marks a node dead only after missed health checks (~15-30 s)
NODE_DEATH_WAIT_S = 60.0


def _node_alive(node_id: str, wait_s: float = NODE_DEATH_WAIT_S) -> bool:
    """Whether Ray still counts node `node_id` among its live nodes after `wait_s` (a lost or
    preempted node is marked dead once its health checks fail); False as soon as it is dead."""
    deadline = time.monotonic() + wait_s
    while any(n["NodeID"] == node_id and n["Alive"] for n in ray.nodes()):
        if time.monotonic() >= deadline:
            return True
        time.sleep(2.0)
    return False


def _train_with_workers(cfg: RunConfig, ctx: SweepContext) -> None:
    from pipeline.data.storage import is_local
    from pipeline.train import train_prepared
    from pipeline.training.prepared import PreparedRun

    # prepared by the sweep (paths, tracking URI, datasets and storage checked for every
    # trial before the first started). Train V2 resumes a run with the same name and storage
    # from its own checkpoints, so a retried trial continues where its worker group stopped
    uri = ctx.tracking_uri if cfg.tracking.enabled else ""
    run = PreparedRun(cfg, cfg.name, ctx.trials_path, uri)
    if is_local(run.storage_path):  # probed on every node before the workers start
        os.makedirs(run.storage_path, exist_ok=True)
    train_prepared(run, [SweepReportCallback(cfg, flops_per_example(cfg))], ctx.parent_run_id)


def _train_in_process(
    cfg: RunConfig, ctx: SweepContext, config: dict[str, Any], trial_id: str
) -> None:
    import torch

    from pipeline.training.device import trial_device
    from pipeline.training.worker import RunInfo, run_in_process

    torch.set_num_threads(max(1, int(cfg.resources.cpus_per_worker)))
    info = RunInfo(
        name=ctx.display_name(config, trial_id),  # the run key keeps the trial id
        run_key=ctx.run_key(trial_id),
        tracking_uri=ctx.tracking_uri if cfg.tracking.enabled else "",
        code_version=ctx.code_version,
        parent_run_id=ctx.parent_run_id,
    )
    device = trial_device(ctx.use_gpu)
    trial_uri = ctx.checkpoint_dir(trial_id, num_workers=1)
    report = TuneReporter(cfg, flops_per_example(cfg), trial_uri)
    try:
        with contextlib.ExitStack() as stack:
            # a retried or resumed trial: its highest-step complete checkpoint
            found = CheckpointStore(trial_uri).newest_complete(stack)
            resume_dir = found[1] if found else None
            run_in_process(cfg, info, report=report, resume_dir=resume_dir, device=device)
    finally:
        # Tune runs the next trial in this process (reuse_actors): free this one's memory,
        # including what CUDA's caching allocator holds, for the trials sharing the GPU
        import gc

        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
