"""One row per trial of a sweep (`TrialRow`), read from Tune's results: the trial's config,
its last and best metrics, its evaluation history, its best checkpoint and why it stopped.
The rest of the sweep's end (`pipeline.sweeping.report`, `findings`, `plots`) reads these rows."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from pipeline.checkpoints.directory import CheckpointStore
from pipeline.sweeping.config import SweepConfig, effective_depth
from pipeline.sweeping.findings import EXACT, halt_points, steps_to
from pipeline.sweeping.store import SweepListing


@dataclass
class TrialRow:
    """One trial as the summary shows it."""

    trial_id: str
    params: dict[str, Any]
    """Config field -> value this trial was given."""
    depth: int
    """Effective depth H_cycles x (L_cycles + 1) x L_layers."""
    halt_max_steps: int
    total_steps: int
    best: float | None = None
    """Best value of the sweep's metric over the trial's evaluations."""
    best_step: int = 0
    exact: float | None = None
    """Best eval/exact_accuracy."""
    step: int = 0
    examples: int = 0
    flops: float = 0.0
    wall_s: float = 0.0
    stop_reason: str = "not started"
    error: str = ""
    run_id: str = ""
    curve: list[float] = field(default_factory=list)
    name: str = ""
    """Display name from the swept values (`SweepContext.display_name`), e.g. H2-L1-seed0."""
    steps_to_95: int | None = None
    """First evaluation step with eval/exact_accuracy >= 0.95; None if never."""
    halt: list[dict[str, float]] = field(default_factory=list)
    """Halting-threshold curve of the last evaluation: {tau, steps, exact_accuracy} per tau."""
    checkpoint: str = ""
    """URI of the kept checkpoint with the best value of the sweep's metric ('' if none)."""
    checkpoint_step: int = 0
    preemptions: int = 0
    """Attempts lost with their node or process after reaching a new checkpoint (preemption,
    node failure, a stopped sweep driver), each retried without limit (`store.begin_attempt`)."""


def result_trial_id(result: Any) -> str:
    tid = (result.metrics or {}).get("trial_id")
    if tid:
        return str(tid)
    m = re.search(r"trial_([0-9a-f]+_\d+)", str(result.path or ""))
    return m.group(1) if m else "?"


def _error_line(err: BaseException) -> str:
    """The error's type and the last line of its message (Tune wraps the trial's traceback)."""
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[-1][:200] if lines else ''}"


def _evals(df: Any, key: str) -> list[tuple[int, float]]:
    """(step, value) of every reported result holding `key`."""
    if df is None or key not in df:
        return []
    rows = df[["step", key]].dropna()
    return [(int(s), float(v)) for s, v in zip(rows["step"], rows[key])]


def _last_halt(df: Any, last: dict[str, Any]) -> list[dict[str, float]]:
    """The halting-threshold curve of the trial's last evaluation that reported one."""
    if df is not None:
        for _, result in df[::-1].iterrows():
            points = halt_points(result.to_dict())
            if points:
                return points
    return halt_points(last)


def _stop_reason(row: TrialRow, result: Any, m: dict[str, Any], failed: str | None) -> str:
    if result.error is not None or failed:
        row.error = failed or _error_line(result.error)
        return "error"
    if "step" not in m:
        return "not started"
    if row.step >= row.total_steps:
        return "completed"
    return str(m.get("stop_reason") or "interrupted")


def trial_row(sweep: SweepConfig, ctx: Any, result: Any, listing: SweepListing) -> TrialRow:
    """One trial of Tune's `ResultGrid` as the summary shows it; its files come from
    `listing` (the sweep directory, listed once for all trials)."""
    metric, sign = sweep.search.metric, 1 if sweep.search.mode == "max" else -1
    params = ctx.assignments(result.config or {})
    cfg = sweep.base_config(params)
    m, df = result.metrics or {}, result.metrics_dataframe
    trial_id = result_trial_id(result)
    row = TrialRow(trial_id=trial_id, params=params, depth=effective_depth(cfg.model),
                   halt_max_steps=cfg.halt_max_steps, total_steps=cfg.schedule.steps,
                   name=ctx.display_name(result.config or {}, trial_id))  # fmt: skip
    evals = _evals(df, metric)
    if evals:
        row.best_step, row.best = max(evals, key=lambda sv: (sign * sv[1], -sv[0]))
    exact = _evals(df, EXACT)
    row.exact = max(v for _, v in exact) if exact else None
    row.steps_to_95 = steps_to(exact)
    row.halt = _last_halt(df, m)
    directory = ctx.checkpoint_dir(trial_id, cfg.resources.num_workers)
    row.checkpoint, row.checkpoint_step = CheckpointStore(directory).best(
        metric, sweep.search.mode, stored=listing.checkpoints(directory)
    )
    row.step, row.examples = int(m.get("step", 0)), int(m.get("examples", 0))
    row.flops, row.wall_s = float(m.get("flops", 0.0)), float(m.get("time_total_s", 0.0))
    failed = listing.failed_line(trial_id)
    row.preemptions = listing.preemptions(trial_id)
    row.stop_reason = _stop_reason(row, result, m, failed)
    return row


def collect_rows(sweep: SweepConfig, ctx: Any, results: Any, wall_s: float) -> list[TrialRow]:
    """One row per trial of Tune's `ResultGrid`; trials the compute budget cut short say so."""
    listing = SweepListing(ctx.exp_path)
    rows = [trial_row(sweep, ctx, result, listing) for result in results]
    spent = sum(r.flops for r in rows)
    b = sweep.budget
    if (b.flops and spent >= b.flops) or (b.hours and wall_s >= b.hours * 3600):
        for r in rows:
            if r.stop_reason in ("interrupted", "not started"):
                r.stop_reason = (
                    "budget" if r.stop_reason == "interrupted" else "not started (budget)"
                )
    return rows


def best_row(rows: list[TrialRow], mode: str) -> TrialRow | None:
    sign = 1 if mode == "max" else -1
    ranked = [r for r in rows if r.best is not None]
    return max(ranked, key=lambda r: (sign * r.best, -r.flops)) if ranked else None
