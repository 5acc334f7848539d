"""Evaluation on the test split: accuracies, the test-time depth curve, pictures, ARC voting.

One `model.rollout(..., num_steps=K)` per batch gives the logits after every ACT step 1..K,
K = max(halt_max_steps, depth_steps). The headline metrics are those of step halt_max_steps
(the official eval: every example runs exactly halt_max_steps steps); the depth curve is the
exact accuracy after each step 1..K, so K > halt_max_steps shows what extra test-time
recursion does. Sums are returned per rank; the caller adds them across ranks.

Metric names (all fractions of evaluated examples unless said otherwise):
  eval/exact_accuracy   every scored token right, at step halt_max_steps
  eval/accuracy         token accuracy (mean over examples of the fraction of right tokens)
  eval/q_halt_accuracy  (q_halt_logit >= 0) agrees with exact correctness, at halt_max_steps
  eval/steps            mean ACT steps the model would take: first step with q_halt >= 0
                        (halt_max_steps if none) — what ACT halting would use at test time
  eval/exact_accuracy_at_halt   exact accuracy of the prediction at that first q_halt step
  eval/exact_accuracy_at_{K}    exact accuracy after the deepest rollout step K
  eval/count            examples evaluated (not a fraction)
  eval/arc_pass@{k}     ARC only: official voting over augmented variants, un-augmented first;
                        mean over tasks of the fraction of test inputs solved within k attempts
  eval/arc_tasks        ARC only: tasks scored
"""

from __future__ import annotations

import dataclasses
import math
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

IGNORE = -100


@dataclass
class EvalSums:
    """Per-rank sums; `finish` turns the all-rank sums into metrics."""

    sums: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    depth: list[float] = field(default_factory=list)
    """Exactly-correct examples after each ACT step 1..K."""
    pictures: list[dict[str, np.ndarray]] = field(default_factory=list)
    predictions: list[dict[str, Any]] = field(default_factory=list)
    """ARC: per example the puzzle id, predicted tokens and q_halt logit (for voting)."""

    def flat(self) -> dict[str, float]:
        out = dict(self.sums)
        out.update({f"depth_{k + 1}": v for k, v in enumerate(self.depth)})
        return out


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    batches: Iterable[dict[str, np.ndarray]],
    *,
    device: torch.device,
    halt_max_steps: int,
    depth_steps: int,
    max_examples: int = 0,
    num_pictures: int = 0,
    keep_predictions: bool = False,
) -> EvalSums:
    """Roll `model` (in eval mode) over `batches` and sum the metrics of this rank's share."""
    K = max(halt_max_steps, depth_steps)
    res = EvalSums(depth=[0.0] * K)
    was_training = model.training
    model.eval()
    # An eval-mode carry halts (and the next step restarts the example) at halt_max_steps;
    # for the depth curve the recursion must go on, so roll out with the limit at K. In eval
    # mode halting ignores q, so steps 1..halt_max_steps are unchanged.
    config = model.config
    model.config = dataclasses.replace(config, halt_max_steps=K)
    seen = 0
    try:
        for batch in batches:
            if max_examples and seen >= max_examples:
                break
            # rows with no scored token are padding of the last batch: not examples
            keep = np.nonzero((np.asarray(batch["labels"]) != IGNORE).any(-1))[0]
            if max_examples:
                keep = keep[: max_examples - seen]
            take = len(keep)
            if take == 0:
                continue
            inputs = torch.as_tensor(np.asarray(batch["inputs"])[keep], device=device).long()
            labels = torch.as_tensor(np.asarray(batch["labels"])[keep], device=device).long()
            pids = torch.as_tensor(
                np.asarray(batch["puzzle_identifiers"])[keep], device=device
            ).long()
            seen += take
            out = model.rollout(inputs, pids, num_steps=K)
            preds_KBL = out.logits.argmax(-1)
            q_KB = out.q_halt_logits.float()
            valid_BL = labels != IGNORE
            n_valid_B = valid_BL.sum(-1)
            correct_KBL = (preds_KBL == labels) & valid_BL
            exact_KB = correct_KBL.sum(-1) == n_valid_B
            h = halt_max_steps - 1
            res.sums["count"] += take
            res.sums["exact_accuracy"] += exact_KB[h].sum().item()
            res.sums["accuracy"] += (correct_KBL[h].sum(-1) / n_valid_B.clamp_min(1)).sum().item()
            res.sums["q_halt_accuracy"] += ((q_KB[h] >= 0) == exact_KB[h]).sum().item()
            # first step (within halt_max_steps) whose q_halt says "done"
            wants_halt_KB = q_KB[:halt_max_steps] >= 0
            wants_halt_KB[h] = True
            first_B = wants_halt_KB.float().argmax(0)
            res.sums["steps"] += (first_B + 1).sum().item()
            res.sums["exact_accuracy_at_halt"] += (
                exact_KB[:halt_max_steps].gather(0, first_B.unsqueeze(0)).sum().item()
            )
            for k in range(K):
                res.depth[k] += exact_KB[k].sum().item()
            if len(res.pictures) < num_pictures:
                n = min(num_pictures - len(res.pictures), take)
                for i in range(n):
                    res.pictures.append(
                        {
                            "inputs": inputs[i].cpu().numpy(),
                            "labels": labels[i].cpu().numpy(),
                            "preds": preds_KBL[:, i].cpu().numpy(),
                        }
                    )
            if keep_predictions:
                preds = preds_KBL[h].cpu().numpy().astype(np.int8)
                for i in range(take):
                    res.predictions.append(
                        {
                            "puzzle_identifier": int(pids[i]),
                            "inputs": inputs[i].cpu().numpy().astype(np.int8),
                            "labels": labels[i].cpu().numpy().astype(np.int16),
                            "pred": preds[i],
                            "q_halt": float(q_KB[h, i]),
                        }
                    )
    finally:
        model.config = config
        model.train(was_training)
    return res


def finish(sums: dict[str, float], halt_max_steps: int) -> tuple[dict[str, float], list[float]]:
    """All-rank sums -> (eval/* metrics, depth curve)."""
    n = max(sums.get("count", 0.0), 1.0)
    depth_keys = sorted(
        (k for k in sums if k.startswith("depth_")), key=lambda k: int(k.split("_")[1])
    )
    curve = [sums[k] / n for k in depth_keys]
    metrics = {
        "eval/count": sums.get("count", 0.0),
        "eval/exact_accuracy": sums.get("exact_accuracy", 0.0) / n,
        "eval/accuracy": sums.get("accuracy", 0.0) / n,
        "eval/q_halt_accuracy": sums.get("q_halt_accuracy", 0.0) / n,
        "eval/steps": sums.get("steps", 0.0) / n,
        "eval/exact_accuracy_at_halt": sums.get("exact_accuracy_at_halt", 0.0) / n,
    }
    if curve:
        metrics[f"eval/exact_accuracy_at_{len(curve)}"] = curve[-1]
    return metrics, curve


# ---- ARC voting -------------------------------------------------------------------------------
def _variant_of(name: str) -> tuple[str, int, np.ndarray]:
    """'<task>|||t<tid>|||<colour map digits>' (official names) -> (task, tid, cmap)."""
    parts = name.split("|||")
    if len(parts) == 1:
        return parts[0], 0, np.arange(10, dtype=np.uint8)
    return parts[0], int(parts[1][1:]), np.array([int(c) for c in parts[2]], dtype=np.uint8)


@torch.no_grad()
def arc_records(
    model: torch.nn.Module,
    batches: Iterable[dict[str, np.ndarray]],
    *,
    device: torch.device,
    meta: Any,
    identifiers: list[str] | None = None,
    num_variants: int = 16,
    max_examples: int = 0,
) -> list[dict[str, Any]]:
    """Predictions on ARC test inputs, mapped back to each task's original frame, for voting.

    On-the-fly datasets (ids 1 + task * (num_aug + 1) + k): every test input is evaluated under
    variants k = 0..num_variants-1 (its own augmentation and puzzle id each). Materialised
    datasets (the official layout) already hold every variant as a row; `identifiers` are the
    names from identifiers.json. One record per prediction: task, original input and label
    grids and the un-augmented predicted grid (as bytes keys), and its q_halt logit.
    """
    from trm.puzzles import arc

    on_the_fly = meta.augmentation.get("mode") == "on_the_fly"
    if not on_the_fly and identifiers is None:
        raise ValueError("a materialised ARC dataset needs its identifiers.json names")
    was_training = model.training
    model.eval()
    out: list[dict[str, Any]] = []
    seen = 0
    try:
        for batch in batches:
            rows = []  # (task, tid, cmap, pid, input tokens, input key, label key)
            for x, y, pid in zip(batch["inputs"], batch["labels"], batch["puzzle_identifiers"]):
                if max_examples and seen >= max_examples:
                    break
                y = np.where(y == IGNORE, 0, y)
                if not (y >= 2).any():
                    continue  # padding row
                seen += 1
                if on_the_fly:
                    num_aug = meta.augmentation["num_aug"]
                    base, _ = arc.split_identifier(int(pid), num_aug)
                    task = meta.extra["tasks"][int(base)]
                    grid_in, grid_out = arc.decode(x), arc.decode(y)
                    for k in range(min(num_variants, num_aug + 1)):
                        tid, cmap = arc.variant(base, k, meta.augmentation["aug_seed"])
                        tokens = arc.encode(arc.apply(grid_in, tid, cmap))
                        rows.append((task, int(tid), cmap, int(arc.identifier(base, k, num_aug)),
                                     tokens, _grid_key(grid_in), _grid_key(grid_out)))  # fmt: skip
                else:
                    task, tid, cmap = _variant_of(identifiers[int(pid)])
                    grid_in = arc.inverse(arc.decode(x), tid, cmap)
                    grid_out = arc.inverse(arc.decode(y), tid, cmap)
                    rows.append((task, tid, cmap, int(pid), np.asarray(x), _grid_key(grid_in),
                                 _grid_key(grid_out)))  # fmt: skip
            if not rows:
                continue
            inputs = torch.as_tensor(np.stack([r[4] for r in rows]), device=device).long()
            pids = torch.as_tensor([r[3] for r in rows], device=device).long()
            res = model.rollout(inputs, pids)
            preds = res.logits[-1].argmax(-1).cpu().numpy()
            q = res.q_halt_logits[-1].float().cpu().numpy()
            for r, pred, qv in zip(rows, preds, q):
                grid = arc.inverse(arc.crop(pred), r[1], r[2])
                out.append({"task": r[0], "input": r[5], "label": r[6], "pred": _grid_key(grid),
                            "q": float(qv)})  # fmt: skip
            if max_examples and seen >= max_examples:
                break
    finally:
        model.train(was_training)
    return out


def arc_pass_at_k(records: list[dict[str, Any]], ks: list[int]) -> dict[str, float]:
    """Official ARC scoring: per (task, test input) the distinct predicted grids are ranked by
    (votes, mean sigmoid(q_halt)); a test input is solved at k if its label is among the top k;
    a task scores the fraction of its test inputs solved; pass@k is the mean over tasks."""
    votes: dict[tuple[str, bytes], dict[bytes, list[float]]] = defaultdict(dict)
    answers: dict[tuple[str, bytes], bytes] = {}
    for r in records:
        key = (r["task"], r["input"])
        answers[key] = r["label"]
        entry = votes[key].setdefault(r["pred"], [0.0, 0.0])
        entry[0] += 1
        entry[1] += 1 / (1 + math.exp(-r["q"]))
    per_task: dict[str, list[dict[int, bool]]] = defaultdict(list)
    for key, cands in votes.items():
        ranked = sorted(cands.items(), key=lambda kv: (kv[1][0], kv[1][1] / kv[1][0]), reverse=True)
        top = [g for g, _ in ranked]
        per_task[key[0]].append({k: answers[key] in top[:k] for k in ks})
    out = {}
    for k in ks:
        scores = [float(np.mean([s[k] for s in inputs])) for inputs in per_task.values()]
        out[f"eval/arc_pass@{k}"] = float(np.mean(scores)) if scores else 0.0
    out["eval/arc_tasks"] = float(len(per_task))
    return out


def _grid_key(grid: np.ndarray) -> bytes:
    g = np.asarray(grid, dtype=np.int16)
    return np.asarray(g.shape, dtype=np.int16).tobytes() + g.tobytes()


# ---- pictures -------------------------------------------------------------------------------
def _side(seq_len: int) -> tuple[int, int]:
    s = math.isqrt(seq_len)
    return (s, s) if s * s == seq_len else (1, seq_len)


def refinement_figure(
    pictures: list[dict[str, np.ndarray]], task: str, max_columns: int = 8, step: int | None = None
):
    """Rows = test puzzles; columns = input, the prediction after ACT steps (evenly chosen up
    to `max_columns`), target. Wrong cells are outlined in red; Sudoku's given cells are bold
    digits on a grey dot; a caption explains both and names the training `step`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

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
        grids += [np.where(labels == IGNORE, 0, labels)]
        for c, grid in enumerate(grids):
            ax = axes[r][c]
            ax.imshow(grid, cmap="tab20", vmin=0, vmax=max(vmax, 19), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(cols[c], fontsize=9)
            if task == "sudoku" and H <= 16:
                given = grids[0] >= 2  # tokens: 0 pad, 1 blank, 2.. digits 1..
                for (i, j), v in np.ndenumerate(grid):
                    if given[i, j]:
                        ax.plot(j, i, "o", ms=9, color="lightgrey", zorder=1)
                    if v >= 2:
                        ax.text(j, i, str(v - 1), ha="center", va="center", fontsize=7,
                                fontweight="bold" if given[i, j] else "normal", zorder=2)  # fmt: skip
            if 0 < c < len(grids) - 1:
                wrong = (grid != labels) & (labels != IGNORE)
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
    if task == "sudoku":
        legend += "; bold digit on a grey dot = given in the puzzle"
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
