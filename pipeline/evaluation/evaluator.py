"""Evaluation on the test split: accuracies, halting, the test-time depth and halting curves,
pictures (drawn by `pipeline.evaluation.figures`).

One `model.rollout_preds(..., num_steps=K)` per batch gives each example's answer tokens and q
logits after every ACT step 1..K, K = max(halt_max_steps, depth_steps) (= halt_max_steps by
default: the official evaluation's cost; only [K, B, L] answers and [K, B] q logits are kept,
not logits). Every metric below is read off that one rollout. The headline metrics are those
of step halt_max_steps (the official eval: every example runs exactly halt_max_steps steps);
the depth curve is the exact accuracy after each step 1..K, so K > halt_max_steps (opt-in)
shows what extra test-time recursion does. Halting uses `trm.model.should_halt`, the one rule
the model halts by, at `model.halt_threshold` (tau): the at-halt metrics are exactly what
`TRM.predict(halt=True)` returns. Sums are returned per rank; the caller adds them across ranks.
No example halts early here: the headline answer is the fixed-depth one at D = halt_max_steps,
which the test-time evaluation (pipeline/evaluation/trajectories.py, protocol fixed_depth,
one trajectory, no noise) reproduces exactly.

Metric names (all fractions of evaluated examples unless said otherwise):
  eval/exact_accuracy   every scored token right, at step halt_max_steps
  eval/accuracy         token accuracy (mean over examples of the fraction of right tokens)
  eval/q_halt_accuracy  the halting decision (should_halt at tau) agrees with exact
                        correctness, at step halt_max_steps
  eval/steps            mean ACT steps with test-time halting: the first step where
                        should_halt says stop at tau (halt_max_steps if none)
  eval/exact_accuracy_at_halt   exact accuracy of the answer at that step
  eval/halt_tau_<tau>/steps, eval/halt_tau_<tau>/exact_accuracy
                        the same two at each tau of eval.halt_thresholds (tau printed as
                        `f"{tau:g}"`, e.g. 0.5): the test-time compute vs accuracy curve
  eval/exact_accuracy_at_{K}    exact accuracy after the deepest rollout step K
  eval/flops_per_example        model FLOPs spent per example (steps run x trm.flops
                        inference step), not a fraction
  eval/count            examples evaluated (not a fraction)
ARC pass@K comes from the same rollout: `keep_predictions=True` keeps per example what
pipeline/evaluation/arc_vote.py votes with.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from pipeline.config.metric_names import (
    EVAL_SECONDS,
    EXACT_ACCURACY_AT,
    metric_name,
    tau_name,
)
from pipeline.config.run import RunConfig
from pipeline.evaluation.figures import depth_curve_figure, halt_curve_figure, refinement_figure
from pipeline.tasks import task_of
from pipeline.tracking.tracker import NullTracker, depth_curve_metrics

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
    step halt_max_steps) and q_halt (its logit); pipeline/evaluation/arc_vote.py votes with them."""

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
    halt_thresholds: Sequence[float] = (),
    max_examples: int = 0,
    num_pictures: int = 0,
    keep_predictions: bool = False,
) -> EvalSums:
    """Roll `model` over `batches` and sum the metrics of this rank's share (any mode: the
    rollout has no dropout or halting that depends on it)."""
    from trm.flops import inference_flops

    K = max(halt_max_steps, depth_steps)
    res = EvalSums(depth=[0.0] * K)
    flops_per_example = inference_flops(model.config, K)
    seen = 0
    for batch in batches:
        if max_examples and seen >= max_examples:
            break
        # rows with no scored token are padding of the last batch: not examples
        keep = np.nonzero((np.asarray(batch["labels"]) != IGNORE).any(-1))[0]
        if max_examples:
            keep = keep[: max_examples - seen]
        if len(keep) == 0:
            continue
        inputs, labels, pids = (
            torch.as_tensor(np.asarray(batch[k])[keep], device=device).long()
            for k in ("inputs", "labels", "puzzle_identifiers")
        )
        seen += len(keep)
        out = model.rollout_preds(inputs, pids, num_steps=K)
        exact_KB = _score(res, out, labels, model.config, halt_max_steps, halt_thresholds)
        res.sums["flops"] += len(keep) * flops_per_example
        for k in range(K):
            res.depth[k] += exact_KB[k].sum().item()
        _keep_examples(res, out, inputs, labels, pids, num_pictures, keep_predictions,
                       halt_max_steps)  # fmt: skip
    return res


def _score(
    res: EvalSums,
    out: Any,
    labels: torch.Tensor,
    config: Any,
    halt_max_steps: int,
    halt_thresholds: Sequence[float],
) -> torch.Tensor:
    """Add one batch's metric sums to `res`; returns exact correctness after each step [K, B]."""
    from trm.model import should_halt

    valid_BL = labels != IGNORE
    n_valid_B = valid_BL.sum(-1)
    correct_KBL = (out.preds == labels) & valid_BL
    exact_KB = correct_KBL.sum(-1) == n_valid_B
    h = halt_max_steps - 1
    tau = config.halt_threshold
    q_halt_HB = out.q_halt_logits[:halt_max_steps].float()
    q_cont_HB = out.q_continue_logits[:halt_max_steps].float()
    res.sums["count"] += labels.shape[0]
    res.sums["exact_accuracy"] += exact_KB[h].sum().item()
    res.sums["accuracy"] += (correct_KBL[h].sum(-1) / n_valid_B.clamp_min(1)).sum().item()
    says_halt_B = should_halt(
        q_halt_HB[h], q_cont_HB[h], no_ACT_continue=config.no_ACT_continue, threshold=tau
    )
    res.sums["q_halt_accuracy"] += (says_halt_B == exact_KB[h]).sum().item()
    for t in sorted({tau, *halt_thresholds}):
        # the first step (within halt_max_steps) where the halting rule at t says stop
        halts_HB = should_halt(q_halt_HB, q_cont_HB, no_ACT_continue=config.no_ACT_continue,
                               threshold=t)  # fmt: skip
        halts_HB[h] = True
        first_B = halts_HB.int().argmax(0)
        steps = (first_B + 1).sum().item()
        exact = exact_KB[:halt_max_steps].gather(0, first_B.unsqueeze(0)).sum().item()
        if t == tau:
            res.sums["steps"] += steps
            res.sums["exact_accuracy_at_halt"] += exact
        if t in halt_thresholds:
            res.sums[f"{tau_name(t)}/steps"] += steps
            res.sums[f"{tau_name(t)}/exact_accuracy"] += exact
    return exact_KB


def _keep_examples(
    res: EvalSums,
    out: Any,
    inputs: torch.Tensor,
    labels: torch.Tensor,
    pids: torch.Tensor,
    num_pictures: int,
    keep_predictions: bool,
    halt_max_steps: int,
) -> None:
    """Pictures (answers at every step) and, for ARC voting, the final-step predictions."""
    take = inputs.shape[0]
    n = min(num_pictures - len(res.pictures), take)
    for i in range(max(n, 0)):
        res.pictures.append(
            {
                "inputs": inputs[i].cpu().numpy(),
                "labels": labels[i].cpu().numpy(),
                "preds": out.preds[:, i].cpu().numpy(),
            }
        )
    if not keep_predictions:
        return
    h = halt_max_steps - 1
    preds = out.preds[h].cpu().numpy().astype(np.int8)
    q = out.q_halt_logits[h].float().cpu().numpy()
    for i in range(take):
        res.predictions.append(
            {
                "puzzle_identifier": int(pids[i]),
                "inputs": inputs[i].cpu().numpy().astype(np.int8),
                "labels": labels[i].cpu().numpy().astype(np.int16),
                "pred": preds[i],
                "q_halt": float(q[i]),
            }
        )


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
        "eval/flops_per_example": sums.get("flops", 0.0) / n,
    }
    metrics.update({f"eval/{k}": v / n for k, v in sums.items() if k.startswith("halt_tau_")})
    if curve:
        metrics[metric_name(EXACT_ACCURACY_AT, k=len(curve))] = curve[-1]
    return metrics, curve


def halt_curve(metrics: dict[str, float], halt_thresholds: Sequence[float]) -> list[dict]:
    """The test-time halting curve from `finish`'s metrics: per tau, mean steps and exact
    accuracy (ascending tau)."""
    return [
        {
            "tau": t,
            "steps": metrics[f"eval/{tau_name(t)}/steps"],
            "exact_accuracy": metrics[f"eval/{tau_name(t)}/exact_accuracy"],
        }
        for t in sorted(halt_thresholds)
    ]


# ---- evaluation during training -----------------------------------------------------------
class Evaluator:
    """The periodic evaluation of a training run: each rank evaluates its share of the test
    split, the sums are added across ranks (every rank calls `__call__` at the same steps),
    and rank 0 prints a line and logs the metrics, the depth curve and pictures to `tracker`.

    `cfg` is the run config (`data`, `eval`, `schedule` sections), `meta` the dataset's
    metadata, `halt_max_steps` the model's ACT step limit, `halt_threshold` its test-time
    halting threshold (marked on the halting-threshold plot).
    """

    def __init__(self, cfg: RunConfig, meta: Any, halt_max_steps: int, *, rank: int,
                 world: int, device: torch.device, tracker: NullTracker,
                 say: Callable[[str], None], name: str, halt_threshold: float = 0.5):  # fmt: skip
        self.cfg, self.meta, self.halt_max_steps = cfg, meta, halt_max_steps
        self.halt_threshold = halt_threshold
        self.rank, self.world, self.device = rank, world, device
        self.tracker, self.say, self.name = tracker, say, name
        self.depth_steps = max(cfg.depth_steps, halt_max_steps)
        self.voting = None
        self.split = "test"
        """The split evaluated (the evaluation command may choose another)."""
        self.last_curve: list[float] = []
        """The depth curve of the latest call (exact accuracy after each ACT step)."""
        if task_of(meta).votes:  # pass@K over the test-time variants
            from pipeline.evaluation.arc_vote import ArcVoting

            self.voting = ArcVoting(
                cfg.data.uri, meta, pass_ks=cfg.eval.pass_ks, max_variants=cfg.eval.arc_variants,
                aggregate=cfg.eval.arc_aggregate,
            )  # fmt: skip
            if rank == 0:
                say(f"[{name}] {self.voting.summary}")

    def __call__(self, model: torch.nn.Module, step: int) -> dict[str, float]:
        """Evaluate `model` (the EMA weights when the run keeps them) at training `step`;
        returns the `eval/*` metrics over all ranks."""
        from pipeline.data.stream import ShardStream
        from pipeline.training import distributed

        t_eval = time.perf_counter()
        cfg, world = self.cfg, self.world
        stream = ShardStream(
            cfg.data.uri, self.split, batch_size=cfg.data.eval_batch_size or cfg.per_worker_batch,
            rank=self.rank, world_size=world, seed=cfg.data.seed, shuffle=False, augment=False,
            epoch=0, drop_last=False, meta=self.meta,
        )  # fmt: skip
        per_rank_max = math.ceil(cfg.eval.max_examples / world) if cfg.eval.max_examples else 0
        voting, eval_bs = self.voting, cfg.data.eval_batch_size or cfg.per_worker_batch
        res = evaluate(
            model, voting.rows(stream, eval_bs) if voting else stream, device=self.device,
            halt_max_steps=self.halt_max_steps, depth_steps=self.depth_steps,
            halt_thresholds=cfg.eval.halt_thresholds, max_examples=per_rank_max, num_pictures=cfg.eval.num_pictures if self.rank == 0 else 0,
            keep_predictions=voting is not None,
        )  # fmt: skip
        sums = distributed.sum_across_ranks(res.flat(), self.device)
        metrics, curve = finish(sums, self.halt_max_steps)
        if voting is not None:  # pass@K from the same rollout's predictions
            metrics.update(voting.metrics(res.predictions, self.device))
        metrics[EVAL_SECONDS] = time.perf_counter() - t_eval
        self.last_curve = curve
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
        # figures are drawn on the tracker's sender thread, off the training loop
        hmax = self.halt_max_steps
        tracker.log_figure(lambda: depth_curve_figure(curve, hmax, step), f"depth_curve/{tag}.png")
        if self.cfg.eval.halt_thresholds:
            points = halt_curve(metrics, self.cfg.eval.halt_thresholds)
            tracker.log_dict({"step": step, "points": points}, f"halt_curve/{tag}.json")
            tau = self.halt_threshold
            tracker.log_figure(lambda: halt_curve_figure(points, tau, step),
                               f"halt_curve/{tag}.png")  # fmt: skip
        if pictures:
            task = self.meta.task
            tracker.log_figure(lambda: refinement_figure(pictures, task, step=step),
                               f"refinement/{tag}.png")  # fmt: skip
        # one metric per ACT depth over training steps: MLflow's step axis stays the training
        # step (an ACT-step axis zigzags when a run is extended)
        tracker.log_metrics(depth_curve_metrics(curve), step)


def _show(k: int, n: int) -> bool:
    """Whether the console line shows depth-curve step k of n (all of a short curve)."""
    return n <= 12 or k in (1, 2, 4, 8, 16, 32, 64, n) or k % 16 == 0
