"""Evaluate-mode sweeps: one trained checkpoint, many test-time settings, no training.

A sweep file with `mode: evaluate` and `checkpoint: URI` (or `--checkpoint URI`; a checkpoint,
a run directory or a training sweep's directory) varies only the test-time fields of the eval
section (`EVAL_MODE_FIELDS`: protocol, halting threshold, ACT step cap, fixed depth,
trajectories K, latent noise, selection rule, noise seed). Before Ray starts,
`bind_checkpoint` restores the checkpoint on the driver (a missing or damaged one is a `ConfigError`) and makes the sweep's
base from the run config it was trained with: its model (dataset fields pinned to the
checkpoint's, so a `data.uri` that does not fit the model fails the usual dataset preflight),
its data section unless the sweep sets `data`, and the sweep's own eval, resources and
tracking sections. Each Tune trial (`run_eval_trial`) restores the model and runs K
trajectories per example batch by batch over the test split
(`pipeline.evaluation.trajectories.evaluate_test_time`; that module lists the metrics:
the selected answer's exact and token accuracy, best-Q@K, mode@K, pass@K, steps, FLOPs).
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from ray import tune

from pipeline.config.run import DATASET_FIELDS, ConfigError, EvalConfig
from pipeline.evaluation.trajectories import evaluate_test_time
from pipeline.sweeping.config import EVAL_MODE_FIELDS, SweepConfig
from pipeline.sweeping.store import completed_result
from pipeline.sweeping.trial import SweepContext
from pipeline.tasks import adopt_tasks


def bind_checkpoint(sweep: SweepConfig) -> SweepConfig:
    """`sweep` with a full base made from its checkpoint's run config (module docstring);
    `ConfigError` naming the checkpoint when it cannot be restored."""
    from pipeline.checkpoints.restore import restore
    from pipeline.checkpoints.store import CheckpointError

    with contextlib.ExitStack() as stack:
        try:
            r = restore(sweep.checkpoint, stack, say=lambda m: print(f"[sweep] {m}", flush=True))
        except (CheckpointError, OSError) as e:
            raise ConfigError(f"checkpoint {sweep.checkpoint!r}: {e}") from None
    print(f"[sweep] evaluating {r.checkpoint} (step {r.step})", flush=True)
    d = r.config.to_dict()
    d.pop("name", None)
    d["model"] = {**d["model"], **{f: getattr(r.model_config, f) for f in DATASET_FIELDS}}
    # the training run's eval cadence, checkpointing, resources and tracking are not this
    # sweep's: trials evaluate the whole test split (unless eval.max_examples says otherwise)
    for section in ("eval", "checkpoint", "resources", "tracking"):
        d[section] = {}
    for section, values in sweep.base.items():
        d[section] = {**d.get(section, {}), **values}
    return SweepConfig.from_dict({**sweep.to_dict(), "base": d, "checkpoint": r.checkpoint})


def eval_params(e: EvalConfig, checkpoint: str) -> dict[str, Any]:
    """A trial's MLflow params: its test-time setting (`eval.trajectories`, ...)."""
    params: dict[str, Any] = {name: getattr(e, name.split(".", 1)[1]) for name in EVAL_MODE_FIELDS}
    params["eval.max_examples"] = e.max_examples
    return {**params, "checkpoint": checkpoint}


def run_eval_trial(config: dict[str, Any], ctx: SweepContext, checkpoint: str) -> None:
    """One Tune trial of an evaluate-mode sweep: evaluate `checkpoint` with this trial's
    test-time setting and report the metrics once (to Tune and to its MLflow child run)."""
    from pipeline.checkpoints.restore import restore
    from pipeline.tracking.tracker import start_tracker
    from pipeline.training.device import trial_device

    adopt_tasks(ctx.tasks)
    trial_id = tune.get_context().get_trial_id()
    done = completed_result(ctx.exp_path, trial_id)
    if done is not None:  # ended before a driver crash; --resume must not rerun it
        tune.report(done)
        return
    cfg = ctx.trial_config(config, trial_id)
    torch.set_num_threads(max(1, int(cfg.resources.cpus_per_worker)))
    device = trial_device(ctx.use_gpu)
    tracker = start_tracker(
        bool(ctx.tracking_uri) and cfg.tracking.enabled,
        uri=ctx.tracking_uri,
        experiment=cfg.tracking.experiment,
        run_name=cfg.name,
        run_key=ctx.run_key(trial_id),
        params=eval_params(cfg.eval, checkpoint),
        tags={**cfg.tracking.tags, "trm.kind": "evaluate"},
        parent_run_id=ctx.parent_run_id or None,
    )
    try:
        with contextlib.ExitStack() as stack:
            r = restore(checkpoint, stack, device=device, say=lambda m: None)
            metrics = evaluate_test_time(r.model, cfg, device)
    except BaseException:
        tracker.finish("FAILED")
        raise
    finally:
        if device.type == "cuda":  # trials that share the GPU get the memory back
            torch.cuda.empty_cache()
    tracker.log_metrics(metrics, 0)
    tracker.finish()
    tune.report(metrics)
