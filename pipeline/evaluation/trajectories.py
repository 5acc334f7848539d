"""Test-time compute evaluation (Probabilistic TRM, arXiv 2605.19943; not in the official
code): K trajectories per example under one protocol, then several answers read off the same
trajectories. Evaluate-mode sweeps (`pipeline.sweeping.eval_trial`) and
`pipeline/evaluate.py --set eval.KEY=VALUE` run it with the `eval` section's test-time fields.

Protocols (`eval.protocol`):
  fixed_depth   every trajectory runs exactly D = `eval.depth` supervision steps (0 = the
                model's halt_max_steps) and answers from its final state: the paper's
                protocol. With K=1 and no noise it is the training evaluation's answer at
                step D, so at D = halt_max_steps `eval/exact_accuracy` equals the training
                evaluation's exactly (that evaluation never halts early either).
  act           each trajectory stops at its own ACT halting step (`eval.halt_threshold`),
                at most `eval.max_steps`; Q values are then compared across different steps.

Metrics (fractions of examples unless said otherwise):
  eval/exact_accuracy, eval/accuracy   exact and token accuracy of the answer `eval.select`
                picks (what a sweep ranks by: one name for both protocols)
  eval/<protocol>/best_q_exact_accuracy   best-Q@K: the trajectory with the highest q_halt
                logit on its final state
  eval/<protocol>/mode_exact_accuracy     mode@K: the most frequent answer (ties: the highest
                q_halt among the tied answers' trajectories)
  eval/<protocol>/pass_at_k_exact_accuracy  pass@K (an oracle): any of the K trajectories right
  eval/steps    mean ACT steps one trajectory ran (= D under fixed_depth)
  eval/inference_flops_per_example   `trm.flops.inference_flops` at those steps x K
  eval/count    examples evaluated
<protocol> is `fixed_depth` or `act`, so a logged number says which protocol produced it.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch

from pipeline.config.metric_names import INFERENCE_FLOPS, RULES, rule_metric
from pipeline.config.run import RunConfig
from pipeline.config.sections import EvalConfig

IGNORE = -100


@torch.no_grad()
def evaluate_test_time(
    model: Any, cfg: RunConfig, device: torch.device, split: str = "test"
) -> dict[str, float]:
    """`cfg.eval`'s test-time setting over `split` of `cfg.data.uri`, batch by batch, in one
    process (the metrics of the module docstring)."""
    from pipeline.data.meta import cached_meta
    from pipeline.data.stream import ShardStream

    K = cfg.eval.trajectories
    # K copies of each example share a forward: keep the rows per call near the batch size
    rows = max(1, (cfg.data.eval_batch_size or cfg.per_worker_batch) // K)
    stream = ShardStream(
        cfg.data.uri, split, batch_size=rows, rank=0, world_size=1, seed=cfg.data.seed,
        shuffle=False, augment=False, epoch=0, drop_last=False, meta=cached_meta(cfg.data.uri),
    )  # fmt: skip
    return evaluate_trajectories(model, stream, cfg.eval, device)


@torch.no_grad()
def evaluate_trajectories(
    model: Any, batches: Iterable[dict[str, np.ndarray]], e: EvalConfig, device: torch.device
) -> dict[str, float]:
    """The metrics of setting `e` over `batches` (inputs, labels, puzzle_identifiers; rows
    without a scored token are padding and skipped), at most `e.max_examples` examples."""
    from trm.flops import inference_flops

    K = e.trajectories
    generator = torch.Generator(device=device).manual_seed(e.seed)
    sums: dict[str, float] = defaultdict(float)
    for batch in batches:
        take = e.max_examples - int(sums["count"]) if e.max_examples else None
        if take is not None and take <= 0:
            break
        keep = np.nonzero((np.asarray(batch["labels"]) != IGNORE).any(-1))[0][:take]
        if len(keep) == 0:
            continue
        inputs, labels, pids = (
            torch.as_tensor(np.asarray(batch[k])[keep], device=device).long()
            for k in ("inputs", "labels", "puzzle_identifiers")
        )
        runs = model.run_trajectories(
            inputs, pids, halt=e.protocol == "act", max_steps=e.steps() or None,
            halt_threshold=e.halt_threshold, trajectories=K, noise_std=float(e.noise_std),
            generator=generator,
        )  # fmt: skip
        score_trajectories(sums, runs, labels.repeat_interleave(K, 0), K, e.select)
    n = max(sums["count"], 1.0)
    steps = sums["steps"] / (n * K)
    return {
        "eval/exact_accuracy": sums["exact_accuracy"] / n,
        "eval/accuracy": sums["accuracy"] / n,
        **{rule_metric(e.protocol, r): sums[r] / n for r in RULES},
        "eval/steps": steps,
        INFERENCE_FLOPS: inference_flops(model.config, steps, K) if sums["count"] else 0.0,
        "eval/count": sums["count"],
    }


def score_trajectories(
    sums: dict[str, float], runs: Any, labels_RL: torch.Tensor, K: int, select: str
) -> None:
    """Add one batch of `TRM.run_trajectories` rows (K neighbouring rows per example) to
    `sums`: the selected answer, then each of `RULES`, all from these same rows."""
    from trm.model import pick

    valid_RL = labels_RL != IGNORE
    correct_RL = (runs.preds == labels_RL) & valid_RL
    exact_R = correct_RL.sum(-1) == valid_RL.sum(-1)
    token_R = correct_RL.sum(-1) / valid_RL.sum(-1).clamp_min(1)
    chosen_B = pick(runs, K, select)
    sums["count"] += exact_R.shape[0] // K
    sums["exact_accuracy"] += exact_R[chosen_B].sum().item()
    sums["accuracy"] += token_R[chosen_B].sum().item()
    sums["best_q"] += exact_R[pick(runs, K, "q_halt")].sum().item()
    sums["mode"] += exact_R[pick(runs, K, "vote")].sum().item()
    sums["pass_at_k"] += exact_R.view(-1, K).any(-1).sum().item()
    sums["steps"] += runs.steps.sum().item()
