"""The sweep's driver-side Tune callback and stopper (`SweepMonitor`): stop reasons, the
compute budget, a status line every 30 s and one line per finished trial."""

from __future__ import annotations

import time
from typing import Any

from ray import tune

from pipeline.data.storage import open_storage
from pipeline.sweeping.store import failed_line, record_completed


class SweepMonitor(tune.Callback, tune.Stopper):
    """Driver-side Tune callback and stopper in one object (the same instance is passed as both,
    so it survives `Tuner.restore` as one): marks the result on which the scheduler stopped a
    trial (`stop_reason`, kept in the trial's last result), prints one line per finished trial,
    and stops the sweep when the compute budget is spent (FLOPs summed over every trial's last
    report, restored trials included; wall hours of this invocation)."""

    def __init__(
        self,
        keys: dict[str, list[str]],
        base_steps: int,
        time_key: str,
        max_t: float,
        metric: str,
        mode: str,
        budget_flops: float = 0,
        budget_hours: float = 0,
        status_every_s: float = 30,
        exp_path: str = "",
    ):
        self.exp_path = exp_path
        """Where ended trials are recorded (`record_completed`); empty = not recorded."""
        self.keys, self.base_steps, self.time_key, self.max_t = keys, base_steps, time_key, max_t
        self.metric, self.sign = metric, 1 if mode == "max" else -1
        self.status_every_s, self.last_status = status_every_s, 0.0
        self.budget_flops, self.budget_hours = budget_flops, budget_hours
        self.spent = 0.0
        self.flops: dict[str, float] | None = None
        """Each trial's FLOPs as of its latest report, summed into `spent` as reports come
        (summing every trial on every loop step cost 0.7 ms a step at 1,000 trials, 0.001 ms
        this way); None until the first loop step reads the trials a restored sweep starts
        with."""
        self.tripped = ""
        self.started = time.monotonic()

    def setup(self, **info: Any) -> None:
        self.started = self.last_status = time.monotonic()
        self.tripped = ""
        self.flops = None

    def total_steps(self, config: dict[str, Any]) -> int:
        for key, names in self.keys.items():
            if "schedule.steps" in names and key in config:
                value = config[key]
                return int(value if len(names) == 1 else value[names.index("schedule.steps")])
        return self.base_steps

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        if result.get("done") and int(result.get("step", 0)) < self.total_steps(trial.config):
            at_max = self.max_t and float(result.get(self.time_key, 0)) >= self.max_t
            result["stop_reason"] = "max_t" if at_max else "early-stopped"
        self._count(trials)
        self._add(trial.trial_id, result)
        self._account()

    def on_step_begin(self, iteration, trials, **info) -> None:
        self._count(trials)
        self._account()  # before Tune starts more trials (a resumed sweep included)

    def _count(self, trials) -> None:
        """Start the FLOPs count from every trial's latest report, once per sweep invocation."""
        if self.flops is None:
            self.flops, self.spent = {}, 0.0
            for t in trials:
                self._add(t.trial_id, t.last_result or {})

    def _add(self, trial_id: str, result: dict[str, Any]) -> None:
        """`result` is the trial's latest report: its cumulative FLOPs replace the previous."""
        flops = float(result.get("flops", 0))
        self.spent += flops - self.flops.get(trial_id, 0.0)
        self.flops[trial_id] = flops

    def _account(self) -> None:
        """Trip the budget when the FLOPs spent or this invocation's hours reach it."""
        if self.tripped:
            return
        if self.budget_flops and self.spent >= self.budget_flops:
            self.tripped = f"flops budget {self.budget_flops:.3g} spent ({self.spent:.3g})"
        elif self.budget_hours and time.monotonic() - self.started >= self.budget_hours * 3600:
            self.tripped = f"time budget {self.budget_hours:g} h spent"
        if self.tripped:
            print(f"[sweep] {self.tripped}: stopping every trial", flush=True)

    def on_step_end(self, iteration, trials, **info) -> None:
        now = time.monotonic()
        if now - self.last_status < self.status_every_s:
            return
        self.last_status = now
        counts: dict[str, int] = {}
        for t in trials:
            counts[t.status] = counts.get(t.status, 0) + 1
        done = [t for t in trials if self.metric in (t.last_result or {})]
        best = ""
        if done:
            t = max(done, key=lambda t: self.sign * float(t.last_result[self.metric]))
            best = f"; best so far {self.metric} {t.last_result[self.metric]:.4f} ({t.trial_id})"
        state = ", ".join(f"{n} {s.lower()}" for s, n in sorted(counts.items()))
        print(
            f"[sweep] {clock(now - self.started)}: {state}; {self.spent:.3g} FLOPs spent{best}",
            flush=True,
        )

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "_store"}  # a client: not saved

    def records(self) -> Any:
        """The sweep directory's storage, opened once and shared with `LiveRuns`: Tune's event
        loop (which also starts the next trials) runs this callback for every trial that ends,
        and a new S3 client costs ~0.15 s of CPU."""
        if getattr(self, "_store", None) is None:
            self._store = open_storage(self.exp_path)
        return self._store

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        r = trial.last_result or {}
        exp_path = getattr(self, "exp_path", "")  # monitors pickled before it existed lack it
        if exp_path:  # before the line below: an ended trial is never trained again
            record_completed(self.records(), trial.trial_id, r)
        failed = failed_line(self.records(), trial.trial_id) if exp_path else None
        if failed:
            print(f"[sweep] trial {trial.trial_id} failed, not retried (its input fails the "
                  f"same way every time): {failed}", flush=True)  # fmt: skip
        elif self.metric in r:
            print(
                f"[sweep] trial {trial.trial_id} ended at step {int(r.get('step', 0))}: "
                f"{self.metric} {r[self.metric]:.4f} ({r.get('stop_reason', 'completed')})",
                flush=True,
            )

    def on_trial_recover(self, iteration, trials, trial, **info) -> None:
        print(
            f"[sweep] trial {trial.trial_id} failed; retrying it from its last checkpoint "
            f"(failure {trial.num_failures})",
            flush=True,
        )

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        print(f"[sweep] trial {trial.trial_id} failed for good (retries used up)", flush=True)

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        return False  # trials are stopped one by one by the scheduler, all at once by stop_all

    def stop_all(self) -> bool:
        return bool(self.tripped)


def clock(seconds: float) -> str:
    """`12m05s`, or `1h02m` from an hour on."""
    s = round(seconds)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"
