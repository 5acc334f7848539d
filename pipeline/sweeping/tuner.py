"""The `Tuner` of a sweep: its search space (grid values costliest first), searcher (Tune's
variant generator for grid/random, Optuna's TPE for optuna), scheduler (FIFO or ASHA on steps,
examples or FLOPs), the monitor, failure and checkpoint configs."""

from __future__ import annotations

import warnings
from typing import Any

from ray import tune

from pipeline.config.run import RunConfig
from pipeline.sweeping.config import SweepConfig
from pipeline.sweeping.monitor import SweepMonitor
from pipeline.sweeping.results_file import ResultsFile
from pipeline.sweeping.space import trial_config
from pipeline.sweeping.trial import flops_per_example, trial_dirname


def _dirname(trial: Any) -> str:
    return trial_dirname(trial.trial_id)


def grid_longest_first(sweep: SweepConfig, base: RunConfig) -> dict[str, list[Any]]:
    """Each grid axis's values, the costliest first: the training FLOPs (`trm.flops` per
    example-ACT-step x steps x global batch) of the base config with that one value; values
    that cost the same keep the file's order. Tune enumerates the grid from its costliest
    corner, so the last free slots run the cheapest trials instead of the whole sweep waiting
    on its biggest one (longest-processing-time-first scheduling)."""

    def cost(dom: Any, value: Any) -> float:
        cfg = trial_config(base, dom.assign(value))
        return flops_per_example(cfg) * cfg.schedule.steps * cfg.data.global_batch_size

    return {
        key: sorted(dom.values, key=lambda v, dom=dom: cost(dom, v), reverse=True)  # stable
        for key, dom in sweep.domains.items()
        if dom.kind == "grid" and len(dom.values) > 1
    }


def build_tuner(
    sweep: SweepConfig,
    base: RunConfig,
    trainable: Any,
    exp_path: str,
    concurrency: int,
    ctx: Any = None,
) -> Any:
    """The sweep's `Tuner`; with `ctx` (a `SweepContext` with a parent run) its MLflow runs are
    finalised as trials end (`pipeline.sweeping.finalise.LiveRuns`)."""
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    sch = sweep.scheduler
    max_t = sch.max_t or (sweep.max_steps() if sch.time_attr == "steps" else 0)
    if sch.type == "asha":
        scheduler = ASHAScheduler(
            time_attr=sweep.time_key,
            max_t=max_t,
            grace_period=sch.grace_period or max(max_t / 8, 1),
            reduction_factor=sch.reduction_factor,
        )
    else:
        scheduler = FIFOScheduler()
    monitor = SweepMonitor(
        keys={k: d.names for k, d in sweep.domains.items()},
        base_steps=base.schedule.steps,
        time_key=sweep.time_key,
        max_t=max_t if sch.type == "asha" else 0,
        metric=sweep.search.metric,
        mode=sweep.search.mode,
        budget_flops=sweep.budget.flops,
        budget_hours=sweep.budget.hours,
        exp_path=exp_path,
    )
    callbacks: list[Any] = [monitor, ResultsFile()]  # monitor first: it marks the stop reason
    # that LiveRuns reads
    # training trials' runs are finalised as they end; an evaluate-mode trial's run is ended
    # by the trial itself (pipeline.sweeping.eval_trial) and has no training steps to judge by
    if ctx is not None and ctx.parent_run_id and sweep.mode != "evaluate":
        from pipeline.sweeping.finalise import LiveRuns

        callbacks.append(LiveRuns(ctx, base.tracking.experiment, sch.type, monitor))
    root, name = exp_path.rsplit("/", 1)
    param_space = {k: d.tune_domain() for k, d in sweep.domains.items()}
    param_space.update({k: tune.grid_search(v) for k, v in grid_longest_first(sweep, base).items()})
    return tune.Tuner(
        trainable,
        param_space=param_space,
        tune_config=tune.TuneConfig(
            metric=sweep.search.metric,
            mode=sweep.search.mode,
            num_samples=sweep.search.num_samples,
            search_alg=searcher(sweep, concurrency),
            scheduler=scheduler,
            # a trial starts in the process its predecessor ran in: no process start and no
            # imports per trial (3-21 s each on a small box); see benchmarks/sweep_overhead.py
            reuse_actors=True,
            trial_dirname_creator=_dirname,
        ),
        run_config=tune.RunConfig(
            name=name,
            storage_path=root,
            stop=monitor,
            callbacks=callbacks,
            # Tune retries every trial without limit: a trial counts its own failures against
            # max_failures itself (`trial._begin_attempt`), so lost nodes cost no retries
            failure_config=tune.FailureConfig(max_failures=-1),
            # no checkpoint_config: trials keep their checkpoints themselves (`CheckpointStore`)
            verbose=0,  # the monitor prints a status line and one line per finished trial
        ),
    )


def searcher(sweep: SweepConfig, concurrency: int) -> Any:
    """How trials get their values: Tune's variant generator (grid crossed, ranges drawn at
    random) or Optuna's TPE, at most `concurrency` trials at a time. Tune saves either one's
    state in the experiment directory and restores it with the experiment (`--resume`)."""
    s = sweep.search
    if s.algorithm != "optuna":
        from ray.tune.search.basic_variant import BasicVariantGenerator

        return BasicVariantGenerator(max_concurrent=concurrency, random_state=s.seed)
    import optuna
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # one INFO line per trial otherwise
    # tied keys choose among lists; Optuna warns that such choices cannot go to a database, and
    # the study lives in memory (and in Tune's saved searcher state), so the warning is noise
    warnings.filterwarnings("ignore", "Choices for a categorical distribution", UserWarning)
    sampler = optuna.samplers.TPESampler(seed=s.seed, n_startup_trials=s.startup_trials)
    return ConcurrencyLimiter(OptunaSearch(sampler=sampler), max_concurrent=concurrency)
