"""Tiny TRM configs, random batches and a halting model shared by the model tests
(test_model.py, test_model_speed.py, test_predict.py, test_evaluate.py): small enough that a
forward step takes milliseconds on a CPU."""

from __future__ import annotations

import torch

from trm import TRM, TRMConfig


def tiny(**kw) -> TRMConfig:
    """A 2-layer, 16-wide TRM on 6-token sequences with a 2-slot puzzle prefix; `kw` overrides."""
    base = dict(
        hidden_size=16, num_heads=2, expansion=2, L_layers=2, H_cycles=2, L_cycles=2,
        seq_len=6, vocab_size=5, num_puzzle_identifiers=4, puzzle_emb_ndim=16,
        puzzle_emb_len=2, halt_max_steps=3, halt_exploration_prob=0.0,
    )  # fmt: skip
    return TRMConfig(**{**base, **kw})


def make_batch(cfg: TRMConfig, B: int = 3, seed: int = 0) -> dict[str, torch.Tensor]:
    """B random rows (inputs, labels, puzzle identifiers) that fit `cfg`."""
    g = torch.Generator().manual_seed(seed)
    return {
        "inputs": torch.randint(0, cfg.vocab_size, (B, cfg.seq_len), generator=g),
        "labels": torch.randint(0, cfg.vocab_size, (B, cfg.seq_len), generator=g),
        "puzzle_identifiers": torch.randint(0, max(cfg.num_puzzle_identifiers, 1), (B,), generator=g),
    }  # fmt: skip


def tiny5(**kw) -> TRMConfig:
    """`tiny` with 5 ACT steps: room for rows to halt at different steps."""
    return tiny(**{"halt_max_steps": 5, **kw})


def halting_model(cfg: TRMConfig) -> TRM:
    """A model (eval mode) whose q head halts different rows at different steps (the initial
    q head never halts: weight 0, bias -5)."""
    torch.manual_seed(0)
    model = TRM(cfg).eval()
    with torch.no_grad():
        model.q_head.weight.normal_(0, 1)
        model.q_head.bias.zero_()
    return model
