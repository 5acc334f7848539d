"""trm.losses against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from trm.losses import act_loss, softmax_cross_entropy, stablemax_cross_entropy
from trm.model import Carry, Output


def test_stablemax_by_hand():
    logits = torch.tensor([[[1.0, -1.0, 0.0], [2.0, 0.5, -3.0]]])
    labels = torch.tensor([[0, -100]])
    ce = stablemax_cross_entropy(logits, labels)
    assert ce.dtype == torch.float64 and ce.shape == (1, 2)
    # s = (2, 1/2, 1): p(0) = 2 / 3.5
    assert ce[0, 0].item() == pytest.approx(-math.log(2 / 3.5), rel=1e-12)
    assert ce[0, 1].item() == 0.0  # ignored
    ce = stablemax_cross_entropy(logits, torch.tensor([[1, 2]]))
    # row 2: s = (3, 1.5, 1/4): p(2) = 0.25 / 4.75
    assert ce[0, 1].item() == pytest.approx(-math.log(0.25 / 4.75), rel=1e-12)
    assert ce[0, 0].item() == pytest.approx(-math.log(0.5 / 3.5), rel=1e-12)


def test_stablemax_is_finite_for_huge_logits():
    logits = torch.tensor([[1e30, -1e30, 0.0]], dtype=torch.float32)
    ce = stablemax_cross_entropy(logits, torch.tensor([0]))
    assert torch.isfinite(ce).all() and ce.item() == pytest.approx(0.0, abs=1e-12)


def test_softmax_by_hand():
    logits = torch.tensor([[[1.0, -1.0, 0.0], [0.0, 0.0, 0.0]]])
    ce = softmax_cross_entropy(logits, torch.tensor([[0, -100]]))
    z = math.e + math.exp(-1) + 1
    assert ce[0, 0].item() == pytest.approx(-math.log(math.e / z), rel=1e-6)
    assert ce[0, 1].item() == 0.0
    masked = softmax_cross_entropy(
        logits, torch.tensor([[0, 1]]), valid_mask=torch.tensor([[True, False]])
    )
    assert masked[0, 1].item() == 0.0 and masked[0, 0] == ce[0, 0]


def _step(logits, labels, halted, steps, q_halt, q_cont=None, target=None):
    B = len(labels)
    out = Output(
        logits=torch.tensor(logits, dtype=torch.float32, requires_grad=True),
        q_halt_logits=torch.tensor(q_halt, requires_grad=True),
        q_continue_logits=torch.tensor(q_cont if q_cont else [0.0] * B, requires_grad=True),
        target_q_continue=None if target is None else torch.tensor(target),
    )
    carry = Carry(
        z_H=torch.zeros(B, 1, 1), z_L=torch.zeros(B, 1, 1),
        steps=torch.tensor(steps, dtype=torch.int32), halted=torch.tensor(halted),
        current_data={"labels": torch.tensor(labels)},
    )  # fmt: skip
    return out, carry


def test_act_loss_by_hand():
    # row 0: 2 valid tokens, both right; row 1: 1 of 2 valid right; row 2: nothing valid
    logits = [
        [[2.0, 0.0], [0.0, 1.0], [5.0, 0.0]],
        [[0.0, 3.0], [1.0, 0.0], [0.0, 0.0]],
        [[0.0, 1.0], [1.0, 0.0], [0.0, 1.0]],
    ]
    labels = [[0, 1, -100], [0, 0, -100], [-100, -100, -100]]
    out, carry = _step(logits, labels, halted=[True, True, False], steps=[3, 2, 1],
                       q_halt=[1.0, 0.5, -2.0])  # fmt: skip
    loss, m = act_loss(out, carry, loss_type="stablemax")

    def ce(row, label):  # stablemax of a 2-logit row
        s = [x + 1 if x >= 0 else 1 / (1 - x) for x in row]
        return -math.log(s[label] / sum(s))

    lm = (ce([2, 0], 0) + ce([0, 1], 1)) / 2 + (ce([0, 3], 0) + ce([1, 0], 0)) / 2 + 0.0
    bce = lambda x, y: math.log1p(math.exp(-x)) if y else math.log1p(math.exp(x))  # noqa: E731
    # seq correct: row 0 yes, row 1 no, row 2 (no valid tokens) counts as correct
    q = bce(1.0, 1) + bce(0.5, 0) + bce(-2.0, 1)
    assert m["lm_loss"].item() == pytest.approx(lm, rel=1e-6)
    assert m["q_halt_loss"].item() == pytest.approx(q, rel=1e-6)
    assert loss.item() == pytest.approx(lm + 0.5 * q, rel=1e-6)
    # metrics over halted rows with valid labels: rows 0 and 1
    assert m["count"].item() == 2
    assert m["accuracy"].item() == pytest.approx(1.0 + 0.5)
    assert m["exact_accuracy"].item() == 1
    assert m["q_halt_accuracy"].item() == 1  # row 0: q>0 (halt) and correct; row 1: q>0, wrong
    assert m["steps"].item() == 5
    assert "q_continue_loss" not in m
    loss.backward()
    assert out.logits.grad[2].abs().sum() == 0  # no valid labels: no lm gradient


def test_act_loss_q_continue_and_softmax():
    logits = [[[2.0, 0.0]], [[0.0, 1.0]]]
    out, carry = _step(logits, [[0], [0]], halted=[True, True], steps=[1, 1],
                       q_halt=[0.0, 0.0], q_cont=[1.0, -1.0], target=[0.25, 0.75])  # fmt: skip
    loss, m = act_loss(out, carry, loss_type="softmax")
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    qc = -(0.25 * math.log(sig(1.0)) + 0.75 * math.log(1 - sig(1.0)))
    qc += -(0.75 * math.log(sig(-1.0)) + 0.25 * math.log(1 - sig(-1.0)))
    lm = -math.log(math.exp(2) / (math.exp(2) + 1)) - math.log(1 / (1 + math.e))
    q = 2 * math.log(2)
    assert m["q_continue_loss"].item() == pytest.approx(qc, rel=1e-6)
    assert loss.item() == pytest.approx(lm + 0.5 * (q + qc), rel=1e-6)


def test_unknown_loss_type():
    out, carry = _step([[[1.0, 0.0]]], [[0]], [True], [1], [0.0])
    with pytest.raises(ValueError, match="hinge"):
        act_loss(out, carry, loss_type="hinge")
    assert act_loss(out, carry, loss_type="stablemax_cross_entropy")[0].item() == pytest.approx(
        act_loss(out, carry, loss_type="stablemax")[0].item()
    )
