"""Test-time compute in trm: the one halting rule, `predict` with a halting threshold, K noisy
trajectories and their selection, `rollout_preds`, and `trm.flops.inference_flops`."""

from __future__ import annotations

import pytest
import torch
from tiny_trm import halting_model
from tiny_trm import make_batch as batch_of
from tiny_trm import tiny5 as tiny

from trm import TRM, flops, inference_flops, should_halt


def test_should_halt_at_one_half_is_the_official_rule_and_later_for_higher_tau():
    g = torch.Generator().manual_seed(0)
    q_halt, q_cont = torch.randn(2, 1000, generator=g)
    q_halt[:3] = 0.0  # the boundary: not a halt
    assert torch.equal(should_halt(q_halt, q_cont, no_ACT_continue=True), q_halt > 0)
    assert torch.equal(should_halt(q_halt, q_cont, no_ACT_continue=False), q_halt > q_cont)
    for rule in (True, False):
        low, high = (should_halt(q_halt, q_cont, no_ACT_continue=rule, threshold=t)
                     for t in (0.3, 0.7))  # fmt: skip
        assert (high <= low).all() and high.sum() < low.sum()
    # tau is a probability: sigmoid(q_halt) > tau
    tau = 0.8
    assert torch.equal(
        should_halt(q_halt, q_cont, no_ACT_continue=True, threshold=tau),
        torch.sigmoid(q_halt) > tau,
    )


def test_rollout_preds_are_the_rollouts_answers_without_logits():
    cfg = tiny()
    model = halting_model(cfg)
    b = batch_of(cfg, 5)
    ref = model.rollout(b["inputs"], b["puzzle_identifiers"], num_steps=7)
    out = model.rollout_preds(b["inputs"], b["puzzle_identifiers"], num_steps=7)
    assert out.preds.shape == (7, 5, cfg.seq_len)
    assert torch.equal(out.preds, ref.logits.argmax(-1))
    assert torch.equal(out.q_halt_logits, ref.q_halt_logits)
    assert torch.equal(out.q_continue_logits, ref.q_continue_logits)
    assert not hasattr(out, "logits")


@pytest.mark.parametrize("no_ACT_continue", [True, False])
def test_higher_threshold_never_halts_earlier_and_max_steps_may_exceed_the_limit(no_ACT_continue):
    cfg = tiny(no_ACT_continue=no_ACT_continue)
    model = halting_model(cfg)
    b = batch_of(cfg, 16, seed=2)
    steps = [
        model.predict(b["inputs"], b["puzzle_identifiers"], halt_threshold=t, max_steps=8).steps
        for t in (0.1, 0.5, 0.9)
    ]
    assert (steps[0] <= steps[1]).all() and (steps[1] <= steps[2]).all()
    assert steps[0].sum() < steps[2].sum()
    assert steps[2].max() <= 8 and (steps[2] > cfg.halt_max_steps).any()


@pytest.mark.parametrize("halt", [True, False])
@pytest.mark.parametrize("no_ACT_continue", [True, False])
def test_one_trajectory_without_noise_is_the_plain_prediction(halt, no_ACT_continue):
    cfg = tiny(no_ACT_continue=no_ACT_continue)
    model = halting_model(cfg)
    b = batch_of(cfg, 9, seed=1)
    plain = model.predict(b["inputs"], b["puzzle_identifiers"], halt=halt)
    # the answers of a rollout: halt=False is its last step, halt=True each row's first halt
    ref = model.rollout(b["inputs"], b["puzzle_identifiers"])
    halts = should_halt(ref.q_halt_logits, ref.q_continue_logits, no_ACT_continue=no_ACT_continue)
    halts[-1] = True
    first = halts.int().argmax(0) if halt else torch.full((9,), cfg.halt_max_steps - 1)
    assert plain.steps.tolist() == (first + 1).tolist()
    assert torch.equal(plain.preds, ref.logits.argmax(-1)[first, torch.arange(9)])
    for select in ("q_halt", "vote", "first"):
        same = model.predict(b["inputs"], b["puzzle_identifiers"], halt=halt, trajectories=1,
                             noise_std=0.0, select=select,
                             generator=torch.Generator().manual_seed(1))  # fmt: skip
        for name in ("preds", "logits", "q_halt_logits", "steps", "trajectory_steps"):
            assert torch.equal(getattr(same, name), getattr(plain, name)), (select, name)


def _noisy(model, b, K, sigma, seed, **kw):
    g = torch.Generator().manual_seed(seed)
    return model.predict(b["inputs"], b["puzzle_identifiers"], trajectories=K, noise_std=sigma,
                         generator=g, **kw)  # fmt: skip


def test_same_seed_same_answers_and_noise_changes_them():
    cfg = tiny()
    model = halting_model(cfg)
    b = batch_of(cfg, 6, seed=3)
    a, again = (_noisy(model, b, 4, 0.5, seed=11) for _ in range(2))
    for name in ("preds", "logits", "q_halt_logits", "steps", "trajectory_steps"):
        assert torch.equal(getattr(a, name), getattr(again, name)), name
    other = _noisy(model, b, 4, 0.5, seed=12)
    assert not torch.equal(a.logits, other.logits)
    clean = model.predict(b["inputs"], b["puzzle_identifiers"])
    assert not torch.equal(_noisy(model, b, 1, 0.5, seed=11).logits, clean.logits)
    assert a.trajectory_steps.shape == (6, 4)


@pytest.mark.parametrize("halt", [True, False])
def test_each_selection_rule_picks_its_trajectory(halt):
    cfg = tiny(vocab_size=3, seq_len=2)  # few possible answers, so votes coincide
    model = halting_model(cfg)
    with torch.no_grad():
        model.lm_head.weight.mul_(10)  # answers that follow the noisy state
    B, K, sigma = 8, 5, 1.0
    b = batch_of(cfg, B, seed=4)
    # K trajectories are K neighbouring rows with the same noise draws: all of them, unselected
    rows = {k: v.repeat_interleave(K, 0) for k, v in b.items()}
    every = _noisy(model, rows, 1, sigma, seed=5, halt=halt)
    runs = model.run_trajectories(b["inputs"], b["puzzle_identifiers"], halt, trajectories=K,
                                  noise_std=sigma, generator=torch.Generator().manual_seed(5))
    for name in ("preds", "q_halt_logits", "steps"):  # every trajectory, unselected
        assert torch.equal(getattr(runs, name), getattr(every, name)), name
    q_BK, steps_BK = every.q_halt_logits.view(B, K), every.steps.view(B, K)
    preds_BKL = every.preds.view(B, K, -1)
    for select in ("q_halt", "vote", "first"):
        got = _noisy(model, b, K, sigma, seed=5, halt=halt, select=select)
        assert torch.equal(got.trajectory_steps, steps_BK)
        for i in range(B):
            answers = [tuple(p.tolist()) for p in preds_BKL[i]]
            if select == "q_halt":
                k = int(q_BK[i].argmax())
            elif select == "first":
                k = int(steps_BK[i].argmin())
            else:
                top = max(answers.count(a) for a in answers)
                k = max((k for k in range(K) if answers.count(answers[k]) == top),
                        key=lambda k: q_BK[i, k])  # fmt: skip
            assert tuple(got.preds[i].tolist()) == answers[k], (select, i)
            assert got.q_halt_logits[i] == q_BK[i, k] and got.steps[i] == steps_BK[i, k]
    if not halt:  # (with halting, the copies of each row here all give one answer)
        votes = _noisy(model, b, K, sigma, seed=5, halt=halt, select="vote")
        best_q = _noisy(model, b, K, sigma, seed=5, halt=halt, select="q_halt")
        assert not torch.equal(votes.preds, best_q.preds), "the rules should disagree somewhere"


@pytest.mark.parametrize(
    "kw,match",
    [
        (dict(trajectories=0), "trajectories"),
        (dict(trajectories=2.0), "trajectories"),
        (dict(noise_std=-0.1), "noise_std"),
        (dict(noise_std=float("nan")), "noise_std"),
        (dict(select="best"), "select"),
        (dict(halt_threshold=1.0), "halt_threshold"),
        (dict(max_steps=0), "max_steps"),
    ],
)
def test_bad_test_time_arguments_are_named(kw, match):
    cfg = tiny()
    model = TRM(cfg)
    b = batch_of(cfg, 2)
    with pytest.raises(ValueError, match=match):
        model.predict(b["inputs"], b["puzzle_identifiers"], **kw)


def test_inference_flops_scale_with_steps_and_trajectories():
    cfg = tiny()
    step = flops(cfg)["inference_step"]
    assert inference_flops(cfg, cfg.halt_max_steps) == cfg.halt_max_steps * step
    assert inference_flops(cfg, 2.5, trajectories=4) == 10 * step
    with pytest.raises(ValueError, match="steps"):
        inference_flops(cfg, 0)
    with pytest.raises(ValueError, match="trajectories"):
        inference_flops(cfg, 3, trajectories=0)
