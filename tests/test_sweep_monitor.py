"""The sweep's driver-side monitor (`pipeline/sweeping/monitor.py`) on Tune's event loop: each
trial that ends is recorded beside the experiment and gets one line, through one storage
client for the whole sweep (a new S3 client per trial cost ~0.6 s of the loop per trial at
100 trials: benchmarks/sweep_scale.py's loop_callbacks_s)."""

from __future__ import annotations

import pickle
import time
from types import SimpleNamespace

import pipeline.sweeping.monitor as monitor_module
from pipeline.sweeping.monitor import SweepMonitor
from pipeline.sweeping.store import completed_result, record_failed


def _monitor(exp_path: str) -> SweepMonitor:
    return SweepMonitor(keys={}, base_steps=8, time_key="step", max_t=0,
                        metric="eval/accuracy", mode="max", exp_path=exp_path)  # fmt: skip


def _trial(trial_id: str, **result) -> SimpleNamespace:
    return SimpleNamespace(trial_id=trial_id, last_result=result, config={})


def test_ended_trials_are_recorded_and_named_through_one_storage(tmp_path, monkeypatch, capsys):
    exp = str(tmp_path / "exp")
    opened = []
    real = monitor_module.open_storage
    monkeypatch.setattr(monitor_module, "open_storage",
                        lambda uri: opened.append(uri) or real(uri))  # fmt: skip
    record_failed(exp, "t2", "DatasetError: shard x is damaged")
    m = _monitor(exp)
    trials = [_trial("t0", step=8, **{"eval/accuracy": 0.5}),
              _trial("t1", step=4, stop_reason="early-stopped", **{"eval/accuracy": 0.25}),
              _trial("t2")]  # fmt: skip
    for t in trials:
        m.on_trial_complete(0, trials, t)
    out = capsys.readouterr().out
    assert opened == [exp]  # once for the sweep, not once per trial
    assert completed_result(exp, "t0") == {"step": 8, "eval/accuracy": 0.5}
    assert completed_result(exp, "t1")["stop_reason"] == "early-stopped"
    assert completed_result(exp, "t2") == {}
    assert "trial t0 ended at step 8: eval/accuracy 0.5000 (completed)" in out
    assert "trial t1 ended at step 4: eval/accuracy 0.2500 (early-stopped)" in out
    assert "trial t2 failed, not retried" in out and "shard x is damaged" in out


def test_the_storage_client_is_not_saved_with_the_experiment(tmp_path):
    m = _monitor(str(tmp_path / "exp"))
    m.on_trial_complete(0, [], _trial("t0", step=8, **{"eval/accuracy": 0.5}))
    assert m.records() is not None and "_store" not in m.__getstate__()
    restored = pickle.loads(pickle.dumps(m))  # what Tuner.restore loads
    assert restored.exp_path == m.exp_path and getattr(restored, "_store", None) is None
    restored.on_trial_complete(0, [], _trial("t1", step=8, **{"eval/accuracy": 0.75}))
    assert completed_result(m.exp_path, "t1") == {"step": 8, "eval/accuracy": 0.75}


def test_flops_budget_counts_each_trials_latest_report_restored_ones_included(capsys):
    m = SweepMonitor(keys={}, base_steps=8, time_key="step", max_t=0, metric="eval/accuracy",
                     mode="max", budget_flops=100)  # fmt: skip
    m.setup()
    trials = [_trial("t0", flops=30.0), _trial("t1")]  # t0 restored with 30 spent
    m.on_step_begin(0, trials)
    assert m.spent == 30 and not m.tripped
    m.on_trial_result(0, trials, trials[1], {"flops": 20.0, "step": 2})
    m.on_trial_result(0, trials, trials[0], {"flops": 50.0, "step": 4})  # cumulative: replaces 30
    m.on_step_begin(0, trials)
    assert m.spent == 70 and not m.tripped and not m.stop_all()
    m.on_trial_result(0, trials, trials[1], {"flops": 60.0, "step": 8})
    assert m.spent == 110 and m.stop_all()
    assert "flops budget 100 spent (110)" in capsys.readouterr().out
    # a restored sweep counts again from what its trials last reported
    trials[0].last_result, trials[1].last_result = {"flops": 50.0}, {"flops": 10.0}
    m.setup()
    m.on_step_begin(0, trials)
    assert m.spent == 60 and not m.tripped


def test_a_stopped_trial_sends_what_its_runs_hold_before_tune_cleans_up(monkeypatch):
    """Tune calls a trial's `stop` (then `cleanup`) when the scheduler stops it, and removes
    the process once it returns: an upload still queued then (the last evaluation's figures)
    is sent first, by the process's real sender thread."""
    import threading

    from ray import tune
    from ray.tune.trainable.function_trainable import FunctionTrainable

    from pipeline.sweeping.run import sending_on_stop
    from pipeline.tracking.sender import Sender

    def trial(config, ctx):
        pass

    sent, seen_by_tune = threading.Event(), []
    monkeypatch.setattr(
        FunctionTrainable, "cleanup", lambda self: seen_by_tune.append(sent.is_set())
    )
    s = Sender(client=None, run_id="r", uri="http://tracking")
    with s._cond:  # queued while the thread is held, as at a trial's last evaluation
        s.put_job("figure", lambda: (time.sleep(0.3), sent.set()))
    cls = sending_on_stop(tune.with_parameters(trial, ctx=1))
    assert cls.__name__ == "trial"
    cls.cleanup(object.__new__(cls))
    assert seen_by_tune == [True]
    s.close()
