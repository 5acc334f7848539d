"""`schedule.epochs` in optimiser steps, from the dataset's real counts.

The official trainer runs `epochs x total_groups x mean_puzzle_examples / global_batch_size`
steps (truncated). Here an epoch is what the training stream reads once: one variant of every
puzzle group, all of its examples (`pipeline.data.sampler.EpochPlan.rows_per_epoch`), so

    steps = int(epochs x rows per epoch / data.global_batch_size)

(the official count uses the mean examples over all stored variants; the two differ only when
a group's variants hold different numbers of examples, which ours never do).
"""

from __future__ import annotations

from pipeline.config.run import RunConfig


def rows_per_epoch(cfg: RunConfig) -> int:
    """Training rows one epoch of `cfg`'s data and augmentation regime reads."""
    from pipeline.data.stream import ShardStream

    stream = ShardStream(cfg.data.uri, "train", batch_size=1, seed=cfg.data.seed,
                         augment=cfg.data.augment, num_aug=cfg.data.num_aug, prefetch=0)  # fmt: skip
    return int(stream.rows_per_epoch)


def with_epoch_steps(cfg: RunConfig) -> tuple[RunConfig, str]:
    """(`cfg` with schedule.steps converted from schedule.epochs, the line saying how); `cfg`
    and '' when it trains by steps."""
    epochs = cfg.schedule.epochs
    if not epochs:
        return cfg, ""
    rows, batch = rows_per_epoch(cfg), cfg.data.global_batch_size
    steps = max(1, int(epochs * rows / batch))
    line = (f"schedule.epochs {epochs} = {steps} steps ({rows} training rows per epoch, "
            f"global batch {batch})")  # fmt: skip
    return cfg.with_overrides([f"schedule.steps={steps}"]), line
