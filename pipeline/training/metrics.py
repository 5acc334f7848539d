"""Training metrics: the `train/*` names, the window that sums them between log lines, MFU.

`MetricWindow` collects the per-step sums of `train_step` (rows, losses, accuracy counts) and
the time rank 0 waited for data; `summary` adds them across ranks and turns them into the
`train/*` metrics of `METRICS`. MFU is model FLOPs (`trm.flops` train FLOPs per batch row) per
second over the device's peak: a datasheet number for known GPUs in the run's dtype, else the
best of a few square matmuls measured at start (CPUs), else `resources.peak_flops` when set.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import torch

from pipeline.config.metric_names import TRAIN_METRICS
from pipeline.training import distributed
from pipeline.training.device import DeviceSums

METRICS = {
    "step": "optimiser steps taken (= ACT steps of the batch slots)",
    "epoch": "current pass over the training split",
    **TRAIN_METRICS,
}
"""What a training run logs at each logging interval (`MetricWindow.summary`: the `train/*`
names of `pipeline.config.metric_names`, which a sweep may rank trials by)."""


class MetricWindow:
    """Sums of the per-step training metrics since the last summary, on this rank."""

    def __init__(self, flops_per_row: float, peak_flops: float, world: int, device: torch.device):
        self.flops_per_row = flops_per_row
        self.peak_flops = peak_flops
        self.world = world
        self.device = device
        self.restart()

    def restart(self) -> None:
        """Start a new window now: time spent evaluating or checkpointing since the last
        summary is not training throughput."""
        self.sums = DeviceSums()  # read back once per logging interval
        self.start = time.perf_counter()
        self.wait = 0.0
        self.steps = 0

    def add(self, step_sums: dict[str, torch.Tensor | float], wait: float) -> None:
        """One training step's sums (`train_step`) and the seconds it waited for its batch."""
        self.sums.add(step_sums)
        self.wait += wait
        self.steps += 1

    def summary(self, lr: float) -> dict[str, float]:
        """The window's `train/*` metrics over all ranks (a collective: every rank calls it)."""
        sums = distributed.sum_across_ranks(self.sums.take(), self.device)
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        rows, count = sums["rows"], max(sums["count"], 1.0)
        ex_s = rows / elapsed
        peak = self.peak_flops
        return {
            "train/loss": sums["loss"] / rows,
            "train/lm_loss": sums["lm_loss"] / rows,
            "train/q_halt_loss": sums["q_halt_loss"] / rows,
            "train/accuracy": sums["accuracy"] / count,
            "train/exact_accuracy": sums["exact_accuracy"] / count,
            "train/q_halt_accuracy": sums["q_halt_accuracy"] / count,
            "train/steps": sums["steps"] / count,
            "train/lr": lr,
            "train/examples_per_s": ex_s,
            "train/puzzles_per_s": sums["count"] / elapsed,
            "train/data_wait_fraction": self.wait / elapsed,
            "train/mfu": (ex_s * self.flops_per_row / (peak * self.world)) if peak else 0.0,
        }

    def eta(self, steps_left: int) -> str:
        """Time to go at this window's pace, e.g. '3m05s' or '1h02m'."""
        seconds = steps_left * (time.perf_counter() - self.start) / max(self.steps, 1)
        if not math.isfinite(seconds):
            return "?"
        s = int(seconds)
        return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


# Dense (no sparsity) datasheet peaks, FLOP/s per GPU, by a substring of the device name:
# (bf16/fp16 tensor cores, tf32 tensor cores, plain fp32). First match wins, so the more
# specific names come first.
GPU_PEAKS: tuple[tuple[str, float, float, float], ...] = (
    ("H200", 989e12, 494e12, 67e12),
    ("H100 PCIe", 756e12, 378e12, 51e12),
    ("H100", 989e12, 494e12, 67e12),
    ("A100", 312e12, 156e12, 19.5e12),
    ("L40S", 362e12, 183e12, 91.6e12),
    ("L4", 121e12, 60e12, 30.3e12),
)


def datasheet_peak_flops(name: str, dtype: torch.dtype, tf32: bool) -> float:
    """The datasheet peak of the GPU called `name` for matmuls in `dtype` (0 if unknown)."""
    for key, half, tf32_peak, fp32 in GPU_PEAKS:
        if key in name:
            if dtype in (torch.bfloat16, torch.float16):
                return half
            return tf32_peak if tf32 else fp32
    return 0.0


def probe_peak_flops(
    device: torch.device,
    dtype: torch.dtype = torch.float32,
    n: int = 0,
    timer: Callable[[], float] = time.perf_counter,
) -> float:
    """Best achieved FLOP/s of an `n` x `n` matmul (default 2048 on GPUs, 1024 on CPUs) on
    `device` over several timed repetitions: a stand-in for the peak where no datasheet number
    is known (CPUs), and the square-matmul peak of the benchmarks. The best repetition, not the
    mean, so that a burst of contention while probing does not lower the peak and push the
    reported utilisation over 100%. `timer` is wall time by default (benchmarks may pass
    `time.process_time`)."""
    n = n or (2048 if device.type == "cuda" else 1024)
    # own generator: the global RNG state is part of a checkpoint (ACT exploration draws)
    g = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, device=device, dtype=dtype, generator=g)
    b = torch.randn(n, n, device=device, dtype=dtype, generator=g)
    inner = 10 if device.type == "cuda" else 1
    a @ b  # warm-up
    best = float("inf")
    for _ in range(5):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t = timer()
        for _ in range(inner):
            a @ b
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, timer() - t)
    return 2 * n**3 * inner / max(best, 1e-9)


def device_peak_flops(device: torch.device, dtype: torch.dtype) -> tuple[float, str]:
    """(peak FLOP/s of one `device` for `dtype` matmuls, where the number comes from): the
    datasheet for known GPUs, else a matmul probe."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        peak = datasheet_peak_flops(name, dtype, torch.backends.cuda.matmul.allow_tf32)
        if peak:
            return peak, f"datasheet: {name}"
    return probe_peak_flops(device, dtype), "probe: best square matmul"


def peak_flops(configured: float, device: torch.device, dtype: torch.dtype) -> tuple[float, str]:
    """(peak FLOP/s for MFU, its source): `resources.peak_flops` when set (non-zero), else
    `device_peak_flops` (on CPUs the probe runs in fp32 whatever the model's dtype)."""
    if configured:
        return configured, "config: resources.peak_flops"
    return device_peak_flops(device, dtype if device.type == "cuda" else torch.float32)
