"""Ray Tune sweeps of TRM run configs, tracked in MLflow (run them with `python
pipeline/sweep.py` or `trm-sweep`). One module per job:

    config    the sweep file (`SweepConfig`), validated on load
    space     search-space domains and `trial_config`, the one way a trial's config is made
    dataset   the dataset built on first use
    prepare   the base resolved for trials, checks against datasets, storage and nodes
    store     files kept beside the Tune experiment (stored sweep, ended trials)
    trial     one Tune trial (`run_trial`) and its reporting
    monitor   the driver-side callback: stop reasons, compute budget, status lines
    tuner     the `Tuner`: search space order, scheduler, configs
    run       the driver: `run_sweep` under an MLflow parent run
    report    the summary: table, best config and checkpoint, child runs' final state
    findings  seeds grouped per grid point, steps to 95%, halting curves, the finding sentence
    plots     the summary's figures
    cli       the command line
"""
