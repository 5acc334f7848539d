"""Matmul FLOPs of one TRM ACT step, per example (for MFU and compute-aware sweeps).

Convention: a matmul of [M, K] by [K, N] costs 2·M·N·K FLOPs; element-wise work (norms,
activations, RoPE, residual adds, softmax) and embedding lookups are not counted. With
T = seq_len + P tokens inside the model and D hidden:

- one network call = L_layers blocks; one block =
    token mixing:  attention  2·T·D·3D (qkv) + 2·T·T·D (scores) + 2·T·T·D (values) + 2·T·D·D (out)
                   or mlp_t   2·D·(T·2I_T + I_T·T)       (SwiGLU over the token axis, I_T inner)
    channel MLP:   2·T·(D·2I_D + I_D·D)                  (SwiGLU over D, I_D inner)
- heads: lm_head 2·T·D·V (applied to all T slots, prefix dropped after) + q_head 2·D·2.
- inference step = H_cycles·(L_cycles+1) network calls + heads (forward only).
- inference per example = steps x trajectories x inference step (`inference_flops`): the
  official evaluation is halt_max_steps steps, 1 trajectory.
- training step  = the inference step's forward, plus backward of what carries gradient:
  the last cycle's L_cycles+1 calls and the heads, at 2x their forward (grad wrt input and
  wrt weights) — the earlier cycles run under no_grad.
  train = fwd(all calls) + 2·fwd(last L+1 calls) + 3·fwd(heads).

Sudoku TRM-MLP (D 512, T 97, I_T 512, I_D 1536, 2 layers, H 3, L 6): one call is
1.2206 GFLOP, so inference = 21 calls + heads = 25.63 GFLOP and training = 35 calls
+ 3·heads = 42.72 GFLOP, the figures of the issue.
"""

from __future__ import annotations

from trm.config import TRMConfig
from trm.model import swiglu_inner


def _swiglu(rows: int, width: int, expansion: float) -> int:
    inner = swiglu_inner(width, expansion)
    return 2 * rows * (width * 2 * inner + inner * width)


def flops_breakdown(config: TRMConfig | dict) -> dict[str, float]:
    """Per-example forward FLOPs of the parts: one network call, the heads."""
    cfg = TRMConfig.from_dict(config) if isinstance(config, dict) else config
    T, D, V = cfg.total_len, cfg.hidden_size, cfg.vocab_size
    if cfg.mlp_t:
        mixing = _swiglu(D, T, cfg.expansion)
    else:
        mixing = 2 * T * D * 3 * D + 2 * 2 * T * T * D + 2 * T * D * D
    block = mixing + _swiglu(T, D, cfg.expansion)
    call = cfg.L_layers * block
    heads = 2 * T * D * V + 2 * D * 2
    return {"network_call": float(call), "heads": float(heads)}


def flops(config: TRMConfig | dict) -> dict[str, float]:
    """Matmul FLOPs per example of one ACT step: {"train_step", "inference_step"}."""
    cfg = TRMConfig.from_dict(config) if isinstance(config, dict) else config
    parts = flops_breakdown(cfg)
    calls_fwd = cfg.H_cycles * (cfg.L_cycles + 1)
    calls_grad = cfg.L_cycles + 1
    inference = calls_fwd * parts["network_call"] + parts["heads"]
    train = (calls_fwd + 2 * calls_grad) * parts["network_call"] + 3 * parts["heads"]
    return {"train_step": float(train), "inference_step": float(inference)}


def inference_flops(config: TRMConfig | dict, steps: float, trajectories: int = 1) -> float:
    """Matmul FLOPs per example of test-time inference: `steps` ACT steps (a mean is fine, e.g.
    the steps ACT halting took) for each of `trajectories` copies, heads counted every step
    (as `TRM.rollout_preds` and `predict(halt=True)` run them; `predict(halt=False)` runs the
    heads on the last step only, slightly less)."""
    if not isinstance(steps, (int, float)) or isinstance(steps, bool) or not steps > 0:
        raise ValueError(f"steps must be a number > 0, got {steps!r}")
    if not isinstance(trajectories, int) or isinstance(trajectories, bool) or trajectories < 1:
        raise ValueError(f"trajectories must be an integer >= 1, got {trajectories!r}")
    return float(steps * trajectories * flops(config)["inference_step"])
