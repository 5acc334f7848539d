"""`TRMConfig`: the typed, validated architecture config of the Tiny Recursive Model.

Field names are the official implementation's, so an official `arch` config dict loads as it is
(`TRMConfig.from_dict(d)`); unknown keys raise `ValueError` naming the key instead of being
silently dropped. Defaults are the paper's Sudoku-Extreme attention model except
`forward_dtype` (fp32 here, so small CPU runs are exact; the paper trained in bfloat16).
One field is ours, not official: `halt_threshold` (the test-time ACT halting threshold).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

POS_ENCODINGS = ("rope", "learned", "none")
FORWARD_DTYPES = ("float32", "bfloat16", "float16")


@dataclass
class TRMConfig:
    """Architecture of one TRM; every field but `halt_threshold` is an official `arch` field."""

    hidden_size: int = 512
    """Width D of every token state (z_H, z_L, the embedded question)."""
    num_heads: int = 8
    """Attention heads; must divide `hidden_size` (unused when `mlp_t`)."""
    expansion: float = 4.0
    """SwiGLU width factor: inner size = ceil_256(round(expansion * in * 2/3))."""
    L_layers: int = 2
    """Blocks in the single network used for both the z_L and the z_H update."""
    H_layers: int = 0
    """Accepted for compatibility with official configs; ignored (there is one network)."""
    H_cycles: int = 3
    """Outer cycles per ACT step; all but the last run without gradient."""
    L_cycles: int = 6
    """z_L updates per outer cycle (each followed by one z_H update)."""
    mlp_t: bool = False
    """Mix tokens with a SwiGLU over the sequence axis instead of self-attention (TRM-MLP)."""
    pos_encodings: str = "rope"
    """'rope' (rotary, half-split), 'learned' (table added to the input) or 'none'."""
    rope_theta: float = 10000.0
    """RoPE base."""
    rms_norm_eps: float = 1e-5
    """Epsilon of the weightless post-norm RMSNorm."""

    seq_len: int = 81
    """Tokens per example (without the puzzle-embedding prefix)."""
    vocab_size: int = 11
    """Token vocabulary size (inputs and labels)."""
    num_puzzle_identifiers: int = 1
    """Rows of the sparse puzzle-embedding table."""
    puzzle_emb_ndim: int | None = None
    """Width of a puzzle-table row; None means hidden_size (the paper's setting); 0 disables
    the table (the prefix slots are then zeros)."""
    puzzle_emb_len: int = 16
    """Prefix slots before the tokens; 0 means ceil(puzzle_emb_ndim / hidden_size)."""

    halt_max_steps: int = 16
    """ACT steps after which an example always halts (every step in eval mode)."""
    halt_exploration_prob: float = 0.1
    """Train mode: probability that an example gets a random minimum number of steps."""
    no_ACT_continue: bool = True
    """True: halt when q_halt > 0, no q-continue loss. False: halt when q_halt > q_continue
    and learn q_continue from a bootstrapped target (one extra no-grad inner step)."""
    halt_threshold: float = 0.5
    """Not an official field. Test-time halting threshold tau in (0, 1) of `predict(halt=True)`
    and the at-halt evaluation metrics: halt when sigmoid(q_halt) > tau (sigmoid(q_halt -
    q_continue) > tau when `no_ACT_continue` is False). 0.5 is the official rule (q_halt > 0);
    a higher tau halts later. Training always halts with the official rule (see
    `trm.model.should_halt`), so this field changes no training run."""

    forward_dtype: str = "float32"
    """Compute dtype of activations ('float32', 'bfloat16', 'float16'); parameters stay fp32."""
    batch_size: int | None = None
    """Accepted for compatibility with official configs (their puzzle table needed it); unused."""

    def __post_init__(self) -> None:
        def need(ok: bool, msg: str) -> None:
            if not ok:
                raise ValueError(f"TRMConfig: {msg}")

        for name in ("hidden_size", "num_heads", "L_layers", "H_cycles", "L_cycles"):
            need(
                is_int(getattr(self, name)) and getattr(self, name) > 0,
                f"{name} must be a positive integer, got {getattr(self, name)!r}",
            )
        for name in ("seq_len", "vocab_size", "halt_max_steps"):
            need(
                is_int(getattr(self, name)) and getattr(self, name) > 0,
                f"{name} must be a positive integer, got {getattr(self, name)!r}",
            )
        if self.puzzle_emb_ndim is None:
            self.puzzle_emb_ndim = self.hidden_size
        for name in ("H_layers", "puzzle_emb_ndim", "puzzle_emb_len", "num_puzzle_identifiers"):
            need(
                is_int(getattr(self, name)) and getattr(self, name) >= 0,
                f"{name} must be a non-negative integer, got {getattr(self, name)!r}",
            )
        need(
            isinstance(self.expansion, (int, float)) and self.expansion > 0,
            f"expansion must be > 0, got {self.expansion!r}",
        )
        need(
            self.pos_encodings in POS_ENCODINGS,
            f"pos_encodings must be one of {POS_ENCODINGS}, got {self.pos_encodings!r}",
        )
        need(
            self.forward_dtype in FORWARD_DTYPES,
            f"forward_dtype must be one of {FORWARD_DTYPES}, got {self.forward_dtype!r}",
        )
        need(
            isinstance(self.halt_exploration_prob, (int, float))
            and 0.0 <= self.halt_exploration_prob <= 1.0,
            f"halt_exploration_prob must be in [0, 1], got {self.halt_exploration_prob!r}",
        )
        need(
            isinstance(self.halt_threshold, (int, float))
            and not isinstance(self.halt_threshold, bool)
            and 0.0 < self.halt_threshold < 1.0,
            f"halt_threshold must be in (0, 1), got {self.halt_threshold!r}",
        )
        need(self.rms_norm_eps > 0, f"rms_norm_eps must be > 0, got {self.rms_norm_eps!r}")
        need(self.rope_theta > 0, f"rope_theta must be > 0, got {self.rope_theta!r}")
        for name in ("mlp_t", "no_ACT_continue"):
            need(
                isinstance(getattr(self, name), bool),
                f"{name} must be a bool, got {getattr(self, name)!r}",
            )
        if not self.mlp_t:
            need(
                self.hidden_size % self.num_heads == 0,
                f"num_heads ({self.num_heads}) must divide hidden_size ({self.hidden_size})",
            )
            if self.pos_encodings == "rope":
                need(
                    (self.hidden_size // self.num_heads) % 2 == 0,
                    f"rope needs an even head dim, got hidden_size/num_heads = "
                    f"{self.hidden_size}/{self.num_heads}",
                )
        if self.puzzle_emb_ndim > 0:
            need(
                self.num_puzzle_identifiers > 0,
                "num_puzzle_identifiers must be > 0 when puzzle_emb_ndim > 0",
            )
            need(
                self.puzzle_emb_ndim <= self.prefix_len * self.hidden_size,
                f"puzzle_emb_ndim ({self.puzzle_emb_ndim}) must fit in puzzle_emb_len * "
                f"hidden_size ({self.prefix_len} * {self.hidden_size})",
            )
        need(
            self.batch_size is None or (is_int(self.batch_size) and self.batch_size > 0),
            f"batch_size must be a positive integer or None, got {self.batch_size!r}",
        )

    @property
    def prefix_len(self) -> int:
        """Puzzle-embedding prefix slots P prepended to the tokens."""
        if self.puzzle_emb_len > 0:
            return self.puzzle_emb_len
        return math.ceil(self.puzzle_emb_ndim / self.hidden_size)

    @property
    def total_len(self) -> int:
        """Sequence length T inside the model: prefix plus tokens."""
        return self.prefix_len + self.seq_len

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TRMConfig:
        """Build from a dict of official field names; an unknown key is a `ValueError`."""
        if isinstance(d, TRMConfig):
            return d
        if not isinstance(d, dict):
            raise ValueError(f"TRMConfig.from_dict expects a dict, got {type(d).__name__}")
        known = {f.name for f in fields(cls)}
        for key in d:
            if key not in known:
                raise ValueError(
                    f"TRMConfig: unknown key {key!r}; known keys: {', '.join(sorted(known))}"
                )
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (official field names), e.g. to send across a process boundary."""
        return asdict(self)


def is_int(v: Any) -> bool:
    """An int that is not a bool (YAML `true` is not a count); the one such check of the
    project (`pipeline` imports it from here: `trm` imports nothing from `pipeline`)."""
    return isinstance(v, int) and not isinstance(v, bool)
