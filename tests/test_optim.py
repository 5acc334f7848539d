"""trm.optim: one AdamATan2 and one SignSGD step by hand, EMA and the LR schedule."""

from __future__ import annotations

import functools
import math

import pytest
import torch

from trm import TRM, TRMConfig
from trm.losses import act_loss
from trm.optim import EMA, AdamATan2, SignSGD, lr_lambda


def test_adam_atan2_two_steps_by_hand():
    p = torch.nn.Parameter(torch.tensor([1.0, -2.0, 0.5]))
    opt = AdamATan2([p], lr=0.1, betas=(0.9, 0.95), weight_decay=0.5)
    g1, g2 = [0.1, -0.3, 0.0], [0.2, 0.1, -0.4]

    p.grad = torch.tensor(g1)
    opt.step()
    # step 1: p·(1 - lr·wd); m = 0.1 g, v = 0.05 g²; bias corrections 0.1 and 0.05
    # ⇒ p -= (0.1 / 0.1) · atan2(0.1 g, |g|)
    exp1 = [x * 0.95 - math.atan2(0.1 * g, abs(g)) for x, g in zip([1.0, -2.0, 0.5], g1)]
    assert exp1[0] == pytest.approx(0.95 - 0.0996686525, abs=1e-9)
    torch.testing.assert_close(p.detach(), torch.tensor(exp1))

    p.grad = torch.tensor(g2)
    opt.step()
    exp2 = []
    for x, a, b in zip(exp1, g1, g2):
        m = 0.9 * 0.1 * a + 0.1 * b
        v = 0.95 * 0.05 * a * a + 0.05 * b * b
        bc1, bc2 = 1 - 0.9**2, 1 - 0.95**2
        exp2.append(x * 0.95 - 0.1 / bc1 * math.atan2(m, math.sqrt(v) / math.sqrt(bc2)))
    torch.testing.assert_close(p.detach(), torch.tensor(exp2))
    assert float(opt.state[p]["step"]) == 2


def test_adam_atan2_update_is_bounded_and_scale_invariant():
    for scale in (1e-12, 1.0, 1e12):
        p = torch.nn.Parameter(torch.zeros(4))
        opt = AdamATan2([p], lr=1.0, betas=(0.9, 0.99), weight_decay=0.0)
        p.grad = torch.tensor([1.0, -1.0, 2.0, 0.0]) * scale
        opt.step()
        # first step: atan2(0.1 g, |g|·sqrt(0.01)/sqrt(0.01)) / 0.1 = atan2(0.1, 1)/0.1 per sign
        torch.testing.assert_close(
            p.detach(), -torch.tensor([1.0, -1.0, 1.0, 0.0]) * math.atan2(0.1, 1) / 0.1
        )


def test_adam_atan2_validation():
    p = [torch.nn.Parameter(torch.zeros(1))]
    with pytest.raises(ValueError, match="lr"):
        AdamATan2(p, lr=-1)
    with pytest.raises(ValueError, match="betas"):
        AdamATan2(p, betas=(0.9, 1.0))
    with pytest.raises(ValueError, match="weight_decay"):
        AdamATan2(p, weight_decay=-0.1)


def _table_model(**kw) -> TRM:
    cfg = TRMConfig(hidden_size=8, num_heads=2, expansion=2, L_layers=1, H_cycles=1,
                    L_cycles=1, seq_len=4, vocab_size=5, num_puzzle_identifiers=6,
                    puzzle_emb_ndim=2, puzzle_emb_len=1, halt_max_steps=2, **kw)  # fmt: skip
    return TRM(cfg)


def test_sign_sgd_step_by_hand_touched_rows_only():
    model = _table_model()
    table = model.puzzle_emb
    table.weight.copy_(torch.tensor([[1.0, 1.0], [2.0, -2.0], [0.5, 0.5],
                                     [-1.0, 3.0], [4.0, 4.0], [9.0, 9.0]]))  # fmt: skip
    before = table.weight.clone()
    opt = SignSGD(table, lr=0.1, weight_decay=0.5)
    # a forward in train mode records rows [1, 3, 1]; set their grads by hand
    model.train()
    table(torch.tensor([1, 3, 1]))
    table.local_weight.grad = torch.tensor([[0.2, 0.3], [-0.1, 0.0], [-0.5, 0.1]])
    opt.step()
    # row 1: summed grad (-0.3, 0.4) -> sign (-1, 1); row 3: sign (-1, 0)
    decay = 1 - 0.1 * 0.5
    expected = before.clone()
    expected[1] = torch.tensor([2.0 * decay + 0.1, -2.0 * decay - 0.1])
    expected[3] = torch.tensor([-1.0 * decay + 0.1, 3.0 * decay])
    torch.testing.assert_close(table.weight, expected)
    opt.zero_grad()
    assert table.local_weight.grad is None
    opt.step()  # nothing recorded since: no change
    torch.testing.assert_close(table.weight, expected)


def test_sign_sgd_gather_combines_other_ranks_rows():
    model = _table_model()
    table = model.puzzle_emb.train()
    table.weight.fill_(1.0)
    other_ids, other_grads = torch.tensor([4, 0]), torch.tensor([[1.0, -1.0], [-5.0, 0.0]])

    def gather(ids, grads):
        return torch.cat([ids, other_ids]), torch.cat([grads, other_grads])

    opt = SignSGD(table, lr=0.5, weight_decay=0.0, gather=gather)
    table(torch.tensor([0]))
    table.local_weight.grad = torch.tensor([[2.0, 1.0]])
    opt.step()
    # row 0: (2 - 5, 1 + 0) -> (-1, 1); row 4 from the other rank: (1, -1)
    torch.testing.assert_close(table.weight[0], torch.tensor([1.5, 0.5]))
    torch.testing.assert_close(table.weight[4], torch.tensor([0.5, 1.5]))
    torch.testing.assert_close(table.weight[[1, 2, 3, 5]], torch.ones(4, 2))


def test_sign_sgd_trains_the_table_through_the_model():
    torch.manual_seed(0)
    model = _table_model().train()
    with torch.no_grad():
        model.q_head.weight.normal_()
    opt = SignSGD(model.puzzle_emb, lr=0.01, weight_decay=0.1)
    ids = torch.tensor([2, 5, 2])
    batch = {"inputs": torch.randint(0, 5, (3, 4)), "labels": torch.randint(0, 5, (3, 4)),
             "puzzle_identifiers": ids}  # fmt: skip
    carry, out = model(model.initial_carry(batch), batch)
    act_loss(out, carry)[0].backward()
    opt.step()
    changed = (model.puzzle_emb.weight != 0).any(-1)
    assert changed.tolist() == [False, False, True, False, False, True]
    # from zero rows, one step moves each entry by lr·sign(g)
    torch.testing.assert_close(model.puzzle_emb.weight[changed].abs(), torch.full((2, 2), 0.01))


def test_sign_sgd_rejects_non_table():
    with pytest.raises(ValueError, match="puzzle table"):
        SignSGD(torch.nn.Linear(2, 2))


def test_ema_update_copy_and_state():
    model = torch.nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema = EMA(model, decay=0.9)
    with torch.no_grad():
        model.weight.fill_(3.0)
    ema.update(model)
    torch.testing.assert_close(ema.shadow["weight"], torch.full((1, 2), 0.9 * 1 + 0.1 * 3))
    avg = ema.averaged(model)
    torch.testing.assert_close(avg.weight, torch.full((1, 2), 1.2))
    assert model.weight[0, 0].item() == 3.0  # live model untouched
    restored = EMA(model, decay=0.5)
    restored.load_state_dict(ema.state_dict())
    assert restored.decay == 0.9 and torch.equal(restored.shadow["weight"], ema.shadow["weight"])
    with pytest.raises(ValueError, match="decay"):
        EMA(model, decay=1.5)


def test_ema_skips_the_puzzle_table():
    model = _table_model()
    ema = EMA(model)
    assert not any(k.startswith("puzzle_emb") for k in ema.shadow)
    assert set(ema.shadow) == {n for n, _ in model.named_parameters()}


def test_ema_fold_gives_the_weights_of_averaged():
    """A saved model state plus a saved EMA -> the state of `EMA.averaged` (the weights
    evaluation uses), buffers from the model; what restore and log_model load."""
    model = _table_model()
    ema = EMA(model, decay=0.5)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
        model.puzzle_emb.weight.add_(2.0)
    ema.update(model)
    folded = EMA.fold(model.state_dict(), ema.state_dict())
    expected = ema.averaged(model).state_dict()
    assert folded.keys() == expected.keys()
    assert all(torch.equal(folded[k], expected[k]) for k in expected)
    assert EMA.fold(model.state_dict(), None).keys() == expected.keys()
    with pytest.raises(ValueError, match="keys not in it: \\['nonesuch'\\]"):
        EMA.fold(model.state_dict(), {"decay": 0.5, "shadow": {"nonesuch": torch.zeros(1)}})


def test_lr_schedule():
    f = functools.partial(lr_lambda, warmup_steps=10, total_steps=110, min_ratio=0.1)
    assert f(0) == 0.0 and f(5) == 0.5 and f(10) == pytest.approx(1.0)
    assert f(60) == pytest.approx(0.1 + 0.9 * 0.5)  # half-way through the cosine
    assert f(110) == pytest.approx(0.1)
    assert f(500) >= 0.1
    const = functools.partial(lr_lambda, warmup_steps=10, total_steps=110, min_ratio=1.0)
    assert [const(s) for s in (10, 50, 110)] == [1.0, 1.0, 1.0]
    p = torch.nn.Parameter(torch.zeros(1))
    opt = AdamATan2([p], lr=2.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, f)
    assert opt.param_groups[0]["lr"] == 0.0
    for _ in range(5):
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(1.0)


# ---- the multi-tensor / sync-free versions against the per-tensor loops they replaced -------
def _reference_adam_atan2_step(params, state, lr, betas, wd):
    """AdamATan2.step as a Python loop over tensors (the implementation before `_foreach`)."""
    beta1, beta2 = betas
    for p in params:
        if p.grad is None:
            continue
        st = state.setdefault(p, {})
        if not st:
            st["step"] = 0
            st["exp_avg"] = torch.zeros_like(p, dtype=torch.float32)
            st["exp_avg_sq"] = torch.zeros_like(p, dtype=torch.float32)
        st["step"] += 1
        t = float(st["step"])
        m, v = st["exp_avg"], st["exp_avg_sq"]
        g = p.grad.float()
        p32 = p.float() if p.dtype != torch.float32 else p
        p32.mul_(1 - lr * wd)
        m.lerp_(g, 1 - beta1)
        v.lerp_(g * g, 1 - beta2)
        denom = v.sqrt() / math.sqrt(1 - beta2**t)
        p32.add_(torch.atan2(m, denom), alpha=-lr / (1 - beta1**t))
        if p32 is not p:
            p.copy_(p32)


@torch.no_grad()
def test_adam_atan2_multi_tensor_step_is_bitwise_the_loop():
    g = torch.Generator().manual_seed(0)
    shapes = [(7, 5), (3,), (2, 4, 6), (1,)]
    mine = [torch.nn.Parameter(torch.randn(s, generator=g)) for s in shapes]
    mine.append(torch.nn.Parameter(torch.randn(9, generator=g).bfloat16()))  # non-fp32 path
    ref = [torch.nn.Parameter(p.detach().clone()) for p in mine]
    opt = AdamATan2(mine, lr=3e-3, betas=(0.9, 0.95), weight_decay=0.1)
    state: dict = {}
    for step in range(6):
        grads = [torch.randn(p.shape, generator=g).to(p.dtype) * 10.0 ** (i - 2)
                 for i, p in enumerate(mine)]  # fmt: skip
        for i, (a, b, gr) in enumerate(zip(mine, ref, grads)):
            # parameter 1 misses two steps: its step count then differs from the others
            a.grad = b.grad = None if (i == 1 and step in (2, 3)) else gr.clone()
        opt.step()
        _reference_adam_atan2_step(ref, state, 3e-3, (0.9, 0.95), 0.1)
        for a, b in zip(mine, ref):
            assert torch.equal(a, b)
    assert float(opt.state[mine[1]]["step"]) == 4 and float(opt.state[mine[0]]["step"]) == 6


@torch.no_grad()
def test_ema_multi_tensor_update_is_bitwise_the_loop():
    torch.manual_seed(0)
    model = _table_model()
    ema = EMA(model, decay=0.97)
    ref = {k: v.clone() for k, v in ema.shadow.items()}
    for _ in range(4):
        for p in model.parameters():
            p.add_(torch.randn_like(p))
        ema.update(model)
        for name, p in model.named_parameters():
            ref[name].mul_(0.97).add_(p.detach(), alpha=1.0 - 0.97)
    assert all(torch.equal(ema.shadow[k], ref[k]) for k in ref)


def test_sign_sgd_without_unique_is_bitwise_the_unique_version():
    """The sort-based grouping of repeated puzzle ids gives exactly the update of
    `unique(return_inverse=True)` + scatter_add (the implementation it replaced)."""
    g = torch.Generator().manual_seed(3)
    model = _table_model()
    table = model.puzzle_emb.train()
    table.weight.copy_(torch.randn(table.weight.shape, generator=g))
    ref = table.weight.clone()
    opt = SignSGD(table, lr=0.05, weight_decay=0.3)
    for _ in range(3):
        ids = torch.randint(0, 6, (11,), generator=g)
        table(ids)
        grads = torch.randn(11, 2, generator=g)
        grads[0] = 0.0  # sign(0) = 0: decay only
        table.local_weight.grad = grads.clone()
        opt.step()
        opt.zero_grad()
        rows, inverse = ids.unique(return_inverse=True)
        summed = torch.zeros(len(rows), 2).scatter_add_(
            0, inverse.unsqueeze(-1).expand(-1, 2), grads
        )
        ref[rows] = ref[rows].mul_(1 - 0.05 * 0.3).add_(torch.sign(summed), alpha=-0.05)
        assert torch.equal(table.weight, ref)
