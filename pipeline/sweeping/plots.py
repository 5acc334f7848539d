"""The sweep's plots (figures of `pipeline.sweeping.rows.TrialRow`s): exact accuracy vs
effective depth (every seed's point, jittered, and the mean per depth), vs compute (with the
Pareto front), the test-time depth curves and the halting-threshold curves of the best trials.
"""

from __future__ import annotations

import itertools
from typing import Any

from pipeline.sweeping.findings import seed_groups

TOP_CURVES = 3
TOP_HALT = 6


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _depth_axis(ax: Any, depths: list[int]) -> None:
    """Integer depth ticks: the depths themselves when few, else integer-only locator."""
    from matplotlib.ticker import MaxNLocator, ScalarFormatter

    if len(depths) > 1 and depths[-1] / max(depths[0], 1) >= 16:
        ax.set_xscale("log", base=2)
    ax.xaxis.set_major_formatter(ScalarFormatter())
    if 0 < len(depths) <= 12:
        ax.set_xticks(depths)
        ax.xaxis.set_minor_locator(MaxNLocator(integer=True, nbins=1))
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _layer_groups(rows: list[Any]) -> dict[Any, list[Any]]:
    """Rows by L_layers when the sweep varies it (depth from layers and from recursion are not
    the same thing), else one group."""
    layers = {r.params.get("model.L_layers") for r in rows}
    if len(layers) > 1 and None not in layers:
        return {v: [r for r in rows if r.params["model.L_layers"] == v] for v in sorted(layers)}
    return {None: rows}


def depth_figure(rows: list[Any]):
    """Every trial's best exact accuracy (x: stopped early), seeds of one grid point spread
    a little sideways so they stay visible, and the mean over seeds of the best grid point
    per depth (line)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    done = [r for r in rows if r.exact is not None]
    depths = sorted({r.depth for r in done})
    width = 0.25 * min((b - a for a, b in itertools.pairwise(depths)), default=1)
    for i, (layers, members) in enumerate(_layer_groups(done).items()):
        name, colour = f"L_layers={layers}" if layers is not None else "trials", f"C{i}"
        groups = seed_groups(members)
        points: dict[str, tuple[list[float], list[float]]] = {"o": ([], []), "x": ([], [])}
        for g in groups:
            n = len(g.rows)
            for j, r in enumerate(g.rows):
                xs, ys = points["x" if r.stop_reason != "completed" else "o"]
                xs.append(r.depth + (width * (j - (n - 1) / 2) / max(n - 1, 1) if n > 1 else 0))
                ys.append(r.exact)
        for marker, (xs, ys) in points.items():  # one collection per marker, not per trial
            if xs:
                ax.scatter(xs, ys, c=colour, s=18, alpha=0.7, marker=marker)
        here = sorted({g.depth for g in groups})
        means = [max(g.mean("exact") for g in groups if g.depth == d) for d in here]
        ax.plot(here, means, c=colour, lw=1.5, marker="_", ms=14, label=f"{name}: mean over seeds")
    _depth_axis(ax, depths)
    ax.set_xlabel("effective depth = H_cycles x (L_cycles + 1) x L_layers")
    ax.set_ylabel("best eval exact accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title("Exact accuracy vs effective depth (points: seeds; x: stopped early)")
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


def compute_figure(rows: list[Any]):
    done = [r for r in rows if r.exact is not None and r.flops > 0]
    return pareto_figure(
        [r.flops for r in done], [r.exact for r in done], [r.depth for r in done],
        color_label="effective depth", xlabel="model training FLOPs spent",
        ylabel="best eval exact accuracy", title="Exact accuracy vs compute",
    )  # fmt: skip


def pareto_figure(xs: list[float], ys: list[float], colors: list[float], *, color_label: str,
                  xlabel: str, ylabel: str, title: str):  # fmt: skip
    """Exact accuracy (`ys`) vs FLOPs (`xs`, log scale), points coloured by `colors`, with the
    Pareto front of the points (most accuracy for the least compute)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    if xs:
        sc = ax.scatter(xs, ys, c=colors, cmap="viridis")
        fig.colorbar(sc, ax=ax, label=color_label)
        front = pareto_front(list(zip(xs, ys)))
        ax.step([x for x, _ in front], [y for _, y in front], where="post", c="red", lw=1.2,
                label="Pareto front")  # fmt: skip
        ax.set_xscale("log")
        ax.legend(fontsize=8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(title)
    fig.tight_layout()
    return fig


def curves_figure(rows: list[Any]):
    plt = pyplot()
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for r in rows:
        if r.curve:
            ax.plot(range(1, len(r.curve) + 1), r.curve, marker="o", ms=3,
                    label=f"{r.name or r.trial_id} (depth {r.depth})")  # fmt: skip
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


def halt_figure(rows: list[Any]):
    """Exact accuracy vs mean test-time ACT steps as the halting threshold tau varies (last
    evaluation), one curve per trial (the TOP_HALT best given), each point labelled by tau."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for r in rows[:TOP_HALT]:
        if r.halt:
            xs = [p["steps"] for p in r.halt]
            ys = [p["exact_accuracy"] for p in r.halt]
            (line,) = ax.plot(xs, ys, marker="o", ms=3, label=f"{r.name or r.trial_id}")
            for p in r.halt:
                ax.annotate(
                    f"{p['tau']:g}",
                    (p["steps"], p["exact_accuracy"]),
                    xytext=(2, 2),
                    textcoords="offset points",
                    fontsize=6,
                    color=line.get_color(),
                )
    ax.set_xlabel("mean ACT steps at test time (halting rule at threshold tau)")
    ax.set_ylabel("exact accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title("Halting threshold curves (labels: tau; last evaluation)")
    if any(r.halt for r in rows[:TOP_HALT]):
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig
