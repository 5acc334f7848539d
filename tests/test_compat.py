"""trm.compat: paper configs, parameter counts, official checkpoint loading."""

from __future__ import annotations

import pytest
import torch

from trm import TRM, TRMConfig
from trm.compat import (
    OFFICIAL_ARCHS,
    load_official_state_dict,
    official_config,
    official_key,
    to_official_state_dict,
)

OFFICIAL_FIELDS = {
    "hidden_size", "H_cycles", "L_cycles", "L_layers", "mlp_t", "pos_encodings",
    "puzzle_emb_ndim", "puzzle_emb_len", "num_puzzle_identifiers", "seq_len", "vocab_size",
    "halt_max_steps", "halt_exploration_prob", "expansion", "num_heads", "rms_norm_eps",
    "rope_theta", "forward_dtype", "no_ACT_continue", "batch_size", "H_layers",
}  # fmt: skip

PAPER_PARAMS = {
    "sudoku_mlp": 5_028_866,
    "sudoku_att": 6_828_034,
    "maze": 6_822_914,
    "arc": 6_829_058,
}


@pytest.mark.parametrize("arch", sorted(PAPER_PARAMS))
def test_paper_parameter_counts(arch):
    with torch.device("meta"):  # shapes only: no memory, no init cost
        model = TRM(official_config(arch))
    assert model.num_params() == PAPER_PARAMS[arch]
    # the puzzle table is a buffer, outside the count and the optimiser
    assert "puzzle_emb.weight" in dict(model.named_buffers())


def test_official_config_fields():
    assert set(OFFICIAL_ARCHS) == set(PAPER_PARAMS)
    for arch in OFFICIAL_ARCHS:
        cfg = official_config(arch)
        assert set(cfg) == OFFICIAL_FIELDS
        TRMConfig.from_dict(cfg)
    mlp = official_config("sudoku_mlp")
    assert (mlp["mlp_t"], mlp["pos_encodings"], mlp["H_cycles"], mlp["L_cycles"]) == (
        True, "none", 3, 6,
    )  # fmt: skip
    assert official_config("maze")["L_cycles"] == 4
    assert official_config("arc", num_puzzle_identifiers=1234)["num_puzzle_identifiers"] == 1234


def test_official_config_rejects_unknown_arch_and_keys():
    with pytest.raises(ValueError, match="sudoku_big"):
        official_config("sudoku_big")
    with pytest.raises(ValueError, match="L_cylces"):
        official_config("maze", L_cylces=3)


def _tiny(**kw) -> dict:
    cfg = official_config(
        "sudoku_att", hidden_size=16, num_heads=2, puzzle_emb_ndim=16, puzzle_emb_len=2,
        num_puzzle_identifiers=5, seq_len=6, forward_dtype="float32",
    )  # fmt: skip
    return {**cfg, **kw}


@pytest.mark.parametrize("prefix", ["model.inner.", "_orig_mod.model.inner.", "inner.", ""])
def test_load_with_or_without_wrapper_prefixes(prefix):
    torch.manual_seed(1)
    src = TRM(_tiny(pos_encodings="learned"))
    src.puzzle_emb.weight.normal_()
    sd = {
        prefix + k.removeprefix("model.inner."): v for k, v in to_official_state_dict(src).items()
    }
    dst = TRM(_tiny(pos_encodings="learned"))
    load_official_state_dict(dst, sd)
    for k, v in src.state_dict().items():
        assert torch.equal(dst.state_dict()[k], v), k


def test_official_key_names():
    model = TRM(_tiny(pos_encodings="learned"))
    keys = set(to_official_state_dict(model))
    assert {
        "model.inner.H_init", "model.inner.L_init", "model.inner.embed_tokens.embedding_weight",
        "model.inner.embed_pos.embedding_weight", "model.inner.lm_head.weight",
        "model.inner.q_head.weight", "model.inner.q_head.bias", "model.inner.puzzle_emb.weights",
        "model.inner.L_level.layers.1.self_attn.qkv_proj.weight",
        "model.inner.L_level.layers.0.mlp.down_proj.weight",
    } <= keys  # fmt: skip
    mlp = TRM(_tiny(mlp_t=True, pos_encodings="none"))
    assert "model.inner.L_level.layers.0.mlp_t.gate_up_proj.weight" in set(
        to_official_state_dict(mlp)
    )
    assert official_key("layers.0.mlp.down_proj.weight") == (
        "model.inner.L_level.layers.0.mlp.down_proj.weight"
    )


def test_missing_or_unexpected_keys_are_errors():
    model = TRM(_tiny())
    sd = to_official_state_dict(model)
    missing = dict(sd)
    del missing["model.inner.lm_head.weight"]
    with pytest.raises(ValueError, match="lm_head"):
        load_official_state_dict(model, missing)
    extra = {**sd, "model.inner.H_level.layers.0.mlp.down_proj.weight": torch.zeros(1)}
    with pytest.raises(ValueError, match="H_level"):
        load_official_state_dict(model, extra)
