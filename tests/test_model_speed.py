"""trm.model speed paths give the model's own results: `TRM.predict` (test-time ACT halting
with batch compaction, and fixed depth) and `TRM.batch_chunk` (the recursion on slices)."""

from __future__ import annotations

import pytest
import torch
from tiny_trm import halting_model, make_batch
from tiny_trm import tiny5 as tiny

from trm import TRM
from trm.losses import act_loss


def test_predict_without_halting_is_the_official_evaluation():
    cfg = tiny()
    model = halting_model(cfg)
    b = make_batch(cfg, 7)
    ref = model.rollout(b["inputs"], b["puzzle_identifiers"])
    pred = model.predict(b["inputs"], b["puzzle_identifiers"], halt=False)
    torch.testing.assert_close(pred.logits, ref.logits[-1], atol=0, rtol=0)
    torch.testing.assert_close(pred.q_halt_logits, ref.q_halt_logits[-1], atol=0, rtol=0)
    assert torch.equal(pred.preds, ref.logits[-1].argmax(-1))
    assert pred.steps.tolist() == [cfg.halt_max_steps] * 7


@pytest.mark.parametrize("no_ACT_continue", [True, False])
@pytest.mark.parametrize("mlp_t", [False, True])
def test_predict_with_halting_answers_at_each_rows_first_halt(no_ACT_continue, mlp_t):
    cfg = tiny(no_ACT_continue=no_ACT_continue, mlp_t=mlp_t,
               pos_encodings="none" if mlp_t else "rope")  # fmt: skip
    model = halting_model(cfg)
    b = make_batch(cfg, 9, seed=1)
    ref = model.rollout(b["inputs"], b["puzzle_identifiers"])  # every row, every step
    q_halt, q_cont = ref.q_halt_logits, ref.q_continue_logits
    halts = q_halt > 0 if no_ACT_continue else q_halt > q_cont  # [S, B]
    halts[-1] = True
    first = halts.int().argmax(0)  # first halting step (0-based) per row
    assert 1 < len(set(first.tolist())), "the test model should halt rows at different steps"

    pred = model.predict(b["inputs"], b["puzzle_identifiers"], halt=True)
    assert pred.steps.tolist() == (first + 1).tolist()
    rows = torch.arange(9)
    torch.testing.assert_close(pred.logits, ref.logits[first, rows], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(pred.q_halt_logits, q_halt[first, rows], atol=1e-5, rtol=1e-4)


def test_predict_runs_in_train_mode_without_recording_the_graph():
    cfg = tiny()
    model = halting_model(cfg).train()
    b = make_batch(cfg, 4)
    pred = model.predict(b["inputs"], b["puzzle_identifiers"], max_steps=2)
    assert not pred.logits.requires_grad and pred.steps.max() <= 2
    assert model.puzzle_emb.local_weight is None  # no rows recorded for the sparse optimiser
    with pytest.raises(ValueError, match="max_steps"):
        model.predict(b["inputs"], b["puzzle_identifiers"], max_steps=0)


@pytest.mark.parametrize("mlp_t", [False, True])
def test_batch_chunk_gives_the_same_training_step(mlp_t):
    """Slices of the batch give the same outputs, carry and gradients as the whole batch (to
    float32 rounding: matmul kernels block a batch of 3 and one of 7 differently, and on some
    CPUs (AVX-512) that moves results by a few ulp, ~5e-5 relative on small values)."""
    cfg = tiny(mlp_t=mlp_t, pos_encodings="none" if mlp_t else "learned")
    b = make_batch(cfg, 7)
    results = []
    for chunk in (None, 3):
        torch.manual_seed(0)
        model = TRM(cfg).train()
        model.batch_chunk = chunk
        carry = model.initial_carry(b)
        for _ in range(2):  # a second step continues the carry
            model.zero_grad(set_to_none=True)
            carry, out = model(carry, b)
            loss, _ = act_loss(out, carry)
            loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters()}
        results.append((out, carry, grads, model.puzzle_emb.local_weight.grad.clone()))
    (o1, c1, g1, p1), (o2, c2, g2, p2) = results
    torch.testing.assert_close(o2.logits, o1.logits, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(c2.z_H, c1.z_H, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(c2.z_L, c1.z_L, atol=1e-5, rtol=1e-4)
    assert torch.equal(c2.steps, c1.steps) and torch.equal(c2.halted, c1.halted)
    for name in g1:
        torch.testing.assert_close(g2[name], g1[name], atol=1e-5, rtol=1e-4, msg=name)
    torch.testing.assert_close(p2, p1, atol=1e-5, rtol=1e-4)


def test_batch_chunk_in_predict():
    cfg = tiny()
    model = halting_model(cfg)
    b = make_batch(cfg, 8, seed=2)
    whole = model.predict(b["inputs"], b["puzzle_identifiers"])
    model.batch_chunk = 3
    sliced = model.predict(b["inputs"], b["puzzle_identifiers"])
    assert torch.equal(sliced.steps, whole.steps)
    torch.testing.assert_close(sliced.logits, whole.logits, atol=1e-5, rtol=1e-4)
