"""`schedule.epochs` in optimiser steps, from the dataset's real counts.

An epoch is what the official loader reads in one pass: the puzzle groups (an original puzzle
and its augmented variants) in a shuffled order, one variant of each with all of its examples.
Our sampler reads the same (`pipeline.data.sampler.EpochPlan.rows_per_epoch`: the rows of one
variant of every group), so

    steps = int(epochs x rows per epoch / data.global_batch_size)

truncated, as the official trainer truncates, and at least 1. The official trainer multiplies
the number of groups by the mean examples per stored variant (`total_groups x
mean_puzzle_examples`), an estimate of the same rows per epoch that weighs each group by how
many variants it stores: the two agree when every group stores the same number of variants
(Sudoku, Maze, an ARC build whose tasks all reached their 1000 distinct variants) and differ
slightly when they do not (an ARC task with fewer distinct variants); ours is the count the
sampler really reads.

The conversion runs once per run, on the driver, where the dataset is checked
(`pipeline/train.py`, `pipeline.training.worker.run_in_process`, a sweep's base in
`pipeline.sweeping.prepare`); the converted config keeps `schedule.epochs` and records
`schedule.rows_per_epoch` beside `schedule.steps`, so all three are MLflow params of the run.
"""

from __future__ import annotations

from collections.abc import Callable

from pipeline.config.run import ConfigError, RunConfig
from pipeline.config.sections import epochs_to_steps


def rows_per_epoch(cfg: RunConfig) -> int:
    """Training rows one epoch of `cfg`'s data and augmentation regime reads."""
    from pipeline.data.stream import ShardStream

    try:
        stream = ShardStream(cfg.data.uri, "train", batch_size=1, seed=cfg.data.seed,
                             augment=cfg.data.augment, num_aug=cfg.data.num_aug, prefetch=0)  # fmt: skip
    except (OSError, ValueError) as e:  # DatasetError is a ValueError
        raise ConfigError(f"data.uri {cfg.data.uri!r}: {e}") from None
    return int(stream.rows_per_epoch)


def with_epoch_steps(cfg: RunConfig, say: Callable[[str], None] | None = None) -> RunConfig:
    """`cfg` with schedule.steps and schedule.rows_per_epoch converted from schedule.epochs,
    saying how with `say(line)` (default: printed as `[<name>] <line>`); `cfg` itself when it
    trains by steps or is converted already."""
    sch = cfg.schedule
    if not sch.epochs or sch.rows_per_epoch:
        return cfg
    rows, batch = rows_per_epoch(cfg), cfg.data.global_batch_size
    steps = epochs_to_steps(sch.epochs, rows, batch)
    line = (f"schedule.epochs {sch.epochs} = {steps} steps ({rows} training rows per epoch: "
            f"one variant of every puzzle group; global batch {batch})")  # fmt: skip
    (say or (lambda text: print(f"[{cfg.name}] {text}", flush=True)))(line)
    return cfg.with_values({"schedule.steps": steps, "schedule.rows_per_epoch": rows})
