"""Getting a training step onto its device without stalling it.

- `to_device(batch, device)`: a numpy batch to int64 device tensors. Each array travels as the
  narrowest integer type that holds its values (Sudoku tokens: 1 byte instead of 8) and is
  widened on the device; on a GPU the host copy sits in pinned (page-locked) memory so that the
  copy is asynchronous (`non_blocking` on ordinary pageable memory silently waits).
- `DeviceSums`: metric sums kept on the device and read back once per logging interval, so a
  step never waits for the GPU to finish (a `float(tensor)` per metric per step would).
- `compile_model(model, net, scope)`: `resources.compile` ('off', 'blocks', 'model').
- `trial_device(use_gpu)`: the device of a one-process sweep trial, with the explicit
  `TRM_SIMULATE_GPUS=1` switch for clusters whose raylets declare GPUs they do not have.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch

BATCH_KEYS = ("inputs", "labels", "puzzle_identifiers")
_NARROW = (np.uint8, np.int8, np.int16, np.int32)
SIMULATE_GPUS_ENV = "TRM_SIMULATE_GPUS"
"""Set to 1 on a simulated cluster (raylets started with Ray's fake `num_gpus`, no CUDA): a trial
that requests GPUs is placed as on the real cluster but computes on the CPU. Without it such a
trial fails on its first CUDA call, as it should on a real cluster whose GPU is missing."""


def narrowest(a: np.ndarray) -> np.ndarray:
    """`a` (integers) as the smallest of uint8, int8, int16, int32 that holds its values (int64
    when none does), contiguous."""
    if a.dtype.kind not in "iub":
        raise ValueError(f"expected an integer array, got dtype {a.dtype}")
    if a.size == 0:
        return np.ascontiguousarray(a, dtype=np.int8)
    lo, hi = int(a.min()), int(a.max())
    for dt in _NARROW:
        info = np.iinfo(dt)
        if info.min <= lo and hi <= info.max:
            return np.ascontiguousarray(a, dtype=dt)
    return np.ascontiguousarray(a, dtype=np.int64)


def pins_memory(device: torch.device) -> bool:
    """Whether host copies for `device` go through pinned memory (CUDA only: pinning needs a
    CUDA driver and helps nothing else)."""
    return device.type == "cuda" and torch.cuda.is_available()


def to_device(batch: Mapping[str, np.ndarray], device: torch.device) -> dict[str, torch.Tensor]:
    """The batch's `BATCH_KEYS` as int64 tensors on `device` (narrow on the wire, see above).
    The host arrays may be reused as soon as this returns: pinning copies them."""
    pin = pins_memory(device)
    out = {}
    for k in BATCH_KEYS:
        host = torch.from_numpy(narrowest(np.asarray(batch[k])))
        if pin:
            # the caching host allocator keeps this block until the async copy has run
            host = host.pin_memory()
        out[k] = host.to(device, non_blocking=pin).long()
    return out


class DeviceSums:
    """Sums of per-step metrics, kept where the metrics are (float64, like the Python floats
    they replace: the same sums bit for bit). `take()` reads them all back in one transfer and
    starts over."""

    def __init__(self) -> None:
        self._sums: dict[str, Any] = {}

    def add(self, values: Mapping[str, torch.Tensor | float]) -> None:
        for k, v in values.items():
            v = v.detach().to(torch.float64) if isinstance(v, torch.Tensor) else float(v)
            self._sums[k] = self._sums[k] + v if k in self._sums else v

    def take(self) -> dict[str, float]:
        sums, self._sums = self._sums, {}
        tensors = {k: v for k, v in sums.items() if isinstance(v, torch.Tensor)}
        if tensors:
            read = torch.stack(list(tensors.values())).tolist()  # the one synchronisation
            sums.update(zip(tensors, read))
        return {k: float(v) for k, v in sums.items()}


def compile_model(
    model: torch.nn.Module, net: Callable[..., Any], scope: str
) -> Callable[..., Any]:
    """What the loop calls for a step under `resources.compile` = `scope`: `net` itself
    ('off'), `net` with each of `model.layers` compiled in place ('blocks': one graph per
    block, reused by every call of the recursion, unchanged state-dict keys, nothing for DDP
    to split), or `torch.compile(net)` ('model')."""
    if scope == "off":
        return net
    if scope == "blocks":
        for block in model.layers:
            block.compile()
        return net
    if scope == "model":
        return torch.compile(net)
    raise ValueError(f"compile scope must be off, blocks or model, got {scope!r}")


def simulating_gpus() -> bool:
    """Whether `SIMULATE_GPUS_ENV` is set to 1 (any other non-empty value is an error, so a
    typo never silently trains on the wrong device)."""
    value = os.environ.get(SIMULATE_GPUS_ENV, "")
    if value not in ("", "0", "1"):
        raise ValueError(f"{SIMULATE_GPUS_ENV} must be 0 or 1, got {value!r}")
    return value == "1"


def trial_device(use_gpu: bool) -> torch.device:
    """`cuda` for a trial placed with GPUs, else `cpu`; `cpu` for both under the simulation
    switch (`SIMULATE_GPUS_ENV`), which only a test or benchmark cluster sets."""
    if use_gpu and simulating_gpus():
        return torch.device("cpu")
    return torch.device("cuda" if use_gpu else "cpu")
