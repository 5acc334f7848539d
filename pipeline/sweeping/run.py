"""The sweep driver: check, then run (or resume) a sweep under an MLflow parent run.

Three layers (as Ray's Train/Tune docs lay them out): the per-worker loop (`pipeline.training.worker`),
a trial (`pipeline.sweeping.trial`), and the `Tuner` (`pipeline.sweeping.tuner`) that
`run_sweep` fits. Trial runs are named `<sweep>-<trial id>`, never from timestamps, so
`--resume` (`Tuner.restore`) finds them, their checkpoints and their MLflow runs (by run key)
again; only their MLflow display name is their swept values (`SweepContext.display_name`). The
MLflow parent run is found by its run key (`PARENT_KEY_PREFIX` + experiment path).

Every check that can fail before a trial starts runs first: the sweep file
(`pipeline.sweeping.config`), the dataset against every trial's model and batch, storage
writable and readable from every Ray node, and trial resources against the cluster (alive nodes
plus what the autoscaler may add), so a sweep never waits forever for a trial that cannot be
placed.
"""

from __future__ import annotations

import os
import time
import uuid
from typing import Any

from ray import tune

from pipeline.config.run import ConfigError, RunConfig
from pipeline.sweeping.config import SweepConfig
from pipeline.sweeping.dataset import ensure_dataset
from pipeline.sweeping.exits import EXIT_INTERRUPTED
from pipeline.sweeping.prepare import (
    check_durable,
    preflight,
    resolve,
    with_absolute_data,
    with_epoch_steps,
)
from pipeline.sweeping.report import SweepOutcome, finish_sweep
from pipeline.sweeping.store import resolved_text, store_sweep
from pipeline.sweeping.trial import SweepContext, run_trial
from pipeline.sweeping.tuner import build_tuner
from pipeline.tasks import carried_tasks
from pipeline.tracking.sender import TRIAL_RETURN_S
from pipeline.tracking.server import check_tracking
from pipeline.tracking.tracker import start_tracker
from pipeline.training.cluster import (
    check_fits,
    cluster_nodes,
    connect_ray,
    decide_use_gpu,
    trial_resources,
)

PARENT_KEY_PREFIX = "sweep:"
PARENT_STATUS = {0: "FINISHED", EXIT_INTERRUPTED: "KILLED"}  # else FAILED


def run_sweep(
    sweep: SweepConfig,
    sweep_text: str,
    exp_path: str,
    *,
    resume: bool = False,
    address: str | None = None,
    num_cpus: int | None = None,
) -> SweepOutcome:
    """Check, then run (or resume) `sweep`; returns the summary (the caller prints
    `outcome.console_text()`)."""
    t_start = time.time()
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    # a reused trial process waits this long for the previous trial's function to return (its
    # MLflow run to end) before Tune gives up on reusing it and errors the next trial (local
    # clusters inherit the driver's environment)
    os.environ.setdefault("TUNE_FUNCTION_THREAD_TIMEOUT_S", TRIAL_RETURN_S)
    # Tune's CSV and TensorBoard loggers: files per trial that each experiment-state save
    # uploads again (`results_file.ResultsFile` writes the one the summary reads)
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    # a trial that fails for good before its first evaluation returns without a result (its
    # line is in the store); Tune's check that a result holds the metric counts the trial's
    # flattened config as reported values and, with two keys swept, stopped the whole sweep
    os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"
    if sweep.mode == "evaluate":  # the run config comes with the checkpoint
        from pipeline.sweeping.eval_trial import bind_checkpoint

        sweep = bind_checkpoint(sweep)
    given, sweep = sweep, with_absolute_data(sweep)
    base = resolve(sweep, exp_path)
    if base.tracking.enabled:  # a server that is down: one line now, before Ray starts
        check_tracking(base.tracking.uri)
    check_durable(base, exp_path)
    ensure_dataset(sweep, base.data.uri)
    sweep, base = with_epoch_steps(sweep, base)
    connect_ray(address, num_cpus)
    nodes = cluster_nodes()
    use_gpu = decide_use_gpu(base, nodes)
    base = base.with_values({"resources.use_gpu": use_gpu})
    fits = check_fits(base, use_gpu, nodes)
    preflight(sweep, base, exp_path.rsplit("/", 1)[0])
    restore = check_resume(sweep.name, exp_path, resume)
    tracker = start_parent_run(given, sweep_text, base, exp_path, fits, restore, resume)
    ctx = make_context(sweep, base, exp_path, use_gpu, tracker.run_id or "")
    trainable = trial_function(sweep, ctx, trial_resources(base, use_gpu))
    concurrency = sweep.concurrency or fits
    print(
        f"[sweep] {sweep.name}: {sweep.num_trials} trial(s), {concurrency} at a time "
        f"({fits} fit), each {trial_resources(base, use_gpu)}"
        f"{' + workers' if base.resources.num_workers > 1 else ''}; storage {exp_path}",
        flush=True,
    )
    try:
        outcome = _fit_and_finish(
            sweep, base, ctx, trainable, restore, concurrency, tracker, t_start
        )
    except BaseException as e:
        # the parent run never stays RUNNING: KILLED when stopped (Ctrl-C, SIGTERM), else FAILED
        stopped = isinstance(e, KeyboardInterrupt | SystemExit)
        tracker.set_tags({"trm.status": "interrupted" if stopped else "failed"})
        tracker.finish("KILLED" if stopped else "FAILED")
        raise
    tracker.finish(PARENT_STATUS.get(outcome.exit_code, "FAILED"))
    return outcome


def _fit_and_finish(sweep: SweepConfig, base: RunConfig, ctx: SweepContext, trainable: Any,
                    restore: bool, concurrency: int, tracker: Any, t_start: float) -> SweepOutcome:  # fmt: skip
    """Run (or restore) the Tuner, summarise, register the best models."""
    if restore:
        tuner = tune.Tuner.restore(
            ctx.exp_path, trainable=trainable, resume_unfinished=True, resume_errored=True
        )
    else:
        tuner = build_tuner(sweep, base, trainable, ctx.exp_path, concurrency, ctx)
    results = tuner.fit()
    if sweep.mode == "evaluate":
        from pipeline.sweeping.eval_report import finish_eval_sweep as finish
    else:
        finish = finish_sweep
    outcome = finish(sweep, ctx, results, tracker, time.time() - t_start)
    if sweep.mode == "train" and ctx.parent_run_id and sweep.register_top_k:
        from pipeline.sweeping.finalise import register_top

        versions = register_top(ctx.tracking_uri, sweep.name, outcome.rows, sweep.search.mode,
                                sweep.register_top_k)  # fmt: skip
        if versions:
            outcome.where += (f"\nMLflow Model Registry: {sweep.name!r} versions "
                              f"{', '.join(map(str, versions))} (the best trials' models)")  # fmt: skip
    return outcome


def trial_function(sweep: SweepConfig, ctx: SweepContext, resources: Any) -> Any:
    """What each Tune trial runs, asking for `resources`: training, or (evaluate mode)
    evaluating the checkpoint."""
    if sweep.mode == "evaluate":
        from pipeline.sweeping.eval_trial import run_eval_trial

        fn = tune.with_parameters(run_eval_trial, ctx=ctx, checkpoint=sweep.checkpoint)
    else:
        fn = tune.with_parameters(run_trial, ctx=ctx)
    return sending_on_stop(tune.with_resources(fn, resources))


def sending_on_stop(fn: Any) -> Any:
    """Tune's trainable for the trial function `fn`, which on `stop` first sends what the
    process's MLflow runs still hold (`send_what_is_left`). Tune stops a trial (ASHA, the
    budget) while its function may still hold the last evaluation's metrics and figures, then
    removes the process once `stop` returns; sending them at exit alone lost them when that
    removal was not graceful in time (a child run without its last figures, on a loaded
    machine). Named as `fn`: Tune names trials by it, Ray the trial's process (`ray::run_trial`)."""
    from ray.tune.trainable.function_trainable import wrap_function

    from pipeline.tracking.sender import send_what_is_left

    class SendingTrial(wrap_function(fn)):
        def cleanup(self) -> None:
            send_what_is_left()
            super().cleanup()

    SendingTrial.__name__ = SendingTrial.__qualname__ = fn.__name__
    return SendingTrial


def check_resume(name: str, exp_path: str, resume: bool) -> bool:
    """Whether Tune restores the experiment at `exp_path`: refuses to start over an existing
    sweep without --resume; a --resume of a sweep stopped before Tune saved anything starts
    it."""
    exists = tune.Tuner.can_restore(exp_path)
    if exists and not resume:
        raise ConfigError(
            f"a sweep named {name!r} already exists at {exp_path}: continue it with "
            "--resume, or start a new one under another --name"
        )
    if resume and not exists:
        print("[sweep] no trial had started before the interruption; starting the sweep")
    return exists


def start_parent_run(
    sweep: SweepConfig,
    sweep_text: str,
    base: RunConfig,
    exp_path: str,
    fits: int,
    restore: bool,
    resume: bool,
) -> Any:
    """The sweep's MLflow parent run (continued when `resume`d), and on a fresh start (not
    `restore`) the sweep file stored beside the experiment."""
    parent_key = PARENT_KEY_PREFIX + exp_path
    if not restore:
        store_sweep(exp_path, sweep, sweep_text)
        if base.tracking.enabled and not resume:
            # a parent run of an earlier sweep whose storage was deleted is not continued
            from pipeline.tracking.tracker import RUN_KEY_TAG, tag_run

            tag_run(base.tracking.uri, base.tracking.experiment, parent_key,
                    {RUN_KEY_TAG: f"{parent_key}#replaced-{uuid.uuid4().hex[:8]}"})  # fmt: skip
    tracker = start_tracker(
        base.tracking.enabled,
        uri=base.tracking.uri,
        experiment=base.tracking.experiment,
        run_name=sweep.name,
        run_key=parent_key,
        params=sweep_params(sweep, base, fits),
        tags={"trm.kind": "sweep", "trm.sweep": sweep.name, "trm.storage": exp_path},
    )
    if tracker.run_id:
        continuing = getattr(tracker, "resumed", False)
        verb = "continuing" if continuing else "created"
        print(f"[sweep] MLflow parent run {tracker.run_id} ({verb}): {tracker.url}", flush=True)
        if not continuing:
            tracker.log_text(sweep_text, "sweep/sweep.yaml")
            tracker.log_text(resolved_text(sweep), "sweep/resolved.yaml")
    return tracker


def make_context(
    sweep: SweepConfig, base: RunConfig, exp_path: str, use_gpu: bool, parent_run_id: str
) -> SweepContext:
    from pipeline.tracking.provenance import code_version

    return SweepContext(
        name=sweep.name,
        exp_path=exp_path,
        base=base,
        keys={k: d.names for k, d in sweep.domains.items()},
        metric=sweep.search.metric,
        mode=sweep.search.mode,
        use_gpu=use_gpu,
        code_version=code_version(),
        parent_run_id=parent_run_id,
        tracking_uri=base.tracking.uri if base.tracking.enabled else "",
        max_failures=sweep.max_failures,
        unique_points=sweep.search.algorithm == "grid" and sweep.search.num_samples == 1,
        tasks=carried_tasks(),
    )


def sweep_params(sweep: SweepConfig, base: RunConfig, fits: int) -> dict[str, Any]:
    """The parent run's MLflow params."""
    s = sweep.search
    return {
        "sweep.name": sweep.name,
        "sweep.mode": sweep.mode,
        **({"sweep.checkpoint": sweep.checkpoint} if sweep.mode == "evaluate" else {}),
        "sweep.num_trials": sweep.num_trials,
        "sweep.space": ", ".join(sweep.space),
        "search.algorithm": s.algorithm,
        "search.num_samples": s.num_samples,
        "search.metric": s.metric,
        "search.mode": s.mode,
        "scheduler.type": sweep.scheduler.type,
        "scheduler.time_attr": sweep.scheduler.time_attr,
        "budget.flops": sweep.budget.flops,
        "budget.hours": sweep.budget.hours,
        "concurrency": sweep.concurrency or fits,
        "max_failures": sweep.max_failures,
        "data.uri": base.data.uri,
        "resources.num_workers": base.resources.num_workers,
        "resources.cpus_per_worker": base.resources.cpus_per_worker,
        "resources.gpus_per_worker": base.resources.gpus_per_worker,
        "resources.use_gpu": base.resources.use_gpu,
    }
