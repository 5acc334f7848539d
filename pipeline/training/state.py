"""What training carries from step to step, and the step itself.

`TrainState` holds the model, both optimisers, the EMA, the ACT carry, the step and the data
position; `save` / `load` write and read it as checkpoint files (`pipeline.checkpoints.store`:
`trainer.pt` from rank 0, `rank{r}.pt` with each rank's carry and RNG states), so a resumed
run takes the same steps on the same data with the same exploration draws.

`train_step` is one step of the recipe (docs/trm-behaviour.md, "Training recipe"): one ACT
step of every batch slot with the carry passed on (deep supervision), loss / per-worker batch
(DDP's gradient mean makes it the official sum / global batch), AdamATan2 on the parameters,
SignSGD on the puzzle table, warm-up + cosine learning rate, EMA of the parameters.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch

from pipeline.checkpoints import store as ckpt
from pipeline.config.run import RunConfig
from pipeline.training import distributed
from trm import TRM, Carry, TRMConfig
from trm.losses import act_loss
from trm.optim import EMA, AdamATan2, SignSGD, lr_lambda


def batch_chunk(setting: int, mcfg: TRMConfig, device: torch.device) -> int | None:
    """`TRM.batch_chunk` for `resources.batch_chunk` (-1 = auto): on a CPU, slices of 8 when
    the MLP intermediate of one example is 64 KiB or more (the paper configs: ~0.5 MiB, where
    slices of 8 measured 67% -> 83% MFU, benchmarks/README.md); smaller models, whose whole
    batch stays in cache and whose steps are dominated by per-call overhead, and GPUs take the
    whole batch at once."""
    if setting != -1:
        return setting or None
    inter = mcfg.total_len * mcfg.hidden_size * mcfg.expansion * 2 / 3 * 4  # SwiGLU, fp32 bytes
    return 8 if device.type == "cpu" and inter >= 64 * 1024 else None


@dataclass
class TrainState:
    """Everything a checkpoint restores; `create` builds a fresh one, `load` resumes one."""

    model: TRM
    opt: AdamATan2
    sparse_opt: SignSGD | None
    """The puzzle table's optimiser; None when the model has no puzzle embedding."""
    ema: EMA | None
    carry: Carry | None = None
    """The ACT carry: examples mid-way through their steps (None until the first step)."""
    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    """Batches of `epoch` already trained on: where the data stream resumes."""
    last_eval: dict[str, float] = field(default_factory=dict)
    best_eval: float | None = None
    """The best value of `checkpoint.metric` evaluated so far (saved: a resumed run checkpoints
    only evaluations that beat it)."""
    lr: float = 0.0
    """AdamATan2's learning rate at the last step (follows from `step`; not saved)."""

    @classmethod
    def create(cls, cfg: RunConfig, mcfg: TRMConfig, rank: int, device: torch.device) -> TrainState:
        """A fresh state: the same initial weights on every rank (seed `data.seed`), then the
        global RNG seeded per rank, so that ACT exploration draws differ across ranks as in
        the official trainer."""
        torch.manual_seed(cfg.data.seed)
        model = TRM(mcfg).to(device)
        model.batch_chunk = batch_chunk(cfg.resources.batch_chunk, mcfg, device)
        o = cfg.optim
        opt = AdamATan2(
            model.parameters(), lr=o.lr, betas=(o.beta1, o.beta2), weight_decay=o.weight_decay
        )
        sparse_opt = None
        if model.puzzle_emb is not None:
            sparse_opt = SignSGD(
                model.puzzle_emb,
                lr=o.puzzle_emb_lr,
                weight_decay=o.puzzle_emb_weight_decay,
                gather=distributed.gather_rows,
            )
        ema = EMA(model, o.ema_rate) if o.ema else None
        torch.manual_seed(cfg.data.seed * 1009 + rank + 1)
        return cls(model, opt, sparse_opt, ema)

    def improves(self, metrics: dict[str, float], metric: str, mode: str) -> bool:
        """Whether `metrics` (an evaluation) beats the best `metric` so far in direction
        `mode` (the first evaluation does); records it as the best when it does."""
        value = metrics.get(metric)
        if not isinstance(value, int | float):
            return False
        best = self.best_eval
        if best is not None and not (value > best if mode == "max" else value < best):
            return False
        self.best_eval = float(value)
        return True

    def eval_model(self) -> torch.nn.Module:
        """The weights evaluation uses: a copy holding the EMA averages, else the live model."""
        return self.ema.averaged(self.model) if self.ema is not None else self.model

    def save(self, directory: str, rank: int, world: int, extra: dict[str, Any]) -> None:
        """Write this rank's checkpoint files into `directory`: `trainer.pt` (rank 0: weights,
        optimisers, EMA, position, last evaluation, plus `extra`) and `rank{rank}.pt`."""
        if rank == 0:
            ckpt.save(directory, ckpt.TRAINER_FILE, {
                "step": self.step, "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch,
                "world_size": world, "model": self.model.state_dict(),
                "optim": self.opt.state_dict(),
                "sparse_optim": self.sparse_opt.state_dict() if self.sparse_opt else None,
                "ema": self.ema.state_dict() if self.ema is not None else None,
                "last_eval": self.last_eval, "best_eval": self.best_eval, **extra,
            })  # fmt: skip
        ckpt.save(directory, ckpt.rank_file(rank), {
            "step": self.step, "rng": ckpt.capture_rng(), "carry": _carry_state(self.carry),
        })  # fmt: skip

    def load(self, directory: str, rank: int, world: int) -> bool:
        """Restore from the checkpoint in `directory`. Returns whether this rank's carry and RNG
        states were restored too: not when the checkpoint was written by another number of
        workers (then the examples mid-way through their ACT steps restart)."""
        state = ckpt.load(directory, ckpt.TRAINER_FILE)
        _load_model_state(self.model, state["model"], directory)
        self.opt.load_state_dict(state["optim"])
        if self.sparse_opt is not None:
            self.sparse_opt.load_state_dict(state["sparse_optim"])
        if self.ema is not None and state.get("ema") is not None:
            self.ema.load_state_dict(state["ema"])
        self.step, self.epoch = state["step"], state["epoch"]
        self.batch_in_epoch = state["batch_in_epoch"]
        self.last_eval = state.get("last_eval", {})
        self.best_eval = state.get("best_eval")
        if not ckpt.exists(directory, ckpt.rank_file(rank)) or state["world_size"] != world:
            return False
        rs = ckpt.load(directory, ckpt.rank_file(rank))
        ckpt.restore_rng(rs["rng"])
        if rs["carry"] is not None:
            self.carry = _carry_from_state(rs["carry"], next(self.model.parameters()).device)
        return True


def learning_rates(cfg: RunConfig, step: int) -> tuple[float, float]:
    """(AdamATan2 lr, puzzle-table lr) at `step`: linear warm-up, then cosine to a floor of
    `optim.lr_min_ratio` (constant after warm-up at ratio 1, the paper's setting)."""
    o = cfg.optim
    scale = lr_lambda(
        step, warmup_steps=o.lr_warmup_steps, total_steps=cfg.schedule.steps,
        min_ratio=o.lr_min_ratio,
    )  # fmt: skip
    return o.lr * scale, o.puzzle_emb_lr * scale


def train_step(
    state: TrainState, net: torch.nn.Module, batch: dict[str, torch.Tensor], cfg: RunConfig
) -> dict[str, torch.Tensor | float]:
    """One optimiser step (= one ACT step of every batch slot) on `batch`, through `net` (the
    model as wrapped for this run: DDP, compiled). Returns this rank's metric sums: `rows`,
    `loss` and `trm.losses.act_loss`'s sums."""
    state.step += 1
    state.lr, table_lr = learning_rates(cfg, state.step)
    for g in state.opt.param_groups:
        g["lr"] = state.lr
    if state.sparse_opt is not None:
        for g in state.sparse_opt.param_groups:
            g["lr"] = table_lr

    if state.carry is None:
        state.carry = state.model.initial_carry(batch)
    state.carry, out = net(state.carry, batch)
    loss, sums = act_loss(out, state.carry, loss_type=cfg.optim.loss_type)
    rows = state.model.config.batch_size
    # DDP averages gradients over ranks, so loss / rows here is the official sum / global batch
    (loss / rows).backward()
    state.opt.step()
    if state.sparse_opt is not None:
        state.sparse_opt.step()
    state.opt.zero_grad(set_to_none=True)
    if state.sparse_opt is not None:
        state.sparse_opt.zero_grad()
    if state.ema is not None:
        state.ema.update(state.model)
    # tensors: `MetricWindow` keeps the sums on the device and reads them once per interval
    return {"rows": rows, "loss": loss.detach(), **sums}


def _carry_state(carry: Carry | None) -> dict[str, Any] | None:
    """`carry` as CPU tensors (a checkpoint is loadable on any device)."""
    if carry is None:
        return None
    d = {f.name: getattr(carry, f.name) for f in dataclasses.fields(carry)}
    return {k: ({kk: vv.cpu() for kk, vv in v.items()} if isinstance(v, dict) else v.cpu())
            for k, v in d.items()}  # fmt: skip


def _carry_from_state(d: dict[str, Any], device: torch.device) -> Carry:
    return Carry(**{
        k: ({kk: vv.to(device) for kk, vv in v.items()} if isinstance(v, dict) else v.to(device))
        for k, v in d.items()
    })  # fmt: skip


def _load_model_state(model: torch.nn.Module, state: dict[str, Any], where: str) -> None:
    """`model.load_state_dict`, a `CheckpointError` naming the checkpoint when the shapes or
    keys do not fit (a checkpoint of another model config): retrying cannot fix that."""
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        detail = " ".join(str(e).split())[:300]
        raise ckpt.CheckpointError(
            f"checkpoint {where!r} does not fit this model ({detail}); the run's model config "
            "changed since it was written: use another name or --fresh"
        ) from None
