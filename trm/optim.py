"""Optimisers of the TRM recipe, in plain PyTorch (any device).

- `AdamATan2`: Adam with the update m̂ / sqrt(v̂) replaced by atan2(m̂, sqrt(v̂)) (no epsilon,
  bounded update), decoupled weight decay; the semantics of the official `adam-atan2` GPU
  kernel (a = b = 1).
- `SignSGD`: the puzzle-table optimiser. Sign of the (row-summed) gradient, decoupled weight
  decay, applied to the rows touched by the last forward only. An optional
  `gather(ids, grads) -> (all_ids, all_grads)` combines rows across data-parallel ranks; the
  communication itself lives outside this library.
- `EMA`: exponential moving average of the parameters (not of the puzzle table); `EMA.fold`
  puts a saved EMA's averages into a saved model state (the weights evaluation uses).
- `lr_lambda`: linear warm-up then cosine decay to `min_ratio`, as a multiplier for LambdaLR.
"""

from __future__ import annotations

import copy
import math
from collections import defaultdict
from collections.abc import Callable, Iterable

import torch
from torch import nn
from torch.optim import Optimizer

from trm.model import SparseEmbedding


def _evaluate(closure: Callable | None):
    """The optimiser-closure convention: re-evaluate the loss with grad enabled."""
    if closure is None:
        return None
    with torch.enable_grad():
        return closure()


class AdamATan2(Optimizer):
    """Adam-atan2 with decoupled weight decay. Per step t, for each parameter p with grad g:

    p ← p·(1 − lr·wd)
    m ← β1·m + (1−β1)·g;   v ← β2·v + (1−β2)·g²
    p ← p − lr/(1−β1^t) · atan2(m, sqrt(v)/sqrt(1−β2^t))
    """

    def __init__(
        self,
        params: Iterable,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        weight_decay: float = 1e-2,
    ):
        if not lr >= 0.0:
            raise ValueError(f"AdamATan2: lr must be >= 0, got {lr!r}")
        if not all(0.0 <= b < 1.0 for b in betas) or len(betas) != 2:
            raise ValueError(f"AdamATan2: betas must be two values in [0, 1), got {betas!r}")
        if not weight_decay >= 0.0:
            raise ValueError(f"AdamATan2: weight_decay must be >= 0, got {weight_decay!r}")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure: Callable | None = None):
        loss = _evaluate(closure)
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if any(p.grad.is_sparse for p in params):
                raise ValueError("AdamATan2 does not take sparse gradients")
            if not params:
                continue
            for p in params:
                if not self.state[p]:
                    self.state[p]["step"] = torch.tensor(0.0)
                    self.state[p]["exp_avg"] = torch.zeros_like(p, dtype=torch.float32)
                    self.state[p]["exp_avg_sq"] = torch.zeros_like(p, dtype=torch.float32)
            # step counts live on the CPU: reading them is no device synchronisation
            steps = [self.state[p]["step"] for p in params]
            torch._foreach_add_(steps, 1)
            by_step: dict[float, list[torch.Tensor]] = defaultdict(list)
            for p, t in zip(params, steps):
                by_step[float(t)].append(p)  # one group unless grads were missing at times
            for t, ps in by_step.items():
                self._update(ps, t, group)
        return loss

    def _update(self, params: list[torch.Tensor], t: float, group: dict) -> None:
        """One step of parameters sharing step count `t`, as multi-tensor (`_foreach`) ops: a
        few kernels for all parameters instead of a few per parameter."""
        lr, wd = group["lr"], group["weight_decay"]
        beta1, beta2 = group["betas"]
        grads = [p.grad.float() for p in params]
        p32 = [p.float() if p.dtype != torch.float32 else p for p in params]
        m = [self.state[p]["exp_avg"] for p in params]
        v = [self.state[p]["exp_avg_sq"] for p in params]
        torch._foreach_mul_(p32, 1 - lr * wd)
        torch._foreach_lerp_(m, grads, 1 - beta1)
        torch._foreach_lerp_(v, torch._foreach_mul(grads, grads), 1 - beta2)
        update = torch._foreach_sqrt(v)
        torch._foreach_div_(update, math.sqrt(1 - beta2**t))
        for m_i, u_i in zip(m, update):  # torch has no multi-tensor atan2
            torch.atan2(m_i, u_i, out=u_i)
        torch._foreach_add_(p32, update, alpha=-lr / (1 - beta1**t))
        for p, q in zip(params, p32):
            if q is not p:
                p.copy_(q)


Gather = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


class SignSGD(Optimizer):
    """Sign-SGD with decoupled weight decay for the sparse puzzle table (`model.puzzle_emb`).

    For the rows r touched by the last train-mode forward (gradients of repeated ids summed):
        w_r ← w_r·(1 − lr·wd) − lr·sign(g_r)
    Untouched rows are left as they are (no decay either). `gather`, when given, maps this
    rank's (ids [N], grads [N, E]) to all ranks' rows before the update.
    """

    def __init__(
        self,
        table: SparseEmbedding,
        lr: float = 1e-2,
        weight_decay: float = 0.1,
        gather: Gather | None = None,
    ):
        if not isinstance(table, SparseEmbedding):
            raise ValueError(
                f"SignSGD expects the model's puzzle table (model.puzzle_emb), got "
                f"{type(table).__name__}"
            )
        if not lr >= 0.0:
            raise ValueError(f"SignSGD: lr must be >= 0, got {lr!r}")
        if not weight_decay >= 0.0:
            raise ValueError(f"SignSGD: weight_decay must be >= 0, got {weight_decay!r}")
        self.table = table
        self.gather = gather
        super().__init__([table.weight], dict(lr=lr, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure: Callable | None = None):
        loss = _evaluate(closure)
        local = self.table.local_weight
        if local is None or local.grad is None:
            return loss
        ids_N, grad_NE = self.table.local_ids, local.grad
        if self.gather is not None:
            ids_N, grad_NE = self.gather(ids_N, grad_NE)
        inverse_N = _group_index(ids_N)
        E = grad_NE.shape[-1]
        # row n's group holds the summed gradient of every row with its id (slots past the
        # number of distinct ids stay zero and are never read)
        grad_GE = torch.zeros_like(grad_NE)
        grad_GE.scatter_add_(0, inverse_N.unsqueeze(-1).expand(-1, E), grad_NE)
        for group in self.param_groups:
            lr, wd = group["lr"], group["weight_decay"]
            (weight,) = group["params"]
            w_NE = weight[ids_N]
            w_NE.mul_(1.0 - lr * wd).add_(torch.sign(grad_GE[inverse_N]).to(w_NE.dtype), alpha=-lr)
            weight[ids_N] = w_NE  # repeated ids write the same values
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        super().zero_grad(set_to_none)
        if self.table.local_weight is not None:
            self.table.local_weight.grad = None


def _group_index(ids_N: torch.Tensor) -> torch.Tensor:
    """For each entry, the rank of its value among the distinct values (what
    `unique(return_inverse=True)` returns), from a sort: fixed-size outputs, so no device
    synchronisation, where `unique` must read its data-dependent size back to the host."""
    sorted_N, order_N = ids_N.sort(stable=True)
    starts_N = torch.ones_like(sorted_N, dtype=torch.long)
    starts_N[1:] = sorted_N[1:] != sorted_N[:-1]
    return torch.empty_like(order_N).scatter_(0, order_N, starts_N.cumsum(0) - 1)


class EMA:
    """Exponential moving average of a module's parameters: s ← decay·s + (1 − decay)·p.

    Buffers (the puzzle table, H_init/L_init) are not averaged; `copy_to` and `averaged`
    take them from the live model.
    """

    def __init__(self, model: nn.Module, decay: float = 0.999):
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"EMA: decay must be in [0, 1], got {decay!r}")
        self.decay = decay
        self.shadow = {
            name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad
        }

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """s ← decay·s + (1 − decay)·p, as two multi-tensor ops over all parameters."""
        live = dict(model.named_parameters())
        shadow = list(self.shadow.values())
        torch._foreach_mul_(shadow, self.decay)
        torch._foreach_add_(shadow, [live[k].detach() for k in self.shadow], alpha=1.0 - self.decay)

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Overwrite `model`'s parameters with the averages."""
        for name, p in model.named_parameters():
            if name in self.shadow:
                p.copy_(self.shadow[name])

    def averaged(self, model: nn.Module) -> nn.Module:
        """A deep copy of `model` carrying the averaged parameters (for evaluation)."""
        clone = copy.deepcopy(model)
        self.copy_to(clone)
        return clone

    def state_dict(self) -> dict:
        return {"decay": self.decay, "shadow": {k: v.clone() for k, v in self.shadow.items()}}

    @staticmethod
    def fold(model_state: dict, ema_state: dict | None) -> dict:
        """A model `state_dict` with the averages of an `EMA.state_dict()` in place of the
        parameters they average: the weights a run evaluates with (`model_state` itself when
        the run kept no EMA). `ValueError` when the EMA averages a parameter the model lacks."""
        if not ema_state:
            return model_state
        extra = set(ema_state["shadow"]) - set(model_state)
        if extra:
            raise ValueError(f"EMA state does not match the model; keys not in it: {sorted(extra)}")
        return {**model_state, **ema_state["shadow"]}

    def load_state_dict(self, state: dict) -> None:
        missing = set(self.shadow) ^ set(state["shadow"])
        if missing:
            raise ValueError(f"EMA state does not match the model; differing keys: {missing}")
        self.decay = state["decay"]
        for k, v in state["shadow"].items():
            self.shadow[k].copy_(v)


def lr_lambda(
    step: int,
    *,
    warmup_steps: int,
    total_steps: int,
    min_ratio: float = 0.0,
    num_cycles: float = 0.5,
) -> float:
    """LR multiplier at `step`: step/warmup_steps during warm-up, then cosine from 1 down to
    `min_ratio` over the remaining steps (`min_ratio=1` keeps it constant). Use with
    `torch.optim.lr_scheduler.LambdaLR(opt, functools.partial(lr_lambda, warmup_steps=...))`.
    """
    if step < warmup_steps:
        return step / max(1, warmup_steps)
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    cosine = 0.5 * (1.0 + math.cos(math.pi * num_cycles * 2.0 * progress))
    return min_ratio + max(0.0, (1 - min_ratio) * cosine)
