"""The end of a sweep: one row per trial, the console summary, the best config, the plots, and
their place on the MLflow parent run (and beside the Tune experiment in the sweep's storage).

Rows come from Tune's results (the last and every reported result of each trial, kept in the
experiment's storage, so a resumed sweep summarises the trials of every invocation); depth
curves come from the trials' MLflow child runs. Parent-run artifacts:

    sweep/sweep.yaml, sweep/resolved.yaml     the sweep file as given, and as run
    summary/summary.txt|csv|json              the table printed on the console
    best/best_config.yaml                     the best trial's run config (pipeline/train.py)
    plots/exact_vs_depth.png                  best exact accuracy vs effective depth
    plots/exact_vs_compute.png                ... vs model FLOPs spent, with the Pareto front
    plots/depth_curves.png                    test-time depth curves of the best trials
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import asdict, dataclass, field
from typing import Any

import yaml

from pipeline.sweeping.config import SweepConfig, effective_depth
from pipeline.sweeping.monitor import clock

EXACT = "eval/exact_accuracy"
TOP_CURVES = 3
STATUS = {"completed": "FINISHED", "error": "FAILED"}  # anything else: KILLED
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


def _trial_id(result: Any) -> str:
    tid = (result.metrics or {}).get("trial_id")
    if tid:
        return str(tid)
    m = re.search(r"trial_([0-9a-f]+_\d+)", str(result.path or ""))
    return m.group(1) if m else "?"


def _error_line(err: BaseException) -> str:
    """The error's type and the last line of its message (Tune wraps the trial's traceback)."""
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[-1][:200] if lines else ''}"


def collect_rows(sweep: SweepConfig, ctx: Any, results: Any, wall_s: float) -> list[TrialRow]:
    """One row per trial of Tune's `ResultGrid`."""
    metric, sign = sweep.search.metric, 1 if sweep.search.mode == "max" else -1
    rows: list[TrialRow] = []
    for result in results:
        params = ctx.assignments(result.config or {})
        cfg = sweep.base_config(params)
        m = result.metrics or {}
        row = TrialRow(
            trial_id=_trial_id(result),
            params=params,
            depth=effective_depth(cfg.model),
            halt_max_steps=cfg.halt_max_steps,
            total_steps=cfg.schedule.steps,
        )
        df = result.metrics_dataframe
        if df is not None and metric in df and df[metric].notna().any():
            col = df[metric].astype(float)
            i = (col * sign).idxmax()
            row.best, row.best_step = float(col[i]), int(df["step"][i])
        if df is not None and EXACT in df and df[EXACT].notna().any():
            row.exact = float(df[EXACT].astype(float).max())
        row.step = int(m.get("step", 0))
        row.examples = int(m.get("examples", 0))
        row.flops = float(m.get("flops", 0.0))
        row.wall_s = float(m.get("time_total_s", 0.0))
        if result.error is not None:
            row.stop_reason = "error"
            row.error = _error_line(result.error)
        elif "step" not in m:
            row.stop_reason = "not started"
        elif row.step >= row.total_steps:
            row.stop_reason = "completed"
        elif m.get("stop_reason"):
            row.stop_reason = str(m["stop_reason"])
        else:
            row.stop_reason = "interrupted"
        rows.append(row)
    spent = sum(r.flops for r in rows)
    b = sweep.budget
    budget_hit = (b.flops and spent >= b.flops) or (b.hours and wall_s >= b.hours * 3600)
    if budget_hit:
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


def summary_table(rows: list[TrialRow], metric: str) -> tuple[list[str], list[list[str]]]:
    keys = sorted(
        {k for r in rows for k in r.params},
        key=lambda k: list(rows[0].params).index(k) if k in rows[0].params else 99,
    )
    headers = ["trial", *(_short(k, keys) for k in keys), "depth", f"best {metric}"]
    if metric != EXACT:
        headers.append(f"best {EXACT}")
    headers += ["at step", "steps", "examples", "FLOPs", "wall", "stop"]
    body = []
    for r in sorted(rows, key=lambda r: (r.depth, r.trial_id)):
        line = [r.trial_id, *(_fmt(r.params.get(k)) for k in keys), str(r.depth), _fmt(r.best)]
        if metric != EXACT:
            line.append(_fmt(r.exact))
        line += [
            str(r.best_step) if r.best is not None else "-",
            f"{r.step}/{r.total_steps}",
            str(r.examples),
            f"{r.flops:.3g}",
            clock(r.wall_s),
            r.stop_reason + (f" ({r.error})" if r.error else ""),
        ]
        body.append(line)
    return headers, body


def _layer_groups(rows: list[TrialRow]) -> dict[Any, list[TrialRow]]:
    """Rows by L_layers when the sweep varies it (depth from layers and from recursion are not
    the same thing), else one group."""
    layers = {r.params.get("model.L_layers") for r in rows}
    if len(layers) > 1 and None not in layers:
        return {v: [r for r in rows if r.params["model.L_layers"] == v] for v in sorted(layers)}
    return {None: rows}


def by_depth(rows: list[TrialRow]) -> str:
    """Best exact accuracy per effective depth (one column per layer count when the sweep
    varies it), with a bar for the best at each depth."""
    groups = _layer_groups(rows)
    cols = [f"L_layers={k}" if k is not None else "best exact" for k in groups]
    body = []
    for d in sorted({r.depth for r in rows}):
        cells, best_here = [], None
        for members in groups.values():
            vals = [r.exact for r in members if r.depth == d and r.exact is not None]
            cells.append(f"{max(vals):.3f}" if vals else "-")
            if vals:
                best_here = max(vals) if best_here is None else max(best_here, *vals)
        n = sum(r.depth == d for r in rows)
        bar = "#" * round(40 * best_here) if best_here is not None else ""
        body.append([str(d), *cells, str(n), "|" + bar])
    title = "Best exact accuracy by effective depth = H_cycles x (L_cycles + 1) x L_layers:"
    lines = table(["depth", *cols, "trials", "best"], body).splitlines()
    return "\n".join([title, *("  " + line for line in lines)])


def summary_text(
    sweep: SweepConfig, rows: list[TrialRow], wall_s: float, best: TrialRow | None, where: str
) -> str:
    counts: dict[str, int] = {}
    for r in rows:
        counts[r.stop_reason] = counts.get(r.stop_reason, 0) + 1
    head = (
        f"Sweep {sweep.name!r}: {len(rows)} trial(s) ("
        + ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))
        + f"); {sum(r.flops for r in rows):.3g} training FLOPs; trial time "
        + f"{clock(sum(r.wall_s for r in rows))}, wall time of this invocation {clock(wall_s)}"
    )
    headers, body = summary_table(rows, sweep.search.metric)
    parts = [head, "", table(headers, body), "", by_depth(rows), ""]
    if best is not None:
        params = ", ".join(f"{k}={v}" for k, v in best.params.items())
        parts.append(
            f"Best: trial {best.trial_id} ({params}): {sweep.search.metric} {best.best:.4f} at "
            f"step {best.best_step}; config: {where}"
        )
    else:
        parts.append("Best: no trial reported an evaluation")
    if any(r.stop_reason in ("interrupted", "not started") for r in rows):
        parts.append("Some trials did not finish: continue the sweep with --resume")
    return "\n".join(parts)


def summary_csv(rows: list[TrialRow]) -> str:
    buf = io.StringIO()
    keys = list(dict.fromkeys(k for r in rows for k in r.params))
    cols = ["trial_id", *keys, "depth", "best", "best_step", "exact", "step", "total_steps",
            "examples", "flops", "wall_s", "stop_reason", "error", "run_id"]  # fmt: skip
    w = csv.writer(buf)
    w.writerow(cols)
    for r in rows:
        d = asdict(r)
        w.writerow([d["params"].get(c, "") if c in keys else d[c] for c in cols])
    return buf.getvalue()


def best_config_yaml(sweep: SweepConfig, best: TrialRow) -> str:
    cfg = sweep.base_config(best.params).to_dict()
    cfg["name"] = f"{sweep.name}-best"
    header = (
        f"# Best trial of sweep {sweep.name!r}: trial {best.trial_id}, {sweep.search.metric} = "
        f"{best.best:.4f} at step {best.best_step}\n"
        f"# Its values: {', '.join(f'{k}={v}' for k, v in best.params.items())}\n"
        "# Run it: python pipeline/train.py best_config.yaml\n"
    )
    return header + yaml.safe_dump(cfg, sort_keys=False)


# ---- plots ----------------------------------------------------------------------------------
def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _label(r: TrialRow) -> str:
    p = r.params
    parts = [f"{k.split('.')[-1]}={v}" for k, v in p.items()]
    return ",".join(parts)


def _depth_axis(ax: Any, depths: list[int]) -> None:
    if len(depths) > 1 and depths[-1] / max(depths[0], 1) >= 16:
        ax.set_xscale("log", base=2)
    from matplotlib.ticker import MaxNLocator, ScalarFormatter

    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def depth_figure(rows: list[TrialRow]):
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    done = [r for r in rows if r.exact is not None]
    for i, (layers, members) in enumerate(_layer_groups(done).items()):
        name = f"L_layers={layers}" if layers is not None else "trials"
        colour = f"C{i}"
        for stopped, marker in ((False, "o"), (True, "x")):
            pts = [r for r in members if (r.stop_reason != "completed") == stopped]
            if pts:
                ax.scatter([r.depth for r in pts], [r.exact for r in pts], marker=marker,
                           c=colour, label=f"{name}{' (stopped early)' if stopped else ''}")  # fmt: skip
        depths = sorted({r.depth for r in members})
        best = [max(r.exact for r in members if r.depth == d) for d in depths]
        ax.plot(depths, best, c=colour, lw=1, ls="--")
    _depth_axis(ax, sorted({r.depth for r in done}))
    ax.set_xlabel("effective depth = H_cycles x (L_cycles + 1) x L_layers")
    ax.set_ylabel("best eval exact accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title("Exact accuracy vs effective depth (dashed: best per depth)")
    if done:
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def pareto_front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The points no other point beats on both less compute and higher accuracy, by compute."""
    front: list[tuple[float, float]] = []
    for x, y in sorted(points, key=lambda p: (p[0], -p[1])):
        if not front or y > front[-1][1]:
            front.append((x, y))
    return front


def compute_figure(rows: list[TrialRow]):
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    done = [r for r in rows if r.exact is not None and r.flops > 0]
    if done:
        sc = ax.scatter([r.flops for r in done], [r.exact for r in done],
                        c=[r.depth for r in done], cmap="viridis")  # fmt: skip
        fig.colorbar(sc, ax=ax, label="effective depth")
        front = pareto_front([(r.flops, r.exact) for r in done])
        ax.step([x for x, _ in front], [y for _, y in front], where="post", c="red", lw=1.2,
                label="Pareto front")  # fmt: skip
        ax.set_xscale("log")
        ax.legend(fontsize=8)
    ax.set_xlabel("model training FLOPs spent")
    ax.set_ylabel("best eval exact accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title("Exact accuracy vs compute")
    fig.tight_layout()
    return fig


def curves_figure(rows: list[TrialRow]):
    plt = _plt()
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for r in rows:
        if r.curve:
            ax.plot(range(1, len(r.curve) + 1), r.curve, marker="o", ms=3,
                    label=f"{r.trial_id} (depth {r.depth}; {_label(r)})")  # fmt: skip
            ax.axvline(r.halt_max_steps, c="grey", ls=":", lw=0.8)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("ACT steps at test time (dotted: training halt_max_steps)")
    ax.set_ylabel("exact accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(f"Depth curves of the {TOP_CURVES} best trials (last evaluation)")
    if any(r.curve for r in rows):
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


# ---- the whole end of a sweep ---------------------------------------------------------------
def attach_runs(rows: list[TrialRow], ctx: Any, experiment: str, mode: str) -> None:
    """MLflow child run of each trial, and the last depth curve of the best trials."""
    from pipeline.tracking import child_runs, list_artifacts, load_dict_artifact

    if not ctx.parent_run_id:
        return
    runs = child_runs(ctx.tracking_uri, experiment, ctx.parent_run_id)
    for r in rows:
        r.run_id = runs.get(ctx.run_key(r.trial_id), "")
    sign = 1 if mode == "max" else -1
    ranked = sorted((r for r in rows if r.best is not None and r.run_id),
                    key=lambda r: -sign * r.best)  # fmt: skip
    for r in ranked[:TOP_CURVES]:
        found = sorted(p for p in list_artifacts(ctx.tracking_uri, r.run_id, "depth_curve")
                       if p.endswith(".json"))  # fmt: skip
        if found:
            r.curve = list(
                load_dict_artifact(ctx.tracking_uri, r.run_id, found[-1])["exact_accuracy"]
            )


def finish_sweep(sweep: SweepConfig, ctx: Any, results: Any, tracker: Any, wall_s: float) -> Any:
    """Summarise, print, store and log the sweep; set each child run's final status."""
    from pipeline.data.storage import open_storage
    from pipeline.tracking import end_run

    rows = collect_rows(sweep, ctx, results, wall_s)
    experiment = ctx.base["tracking"]["experiment"]
    attach_runs(rows, ctx, experiment, sweep.search.mode)
    best = best_row(rows, sweep.search.mode)
    store = open_storage(ctx.exp_path)
    where = f"{ctx.exp_path}/best_config.yaml" + (
        " (and on the MLflow parent run)" if tracker.run_id else ""
    )
    text = summary_text(sweep, rows, wall_s, best, where)
    print("\n" + text, flush=True)
    if tracker.run_id:
        from pipeline.tracking import ui_command

        print(f"MLflow: parent run {tracker.run_id}; {ui_command(ctx.tracking_uri)}", flush=True)

    files = {
        "summary/summary.txt": text + "\n",
        "summary/summary.csv": summary_csv(rows),
    }
    if best is not None:
        files["best/best_config.yaml"] = best_config_yaml(sweep, best)
    for path, content in files.items():
        store.write_bytes(path.split("/")[-1], content.encode())
        tracker.log_text(content, path)
    tracker.log_dict({"metric": sweep.search.metric, "mode": sweep.search.mode,
                      "trials": [asdict(r) for r in rows]}, "summary/summary.json")  # fmt: skip
    plt = _plt()
    for make, path in ((depth_figure, "plots/exact_vs_depth.png"),
                       (compute_figure, "plots/exact_vs_compute.png"),
                       (curves_figure, "plots/depth_curves.png")):  # fmt: skip
        fig = make([r for r in rows if r.curve] if make is curves_figure else rows)
        try:
            tracker.log_figure(fig, path)
            buf = io.BytesIO()
            fig.savefig(buf, format="png", dpi=100)
            store.write_bytes(path.split("/")[-1], buf.getvalue())
        finally:
            plt.close(fig)
    # every reason, zeros included, so a resumed sweep overwrites the counts of the last run
    counts = {f"trials/{re.sub(r'[^a-z_]+', '_', k).strip('_')}":
              float(sum(r.stop_reason == k for r in rows)) for k in STOP_REASONS}  # fmt: skip
    metrics = {"trials/total": float(len(rows)), **counts,
               "compute/flops": sum(r.flops for r in rows),
               "sweep/trial_time_s": sum(r.wall_s for r in rows),
               "sweep/invocation_wall_s": wall_s}  # fmt: skip
    if best is not None:
        metrics[f"best/{sweep.search.metric}"] = best.best
        tracker.set_tags({"trm.best_trial": best.trial_id, "trm.best_run_id": best.run_id})
    tracker.log_metrics(metrics, 0)

    for r in rows:
        if r.run_id:
            end_run(ctx.tracking_uri, r.run_id, STATUS.get(r.stop_reason, "KILLED"),
                    {"trm.stop_reason": r.stop_reason, "trm.trial_id": r.trial_id})  # fmt: skip
    ran = [r for r in rows if r.stop_reason != "not started"]
    failed = ran and all(r.stop_reason == "error" for r in ran)
    return SweepOutcome(
        exp_path=ctx.exp_path,
        parent_run_id=tracker.run_id or "",
        tracking_uri=ctx.tracking_uri,
        rows=rows,
        summary_text=text,
        exit_code=1 if failed else 0,
    )
