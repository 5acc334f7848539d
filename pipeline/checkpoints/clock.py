"""When a run checkpoints besides its step schedule: `checkpoint.every_minutes` of wall clock,
decided by rank 0 for every rank, and what such a checkpoint's report may be ranked by."""

from __future__ import annotations

import math
import time
from typing import Any

import torch

from pipeline.training.distributed import main_decides


class CheckpointClock:
    """`checkpoint.every_minutes`: whether that much wall-clock time has passed since the last
    checkpoint, by rank 0's clock for every rank (ranks' clocks and speeds differ, and a
    checkpoint is a step all ranks take together)."""

    def __init__(self, minutes: float, device: torch.device) -> None:
        self.every_s, self.device = minutes * 60, device
        self.restart()

    def restart(self) -> None:
        self.since = time.monotonic()

    def due(self) -> bool:
        """Collective when on: every rank calls it at the same steps."""
        if not self.every_s:
            return False
        return main_decides(time.monotonic() - self.since >= self.every_s, self.device)


def unranked(metrics: dict[str, Any]) -> dict[str, Any]:
    """A time-based checkpoint's report: the training metrics only. The last evaluation's
    scores belong to an earlier step, so retention keeps it as the latest, never as a best."""
    return {k: v for k, v in metrics.items() if not k.startswith("eval/")}


SCORE = "checkpoint_score"
"""The reported metric Ray Train's retention ranks a worker group's checkpoints by
(`pipeline.training.cluster.checkpoint_config`): `checkpoint.metric` at an evaluation, the worst
value at a time-based checkpoint. Ranked by the last evaluation's scores instead, a time-based
checkpoint ties with the evaluation's own checkpoint, and Ray Train keeps the later of equal
scores: the checkpoint holding the run's best evaluation would be deleted."""


def scored(metrics: dict[str, Any], report: dict[str, Any], ck: dict[str, Any]) -> dict:
    """`metrics` with the `SCORE` of a checkpoint whose `report.json` is `report`, ranked by
    the checkpoint section `ck` (its `metric` and `mode`)."""
    value = report.get(ck["metric"])
    if not isinstance(value, int | float) or isinstance(value, bool):
        value = -math.inf if ck["mode"] == "max" else math.inf
    return {**metrics, SCORE: float(value)}
