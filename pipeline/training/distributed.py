"""The few collectives the training loop needs beyond DDP's gradient all-reduce.

They run over the default process group that Ray Train's `TorchTrainer` initialises (gloo on
CPU, NCCL on GPU); in a single process (no process group) each is the identity. Nothing here
creates a process group.

- `gather_rows`: the `gather` of `trm.optim.SignSGD`: every rank's (puzzle ids, row grads),
  so all ranks apply the same sparse update to their copy of the puzzle table.
- `sum_across_ranks`: metric sums (counts, correct examples) for logging and evaluation.
- `gather_to_main`: small Python objects (ARC vote tables) to rank 0 only.
- `main_decides`: rank 0's yes/no on every rank (a wall-clock checkpoint: clocks differ).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def gather_rows(ids_N: torch.Tensor, grads_NE: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """All ranks' (ids [N], grads [N, E]) concatenated in rank order ([W*N], [W*N, E]).

    Every rank has the same per-rank batch N (equal shards), so a plain all-gather works.
    """
    if world_size() == 1:
        return ids_N, grads_NE
    ids_list = [torch.empty_like(ids_N) for _ in range(world_size())]
    grads_list = [torch.empty_like(grads_NE) for _ in range(world_size())]
    dist.all_gather(ids_list, ids_N.contiguous())
    dist.all_gather(grads_list, grads_NE.contiguous())
    return torch.cat(ids_list), torch.cat(grads_list)


def sum_across_ranks(
    values: dict[str, float], device: torch.device | str = "cpu"
) -> dict[str, float]:
    """Sum each value over all ranks (one all-reduce of a float64 vector)."""
    if world_size() == 1 or not values:
        return dict(values)
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return dict(zip(keys, t.tolist()))


def min_across_ranks(value: int, device: torch.device | str = "cpu") -> int:
    if world_size() == 1:
        return value
    t = torch.tensor([value], dtype=torch.int64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return int(t.item())


def gather_to_main(obj: Any) -> list[Any] | None:
    """`obj` from every rank, in rank order, on rank 0; None on the other ranks.

    Pickled through the process group (`gather_object`), so keep it small: rank 0 alone holds
    all of them, the other ranks only send.
    """
    if world_size() == 1:
        return [obj]
    out: list[Any] | None = [None] * world_size() if rank() == 0 else None
    dist.gather_object(obj, out, dst=0)
    return out


def main_decides(flag: bool, device: torch.device | str = "cpu") -> bool:
    """Rank 0's `flag` on every rank (one broadcast): a decision every rank must take alike
    that depends on something only one rank should judge, such as its wall clock."""
    if world_size() == 1:
        return flag
    t = torch.tensor([1 if flag else 0], dtype=torch.int64, device=device)
    dist.broadcast(t, src=0)
    return bool(t.item())
