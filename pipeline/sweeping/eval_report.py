"""The end of an evaluate-mode sweep (`pipeline.sweeping.eval_trial`): a table of every
test-time setting (console, `summary/summary.{txt,json}` on the MLflow parent run and beside the
experiment), the plot `plots/accuracy_vs_inference_flops.png` (exact accuracy vs inference FLOPs
per example, with the Pareto front), and the best setting as `best/best_eval.yaml`: an `eval`
section that the evaluation command takes as `--set eval.KEY=VALUE` lines (listed in the
summary)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import yaml

from pipeline.config.metric_names import RULES, rule_metric
from pipeline.sweeping.config import EVAL_MODE_FIELDS, SweepConfig
from pipeline.sweeping.plots import pareto_figure
from pipeline.sweeping.report import SweepOutcome, results_where
from pipeline.tracking.sender import png_bytes

PLOT = "plots/accuracy_vs_inference_flops.png"
BEST = "best/best_eval.yaml"


@dataclass
class EvalRow:
    """One test-time setting as the summary shows it."""

    trial_id: str
    setting: dict[str, Any]
    """eval field (`eval.trajectories`, ...) -> the value the trial ran with."""
    metrics: dict[str, float] = field(default_factory=dict)
    """The trial's `eval/*` report; empty when it failed."""
    run_id: str = ""
    error: str = ""

    def get(self, name: str) -> float:
        return float(self.metrics.get(name, float("nan")))


@dataclass
class EvalOutcome(SweepOutcome):
    eval_rows: list[EvalRow] = field(default_factory=list)
    best: EvalRow | None = None


def collect(sweep: SweepConfig, ctx: Any, results: Any) -> list[EvalRow]:
    from pipeline.sweeping.rows import result_trial_id

    rows = []
    for result in results:
        cfg = sweep.base_config(ctx.assignments(result.config or {}))
        setting = {n: getattr(cfg.eval, n.split(".", 1)[1]) for n in EVAL_MODE_FIELDS}
        m = {k: float(v) for k, v in (result.metrics or {}).items() if k.startswith("eval/")}
        err = str(result.error).strip().splitlines()[-1] if result.error is not None else ""
        rows.append(EvalRow(result_trial_id(result), setting, m, error=err))
    return rows


def best_row(rows: list[EvalRow], metric: str, mode: str) -> EvalRow | None:
    """The best setting by `metric`; ties go to the fewer inference FLOPs."""
    done = [r for r in rows if metric in r.metrics]
    sign = 1 if mode == "max" else -1
    return max(
        done,
        key=lambda r: (sign * r.get(metric), -r.get("eval/inference_flops_per_example")),
        default=None,
    )


def set_lines(row: EvalRow) -> list[str]:
    """The best setting as `--set eval.KEY=VALUE` arguments (unset threshold left out)."""
    return [f"--set {k}={v}" for k, v in row.setting.items() if v is not None]


def summary_text(sweep: SweepConfig, rows: list[EvalRow], best: EvalRow | None) -> str:
    head = f"{'trial':<14}" + "".join(f"{n.split('.')[1]:>15}" for n in EVAL_MODE_FIELDS)
    head += f"{'exact':>8}{'bestQ':>8}{'mode':>8}{'pass@K':>8}{'token':>8}{'steps':>7}"
    head += f"{'GFLOP/ex':>10}{'n':>6}"
    lines = [f"evaluate-mode sweep {sweep.name!r}: {sweep.checkpoint}", head]
    for r in sorted(rows, key=lambda r: r.get("eval/inference_flops_per_example")):
        cells = "".join(f"{v!s:>15}" for v in r.setting.values())
        if r.error:
            lines.append(f"{r.trial_id:<14}{cells}  failed: {r.error}")
            continue
        lines.append(
            f"{r.trial_id:<14}{cells}{r.get('eval/exact_accuracy'):>8.4f}"
            + "".join(f"{r.get(rule_metric(r.setting['eval.protocol'], k)):>8.4f}" for k in RULES)
            + f"{r.get('eval/accuracy'):>8.4f}{r.get('eval/steps'):>7.2f}"
            f"{r.get('eval/inference_flops_per_example') / 1e9:>10.4f}"
            f"{int(r.get('eval/count')):>6}"
        )
    if best is not None:
        lines.append(
            f"best by {sweep.search.metric} ({sweep.search.mode}): trial {best.trial_id}, "
            f"{best.get(sweep.search.metric):.4f}; as evaluation arguments:"
        )
        lines.append(
            f"  python pipeline/evaluate.py {sweep.checkpoint} " + " ".join(set_lines(best))
        )
    return "\n".join(lines)


def accuracy_figure(rows: list[EvalRow]):
    done = [r for r in rows if "eval/exact_accuracy" in r.metrics]
    return pareto_figure(
        [r.get("eval/inference_flops_per_example") for r in done],
        [r.get("eval/exact_accuracy") for r in done],
        [r.setting["eval.trajectories"] for r in done],
        color_label="trajectories K", xlabel="inference FLOPs per example",
        ylabel="exact accuracy", title="Test-time compute: exact accuracy vs inference FLOPs",
    )  # fmt: skip


def finish_eval_sweep(
    sweep: SweepConfig, ctx: Any, results: Any, tracker: Any, wall_s: float
) -> EvalOutcome:
    """Summarise, store and log an evaluate-mode sweep. The caller prints `console_text()`
    (as for a training sweep: `pipeline.sweeping.report.finish_sweep`)."""
    from pipeline.data.storage import open_storage
    from pipeline.tracking.tracker import child_runs

    rows = collect(sweep, ctx, results)
    if ctx.parent_run_id:
        runs = child_runs(ctx.tracking_uri, ctx.base.tracking.experiment, ctx.parent_run_id)
        for r in rows:
            r.run_id = runs.get(ctx.run_key(r.trial_id), "")
    best = best_row(rows, sweep.search.metric, sweep.search.mode)
    text = summary_text(sweep, rows, best)
    files = {"summary/summary.txt": text + "\n"}
    if best is not None:
        eval_section = {k.split(".", 1)[1]: v for k, v in best.setting.items() if v is not None}
        files[BEST] = yaml.safe_dump({"eval": eval_section}, sort_keys=False)
    store = open_storage(ctx.exp_path)
    for path, content in files.items():
        store.write_bytes(path.split("/")[-1], content.encode())
        tracker.log_text(content, path)
    tracker.log_dict({"metric": sweep.search.metric, "mode": sweep.search.mode,
                      "checkpoint": sweep.checkpoint, "wall_s": wall_s,
                      "trials": [asdict(r) for r in rows]}, "summary/summary.json")  # fmt: skip
    png = png_bytes(accuracy_figure(rows))
    tracker.log_bytes(png, PLOT)
    store.write_bytes(PLOT.split("/")[-1], png)
    if best is not None:
        tracker.log_metrics({f"best/{sweep.search.metric}": best.get(sweep.search.metric)}, 0)
        tracker.set_tags({"trm.best_trial": best.trial_id, "trm.best_run_id": best.run_id})
    failed = any(r.error for r in rows)
    return EvalOutcome(
        exp_path=ctx.exp_path, parent_run_id=tracker.run_id or "", tracking_uri=ctx.tracking_uri,
        summary_text=text, exit_code=1 if failed else 0, eval_rows=rows, best=best,
        where=results_where(ctx, tracker, "summary, best_eval.yaml, accuracy against FLOPs"),
    )  # fmt: skip
