"""Evaluation on the test split: accuracies, the test-time depth curve, pictures.

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
ARC pass@K comes from the same rollout: `keep_predictions=True` keeps per example what
pipeline/arc_vote.py votes with.
"""

from __future__ import annotations

import dataclasses
import math
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from pipeline.config import RunConfig
from pipeline.tracking import NullTracker

IGNORE = -100


@dataclass
class EvalSums:
    """Per-rank sums; `finish` turns the all-rank sums into metrics."""

    sums: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    depth: list[float] = field(default_factory=list)
    """Exactly-correct examples after each ACT step 1..K."""
    pictures: list[dict[str, np.ndarray]] = field(default_factory=list)
    predictions: list[dict[str, Any]] = field(default_factory=list)
    """With keep_predictions, per example: puzzle_identifier, inputs, labels, pred (tokens at
    step halt_max_steps) and q_halt (its logit); pipeline/arc_vote.py votes with them."""

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


# ---- pictures -------------------------------------------------------------------------------
def _side(seq_len: int) -> tuple[int, int]:
    s = math.isqrt(seq_len)
    return (s, s) if s * s == seq_len else (1, seq_len)


def refinement_figure(pictures: list[dict[str, np.ndarray]], task: str, max_columns: int = 8):
    """Rows = test puzzles; columns = input, the prediction after ACT steps (evenly chosen up
    to `max_columns`), target. Wrong cells are outlined in red."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    K = len(pictures[0]["preds"])
    steps = sorted({round(x) for x in np.linspace(0, K - 1, min(K, max_columns))})
    cols = ["input"] + [f"step {s + 1}" for s in steps] + ["target"]
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
                for (i, j), v in np.ndenumerate(grid):
                    if v >= 2:  # tokens: 0 pad, 1 blank, 2.. digits 1..
                        ax.text(j, i, str(v - 1), ha="center", va="center", fontsize=7)
            if 0 < c < len(grids) - 1:
                wrong = (grid != labels) & (labels != IGNORE)
                for i, j in zip(*np.nonzero(wrong)):
                    ax.add_patch(
                        Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="red", lw=1.2)
                    )
                ax.set_xlabel(f"{int(wrong.sum())} wrong", fontsize=7)
    fig.tight_layout()
    return fig


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


# ---- evaluation during training -----------------------------------------------------------
class Evaluator:
    """The periodic evaluation of a training run: each rank evaluates its share of the test
    split, the sums are added across ranks (every rank calls `__call__` at the same steps),
    and rank 0 prints a line and logs the metrics, the depth curve and pictures to `tracker`.

    `cfg` is the run config (`data`, `eval`, `schedule` sections), `meta` the dataset's
    metadata, `halt_max_steps` the model's ACT step limit.
    """

    def __init__(self, cfg: RunConfig, meta: Any, halt_max_steps: int, *, rank: int,
                 world: int, device: torch.device, tracker: NullTracker,
                 say: Callable[[str], None], name: str):  # fmt: skip
        self.cfg, self.meta, self.halt_max_steps = cfg, meta, halt_max_steps
        self.rank, self.world, self.device = rank, world, device
        self.tracker, self.say, self.name = tracker, say, name
        self.depth_steps = max(cfg.depth_steps, halt_max_steps)
        self.voting = None
        if meta.task == "arc":
            from pipeline.arc_vote import ArcVoting

            self.voting = ArcVoting(
                cfg.data.uri, meta, pass_ks=cfg.eval.pass_ks, max_variants=cfg.eval.arc_variants,
                aggregate=cfg.eval.arc_aggregate,
            )  # fmt: skip
            if rank == 0:
                say(f"[{name}] {self.voting.summary}")

    def __call__(self, model: torch.nn.Module, step: int) -> dict[str, float]:
        """Evaluate `model` (the EMA weights when the run keeps them) at training `step`;
        returns the `eval/*` metrics over all ranks."""
        from pipeline import distributed
        from pipeline.data.stream import ShardStream

        cfg, world = self.cfg, self.world
        stream = ShardStream(
            cfg.data.uri, "test", batch_size=cfg.data.eval_batch_size or cfg.per_worker_batch,
            rank=self.rank, world_size=world, seed=cfg.data.seed, shuffle=False, augment=False,
            epoch=0, drop_last=False, meta=self.meta,
        )  # fmt: skip
        per_rank_max = math.ceil(cfg.eval.max_examples / world) if cfg.eval.max_examples else 0
        voting, eval_bs = self.voting, cfg.data.eval_batch_size or cfg.per_worker_batch
        res = evaluate(
            model, voting.rows(stream, eval_bs) if voting else stream, device=self.device,
            halt_max_steps=self.halt_max_steps, depth_steps=self.depth_steps,
            max_examples=per_rank_max, num_pictures=cfg.eval.num_pictures if self.rank == 0 else 0,
            keep_predictions=voting is not None,
        )  # fmt: skip
        sums = distributed.sum_across_ranks(res.flat(), self.device)
        metrics, curve = finish(sums, self.halt_max_steps)
        if voting is not None:  # pass@K from the same rollout's predictions
            metrics.update(voting.metrics(res.predictions, self.device))
        if self.rank == 0:
            self._log(metrics, curve, res.pictures, step)
        return metrics

    def _log(
        self, metrics: dict[str, float], curve: list[float], pictures: list, step: int
    ) -> None:
        shown = " ".join(f"{k}:{v:.2f}" for k, v in enumerate(curve, 1) if _show(k, len(curve)))
        self.say(
            f"[{self.name}] eval step {step}: exact {metrics['eval/exact_accuracy']:.4f} "
            f"token {metrics['eval/accuracy']:.4f} q_halt {metrics['eval/q_halt_accuracy']:.3f}"
            f" steps {metrics['eval/steps']:.2f} (n={int(metrics['eval/count'])}) | depth {shown}"
        )
        tracker, tag = self.tracker, f"step_{step:08d}"
        tracker.log_metrics(metrics, step)
        tracker.log_dict(
            {"step": step, "halt_max_steps": self.halt_max_steps, "exact_accuracy": curve},
            f"depth_curve/{tag}.json",
        )
        _log_figure(tracker, depth_curve_figure(curve, self.halt_max_steps, step),
                    f"depth_curve/{tag}.png")  # fmt: skip
        if pictures:
            _log_figure(tracker, refinement_figure(pictures, self.meta.task),
                        f"refinement/{tag}.png")  # fmt: skip
        if step == self.cfg.schedule.steps:
            tracker.log_series("depth_curve/exact_accuracy", curve)


def _show(k: int, n: int) -> bool:
    """Whether the console line shows depth-curve step k of n (all of a short curve)."""
    return n <= 12 or k in (1, 2, 4, 8, 16, 32, 64, n) or k % 16 == 0


def _log_figure(tracker: NullTracker, fig: Any, path: str) -> None:
    import matplotlib.pyplot as plt

    try:
        tracker.log_figure(fig, path)
    finally:
        plt.close(fig)
