"""trm.flops: the issue's Sudoku TRM-MLP figures, and agreement with torch's own FLOP counter."""

from __future__ import annotations

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from trm import TRM, TRMConfig, flops
from trm.compat import official_config


def test_sudoku_mlp_figures_of_the_issue():
    f = flops(official_config("sudoku_mlp"))
    assert f["train_step"] / 1e9 == pytest.approx(42.72, rel=0.01)
    assert f["inference_step"] / 1e9 == pytest.approx(25.63, rel=0.01)


def test_sudoku_mlp_by_hand():
    # T = 97, D = 512, SwiGLU inner: over D 1536, over T 512; 2 blocks per call; H=3, L=6
    T, D = 97, 512
    block = 2 * D * (T * 1024 + 512 * T) + 2 * T * (D * 3072 + 1536 * D)
    call = 2 * block
    heads = 2 * T * D * 11 + 2 * D * 2
    f = flops(official_config("sudoku_mlp"))
    assert f["inference_step"] == 21 * call + heads
    assert f["train_step"] == (21 + 2 * 7) * call + 3 * heads


def test_attention_costs_more_than_mlp_t_on_sudoku_and_scales_with_cycles():
    att = flops(official_config("sudoku_att"))
    mlp = flops(official_config("sudoku_mlp"))
    assert att["inference_step"] > mlp["inference_step"]
    more = flops(official_config("sudoku_mlp", H_cycles=4))
    assert more["train_step"] > mlp["train_step"]


@pytest.mark.parametrize(
    "mlp_t,pos",
    [(False, "rope"), (False, "learned"), (True, "none")],
    ids=["rope", "learned", "mlp_t"],
)
def test_matches_torch_flop_counter(mlp_t, pos):
    """Count the matmuls torch actually runs in one ACT step (eval) and one step + backward
    (train); the math SDPA backend makes the attention matmuls visible to the counter."""
    cfg = TRMConfig(
        hidden_size=32, num_heads=4, seq_len=12, vocab_size=7, puzzle_emb_ndim=32,
        puzzle_emb_len=2, num_puzzle_identifiers=3, H_cycles=2, L_cycles=2,
        halt_max_steps=2, mlp_t=mlp_t, pos_encodings=pos,
    )  # fmt: skip
    torch.manual_seed(0)
    model = TRM(cfg)
    B = 3
    batch = {
        "inputs": torch.randint(0, 7, (B, 12)),
        "labels": torch.randint(0, 7, (B, 12)),
        "puzzle_identifiers": torch.randint(0, 3, (B,)),
    }
    expected = flops(cfg)

    model.eval()
    with FlopCounterMode(display=False) as counter, sdpa_kernel(SDPBackend.MATH), torch.no_grad():
        model(model.initial_carry(batch), batch)
    assert counter.get_total_flops() / B == expected["inference_step"]

    model.train()
    with FlopCounterMode(display=False) as counter, sdpa_kernel(SDPBackend.MATH):
        _, out = model(model.initial_carry(batch), batch)
        (out.logits.sum() + out.q_halt_logits.sum() + out.q_continue_logits.sum()).backward()
    assert counter.get_total_flops() / B == expected["train_step"]


def test_accepts_official_dict_and_rejects_unknown_keys():
    assert flops(official_config("maze")) == flops(TRMConfig.from_dict(official_config("maze")))
    with pytest.raises(ValueError, match="hiden_size"):
        flops({"hiden_size": 3})
