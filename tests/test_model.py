"""trm.model and trm.config: shapes, validation, recursion, ACT semantics, dtypes, hygiene."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from tiny_trm import make_batch, tiny

from trm import TRM, TRMConfig
from trm.losses import act_loss

TRM_DIR = Path(__file__).parents[1] / "trm"


# ---------------------------------------------------------------- shapes


@pytest.mark.parametrize(
    "kw,prefix",
    [
        (dict(pos_encodings="rope"), 2),
        (dict(pos_encodings="learned"), 2),
        (dict(pos_encodings="none"), 2),
        (dict(mlp_t=True, pos_encodings="none"), 2),
        (dict(puzzle_emb_ndim=0, puzzle_emb_len=0), 0),  # no prefix at all
        (dict(puzzle_emb_ndim=0), 2),  # zero prefix slots, no table
        (dict(puzzle_emb_ndim=40, puzzle_emb_len=0), 3),  # ceil(40 / 16) slots
    ],
    ids=["rope", "learned", "none", "mlp_t", "no_prefix", "zero_prefix", "ceil_prefix"],
)
def test_step_shapes(kw, prefix):
    cfg = tiny(**kw)
    model = TRM(cfg)
    batch = make_batch(cfg, B=3)
    carry = model.initial_carry(batch)
    assert carry.halted.all() and carry.halted.shape == (3,)
    carry, out = model(carry, batch)
    T = cfg.seq_len + prefix
    assert cfg.total_len == T
    assert out.logits.shape == (3, cfg.seq_len, cfg.vocab_size)
    assert out.q_halt_logits.shape == out.q_continue_logits.shape == (3,)
    assert out.q_halt_logits.dtype == torch.float32
    assert carry.z_H.shape == carry.z_L.shape == (3, T, cfg.hidden_size)
    assert carry.steps.dtype == torch.int32 and carry.steps.tolist() == [1, 1, 1]
    assert not carry.z_H.requires_grad and not carry.z_L.requires_grad
    assert out.target_q_continue is None


def test_rollout_stacks_steps_and_equals_stepping():
    cfg = tiny()
    model = TRM(cfg).eval()
    batch = make_batch(cfg, B=2)
    out = model.rollout(batch["inputs"], batch["puzzle_identifiers"], num_steps=4)
    assert out.logits.shape == (4, 2, cfg.seq_len, cfg.vocab_size)
    assert out.q_halt_logits.shape == (4, 2)
    carry = model.initial_carry(batch)
    with torch.no_grad():
        for k in range(3):
            carry, step = model(carry, batch)
            torch.testing.assert_close(out.logits[k], step.logits, atol=0, rtol=0)
    assert carry.halted.all()  # halt_max_steps (3) reached: stepping on would restart
    # rollout keeps refining past halt_max_steps: step 4 is what a model allowed 4 steps gives
    deeper = TRM(cfg.to_dict() | {"halt_max_steps": 4}).eval()
    deeper.load_state_dict(model.state_dict())
    ref = deeper.rollout(batch["inputs"], batch["puzzle_identifiers"], num_steps=4)
    torch.testing.assert_close(out.logits, ref.logits, atol=0, rtol=0)
    assert not torch.allclose(out.logits[3], out.logits[0])
    with pytest.raises(ValueError, match="num_steps"):
        model.rollout(batch["inputs"], batch["puzzle_identifiers"], num_steps=0)


def test_prefix_holds_puzzle_vector_then_zeros():
    cfg = tiny(pos_encodings="none", puzzle_emb_len=3)
    model = TRM(cfg).eval()
    model.puzzle_emb.weight.copy_(torch.arange(4 * 16, dtype=torch.float32).view(4, 16))
    ids = torch.tensor([2, 0])
    x = model.embed(torch.zeros(2, cfg.seq_len, dtype=torch.long), ids)
    scale = cfg.hidden_size**0.5
    torch.testing.assert_close(x[:, 0], model.puzzle_emb.weight[ids] * scale)
    assert torch.equal(x[:, 1:3], torch.zeros_like(x[:, 1:3]))
    torch.testing.assert_close(x[:, 3:], model.embed_tokens.weight[0].expand(2, 6, 16) * scale)


# ---------------------------------------------------------------- config


@pytest.mark.parametrize(
    "kw,match",
    [
        (dict(H_cycles=0), "H_cycles"),
        (dict(L_cycles=-1), "L_cycles"),
        (dict(hidden_size=18, num_heads=4), "num_heads"),
        (dict(hidden_size=12, num_heads=4), "even head dim"),
        (dict(pos_encodings="alibi"), "pos_encodings"),
        (dict(forward_dtype="float8"), "forward_dtype"),
        (dict(halt_exploration_prob=1.5), "halt_exploration_prob"),
        (dict(halt_max_steps=0), "halt_max_steps"),
        (dict(expansion=0), "expansion"),
        (dict(puzzle_emb_ndim=64, puzzle_emb_len=2), "puzzle_emb_ndim"),
        (dict(num_puzzle_identifiers=0), "num_puzzle_identifiers"),
        (dict(mlp_t="yes"), "mlp_t"),
        (dict(L_layers=2.0), "L_layers"),
        (dict(halt_threshold=1.0), "halt_threshold"),
        (dict(halt_threshold=0), "halt_threshold"),
    ],
)
def test_config_validation(kw, match):
    with pytest.raises(ValueError, match=match):
        tiny(**kw)


def test_unknown_keys_are_errors_naming_the_key():
    d = tiny().to_dict()
    assert TRMConfig.from_dict(d) == tiny()
    with pytest.raises(ValueError, match="'L_cylces'"):
        TRMConfig.from_dict({**d, "L_cylces": 3})
    with pytest.raises(ValueError, match="'loss_type'"):
        TRM({**d, "loss_type": "stablemax"})
    assert TRM(d).config == tiny()


def test_puzzle_emb_width_defaults_to_hidden_size():
    cfg = TRMConfig(hidden_size=24, num_heads=2)
    assert cfg.puzzle_emb_ndim == 24 and cfg.prefix_len == 16
    assert TRMConfig.from_dict(cfg.to_dict()) == cfg


def test_mlp_t_ignores_head_count():
    # token-mixing variant has no attention: heads need not divide the width
    with pytest.raises(ValueError, match="num_heads"):
        TRM(tiny(num_heads=3))  # the attention variant refuses the same setting
    cfg = tiny(mlp_t=True, num_heads=3, pos_encodings="none")
    model = TRM(cfg)
    assert all(not hasattr(b, "self_attn") and hasattr(b, "mlp_t") for b in model.layers)
    batch = make_batch(cfg)
    _, out = model(model.initial_carry(batch), batch)
    assert out.logits.shape == (3, cfg.seq_len, cfg.vocab_size)
    assert torch.isfinite(out.logits).all()


# ---------------------------------------------------------------- recursion


def test_only_last_h_cycle_carries_gradient():
    cfg = tiny(H_cycles=3, L_cycles=2, L_layers=2)
    model = TRM(cfg).train()
    flags = []
    for block in model.layers:
        block.register_forward_hook(lambda m, i, o: flags.append(o.requires_grad))
    batch = make_batch(cfg)
    carry, out = model(model.initial_carry(batch), batch)
    calls_per_cycle = (cfg.L_cycles + 1) * cfg.L_layers
    assert flags == [False] * (2 * calls_per_cycle) + [True] * calls_per_cycle
    loss, _ = act_loss(out, carry)
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())


def test_gradient_equals_one_step_approximation():
    """Gradient of the step equals that of the last cycle alone, started from the states the
    no-grad cycles reach (no gradient through the earlier cycles or through the carry)."""
    cfg = tiny(H_cycles=3, L_cycles=1, pos_encodings="learned")
    torch.manual_seed(0)
    model = TRM(cfg).train()
    batch = make_batch(cfg)
    _, out = model(model.initial_carry(batch), batch)
    out.logits.float().square().sum().backward()
    expected = {n: p.grad for n, p in model.named_parameters()}
    assert expected["q_head.weight"] is None  # the loss uses logits only
    model.zero_grad()

    with torch.no_grad():
        x = model.embed(batch["inputs"], batch["puzzle_identifiers"])
        zH = model.H_init.expand_as(x).clone()
        zL = model.L_init.expand_as(x).clone()
        for _ in range(cfg.H_cycles - 1):
            zL = model.net(zL, zH + x)
            zH = model.net(zH, zL)
    x = model.embed(batch["inputs"], batch["puzzle_identifiers"])
    zL = model.net(zL, zH + x)
    zH = model.net(zH, zL)
    model.lm_head(zH)[:, cfg.prefix_len :].float().square().sum().backward()
    for name, p in model.named_parameters():
        if expected[name] is None:
            assert p.grad is None, name
        else:
            torch.testing.assert_close(p.grad, expected[name], msg=name)


# ---------------------------------------------------------------- ACT


def test_halted_rows_reset_and_take_new_data_others_continue():
    cfg = tiny(halt_max_steps=4)
    torch.manual_seed(0)
    model = TRM(cfg).train()
    with torch.no_grad():
        model.q_head.bias.fill_(-5.0)  # never halts by q
    a, b = make_batch(cfg, B=2, seed=1), make_batch(cfg, B=2, seed=2)
    carry, _ = model(model.initial_carry(a), a)
    assert not carry.halted.any()
    carry.halted = torch.tensor([True, False])  # as if row 0 had halted
    before = carry
    carry, out = model(carry, b)
    assert carry.steps.tolist() == [1, 2]
    for k in a:
        assert torch.equal(carry.current_data[k][0], b[k][0])  # new example
        assert torch.equal(carry.current_data[k][1], a[k][1])  # kept its example
    # row 1 continued from its carried state; row 0 restarted from the initial states
    ref = TRM(cfg).train()
    ref.load_state_dict(model.state_dict())
    cont_carry = type(before)(
        before.z_H[1:], before.z_L[1:], before.steps[1:], torch.tensor([False]),
        {k: v[1:] for k, v in before.current_data.items()},
    )  # fmt: skip
    _, cont = ref(cont_carry, {k: v[1:] for k, v in b.items()})
    torch.testing.assert_close(out.logits[1:], cont.logits)
    fresh_batch = {k: v[:1] for k, v in b.items()}
    _, fresh = ref(ref.initial_carry(fresh_batch), fresh_batch)
    torch.testing.assert_close(out.logits[:1], fresh.logits)


def test_train_halts_on_q_eval_runs_all_steps():
    cfg = tiny(halt_max_steps=3)
    model = TRM(cfg)
    with torch.no_grad():
        model.q_head.bias.fill_(5.0)  # q_halt > 0 everywhere
    batch = make_batch(cfg)
    model.train()
    carry, _ = model(model.initial_carry(batch), batch)
    assert carry.halted.all() and carry.steps.tolist() == [1, 1, 1]
    model.eval()
    carry = model.initial_carry(batch)
    for k in range(1, 4):
        carry, _ = model(carry, batch)
        assert carry.halted.all() == (k == 3)
        assert carry.steps.tolist() == [k] * 3


def _halting_steps(model: TRM, batch: dict, max_steps: int) -> torch.Tensor:
    carry = model.initial_carry(batch)
    halted_at = torch.zeros(len(batch["inputs"]), dtype=torch.long)
    with torch.no_grad():
        for _ in range(max_steps):
            carry, _ = model(carry, batch)
            newly = carry.halted & (halted_at == 0)
            halted_at[newly] = carry.steps[newly].long()
    return halted_at


def test_exploration_bounds():
    """With q_halt > 0 a row halts at step 1, unless exploration draws a minimum in
    [2, halt_max_steps]; every row halts by halt_max_steps."""
    cfg = tiny(hidden_size=8, num_heads=1, L_layers=1, H_cycles=1, L_cycles=1,
               halt_max_steps=4, halt_exploration_prob=1.0)  # fmt: skip
    torch.manual_seed(0)
    model = TRM(cfg).train()
    with torch.no_grad():
        model.q_head.bias.fill_(5.0)
    batch = make_batch(cfg, B=400)
    at = _halting_steps(model, batch, 4)
    assert set(at.tolist()) == {2, 3, 4}  # uniform over [2, 4], never 1
    counts = torch.bincount(at, minlength=5)[2:]
    assert (counts > 80).all()  # ~133 each

    model.config.halt_exploration_prob = 0.5
    at = _halting_steps(model, batch, 4)
    frac_one = (at == 1).float().mean().item()
    assert 0.4 < frac_one < 0.6 and set(at.tolist()) == {1, 2, 3, 4}

    with torch.no_grad():
        model.q_head.bias.fill_(-5.0)  # never halts by q: only the step limit stops
    assert set(_halting_steps(model, batch, 4).tolist()) == {4}


# ---------------------------------------------------------------- q-continue bootstrapping


def test_q_continue_branch_bootstraps_target_and_trains():
    cfg = tiny(no_ACT_continue=False, halt_max_steps=3, pos_encodings="rope")
    torch.manual_seed(0)
    model = TRM(cfg).train()
    with torch.no_grad():
        model.q_head.weight.normal_(0, 0.5)
        model.q_head.bias.zero_()
    batch = make_batch(cfg, B=4)
    carry, out = model(model.initial_carry(batch), batch)
    assert out.target_q_continue is not None and out.target_q_continue.shape == (4,)
    assert not out.target_q_continue.requires_grad

    # the target is the sigmoid of the next inner step's best q (halt only at the last step)
    with torch.no_grad():
        _, _, _, next_q = model.recurse(carry.z_H, carry.z_L, carry.current_data)
    expected = torch.sigmoid(torch.maximum(next_q[:, 0], next_q[:, 1]))
    torch.testing.assert_close(out.target_q_continue, expected)
    # halting compares q_halt with q_continue in this mode
    torch.testing.assert_close(carry.halted, out.q_halt_logits > out.q_continue_logits)

    loss, metrics = act_loss(out, carry)
    assert "q_continue_loss" in metrics
    loss.backward()
    assert model.q_head.bias.grad[1] != 0  # q_continue learns
    assert model.puzzle_emb.local_weight.grad is not None  # extra step kept the table grad

    # at the last step the target is the next q_halt alone
    carry.halted[:] = False
    carry.steps[:] = cfg.halt_max_steps - 1
    carry, out = model(carry, batch)
    with torch.no_grad():
        _, _, _, next_q = model.recurse(carry.z_H, carry.z_L, carry.current_data)
    torch.testing.assert_close(out.target_q_continue, torch.sigmoid(next_q[:, 0]))

    model.eval()
    _, out = model(model.initial_carry(batch), batch)
    assert out.target_q_continue is None


# ---------------------------------------------------------------- dtypes


def test_bf16_autocast_on_cpu_is_close_to_fp32():
    cfg = tiny(pos_encodings="rope")
    torch.manual_seed(0)
    model = TRM(cfg).eval()
    batch = make_batch(cfg, B=4)
    ref = model.rollout(batch["inputs"], batch["puzzle_identifiers"], num_steps=2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = model.rollout(batch["inputs"], batch["puzzle_identifiers"], num_steps=2)
    assert low.logits.dtype == torch.bfloat16
    err = (low.logits.float() - ref.logits).abs().max().item()
    assert err < 0.1 * ref.logits.abs().max().item()
    agree = (low.logits.argmax(-1) == ref.logits.argmax(-1)).float().mean().item()
    assert agree > 0.9


@pytest.mark.parametrize("mlp_t", [False, True])
def test_bf16_forward_dtype_trains_with_fp32_params(mlp_t):
    cfg = tiny(forward_dtype="bfloat16", mlp_t=mlp_t, pos_encodings="none" if mlp_t else "rope")
    model = TRM(cfg).train()
    batch = make_batch(cfg)
    carry, out = model(model.initial_carry(batch), batch)
    assert out.logits.dtype == torch.bfloat16 and carry.z_H.dtype == torch.bfloat16
    assert out.q_halt_logits.dtype == torch.float32
    loss, _ = act_loss(out, carry)
    assert loss.dtype == torch.float64 and torch.isfinite(loss)
    loss.backward()
    assert all(p.dtype == torch.float32 and p.grad.dtype == torch.float32
               for p in model.parameters())  # fmt: skip


def test_puzzle_table_is_a_buffer_with_grad_only_through_local_rows():
    cfg = tiny()
    model = TRM(cfg).train()
    names = {n for n, _ in model.named_parameters()}
    assert not any(n.startswith("puzzle_emb") for n in names)
    assert "puzzle_emb.weight" in model.state_dict()
    batch = make_batch(cfg)
    carry, out = model(model.initial_carry(batch), batch)
    act_loss(out, carry)[0].backward()
    local = model.puzzle_emb.local_weight
    assert local.shape == (3, cfg.puzzle_emb_ndim) and local.grad is not None
    assert torch.equal(model.puzzle_emb.local_ids, batch["puzzle_identifiers"])
    model.eval()
    model.puzzle_emb.local_weight = None
    with torch.no_grad():
        model(model.initial_carry(batch), batch)
    assert model.puzzle_emb.local_weight is None  # eval lookups never record rows


# ---------------------------------------------------------------- hygiene


def test_library_names_no_device_and_imports_no_infrastructure():
    forbidden = re.compile(r"^\s*(import|from)\s+(ray|mlflow|boto3|torch\.distributed)\b", re.M)
    for path in TRM_DIR.rglob("*.py"):
        text = path.read_text()
        assert "cuda" not in text.lower(), f"{path} names a device"
        assert not forbidden.search(text), f"{path} imports infrastructure"
