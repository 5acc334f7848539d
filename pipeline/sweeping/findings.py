"""What a sweep found, from its trials' rows (`pipeline.sweeping.rows.TrialRow`): trials that
differ only by seed grouped per grid point (mean and spread of the best metric, steps to 95%
exact accuracy per seed), the halting-threshold curve of a trial's last evaluation, and one
plain sentence on the depth trend, computed from the numbers.

No Ray, no MLflow: the functions take rows and metric dicts, so they can be checked on
synthetic trials.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

SEED_KEY = "data.seed"
EXACT = "eval/exact_accuracy"
TARGET = 0.95
"""Exact accuracy whose first evaluation step the summary reports ('steps to 95%')."""
RECURSION_KEYS = {"model.H_cycles", "model.L_cycles"}
_HALT = re.compile(r"eval/halt_tau_([0-9.]+)/steps")


def steps_to(evals: list[tuple[int, float]], target: float = TARGET) -> int | None:
    """The first evaluation step whose exact accuracy is >= `target`; None if none is."""
    return next((int(s) for s, v in sorted(evals) if v >= target), None)


def halt_points(metrics: dict[str, Any]) -> list[dict[str, float]]:
    """The halting-threshold curve of one evaluation's metrics (`eval/halt_tau_<tau>/steps`
    and `.../exact_accuracy`): one point per tau, by tau."""
    points = []
    for key, steps in metrics.items():
        m = _HALT.fullmatch(key)
        acc = metrics.get(f"eval/halt_tau_{m.group(1)}/exact_accuracy") if m else None
        if m and acc is not None and steps == steps and acc == acc:  # not NaN
            points.append({"tau": float(m.group(1)), "steps": float(steps),
                           "exact_accuracy": float(acc)})  # fmt: skip
    return sorted(points, key=lambda p: p["tau"])


def best_tau(points: list[dict[str, float]]) -> dict[str, float] | None:
    """The point of highest exact accuracy, fewer test-time steps breaking ties."""
    return max(points, key=lambda p: (p["exact_accuracy"], -p["steps"])) if points else None


def halt_cell(points: list[dict[str, float]], tau: float = 0.5) -> str:
    """'steps/acc at tau=0.5; best tau' for the summary table, e.g. '1.4/0.62 best 0.7'."""
    if not points:
        return "-"
    at = next((p for p in points if abs(p["tau"] - tau) < 1e-9), None)
    best = best_tau(points)
    here = f"{at['steps']:.2g}/{at['exact_accuracy']:.2f}" if at else "-"
    return f"{here} best {best['tau']:g}"


@dataclass
class Group:
    """The trials of one grid point that differ only by seed."""

    params: dict[str, Any]
    """Swept values without the seed."""
    depth: int
    rows: list[Any] = field(default_factory=list)

    def values(self, attr: str) -> list[float]:
        return [getattr(r, attr) for r in self.rows if getattr(r, attr) is not None]

    def mean(self, attr: str) -> float | None:
        v = self.values(attr)
        return sum(v) / len(v) if v else None

    def spread(self, attr: str) -> float:
        v = self.values(attr)
        return max(v) - min(v) if v else 0.0

    def steps_to_target(self) -> float | None:
        """Mean steps to 95% over the seeds that reached it; None if none did."""
        v = [r.steps_to_95 for r in self.rows if r.steps_to_95 is not None]
        return sum(v) / len(v) if v else None


def seed_groups(rows: list[Any]) -> list[Group]:
    """Rows grouped by their swept values without `data.seed`, in the rows' order."""
    groups: dict[tuple, Group] = {}
    for r in rows:
        params = {k: v for k, v in r.params.items() if k != SEED_KEY}
        key = tuple((k, repr(v)) for k, v in sorted(params.items()))
        groups.setdefault(key, Group(params, r.depth)).rows.append(r)
    return list(groups.values())


def _layer_split(groups: list[Group]) -> tuple[Any, list[Group]]:
    """(L_layers, its groups) of the layer count whose groups span the most depths (the best
    mean exact accuracy breaking ties): depth from layers and from recursion differ."""
    layers: dict[Any, list[Group]] = {}
    for g in groups:
        layers.setdefault(g.params.get("model.L_layers"), []).append(g)
    return max(
        layers.items(),
        key=lambda kv: (len({g.depth for g in kv[1]}), max(g.mean("exact") for g in kv[1])),
    )


def _at_depth(members: list[Group], depth: int) -> Group:
    """The best grid point (mean exact accuracy over seeds) at `depth`."""
    return max((g for g in members if g.depth == depth), key=lambda g: g.mean("exact"))


def _steps_clause(shallow: Group, deep: Group) -> str:
    s, d = shallow.steps_to_target(), deep.steps_to_target()
    if s is None and d is None:
        return "; neither reached 95% exact accuracy"
    if s is None or d is None:
        g, at = (deep, d) if s is None else (shallow, s)
        return f"; only depth {g.depth} reached 95% (at step {at:.0f})"
    if d == s:
        return f"; both reached 95% at step {d:.0f}"
    return (f"; deeper recursion reached 95% in {'fewer' if d < s else 'more'} steps "
            f"({d:.0f} vs {s:.0f})")  # fmt: skip


def finding(groups: list[Group]) -> str:
    """One plain sentence on what the sweep found about depth, from the groups' numbers; says
    so when there is no depth to compare or the change is within the seeds' spread."""
    usable = [g for g in groups if g.mean("exact") is not None]
    if not usable:
        return "Finding: no trial reported an evaluation, so there is nothing to compare yet."
    layers, members = _layer_split(usable)
    depths = sorted({g.depth for g in members})
    if len(depths) < 2:
        top = max(usable, key=lambda g: g.mean("exact"))
        return (f"Finding: the sweep compares no effective depths; its best grid point "
                f"({_label(top.params)}) reached mean exact accuracy {top.mean('exact'):.2f} "
                f"over {len(top.values('exact'))} seed(s).")  # fmt: skip
    shallow, deep = _at_depth(members, depths[0]), _at_depth(members, depths[-1])
    a, b = shallow.mean("exact"), deep.mean("exact")
    noise = max(0.02, shallow.spread("exact"), deep.spread("exact"))
    varied = {k for g in members for k in g.params if g.params[k] != members[0].params.get(k)}
    if layers is None:
        where = "Across the sweep"
    elif varied <= RECURSION_KEYS:
        where = f"At equal parameters (L_layers={layers})"
    else:
        where = f"At L_layers={layers}"
    if abs(b - a) <= noise:
        trend = (f"exact accuracy showed no clear trend with depth ({a:.2f} at depth "
                 f"{shallow.depth} vs {b:.2f} at depth {deep.depth}, within the seeds' spread "
                 f"of {noise:.2f})")  # fmt: skip
    else:
        trend = (f"exact accuracy {'rose' if b > a else 'fell'} from {a:.2f} at depth "
                 f"{shallow.depth} to {b:.2f} at depth {deep.depth}")  # fmt: skip
    return f"Finding: {where}, {trend}{_steps_clause(shallow, deep)}."


def _label(params: dict[str, Any]) -> str:
    return ", ".join(f"{k.split('.')[-1]}={v}" for k, v in params.items()) or "the base"
