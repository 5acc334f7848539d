"""Compatibility with the official TRM code: its paper configs and its checkpoints.

`official_config(arch)` gives the paper's architecture configs as dicts with the official field
names; `load_official_state_dict(model, sd)` loads an official checkpoint (with or without the
`_orig_mod.` prefix of compiled models and the `model.` / `model.inner.` wrappers) and
`to_official_state_dict(model)` writes ours under the official key names.
"""

from __future__ import annotations

import re
from typing import Any

import torch

from trm.config import TRMConfig
from trm.model import TRM

# The paper's architecture settings shared by every task (config/arch/trm.yaml).
_BASE: dict[str, Any] = dict(
    hidden_size=512,
    num_heads=8,
    expansion=4,
    H_cycles=3,
    L_cycles=6,
    H_layers=0,
    L_layers=2,
    puzzle_emb_ndim=512,
    puzzle_emb_len=16,
    pos_encodings="rope",
    mlp_t=False,
    rms_norm_eps=1e-5,
    rope_theta=10000.0,
    halt_max_steps=16,
    halt_exploration_prob=0.1,
    forward_dtype="bfloat16",
    no_ACT_continue=True,
    batch_size=768,
)

# Per-task settings of the README's paper runs. num_puzzle_identifiers depends on the built
# dataset (1 for Sudoku-Extreme and Maze); for ARC pass the dataset's value as an override.
OFFICIAL_ARCHS: dict[str, dict[str, Any]] = {
    "sudoku_mlp": dict(
        mlp_t=True, pos_encodings="none", L_cycles=6, seq_len=81, vocab_size=11,
        num_puzzle_identifiers=1,
    ),
    "sudoku_att": dict(L_cycles=6, seq_len=81, vocab_size=11, num_puzzle_identifiers=1),
    "maze": dict(L_cycles=4, seq_len=900, vocab_size=6, num_puzzle_identifiers=1),
    "arc": dict(L_cycles=4, seq_len=900, vocab_size=12, num_puzzle_identifiers=1),
}  # fmt: skip


def official_config(arch: str, **overrides: Any) -> dict[str, Any]:
    """The paper's config for `arch` ('sudoku_mlp', 'sudoku_att', 'maze', 'arc') as a dict
    of official field names, with `overrides` applied; unknown archs or keys raise ValueError."""
    if arch not in OFFICIAL_ARCHS:
        raise ValueError(f"unknown arch {arch!r}; known: {', '.join(OFFICIAL_ARCHS)}")
    cfg = {**_BASE, **OFFICIAL_ARCHS[arch], **overrides}
    TRMConfig.from_dict(cfg)  # validates, rejects unknown keys
    return cfg


# official key (after stripping wrappers) -> ours; applied as regex substitutions in order
_RENAMES = [
    (r"^L_level\.layers\.", "layers."),
    (r"\.embedding_weight$", ".weight"),
    (r"^puzzle_emb\.weights$", "puzzle_emb.weight"),
]
_PREFIXES = ("_orig_mod.", "model.", "inner.")


def _from_official_key(key: str) -> str:
    changed = True
    while changed:
        changed = False
        for prefix in _PREFIXES:
            if key.startswith(prefix):
                key, changed = key[len(prefix) :], True
    for pattern, repl in _RENAMES:
        key = re.sub(pattern, repl, key)
    return key


def official_key(key: str) -> str:
    """Our state-dict key -> the official one (`layers.0.mlp...` -> `model.inner.L_level...`)."""
    key = re.sub(r"^layers\.", "L_level.layers.", key)
    key = re.sub(r"^puzzle_emb\.weight$", "puzzle_emb.weights", key)
    key = re.sub(r"^(embed_tokens|embed_pos)\.weight$", r"\1.embedding_weight", key)
    return "model.inner." + key


def convert_official_state_dict(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official key names -> ours (no loading, no checks)."""
    out = {}
    for key, value in sd.items():
        new = _from_official_key(key)
        if new in out:
            raise ValueError(f"state dict has two entries for {new!r} (one is {key!r})")
        out[new] = value
    return out


def load_official_state_dict(model: TRM, sd: dict[str, torch.Tensor]) -> None:
    """Load an official checkpoint into `model`; missing or unexpected keys raise ValueError."""
    converted = convert_official_state_dict(sd)
    expected = set(model.state_dict())
    missing, unexpected = expected - set(converted), set(converted) - expected
    if missing or unexpected:
        raise ValueError(
            f"official state dict does not match the model: missing {sorted(missing)}, "
            f"unexpected {sorted(unexpected)}"
        )
    model.load_state_dict(converted, strict=True)


def to_official_state_dict(model: TRM) -> dict[str, torch.Tensor]:
    """`model.state_dict()` under the official key names (`model.inner.*`)."""
    return {official_key(k): v for k, v in model.state_dict().items()}
