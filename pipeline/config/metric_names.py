"""The names of the metrics runs report, declared once: `pipeline.training.metrics` (training),
`pipeline.evaluation.evaluator` and `pipeline.evaluation.arc_vote` (evaluation) build their
metric names from these, and a config's `search.metric` / `checkpoint.metric` may name exactly
these (`check_metric`), so a metric that is logged is accepted and a name nobody logs is not.

Fixed names are listed; names with a number in them are templates (`{k}`: a whole number,
`{tau}`: a halting threshold as `f"{tau:g}"` writes it) that `metric_name(template, ...)` fills in.
"""

from __future__ import annotations

import re
from typing import Any

TRAIN_METRICS = {
    "train/loss": "loss per batch row (lm + 0.5 * q losses), mean over the logging interval",
    "train/lm_loss": "token loss per row",
    "train/q_halt_loss": "halting loss per row",
    "train/accuracy": "token accuracy of examples that halted in the interval",
    "train/exact_accuracy": "exact accuracy of examples that halted in the interval",
    "train/q_halt_accuracy": "halting head agreed with exact correctness (halted examples)",
    "train/steps": "mean ACT steps of examples that halted",
    "train/lr": "learning rate of AdamATan2 at the last step",
    "train/examples_per_s": "batch rows (example-ACT-steps) processed per second, all workers",
    "train/puzzles_per_s": "examples completed (halted) per second, all workers",
    "train/data_wait_fraction": "fraction of wall time rank 0 waited for the next batch",
    "train/mfu": "model FLOPs utilisation: trm.flops train FLOPs / (peak FLOP/s * workers)",
}
"""What `MetricWindow.summary` reports at each logging interval, with what each one means."""

EVAL_METRICS = (
    "eval/count",
    "eval/exact_accuracy",
    "eval/accuracy",
    "eval/q_halt_accuracy",
    "eval/steps",
    "eval/exact_accuracy_at_halt",
    "eval/flops_per_example",
)
"""The fixed names an evaluation during training reports (`evaluator.finish`)."""

PROTOCOLS = ("act", "fixed_depth")
"""Test-time protocols (`eval.protocol`): ACT halting, or a fixed depth D for every trajectory."""
RULES = ("best_q", "mode", "pass_at_k")
"""The answers read off one set of K trajectories: best-Q@K, mode@K, pass@K (oracle)."""


def rule_metric(protocol: str, rule: str) -> str:
    """The metric name of `rule` under `protocol`: 'eval/fixed_depth/best_q_exact_accuracy'."""
    return f"eval/{protocol}/{rule}_exact_accuracy"


TRAJECTORY_METRICS = tuple(rule_metric(p, r) for p in PROTOCOLS for r in RULES)
"""Every protocol-named metric `pipeline.evaluation.trajectories` may report, beside
eval/exact_accuracy, eval/accuracy, eval/steps, eval/count and INFERENCE_FLOPS."""
INFERENCE_FLOPS = "eval/inference_flops_per_example"
EVAL_SECONDS = "eval/seconds"
"""Wall-clock seconds an evaluation during training took."""

ARC_COUNTS = ("eval/arc_tasks", "eval/arc_test_inputs", "eval/arc_test_inputs_voted")
"""ARC evaluations: test tasks, their test inputs (the denominator), those with a vote."""

EXACT_ACCURACY_AT = "eval/exact_accuracy_at_{k}"
"""Exact accuracy after the deepest rollout step k."""
HALT_TAU = "halt_tau_{tau}"
"""A halting threshold's part of a metric name: eval/halt_tau_0.5/steps, .../exact_accuracy."""
HALT_TAU_METRICS = ("eval/" + HALT_TAU + "/steps", "eval/" + HALT_TAU + "/exact_accuracy")
ARC_PASS_AT = "eval/arc_pass_at_{k}"
"""ARC pass@k of one evaluation (MLflow 3 rejects '@' in a metric name)."""
ARC_POOLED_PASS_AT = "eval/arc_pooled_pass_at_{k}"
"""ARC pass@k of the votes pooled over the run's evaluations (eval.aggregate)."""
NUMBERED = (EXACT_ACCURACY_AT, *HALT_TAU_METRICS, ARC_PASS_AT, ARC_POOLED_PASS_AT)

_FIELDS = {"k": r"\d+", "tau": r"[0-9][0-9.e+-]*"}


def metric_name(template: str, **values: Any) -> str:
    """`template` with its fields filled in; a tau is written as `f"{tau:g}"` (0.5)."""
    if "tau" in values:
        values["tau"] = f"{values['tau']:g}"
    return template.format(**values)


def tau_name(tau: float) -> str:
    """How a halting threshold appears in metric names: 0.5 -> 'halt_tau_0.5'."""
    return metric_name(HALT_TAU, tau=tau)


def _pattern(template: str) -> str:
    parts = re.split(r"\{(\w+)\}", template)
    return "".join(_FIELDS[p] if i % 2 else re.escape(p) for i, p in enumerate(parts))


_NUMBERED = re.compile("|".join(_pattern(t) for t in NUMBERED))
FIXED = (*TRAIN_METRICS, *EVAL_METRICS, *TRAJECTORY_METRICS,
         INFERENCE_FLOPS, EVAL_SECONDS, *ARC_COUNTS)  # fmt: skip
"""Every fixed name a run or a test-time evaluation reports."""


def known_metric(metric: Any) -> bool:
    """Whether runs report a metric called `metric` (a fixed name or a filled-in template)."""
    return isinstance(metric, str) and (metric in FIXED or bool(_NUMBERED.fullmatch(metric)))


def check_metric(metric: Any, prefix: str = "") -> str:
    """'' when `metric` is a reported metric starting with `prefix`, else why not (a sentence
    naming it and listing the names that are)."""
    if known_metric(metric) and metric.startswith(prefix):
        return ""
    names = [m for m in (*FIXED, *NUMBERED) if m.startswith(prefix)]
    return f"{metric!r} is not a metric runs report; use one of {', '.join(dict.fromkeys(names))}"
