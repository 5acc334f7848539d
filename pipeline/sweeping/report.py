"""The end of a sweep: the rows of its trials (`pipeline.sweeping.rows`), the console summary,
the best config, the plots, and their place on the MLflow parent run (and beside the Tune
experiment in the sweep's storage).

Rows come from Tune's results (the last and every reported result of each trial, kept in the
experiment's storage, so a resumed sweep summarises the trials of every invocation); depth
curves come from the trials' MLflow child runs. Parent-run artifacts:

    sweep/sweep.yaml, sweep/resolved.yaml     the sweep file as given, and as run
    summary/summary.txt|csv|json              the table printed on the console
    best/best_config.yaml                     the best trial's run config (pipeline/train.py)
    plots/exact_vs_depth.png                  best exact accuracy vs effective depth
    plots/exact_vs_compute.png                ... vs model FLOPs spent, with the Pareto front
    plots/depth_curves.png                    test-time depth curves of the best trials
    plots/halt_curves.png                     exact accuracy vs test-time steps per tau

`summary/summary.json` holds `best` (`value` of the ranking metric, the URI of the best
trial's `checkpoint` that `pipeline.restore.restore` loads, and its run `config`, the same as
best_config.yaml) and one entry per trial. Trials that differ only by `data.seed` are grouped
per grid point (`pipeline.sweeping.findings`); the summary ends with one sentence on what the
sweep found and where its results are.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

import yaml

from pipeline.sweeping.config import SweepConfig
from pipeline.sweeping.exits import EXIT_ERROR, EXIT_INTERRUPTED
from pipeline.sweeping.findings import EXACT, SEED_KEY, Group, finding, halt_cell, seed_groups
from pipeline.sweeping.monitor import clock
from pipeline.sweeping.plots import (
    TOP_CURVES,
    compute_figure,
    curves_figure,
    depth_figure,
    halt_figure,
    pyplot,
)
from pipeline.sweeping.rows import TrialRow, best_row, collect_rows
from pipeline.tracking.sender import png_bytes

STATUS = {"completed": "FINISHED", "error": "FAILED"}  # anything else: KILLED
ENDERS = 8
"""Child runs ended at once at the end of a sweep (two requests each)."""
CONSOLE_TRIALS = 50
"""A sweep of more trials prints a bounded summary: its best `TOP_TRIALS` trials and the best
`TOP_GROUPS` grid points; the summary files hold every row."""
TOP_TRIALS = 10
TOP_GROUPS = 20
STOP_REASONS = ("completed", "early-stopped", "max_t", "budget", "error", "interrupted",
                "not started", "not started (budget)")  # fmt: skip


@dataclass
class SweepOutcome:
    """What `run_sweep` returns: where the sweep lives, its parent run, its rows and summary."""

    exp_path: str
    parent_run_id: str
    tracking_uri: str
    rows: list[TrialRow] = field(default_factory=list)
    summary_text: str = ""
    exit_code: int = 0
    where: str = ""
    """Where the results are (storage, MLflow parent run): the last lines to print."""

    def console_text(self) -> str:
        return self.summary_text + ("\n" + self.where if self.where else "")


# ---- text -----------------------------------------------------------------------------------
def _short(key: str, keys: list[str]) -> str:
    last = key.split(".")[-1]
    return last if sum(k.split(".")[-1] == last for k in keys) == 1 else key


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def table(headers: list[str], body: list[list[str]]) -> str:
    widths = [
        max(len(h), *(len(r[i]) for r in body)) if body else len(h) for i, h in enumerate(headers)
    ]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in body]
    return "\n".join(line.rstrip() for line in lines)


def _keys(rows: list[TrialRow]) -> list[str]:
    """The swept keys, in the space's order."""
    return list(dict.fromkeys(k for r in rows for k in r.params))


def summary_table(
    rows: list[TrialRow], metric: str, ranked: bool = False
) -> tuple[list[str], list[list[str]]]:
    """The per-trial table, by depth and name (`ranked`: in the order given)."""
    keys = _keys(rows)
    headers = ["trial", "name", *(_short(k, keys) for k in keys), "depth", f"best {metric}"]
    if metric != EXACT:
        headers.append(f"best {EXACT}")
    headers += ["at step", "to 95%", "halt tau=0.5 steps/exact", "steps", "examples", "FLOPs",
                "wall", "preempted", "stop"]  # fmt: skip
    body = []
    for r in rows if ranked else sorted(rows, key=lambda r: (r.depth, r.name, r.trial_id)):
        line = [r.trial_id, r.name, *(_fmt(r.params.get(k)) for k in keys), str(r.depth),
                _fmt(r.best)]  # fmt: skip
        if metric != EXACT:
            line.append(_fmt(r.exact))
        line += [
            str(r.best_step) if r.best is not None else "-",
            _fmt(r.steps_to_95),
            halt_cell(r.halt),
            f"{r.step}/{r.total_steps}",
            str(r.examples),
            f"{r.flops:.3g}",
            clock(r.wall_s),
            str(r.preemptions),
            r.stop_reason + (f" ({r.error})" if r.error else ""),
        ]
        body.append(line)
    return headers, body


def _range(g: Group, attr: str) -> str:
    """'0.41 (0.38-0.45)': the mean over seeds and its min-max; the value alone for one seed."""
    v = g.values(attr)
    if not v:
        return "-"
    return f"{g.mean(attr):.3f}" + (f" ({min(v):.3f}-{max(v):.3f})" if len(v) > 1 else "")


def _to_95(g: Group) -> tuple[str, str]:
    """(per seed, e.g. '200 400 -'; summary, e.g. '300 (2/3 seeds)')."""
    per = " ".join(_fmt(r.steps_to_95) for r in g.rows)
    reached = sum(r.steps_to_95 is not None for r in g.rows)
    mean = g.steps_to_target()
    return per, (f"{mean:.0f} ({reached}/{len(g.rows)} seeds)" if mean is not None else "-")


def by_grid_point(groups: list[Group], metric: str, mode: str = "max", top: int = 0) -> str:
    """One line per grid point over its seeds: the best metric's mean and min-max, each
    seed's value, and steps to 95% exact accuracy per seed and on average. `top` > 0: only
    the best `top` grid points by mean, without the per-seed columns (bounded in size)."""
    keys = list(dict.fromkeys(k for g in groups for k in g.params))
    per_seed = ["per seed", "to 95% per seed"] if not top else []
    headers = [*(_short(k, keys) for k in keys), "depth", "seeds", f"{metric} mean (min-max)",
               *per_seed, "to 95% mean"]  # fmt: skip
    order = sorted(groups, key=lambda g: (g.depth, tuple(map(str, g.params.values()))))
    if top:
        sign = 1 if mode == "max" else -1
        scored = [g for g in groups if g.mean("best") is not None]
        order = sorted(scored, key=lambda g: -sign * g.mean("best"))[:top]
    body = []
    for g in order:
        per, mean = _to_95(g)
        seeds = " ".join("-" if r.best is None else f"{r.best:.3f}" for r in g.rows)
        body.append([*(_fmt(g.params.get(k)) for k in keys), str(g.depth), str(len(g.rows)),
                     _range(g, "best"), *([seeds, per] if not top else []), mean])  # fmt: skip
    lines = table(headers, body).splitlines()
    title = "By grid point, over seeds (data.seed):"
    if top:
        title = f"The best {len(order)} of {len(groups)} grid points, over seeds (data.seed):"
    return "\n".join([title, *("  " + line for line in lines)])


def by_depth(groups: list[Group]) -> str:
    """Per effective depth (one column per layer count when the sweep varies it): mean exact
    accuracy over seeds of the best grid point at that depth, with its min-max."""
    layers = sorted({g.params.get("model.L_layers") for g in groups}, key=str)
    split = len(layers) > 1 and None not in layers
    cols = [f"L_layers={k}" for k in layers] if split else ["exact (mean over seeds)"]
    body = []
    for d in sorted({g.depth for g in groups}):
        here = [g for g in groups if g.depth == d and g.mean("exact") is not None]
        cells, top = [], None
        for k in layers if split else [None]:
            members = [g for g in here if not split or g.params.get("model.L_layers") == k]
            best = max(members, key=lambda g: g.mean("exact")) if members else None
            cells.append(_range(best, "exact") if best else "-")
            if best and (top is None or best.mean("exact") > top):
                top = best.mean("exact")
        n = sum(len(g.rows) for g in groups if g.depth == d)
        body.append([str(d), *cells, str(n), "|" + ("#" * round(40 * top) if top else "")])
    title = "Exact accuracy by effective depth = H_cycles x (L_cycles + 1) x L_layers:"
    lines = table(["depth", *cols, "trials", "best"], body).splitlines()
    return "\n".join([title, *("  " + line for line in lines)])


def summary_text(
    sweep: SweepConfig,
    rows: list[TrialRow],
    wall_s: float,
    best: TrialRow | None,
    where: str,
    bounded: bool = False,
) -> str:
    """The summary; `bounded` (the console's, for more than `CONSOLE_TRIALS` trials): the best
    `TOP_TRIALS` trials and `TOP_GROUPS` grid points instead of every row."""
    counts: dict[str, int] = {}
    for r in rows:
        counts[r.stop_reason] = counts.get(r.stop_reason, 0) + 1
    head = (
        f"Sweep {sweep.name!r}: {len(rows)} trial(s) ("
        + ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))
        + f"); {sum(r.flops for r in rows):.3g} training FLOPs; trial time "
        + f"{clock(sum(r.wall_s for r in rows))}, wall time of this invocation {clock(wall_s)}"
    )
    mode, groups = sweep.search.mode, seed_groups(rows)
    shown = _ranked(rows, mode)[:TOP_TRIALS] if bounded else rows
    headers, body = summary_table(shown, sweep.search.metric, ranked=bounded)
    parts = [head, ""]
    if bounded:
        parts.append(f"The best {len(shown)} of {len(rows)} trials (every trial: summary.txt, "
                     "summary.csv and summary.json beside the results):")  # fmt: skip
    parts += [table(headers, body), ""]
    if any(SEED_KEY in r.params for r in rows):
        parts += [by_grid_point(groups, sweep.search.metric, mode, TOP_GROUPS if bounded else 0),
                  ""]  # fmt: skip
    parts += [by_depth(groups), ""]
    if best is not None:
        params = ", ".join(f"{k}={v}" for k, v in best.params.items())
        parts.append(
            f"Best: trial {best.trial_id} {best.name} ({params}): {sweep.search.metric} "
            f"{best.best:.4f} at step {best.best_step}; config: {where}"
        )
    else:
        parts.append("Best: no trial reported an evaluation")
    if any(r.stop_reason in ("interrupted", "not started") for r in rows):
        parts.append("Some trials did not finish: continue the sweep with --resume")
    parts.append(finding(groups))
    return "\n".join(parts)


def summary_csv(rows: list[TrialRow]) -> str:
    buf = io.StringIO()
    keys = _keys(rows)
    cols = ["trial_id", "name", *keys, "depth", "best", "best_step", "exact", "steps_to_95",
            "step", "total_steps", "examples", "flops", "wall_s", "preemptions", "stop_reason", "error",
            "run_id", "checkpoint"]  # fmt: skip
    w = csv.writer(buf)
    w.writerow(cols)
    for r in rows:
        d = asdict(r)
        w.writerow([d["params"].get(c, "") if c in keys else d[c] for c in cols])
    return buf.getvalue()


def best_config(sweep: SweepConfig, best: TrialRow) -> dict[str, Any]:
    """The best trial's run config, named `<sweep>-best` (what best_config.yaml holds)."""
    cfg = sweep.base_config(best.params).to_dict()
    cfg["name"] = f"{sweep.name}-best"
    return cfg


def best_summary(sweep: SweepConfig, best: TrialRow) -> dict[str, Any]:
    """summary.json's `best`: the metric's value, the checkpoint holding it and the config."""
    return {"metric": sweep.search.metric, "mode": sweep.search.mode, "value": best.best,
            "step": best.best_step, "trial_id": best.trial_id, "name": best.name,
            "params": best.params, "run_id": best.run_id, "checkpoint": best.checkpoint,
            "checkpoint_step": best.checkpoint_step,
            "config": best_config(sweep, best)}  # fmt: skip


def best_config_yaml(sweep: SweepConfig, best: TrialRow) -> str:
    header = (
        f"# Best trial of sweep {sweep.name!r}: trial {best.trial_id}, {sweep.search.metric} = "
        f"{best.best:.4f} at step {best.best_step}\n"
        f"# Its values: {', '.join(f'{k}={v}' for k, v in best.params.items())}\n"
        f"# Its checkpoint: {best.checkpoint or '-'}\n"
        "# Run it: python pipeline/train.py best_config.yaml\n"
    )
    return header + yaml.safe_dump(best_config(sweep, best), sort_keys=False)


# ---- the whole end of a sweep ---------------------------------------------------------------
def _ranked(rows: list[TrialRow], mode: str) -> list[TrialRow]:
    """Rows that reported the sweep's metric, best first."""
    sign = 1 if mode == "max" else -1
    return sorted((r for r in rows if r.best is not None), key=lambda r: -sign * r.best)


def attach_runs(rows: list[TrialRow], ctx: Any, experiment: str, mode: str) -> dict[str, str]:
    """MLflow child run of each trial, and the last depth curve of the best trials; returns
    the stop reason each ended child run already records (trial id -> `trm.stop_reason`)."""
    from pipeline.tracking.tracker import child_run_states

    if not ctx.parent_run_id:
        return {}
    runs = child_run_states(ctx.tracking_uri, experiment, ctx.parent_run_id, "trm.stop_reason")
    recorded = {}
    for r in rows:
        r.run_id, recorded[r.trial_id] = runs.get(ctx.run_key(r.trial_id), ("", ""))
    top = [r for r in _ranked(rows, mode) if r.run_id][:TOP_CURVES]
    with ThreadPoolExecutor(TOP_CURVES) as pool:  # a few round trips each: side by side
        for r, curve in zip(top, pool.map(lambda r: _last_curve(ctx.tracking_uri, r.run_id), top)):
            r.curve = curve
    return recorded


def _last_curve(uri: str, run_id: str) -> list[float]:
    """The depth curve of a run's last evaluation ([] where it logged none)."""
    from pipeline.tracking.tracker import list_artifacts, load_dict_artifact

    found = sorted(p for p in list_artifacts(uri, run_id, "depth_curve") if p.endswith(".json"))
    return list(load_dict_artifact(uri, run_id, found[-1])["exact_accuracy"]) if found else []


def _log_plots(rows: list[TrialRow], mode: str, tracker: Any, store: Any) -> None:
    pyplot()  # the Agg backend
    ranked = _ranked(rows, mode)
    figures = ((depth_figure, rows, "exact_vs_depth"), (compute_figure, rows, "exact_vs_compute"),
               (curves_figure, [r for r in rows if r.curve], "depth_curves"),
               (halt_figure, [r for r in ranked if r.halt], "halt_curves"))  # fmt: skip
    for make, subset, name in figures:
        path = f"plots/{name}.png"
        png = png_bytes(make(subset))
        store.write_bytes(path.split("/")[-1], png)
        tracker.log_bytes(png, path)


def _parent_metrics(sweep: SweepConfig, rows: list[TrialRow], wall_s: float) -> dict:
    # every reason, zeros included, so a resumed sweep overwrites the counts of the last run
    counts = {f"trials/{re.sub(r'[^a-z_]+', '_', k).strip('_')}":
              float(sum(r.stop_reason == k for r in rows)) for k in STOP_REASONS}  # fmt: skip
    return {"trials/total": float(len(rows)), **counts,
            "compute/flops": sum(r.flops for r in rows),
            "sweep/trial_time_s": sum(r.wall_s for r in rows),
            "sweep/invocation_wall_s": wall_s}  # fmt: skip


def stop_reason_tag(reason: str, scheduler: str) -> str:
    """The child run's `stop_reason` tag: which mechanism ended it (asha, budget, ...)."""
    return scheduler if reason == "early-stopped" else reason


def end_child(uri: str, run_id: str, name: str, trial_id: str, reason: str, scheduler: str,
              params: dict[str, Any], best: dict[str, float | None],
              client: Any = None) -> None:  # fmt: skip
    """End one trial's child run: its status for `reason`, display name, stop reason tags,
    swept values (params `swept.<key>`) and `best/<metric>` for each metric whose value is
    known. The one place both the live finalisation and the end of the sweep do it."""
    from pipeline.tracking.tracker import end_run

    tags = {"mlflow.runName": name, "trial_id": trial_id, "trm.trial_id": trial_id,
            "stop_reason": stop_reason_tag(reason, scheduler), "trm.stop_reason": reason}  # fmt: skip
    end_run(uri, run_id, STATUS.get(reason, "KILLED"), tags,
            params={f"swept.{k}": v for k, v in params.items()},
            metrics={f"best/{m}": v for m, v in best.items() if v is not None},
            client=client)  # fmt: skip


def end_children(sweep: SweepConfig, ctx: Any, rows: list[TrialRow],
                 recorded: dict[str, str]) -> None:  # fmt: skip
    """Each child run's final status, display name, stop reason, swept values (params
    `swept.<key>`) and best value of the sweep's metric (`best/<metric>`), unless it was
    finalised so when its trial ended (`pipeline.sweeping.finalise`; `recorded`: the stop
    reason each run records, from `attach_runs`): through one client, `ENDERS` runs at a
    time, without MLflow's "View run" line per run on the console."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=ctx.tracking_uri)
    todo = [r for r in rows if r.run_id and recorded.get(r.trial_id) != r.stop_reason]

    def end(r: TrialRow) -> None:
        end_child(ctx.tracking_uri, r.run_id, r.name, r.trial_id, r.stop_reason,
                  sweep.scheduler.type, r.params, {sweep.search.metric: r.best},
                  client=client)  # fmt: skip

    quiet = "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"
    old = os.environ.get(quiet)
    os.environ[quiet] = "true"  # set once around the pool: the threads only ever read it
    try:
        with ThreadPoolExecutor(ENDERS) as pool:
            list(pool.map(end, todo))
    finally:
        if old is None:
            os.environ.pop(quiet, None)
        else:
            os.environ[quiet] = old


def exit_code(rows: list[TrialRow]) -> int:
    """0: every trial completed or was stopped by the scheduler or the budget; 1: a trial
    ended in an error; 130: the sweep was interrupted before every trial ended (--resume)."""
    if any(r.stop_reason == "error" for r in rows):
        return EXIT_ERROR
    if any(r.stop_reason in ("interrupted", "not started") for r in rows):
        return EXIT_INTERRUPTED
    return 0


def results_where(
    ctx: Any, tracker: Any, holds: str = "summary, best_config.yaml, plots, trial checkpoints"
) -> str:
    """The lines that end the console output: where the results are (`holds`: what)."""
    from pipeline.tracking.server import run_link

    lines = [f"Results: {ctx.exp_path} ({holds})"]
    if tracker.run_id:
        lines.append(
            f"MLflow parent run {tracker.run_id}: {run_link(ctx.tracking_uri, tracker.run_id)}"
        )
    return "\n".join(lines)


def finish_sweep(sweep: SweepConfig, ctx: Any, results: Any, tracker: Any, wall_s: float) -> Any:
    """Summarise, store and log the sweep; set each child run's final status. The caller
    prints `console_text()` (last, after Ray's own output)."""
    from pipeline.data.storage import open_storage

    rows = collect_rows(sweep, ctx, results, wall_s)
    recorded = attach_runs(rows, ctx, ctx.base.tracking.experiment, sweep.search.mode)
    best = best_row(rows, sweep.search.mode)
    store = open_storage(ctx.exp_path)
    where = f"{ctx.exp_path}/best_config.yaml" + (
        " (and on the MLflow parent run)" if tracker.run_id else ""
    )
    text = summary_text(sweep, rows, wall_s, best, where)
    console = text
    if len(rows) > CONSOLE_TRIALS:
        console = summary_text(sweep, rows, wall_s, best, where, bounded=True)
    failed = [r for r in rows if r.stop_reason == "error"]
    if failed:
        line = "\nFailed: " + ", ".join(f"trial {r.trial_id} {r.name} ({r.error})" for r in failed)
        text, console = text + line, console + line
    files = {"summary/summary.txt": text + "\n", "summary/summary.csv": summary_csv(rows)}
    if best is not None:
        files["best/best_config.yaml"] = best_config_yaml(sweep, best)
    summary = {"metric": sweep.search.metric, "mode": sweep.search.mode,
               "best": best_summary(sweep, best) if best else None,
               "trials": [asdict(r) for r in rows]}  # fmt: skip
    files["summary/summary.json"] = json.dumps(summary, indent=1, default=str)
    for path, content in files.items():
        store.write_bytes(path.split("/")[-1], content.encode())
        tracker.log_text(content, path)
    _log_plots(rows, sweep.search.mode, tracker, store)
    metrics = _parent_metrics(sweep, rows, wall_s)
    if best is not None:
        metrics[f"best/{sweep.search.metric}"] = best.best
        tracker.set_tags({"trm.best_trial": best.trial_id, "trm.best_run_id": best.run_id,
                          "trm.best_checkpoint": best.checkpoint})  # fmt: skip
    tracker.log_metrics(metrics, 0)
    end_children(sweep, ctx, rows, recorded)
    return SweepOutcome(
        ctx.exp_path,
        tracker.run_id or "",
        ctx.tracking_uri,
        rows,
        console,
        exit_code=exit_code(rows),
        where=results_where(ctx, tracker),
    )
