"""The evaluation's figures (matplotlib, logged as MLflow image artifacts): test puzzles drawn
at each ACT step, exact accuracy against ACT depth, and the test-time halting curve."""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

import numpy as np

from pipeline.tasks import get_task
from trm.losses import IGNORE_LABEL_ID


def _side(seq_len: int) -> tuple[int, int]:
    s = math.isqrt(seq_len)
    return (s, s) if s * s == seq_len else (1, seq_len)


def refinement_figure(
    pictures: list[dict[str, np.ndarray]], task: str, max_columns: int = 8, step: int | None = None
):
    """Rows = test puzzles; columns = input, the prediction after ACT steps (evenly chosen up
    to `max_columns`), target. Wrong cells are outlined in red; the family's `Picture` may mark
    more (Sudoku: digits, the given ones bold); a caption explains both and names the training
    `step`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    picture = get_task(task).picture
    K = len(pictures[0]["preds"])
    steps = sorted({round(x) for x in np.linspace(0, K - 1, min(K, max_columns))})
    cols = ["input"] + [f"ACT step {s + 1}" for s in steps] + ["target"]
    H, W = _side(len(pictures[0]["inputs"]))
    cell = 0.22 if H > 12 else 0.35
    fig, axes = plt.subplots(
        len(pictures),
        len(cols),
        figsize=(max(2.0, W * cell) * len(cols), max(2.0, H * cell) * len(pictures) + 0.4),
        squeeze=False,
    )
    vmax = int(max(p["labels"].max() for p in pictures))
    vmax = max(vmax, int(max(p["inputs"].max() for p in pictures)), 1)
    for r, pic in enumerate(pictures):
        labels = pic["labels"].reshape(H, W)
        grids = [pic["inputs"].reshape(H, W)]
        grids += [pic["preds"][s].reshape(H, W) for s in steps]
        grids += [np.where(labels == IGNORE_LABEL_ID, 0, labels)]
        for c, grid in enumerate(grids):
            ax = axes[r][c]
            ax.imshow(grid, cmap="tab20", vmin=0, vmax=max(vmax, 19), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(cols[c], fontsize=9)
            if picture.annotate is not None:
                picture.annotate(ax, grids[0], grid)
            if 0 < c < len(grids) - 1:
                wrong = (grid != labels) & (labels != IGNORE_LABEL_ID)
                for i, j in zip(*np.nonzero(wrong)):
                    ax.add_patch(
                        Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="red", lw=1.2)
                    )
                ax.set_xlabel(f"{int(wrong.sum())} wrong", fontsize=7)
    _refinement_caption(fig, task, step)
    return fig


def _refinement_caption(fig: Any, task: str, step: int | None) -> None:
    """Title (training step) and a legend line under the grid of pictures."""
    when = f" at training step {step}" if step is not None else ""
    fig.suptitle(f"Test puzzles as the model refines them{when}", fontsize=10)
    legend = ("columns: the puzzle, the model's answer after ACT step k, the solution\n"
              "colour = token value; red box = cell that differs from the solution")  # fmt: skip
    extra = get_task(task).picture.legend
    if extra:
        legend += "; " + extra
    fig.text(0.5, 0.005, legend, ha="center", va="bottom", fontsize=7)
    fig.tight_layout(rect=(0, 0.06, 1, 0.95))


def depth_curve_figure(curve: list[float], halt_max_steps: int, step: int):
    """Exact accuracy after each ACT step; the dashed line marks the training halt_max_steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2))
    ks = list(range(1, len(curve) + 1))
    ax.plot(ks, curve, marker="o", ms=3)
    ax.axvline(halt_max_steps, ls="--", c="grey", lw=1, label=f"halt_max_steps={halt_max_steps}")
    ax.set_xlabel("ACT steps at test time")
    ax.set_ylabel("exact accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(f"Depth curve at training step {step}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def halt_curve_figure(points: list[dict], halt_threshold: float, step: int):
    """Test-time ACT halting: exact accuracy vs mean ACT steps, one point per threshold tau
    (labelled); the model's own `halt_threshold` is marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2))
    xs = [p["steps"] for p in points]
    ys = [p["exact_accuracy"] for p in points]
    ax.plot(xs, ys, marker="o", ms=4)
    labels: dict[tuple[float, float], list[str]] = defaultdict(list)  # one label per point
    for p in points:
        mark = " (model)" if p["tau"] == halt_threshold else ""
        labels[(p["steps"], p["exact_accuracy"])].append(f"{p['tau']:g}{mark}")
    for xy, taus in labels.items():
        ax.annotate("tau=" + ", ".join(taus), xy, fontsize=7, textcoords="offset points",
                    xytext=(3, 3))  # fmt: skip
    ax.margins(x=0.25)  # room for the labels
    ax.set_xlabel("mean ACT steps at halt")
    ax.set_ylabel("exact accuracy at halt")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(f"Halting threshold curve at training step {step}")
    fig.tight_layout()
    return fig
