"""The sweep's driver-side monitor (`pipeline/sweeping/monitor.py`) on Tune's event loop: each
trial that ends is recorded beside the experiment and gets one line, through one storage
client for the whole sweep (a new S3 client per trial cost ~0.6 s of the loop per trial at
100 trials: benchmarks/sweep_scale.py's loop_callbacks_s)."""

from __future__ import annotations

import pickle
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
