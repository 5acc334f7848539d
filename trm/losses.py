"""Losses and metrics of one ACT step (the official ACT loss head, as plain functions).

`act_loss(out, carry)` returns the summed loss over the batch (divide by the global batch size
before backward, as the official trainer does) and a dict of detached metric sums:
- per-token cross-entropy (stablemax in float64, or softmax), mean over a row's valid tokens,
  summed over rows: `lm_loss`;
- `q_halt_loss`: BCE-with-logits of q_halt against "this step's prediction is entirely right";
- `q_continue_loss` (only when the model produced a bootstrapped target);
- total = lm_loss + 0.5 * (q_halt_loss + q_continue_loss);
- count, accuracy, exact_accuracy, q_halt_accuracy, steps: sums over halted rows with at least
  one valid label (divide by `count` to report means). q_halt_accuracy: the q head's halting
  decision (`trm.model.should_halt`, the rule training halts by) agrees with "entirely right".
  The official code counts q_halt >= 0 as "halt" here while it halts on q_halt > 0 (and on
  q_halt > q_continue without `no_ACT_continue`); we use the one rule it halts by.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from trm.model import should_halt

IGNORE_LABEL_ID = -100


def _stablemax_s(x: torch.Tensor) -> torch.Tensor:
    # s(x) = x + 1 for x >= 0, 1 / (1 - x) for x < 0: positive, linear growth, no overflow
    return torch.where(x < 0, 1 / (1 - x + 1e-30), x + 1)


def log_stablemax(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    s = _stablemax_s(x)
    return torch.log(s / s.sum(dim=dim, keepdim=True))


def stablemax_cross_entropy(
    logits: torch.Tensor,
    labels: torch.Tensor,
    ignore_index: int = IGNORE_LABEL_ID,
    valid_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-token stablemax cross-entropy in float64; 0 where the label is ignored."""
    logp = log_stablemax(logits.to(torch.float64), dim=-1)
    valid = labels != ignore_index if valid_mask is None else valid_mask
    safe = torch.where(valid, labels, 0).long()
    picked = torch.gather(logp, -1, safe.unsqueeze(-1)).squeeze(-1)
    return -torch.where(valid, picked, 0)


def softmax_cross_entropy(
    logits: torch.Tensor,
    labels: torch.Tensor,
    ignore_index: int = IGNORE_LABEL_ID,
    valid_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-token softmax cross-entropy in float32; 0 where the label is ignored."""
    if valid_mask is not None:
        labels = torch.where(valid_mask, labels, ignore_index)
    flat = F.cross_entropy(
        logits.float().reshape(-1, logits.shape[-1]),
        labels.long().reshape(-1),
        ignore_index=ignore_index,
        reduction="none",
    )
    return flat.view(labels.shape)


LOSS_FUNCTIONS = {
    "stablemax": stablemax_cross_entropy,
    "softmax": softmax_cross_entropy,
    # official names
    "stablemax_cross_entropy": stablemax_cross_entropy,
    "softmax_cross_entropy": softmax_cross_entropy,
}


def act_loss(out, carry, loss_type: str = "stablemax") -> tuple[torch.Tensor, dict]:
    """Loss (summed over the batch) and metric sums for one ACT step.

    `out` is the step's `trm.model.Output`, `carry` the carry returned with it (its
    `current_data["labels"]` are the labels of the rows actually processed, -100 = ignored).
    """
    if loss_type not in LOSS_FUNCTIONS:
        raise ValueError(f"loss_type must be one of {sorted(LOSS_FUNCTIONS)}, got {loss_type!r}")
    loss_fn = LOSS_FUNCTIONS[loss_type]
    labels_BL = carry.current_data["labels"]
    logits_BLV = out.logits

    with torch.no_grad():
        valid_BL = labels_BL != IGNORE_LABEL_ID
        n_valid_B = valid_BL.sum(-1)
        divisor_B1 = n_valid_B.clamp_min(1).unsqueeze(-1)
        correct_BL = valid_BL & (logits_BLV.argmax(-1) == labels_BL)
        seq_correct_B = correct_BL.sum(-1) == n_valid_B
        counted_B = carry.halted & (n_valid_B > 0)
        says_halt_B = out.q_says_halt
        if says_halt_B is None:  # an Output built by hand: the default (q_halt-only) rule
            says_halt_B = should_halt(
                out.q_halt_logits, out.q_continue_logits, no_ACT_continue=True
            )
        metrics = {
            "count": counted_B.sum(),
            "accuracy": torch.where(counted_B, (correct_BL.float() / divisor_B1).sum(-1), 0).sum(),
            "exact_accuracy": (counted_B & seq_correct_B).sum(),
            "q_halt_accuracy": (counted_B & (says_halt_B == seq_correct_B)).sum(),
            "steps": torch.where(counted_B, carry.steps, 0).sum(),
        }

    lm_loss = (loss_fn(logits_BLV, labels_BL, valid_mask=valid_BL) / divisor_B1).sum()
    q_halt_loss = F.binary_cross_entropy_with_logits(
        out.q_halt_logits, seq_correct_B.to(out.q_halt_logits.dtype), reduction="sum"
    )
    metrics["lm_loss"] = lm_loss.detach()
    metrics["q_halt_loss"] = q_halt_loss.detach()
    q_loss = q_halt_loss
    if out.target_q_continue is not None:
        q_continue_loss = F.binary_cross_entropy_with_logits(
            out.q_continue_logits, out.target_q_continue, reduction="sum"
        )
        metrics["q_continue_loss"] = q_continue_loss.detach()
        q_loss = q_halt_loss + q_continue_loss
    return lm_loss + 0.5 * q_loss, metrics
