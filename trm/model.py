"""The Tiny Recursive Model (TRM, arXiv 2510.04871) with its ACT wrapper.

Architecture choices (each one matches the official implementation; docs/trm-behaviour.md):
- Input: token embedding, a prefix of P puzzle-embedding slots from a sparse per-puzzle table
  (row right-padded with zeros to P*D), optional learned positions (mixed with 1/sqrt(2)),
  all scaled by sqrt(D).
- One network of `L_layers` post-norm blocks serves both updates:
  z_L <- net(z_L + z_H + x) (L_cycles times), then z_H <- net(z_H + z_L); H_cycles such cycles
  per ACT step, all but the last without gradient (1-step gradient approximation).
- Block: token mixing (non-causal self-attention with RoPE, or a SwiGLU over the token axis
  with an RMSNorm over that axis: `mlp_t`), then a SwiGLU over channels; weightless RMSNorm in
  fp32 after each residual add; no biases.
- Heads: lm_head on z_H (prefix dropped), q_head (halt, continue) on z_H's first slot,
  initialised to weight 0, bias -5.
- ACT: the carry holds (z_H, z_L, steps, halted, current_data); halted rows are reset to the
  fixed (never trained) initial states H_init/L_init and take the incoming batch row.
- Halting: one rule, `should_halt`, decides everywhere (training, `predict`, the evaluation
  metrics): sigmoid(q_halt) > tau, or sigmoid(q_halt - q_continue) > tau when
  `no_ACT_continue` is False. Training uses the official tau = 0.5 (q_halt > 0); test time uses
  `halt_threshold` (default 0.5, the same rule).
- Test time: `rollout` / `predict(halt=False)` run every example halt_max_steps steps (the
  official evaluation); `rollout_preds` does the same keeping only each step's answer tokens
  and q logits; `predict(halt=True)` stops each example at its first halting step and compacts
  the batch, so halted rows cost nothing more. `predict(trajectories=K, noise_std=sigma)` adds
  the Probabilistic TRM's test-time compute (arXiv 2605.19943): K noisy trajectories per
  example, one answer chosen among them. Not in the official code.

Shape legend: B batch, L tokens (seq_len), P prefix slots, T = P + L, D hidden, V vocab,
H heads, K head dim, E puzzle-embedding width, S ACT steps (rollout).
`x_BTD` embedded question, `zH_BTD` answer state, `zL_BTD` latent, `logits_BLV`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from trm.config import TRMConfig

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def trunc_normal_(t: torch.Tensor, std: float, lower: float = -2.0, upper: float = 2.0):
    """In-place truncated normal whose *actual* std is `std` (JAX convention).

    Draws u ~ U(erf(lower/√2), erf(upper/√2)) and maps it through √2·erfinv, scaled by the
    std of the untruncated normal that gives `std` after truncation at ±2 of its own std.
    `std == 0` zeroes the tensor without drawing from the RNG.
    """
    with torch.no_grad():
        if std == 0:
            return t.zero_()
        sqrt2 = math.sqrt(2)
        a, b = math.erf(lower / sqrt2), math.erf(upper / sqrt2)
        z = (b - a) / 2
        pdf_l = math.exp(-0.5 * lower**2) / math.sqrt(2 * math.pi)
        pdf_u = math.exp(-0.5 * upper**2) / math.sqrt(2 * math.pi)
        var_ratio = 1 - (upper * pdf_u - lower * pdf_l) / z - ((pdf_u - pdf_l) / z) ** 2
        comp_std = std / math.sqrt(var_ratio)
        t.uniform_(a, b)
        t.erfinv_()
        t.mul_(sqrt2 * comp_std)
        t.clip_(lower * comp_std, upper * comp_std)
    return t


def rms_norm(h: torch.Tensor, eps: float) -> torch.Tensor:
    """Weightless RMSNorm over the last axis, computed in fp32."""
    h32 = h.float()
    h32 = h32 * torch.rsqrt(h32.square().mean(-1, keepdim=True) + eps)
    return h32.to(h.dtype)


class CastedLinear(nn.Module):
    """Linear layer with fp32 parameters computed in the input's dtype; LeCun trunc-normal."""

    def __init__(self, in_features: int, out_features: int, bias: bool):
        super().__init__()
        self.weight = nn.Parameter(
            trunc_normal_(torch.empty(out_features, in_features), std=in_features**-0.5)
        )
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = self.bias.to(x.dtype) if self.bias is not None else None
        return F.linear(x, self.weight.to(x.dtype), bias)


class CastedEmbedding(nn.Module):
    """Embedding table with fp32 weights, looked up in `dtype`."""

    def __init__(self, num: int, dim: int, std: float, dtype: torch.dtype):
        super().__init__()
        self.dtype = dtype
        self.weight = nn.Parameter(trunc_normal_(torch.empty(num, dim), std=std))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(ids, self.weight.to(self.dtype))


class SparseEmbedding(nn.Module):
    """Per-puzzle embedding table trained by `trm.optim.SignSGD`, not by autograd on the table.

    The table is a persistent buffer (not a parameter: no AdamATan2, no EMA, not counted).
    In train mode with grad enabled, the rows of the batch are copied into a fresh leaf tensor
    `local_weight` (B, E) that receives the gradient; `local_ids` remembers which rows they
    were. SignSGD then updates only those rows. Elsewhere the lookup has no gradient.
    """

    def __init__(self, num: int, dim: int, dtype: torch.dtype):
        super().__init__()
        self.dtype = dtype
        self.register_buffer("weight", torch.zeros(num, dim), persistent=True)
        self.local_weight: torch.Tensor | None = None
        self.local_ids: torch.Tensor | None = None

    def forward(self, ids_B: torch.Tensor) -> torch.Tensor:
        if ids_B.ndim > 1:
            ids_B = ids_B.squeeze(-1)
        if self.training and torch.is_grad_enabled():
            self.local_weight = self.weight[ids_B].detach().requires_grad_(True)
            self.local_ids = ids_B.detach()
            return self.local_weight.to(self.dtype)
        return self.weight[ids_B].to(self.dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """(x1, x2) -> (-x2, x1) over halves of the last axis (NeoX / half-split convention)."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class Rotary(nn.Module):
    """RoPE tables for positions 0..T-1 (the prefix slots count as positions)."""

    def __init__(self, head_dim: int, length: int, theta: float):
        super().__init__()
        inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
        freqs_TK2 = torch.outer(torch.arange(length, dtype=torch.float32), inv_freq)
        emb_TK = torch.cat((freqs_TK2, freqs_TK2), dim=-1)
        self.register_buffer("cos", emb_TK.cos(), persistent=False)
        self.register_buffer("sin", emb_TK.sin(), persistent=False)

    def forward(self, x_BTHK: torch.Tensor) -> torch.Tensor:
        cos_T1K, sin_T1K = self.cos.unsqueeze(-2), self.sin.unsqueeze(-2)
        x32 = x_BTHK.to(self.cos.dtype)
        return (x32 * cos_T1K + rotate_half(x32) * sin_T1K).to(x_BTHK.dtype)


class Attention(nn.Module):
    """Non-causal multi-head self-attention, fused qkv split [all q | all k | all v]."""

    def __init__(self, hidden: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv_proj = CastedLinear(hidden, 3 * hidden, bias=False)
        self.o_proj = CastedLinear(hidden, hidden, bias=False)

    def forward(self, h_BTD: torch.Tensor, rotary: Rotary | None) -> torch.Tensor:
        B, T, D = h_BTD.shape
        H = self.num_heads
        qkv_BT3HK = self.qkv_proj(h_BTD).view(B, T, 3 * H, D // H)
        q_BTHK, k_BTHK, v_BTHK = qkv_BT3HK.split(H, dim=2)
        if rotary is not None:
            q_BTHK, k_BTHK = rotary(q_BTHK), rotary(k_BTHK)
        # SDPA wants heads before tokens
        q_BHTK, k_BHTK, v_BHTK = (t.transpose(1, 2) for t in (q_BTHK, k_BTHK, v_BTHK))
        o_BHTK = F.scaled_dot_product_attention(q_BHTK, k_BHTK, v_BHTK, is_causal=False)
        return self.o_proj(o_BHTK.transpose(1, 2).reshape(B, T, D))


def swiglu_inner(width: int, expansion: float) -> int:
    """Inner width of a SwiGLU over `width` features: round(e*w*2/3) rounded up to 256."""
    return -(round(expansion * width * 2 / 3) // -256) * 256


class SwiGLU(nn.Module):
    def __init__(self, width: int, expansion: float):
        super().__init__()
        inner = swiglu_inner(width, expansion)
        self.gate_up_proj = CastedLinear(width, 2 * inner, bias=False)
        self.down_proj = CastedLinear(inner, width, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Two GEMMs on the halves of the fused weight rather than one and a chunk: gate and up
        # come out contiguous (faster element-wise work) and the backward adds two [.., width]
        # input grads instead of concatenating two [.., inner] halves (same values).
        w = self.gate_up_proj.weight.to(x.dtype)
        inner = w.shape[0] // 2
        return self.down_proj(F.silu(F.linear(x, w[:inner])) * F.linear(x, w[inner:]))


class Block(nn.Module):
    """Post-norm block: token mixing (attention or `mlp_t`), then a channel SwiGLU."""

    def __init__(self, cfg: TRMConfig):
        super().__init__()
        self.eps = cfg.rms_norm_eps
        if cfg.mlp_t:
            self.mlp_t = SwiGLU(cfg.total_len, cfg.expansion)
        else:
            self.self_attn = Attention(cfg.hidden_size, cfg.num_heads)
        self.mlp = SwiGLU(cfg.hidden_size, cfg.expansion)

    def forward(self, h_BTD: torch.Tensor, rotary: Rotary | None) -> torch.Tensor:
        if hasattr(self, "mlp_t"):
            # mix across tokens; the norm then runs over the token axis as well
            h_BDT = h_BTD.transpose(1, 2)
            h_BTD = rms_norm(h_BDT + self.mlp_t(h_BDT), self.eps).transpose(1, 2)
        else:
            h_BTD = rms_norm(h_BTD + self.self_attn(h_BTD, rotary), self.eps)
        return rms_norm(h_BTD + self.mlp(h_BTD), self.eps)


def should_halt(
    q_halt: torch.Tensor,
    q_continue: torch.Tensor,
    *,
    no_ACT_continue: bool,
    threshold: float = 0.5,
) -> torch.Tensor:
    """The ACT halting rule: True where the q head says "stop here".

    no_ACT_continue: sigmoid(q_halt) > threshold, i.e. q_halt > logit(threshold); else
    sigmoid(q_halt - q_continue) > threshold, i.e. q_halt > q_continue + logit(threshold).
    At threshold 0.5 the logit is exactly 0.0, so this is the official rule bit for bit
    (q_halt > 0, or q_halt > q_continue). A higher threshold never halts earlier.
    """
    shift = math.log(threshold / (1 - threshold))
    if no_ACT_continue:
        return q_halt > shift
    return q_halt > q_continue + shift


@dataclass
class Carry:
    """State passed from one ACT step to the next (all detached)."""

    z_H: torch.Tensor
    """Answer state [B, T, D]."""
    z_L: torch.Tensor
    """Latent state [B, T, D]."""
    steps: torch.Tensor
    """ACT steps taken by the example in each slot [B] (int32)."""
    halted: torch.Tensor
    """Slot finished; the next call resets it and takes the incoming batch row [B] (bool)."""
    current_data: dict[str, torch.Tensor]
    """The batch rows actually being processed (use its `labels` for the loss)."""


@dataclass
class Output:
    """One ACT step's outputs (or, from `TRM.rollout`, S steps stacked in front)."""

    logits: torch.Tensor
    """[B, L, V] token logits (forward dtype)."""
    q_halt_logits: torch.Tensor
    """[B] fp32."""
    q_continue_logits: torch.Tensor
    """[B] fp32."""
    target_q_continue: torch.Tensor | None = None
    """[B] bootstrapped q-continue target (train mode, `no_ACT_continue=False` only)."""
    q_says_halt: torch.Tensor | None = None
    """[B] bool: the q head says halt by the training rule (`should_halt`, threshold 0.5),
    before exploration and the step limit; set by `TRM.forward` in every mode."""


@dataclass
class Prediction:
    """Test-time answers of `TRM.predict`, one row per example."""

    preds: torch.Tensor
    """[B, L] answer tokens (argmax of `logits`)."""
    logits: torch.Tensor
    """[B, L, V] logits of the step the example stopped at."""
    q_halt_logits: torch.Tensor
    """[B] fp32 q_halt at that step."""
    steps: torch.Tensor
    """[B] ACT steps the example took (int32); with K trajectories, those of the chosen one."""
    trajectory_steps: torch.Tensor
    """[B, K] ACT steps each of the K trajectories ran (int32): their sum is the compute spent
    on the example (`trm.flops.inference_flops`)."""


@dataclass
class StepPreds:
    """Per-step answers of `TRM.rollout_preds`: S ACT steps stacked in front, no logits."""

    preds: torch.Tensor
    """[S, B, L] answer tokens (argmax of each step's logits)."""
    q_halt_logits: torch.Tensor
    """[S, B] fp32."""
    q_continue_logits: torch.Tensor
    """[S, B] fp32."""


SELECTS = ("q_halt", "vote", "first")
"""How `TRM.predict` picks one of K trajectories: highest q_halt logit at its stop, most
frequent answer, or the one that stopped first."""


class TRM(nn.Module):
    """Tiny Recursive Model with ACT. `TRM(TRMConfig(...))` or `TRM(dict_of_official_fields)`."""

    batch_chunk: int | None = None
    """Run the recursion on slices of at most this many examples (a speed setting, not part of
    the architecture: results are the same). The MLP intermediates of a whole batch are ~6x
    the state; on a CPU, slices of ~8 keep them in cache (benchmarks/README.md has the
    measurement). None: the whole batch at once (best on a GPU)."""

    def __init__(self, config: TRMConfig | dict):
        super().__init__()
        cfg = TRMConfig.from_dict(config) if isinstance(config, dict) else config
        if not isinstance(cfg, TRMConfig):
            raise ValueError(f"TRM expects a TRMConfig or a dict, got {type(config).__name__}")
        self.config = cfg
        D, V, P = cfg.hidden_size, cfg.vocab_size, cfg.prefix_len
        self.dtype = DTYPES[cfg.forward_dtype]
        self.embed_scale = math.sqrt(D)

        # Construction order fixes the RNG draw order (same as the official code, so one seed
        # gives the official initial weights).
        self.embed_tokens = CastedEmbedding(V, D, std=1 / self.embed_scale, dtype=self.dtype)
        self.lm_head = CastedLinear(D, V, bias=False)
        self.q_head = CastedLinear(D, 2, bias=True)
        self.puzzle_emb = (
            SparseEmbedding(cfg.num_puzzle_identifiers, cfg.puzzle_emb_ndim, self.dtype)
            if cfg.puzzle_emb_ndim > 0
            else None
        )
        self.rotary = None
        self.embed_pos = None
        if cfg.pos_encodings == "rope" and not cfg.mlp_t:
            self.rotary = Rotary(D // cfg.num_heads, cfg.total_len, cfg.rope_theta)
        elif cfg.pos_encodings == "learned":
            self.embed_pos = CastedEmbedding(cfg.total_len, D, 1 / self.embed_scale, self.dtype)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.L_layers))
        self.register_buffer("H_init", trunc_normal_(torch.empty(D, dtype=self.dtype), std=1))
        self.register_buffer("L_init", trunc_normal_(torch.empty(D, dtype=self.dtype), std=1))
        with torch.no_grad():
            # q starts near "never halt" so early halting is learned, not random
            self.q_head.weight.zero_()
            self.q_head.bias.fill_(-5)
        self.prefix_len = P

    # ---------------------------------------------------------------- inner model
    def embed(self, inputs_BL: torch.Tensor, puzzle_ids_B: torch.Tensor) -> torch.Tensor:
        """The embedded question x [B, T, D] (prefix slots first)."""
        tok_BLD = self.embed_tokens(inputs_BL.long())
        B, _, D = tok_BLD.shape
        if self.prefix_len > 0:
            if self.puzzle_emb is not None:
                p_BE = self.puzzle_emb(puzzle_ids_B.long())
                pad = self.prefix_len * D - p_BE.shape[-1]
                prefix_BPD = F.pad(p_BE, (0, pad)).view(B, self.prefix_len, D)
            else:
                prefix_BPD = tok_BLD.new_zeros(B, self.prefix_len, D)
            x_BTD = torch.cat((prefix_BPD, tok_BLD), dim=1)
        else:
            x_BTD = tok_BLD
        if self.embed_pos is not None:
            # 1/sqrt(2) keeps the variance of the sum at that of one table
            x_BTD = 0.707106781 * (x_BTD + self.embed_pos.weight.to(self.dtype))
        return self.embed_scale * x_BTD

    def net(self, h_BTD: torch.Tensor, injection_BTD: torch.Tensor) -> torch.Tensor:
        """The one shared network: add the injection, then the blocks."""
        h_BTD = h_BTD + injection_BTD
        for block in self.layers:
            h_BTD = block(h_BTD, self.rotary)
        return h_BTD

    def cycles(
        self, zH_BTD: torch.Tensor, zL_BTD: torch.Tensor, x_BTD: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """H_cycles x (L_cycles + 1) network calls, only the last cycle with gradient."""
        cfg = self.config
        with torch.no_grad():
            for _ in range(cfg.H_cycles - 1):
                for _ in range(cfg.L_cycles):
                    zL_BTD = self.net(zL_BTD, zH_BTD + x_BTD)
                zH_BTD = self.net(zH_BTD, zL_BTD)
        for _ in range(cfg.L_cycles):
            zL_BTD = self.net(zL_BTD, zH_BTD + x_BTD)
        zH_BTD = self.net(zH_BTD, zL_BTD)
        return zH_BTD, zL_BTD

    def recurse(
        self, zH_BTD: torch.Tensor, zL_BTD: torch.Tensor, batch: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """One ACT step of the inner model: embed, `cycles`, heads.
        Returns (z_H, z_L, logits_BLV, q_B2)."""
        x_BTD = self.embed(batch["inputs"], batch["puzzle_identifiers"])
        zH_BTD, zL_BTD = self.sliced_cycles(zH_BTD, zL_BTD, x_BTD)
        logits_BLV, q_B2 = self.heads(zH_BTD)
        return zH_BTD, zL_BTD, logits_BLV, q_B2

    def sliced_cycles(
        self, zH_BTD: torch.Tensor, zL_BTD: torch.Tensor, x_BTD: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`cycles` on slices of at most `batch_chunk` examples."""
        c = self.batch_chunk
        if c is None or x_BTD.shape[0] <= c:
            return self.cycles(zH_BTD, zL_BTD, x_BTD)
        # examples never interact, so slices give the same results, cache-sized
        parts = [
            self.cycles(zh, zl, x)
            for zh, zl, x in zip(zH_BTD.split(c), zL_BTD.split(c), x_BTD.split(c))
        ]
        return torch.cat([zh for zh, _ in parts]), torch.cat([zl for _, zl in parts])

    def heads(self, zH_BTD: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Token logits [B, L, V] (prefix dropped) and the q logits [B, 2] (fp32)."""
        logits_BLV = self.lm_head(zH_BTD)[:, self.prefix_len :]
        return logits_BLV, self.q_head(zH_BTD[:, 0]).float()

    # ---------------------------------------------------------------- ACT wrapper
    def initial_carry(self, batch: dict[str, torch.Tensor]) -> Carry:
        """A carry whose slots are all halted, so the first call takes the whole batch."""
        inputs = batch["inputs"]
        B, device = inputs.shape[0], inputs.device
        shape = (B, self.config.total_len, self.config.hidden_size)
        return Carry(
            z_H=torch.zeros(shape, dtype=self.dtype, device=device),
            z_L=torch.zeros(shape, dtype=self.dtype, device=device),
            steps=torch.zeros(B, dtype=torch.int32, device=device),
            halted=torch.ones(B, dtype=torch.bool, device=device),
            current_data={k: torch.zeros_like(v) for k, v in batch.items()},
        )

    def forward(self, carry: Carry, batch: dict[str, torch.Tensor]) -> tuple[Carry, Output]:
        """One ACT step. Halted slots restart from H_init/L_init on the incoming batch row;
        the others continue their example (the incoming row is ignored for them)."""
        cfg = self.config
        halted_B = carry.halted
        reset_B11 = halted_B.view(-1, 1, 1)
        zH_BTD = torch.where(reset_B11, self.H_init, carry.z_H)
        zL_BTD = torch.where(reset_B11, self.L_init, carry.z_L)
        steps_B = torch.where(halted_B, 0, carry.steps)
        if set(batch) != set(carry.current_data):
            raise ValueError(
                f"batch keys {sorted(batch)} differ from the carry's {sorted(carry.current_data)}"
            )
        data = {
            k: torch.where(halted_B.view((-1,) + (1,) * (v.ndim - 1)), batch[k], v)
            for k, v in carry.current_data.items()
        }

        zH_BTD, zL_BTD, logits_BLV, q_B2 = self.recurse(zH_BTD, zL_BTD, data)
        out = Output(logits=logits_BLV, q_halt_logits=q_B2[:, 0], q_continue_logits=q_B2[:, 1])
        zH_BTD, zL_BTD = zH_BTD.detach(), zL_BTD.detach()

        with torch.no_grad():
            # training halts by the official rule whatever the test-time halt_threshold
            out.q_says_halt = should_halt(
                out.q_halt_logits, out.q_continue_logits, no_ACT_continue=cfg.no_ACT_continue
            )
            steps_B = steps_B + 1
            last_B = steps_B >= cfg.halt_max_steps
            halted_B = last_B
            # eval: every row runs halt_max_steps so a batch halts together
            if self.training and cfg.halt_max_steps > 1:
                q_halt_B = out.q_halt_logits
                halted_B = halted_B | out.q_says_halt
                # exploration: a random minimum number of steps for some rows
                explore_B = torch.rand_like(q_halt_B) < cfg.halt_exploration_prob
                min_B = explore_B * torch.randint_like(steps_B, 2, cfg.halt_max_steps + 1)
                halted_B = halted_B & (steps_B >= min_B)
                if not cfg.no_ACT_continue:
                    # Bootstrapped target without replay buffer or target net: the q values of
                    # one more inner step from the new state (many parallel envs, as in PQN).
                    _, _, _, next_q_B2 = self.recurse(zH_BTD, zL_BTD, data)
                    next_halt_B, next_cont_B = next_q_B2[:, 0], next_q_B2[:, 1]
                    out.target_q_continue = torch.sigmoid(
                        torch.where(last_B, next_halt_B, torch.maximum(next_halt_B, next_cont_B))
                    )

        return Carry(zH_BTD, zL_BTD, steps_B, halted_B, data), out

    @torch.no_grad()
    def rollout(
        self, inputs: torch.Tensor, puzzle_identifiers: torch.Tensor, num_steps: int | None = None
    ) -> Output:
        """`num_steps` ACT steps (default halt_max_steps) from a fresh carry on one batch,
        without gradient. Returns logits [S, B, L, V], q_*_logits [S, B]. Use in eval mode,
        where every row keeps refining its own example for all S steps, also beyond
        halt_max_steps (test-time depth); in train mode rows may halt, restart and explore
        as in training."""
        S = self.config.halt_max_steps if num_steps is None else num_steps
        if not isinstance(S, int) or S < 1:
            raise ValueError(f"num_steps must be a positive integer, got {num_steps!r}")
        batch = {"inputs": inputs, "puzzle_identifiers": puzzle_identifiers}
        carry = self.initial_carry(batch)
        outs = []
        for _ in range(S):
            carry, out = self(carry, batch)
            if not self.training:
                # halting at halt_max_steps would restart the example on the next call
                carry = replace(carry, halted=torch.zeros_like(carry.halted))
            outs.append(out)
        return Output(
            logits=torch.stack([o.logits for o in outs]),
            q_halt_logits=torch.stack([o.q_halt_logits for o in outs]),
            q_continue_logits=torch.stack([o.q_continue_logits for o in outs]),
            q_says_halt=torch.stack([o.q_says_halt for o in outs]),
        )

    def _start(
        self, inputs: torch.Tensor, puzzle_identifiers: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """A fresh start without a carry: (x, z_H, z_L), the states at H_init / L_init."""
        x_BTD = self.embed(inputs, puzzle_identifiers)
        return x_BTD, self.H_init.expand_as(x_BTD), self.L_init.expand_as(x_BTD)

    @torch.inference_mode()
    def rollout_preds(
        self, inputs: torch.Tensor, puzzle_identifiers: torch.Tensor, num_steps: int | None = None
    ) -> StepPreds:
        """`rollout` (eval mode) keeping per step only the answer tokens [S, B, L] and the q
        logits [S, B]: the same answers, without S x [B, L, V] logits held in memory. Every
        row runs all `num_steps` steps (default halt_max_steps), in any mode."""
        S = self.config.halt_max_steps if num_steps is None else num_steps
        if not isinstance(S, int) or S < 1:
            raise ValueError(f"num_steps must be a positive integer, got {num_steps!r}")
        x_BTD, zH_BTD, zL_BTD = self._start(inputs, puzzle_identifiers)
        preds, qs = [], []
        for _ in range(S):
            zH_BTD, zL_BTD = self.sliced_cycles(zH_BTD, zL_BTD, x_BTD)
            logits_BLV, q_B2 = self.heads(zH_BTD)
            preds.append(logits_BLV.argmax(-1))
            qs.append(q_B2)
        q_SB2 = torch.stack(qs)
        return StepPreds(torch.stack(preds), q_SB2[..., 0], q_SB2[..., 1])

    @torch.inference_mode()
    def predict(
        self,
        inputs: torch.Tensor,
        puzzle_identifiers: torch.Tensor,
        halt: bool = True,
        max_steps: int | None = None,
        *,
        halt_threshold: float | None = None,
        trajectories: int = 1,
        noise_std: float = 0.0,
        select: str = "q_halt",
        generator: torch.Generator | None = None,
    ) -> Prediction:
        """Test-time answers from a fresh start, up to `max_steps` ACT steps (default
        halt_max_steps; more is allowed), without gradient, in any mode: `run_trajectories`
        with the same arguments, then one of each example's K trajectories by `select`
        (`choose`).

        halt=True: ACT halting at test time. An example stops at the first step where
        `should_halt` says so at `halt_threshold` (default: the config's, 0.5 = the official
        q_halt > 0, or q_halt > q_continue when `no_ACT_continue` is False) and leaves the
        batch: the states of the rows still running are compacted, so later steps cost only
        what is left. halt=False: every example runs `max_steps` steps, the official
        evaluation (the answer of the last step, as `rollout(...).logits[-1]`), and the fixed
        depth D of Probabilistic TRM.

        Test-time compute (Probabilistic TRM, arXiv 2605.19943; not in the official code):
        `trajectories` K copies of each example run side by side in one batch (one forward
        for all). With `noise_std` sigma > 0, sigma * N(0, I) is added to the latent z_L once
        per ACT step (the paper's "deep recursion" step), just before that step's cycles,
        the first step included, so each copy explores its own path; z_H (the answer state)
        and the recursion inside a step are not perturbed. The z states are RMS-normalised
        (unit scale per token), so sigma is relative to that scale. Draws come from
        `generator` (on the model's device) when given: same generator seed, inputs and
        settings, same answers. `select` picks one copy per example: 'q_halt' the highest
        q_halt logit at its stop, 'vote' the most frequent answer (ties: the highest q_halt
        among the tied answers' copies), 'first' the copy that stopped first (ties: the
        lowest index). K = 1 with sigma = 0 is exactly the plain prediction.
        """
        if select not in SELECTS:
            raise ValueError(f"select must be one of {SELECTS}, got {select!r}")
        runs = self.run_trajectories(
            inputs, puzzle_identifiers, halt, max_steps, halt_threshold=halt_threshold,
            trajectories=trajectories, noise_std=noise_std, generator=generator,
        )  # fmt: skip
        return choose(runs, trajectories, select)

    @torch.inference_mode()
    def run_trajectories(
        self,
        inputs: torch.Tensor,
        puzzle_identifiers: torch.Tensor,
        halt: bool = True,
        max_steps: int | None = None,
        *,
        halt_threshold: float | None = None,
        trajectories: int = 1,
        noise_std: float = 0.0,
        generator: torch.Generator | None = None,
    ) -> Prediction:
        """Every trajectory of `predict` (same arguments, no selection) as its own row: the K
        trajectories of example i are rows i*K .. i*K+K-1. An evaluation scores them all and
        then picks with `pick` (best-Q, vote) or takes any (pass@K), from one set of draws."""
        cfg = self.config
        S = cfg.halt_max_steps if max_steps is None else max_steps
        if not isinstance(S, int) or S < 1:
            raise ValueError(f"max_steps must be a positive integer, got {max_steps!r}")
        K = trajectories
        if not isinstance(K, int) or isinstance(K, bool) or K < 1:
            raise ValueError(f"trajectories must be an integer >= 1, got {trajectories!r}")
        if not isinstance(noise_std, (int, float)) or not noise_std >= 0:
            raise ValueError(f"noise_std must be a number >= 0, got {noise_std!r}")
        tau = cfg.halt_threshold if halt_threshold is None else halt_threshold
        if not isinstance(tau, (int, float)) or not 0 < tau < 1:
            raise ValueError(f"halt_threshold must be in (0, 1), got {halt_threshold!r}")
        if K > 1:  # trajectories of one example are neighbouring rows
            inputs = inputs.repeat_interleave(K, 0)
            puzzle_identifiers = puzzle_identifiers.repeat_interleave(K, 0)
        return self._run(inputs, puzzle_identifiers, S, halt, tau, float(noise_std), generator)

    def _run(
        self,
        inputs: torch.Tensor,
        puzzle_identifiers: torch.Tensor,
        S: int,
        halt: bool,
        tau: float,
        noise_std: float,
        generator: torch.Generator | None,
    ) -> Prediction:
        """`predict` for every row on its own (one trajectory per row)."""
        cfg = self.config
        x_BTD, zH_BTD, zL_BTD = self._start(inputs, puzzle_identifiers)
        B, device = x_BTD.shape[0], x_BTD.device
        logits_out = torch.empty((B, cfg.seq_len, cfg.vocab_size), dtype=self.dtype, device=device)
        q_out = torch.empty(B, dtype=torch.float32, device=device)
        steps_out = torch.full((B,), S, dtype=torch.int32, device=device)
        rows_A = torch.arange(B, device=device)  # A: rows still running
        for step in range(1, S + 1):
            if noise_std > 0:
                noise = torch.randn(
                    zL_BTD.shape, generator=generator, device=device, dtype=zL_BTD.dtype
                )
                zL_BTD = zL_BTD + noise_std * noise
            zH_BTD, zL_BTD = self.sliced_cycles(zH_BTD, zL_BTD, x_BTD)
            if step < S and not halt:
                continue  # only the last step's answer is used: skip the heads
            logits_ALV, q_A2 = self.heads(zH_BTD)
            if step == S:
                logits_out[rows_A], q_out[rows_A] = logits_ALV, q_A2[:, 0]
                break
            stop_A = should_halt(
                q_A2[:, 0], q_A2[:, 1], no_ACT_continue=cfg.no_ACT_continue, threshold=tau
            )
            if not bool(stop_A.any()):
                continue
            done = rows_A[stop_A]
            logits_out[done] = logits_ALV[stop_A]
            q_out[done] = q_A2[stop_A, 0]
            steps_out[done] = step
            keep_A = ~stop_A
            if not bool(keep_A.any()):
                break
            rows_A, x_BTD = rows_A[keep_A], x_BTD[keep_A]
            zH_BTD, zL_BTD = zH_BTD[keep_A], zL_BTD[keep_A]
        return Prediction(
            preds=logits_out.argmax(-1), logits=logits_out, q_halt_logits=q_out,
            steps=steps_out, trajectory_steps=steps_out.unsqueeze(-1),
        )  # fmt: skip

    def num_params(self) -> int:
        """Trainable parameters (the puzzle table is a buffer and not counted)."""
        return sum(p.numel() for p in self.parameters())


def pick(runs: Prediction, K: int, select: str) -> torch.Tensor:
    """[B] row of `runs` (`TRM.run_trajectories`, K neighbouring rows per example) that
    `select` picks for each example (see `SELECTS`)."""
    q_BK = runs.q_halt_logits.view(-1, K)
    steps_BK = runs.steps.view(-1, K)
    if select == "q_halt":
        pick_B = q_BK.argmax(-1)
    elif select == "first":
        pick_B = steps_BK.argmin(-1)  # the lowest index among ties
    else:
        preds_BKL = runs.preds.view(q_BK.shape[0], K, -1)
        same_BKK = (preds_BKL.unsqueeze(2) == preds_BKL.unsqueeze(1)).all(-1)
        votes_BK = same_BKK.sum(-1)
        top_BK = votes_BK == votes_BK.max(-1, keepdim=True).values
        pick_B = torch.where(top_BK, q_BK, -torch.inf).argmax(-1)
    return torch.arange(q_BK.shape[0], device=pick_B.device) * K + pick_B


def choose(runs: Prediction, K: int, select: str) -> Prediction:
    """One of each example's K neighbouring trajectory rows, by `select` (`pick`)."""
    if K == 1:
        return runs
    rows_B = pick(runs, K, select)
    return Prediction(
        preds=runs.preds[rows_B], logits=runs.logits[rows_B],
        q_halt_logits=runs.q_halt_logits[rows_B], steps=runs.steps[rows_B],
        trajectory_steps=runs.steps.view(-1, K),
    )  # fmt: skip
