"""What the training sampler delivers, checked without a model: per-epoch coverage across ranks
and distinct puzzle groups per global batch next to uniform sampling. The numbers come from
ShardStream.batch_rows, the plan the training streams read (`build_data.py inspect`).

    report = sampler_report("data/arc1", batch_size=768, world_size=3, epochs=2)
    report["coverage"]         # {"rows", "seen", "duplicates", "missed", ...}, summed over epochs
    report["groups_per_batch"] # {"median", "min", "uniform_expectation", ...}
"""

from __future__ import annotations

import math

import numpy as np

from pipeline.data.meta import read_meta
from pipeline.data.stream import ShardStream


def uniform_distinct_groups(group_sizes: np.ndarray, batch: int) -> float:
    """Expected distinct groups in `batch` rows drawn uniformly without replacement from rows
    falling into groups of the given sizes: sum over groups of 1 - C(N - n_g, B) / C(N, B)."""
    n = int(group_sizes.sum())
    b = min(batch, n)

    def log_c(a: int) -> float:  # log C(a, b) up to the term that cancels
        return math.lgamma(a + 1) - math.lgamma(a - b + 1) if a >= b else -math.inf

    sizes, counts = np.unique(group_sizes, return_counts=True)
    miss = [math.exp(log_c(n - int(s)) - log_c(n)) for s in sizes]
    return float(sum(c * (1 - m) for c, m in zip(counts, miss)))


def sampler_report(uri: str, split: str = "train", *, batch_size: int = 768, world_size: int = 1,
                   epochs: int = 2, seed: int = 0, augment: str | bool = True,
                   num_aug: int = 0) -> dict:  # fmt: skip
    """Run the training sampler for `epochs` epochs on every rank; see the module docstring."""
    if world_size < 1 or epochs < 1 or batch_size % world_size:
        raise ValueError(
            f"need world_size >= 1, epochs >= 1 and batch_size ({batch_size}) divisible by "
            f"world_size ({world_size})"
        )
    meta = read_meta(uri)
    per_rank = batch_size // world_size
    first = ShardStream(uri, split, per_rank, 0, world_size, seed, augment=augment,
                        num_aug=num_aug, meta=meta, prefetch=0)  # fmt: skip
    streams = [first] + [
        ShardStream(
            uri,
            split,
            per_rank,
            r,
            world_size,
            seed,
            augment=augment,
            num_aug=num_aug,
            meta=meta,
            prefetch=0,
            reader=first.reader,
        )
        for r in range(1, world_size)
    ]
    if first.num_batches == 0:
        raise ValueError(
            f"an epoch of {split} holds {first.rows_per_epoch} rows, fewer than one global "
            f"batch of {batch_size}"
        )
    groups = first.plan.groups
    gid = groups.group_of_row
    delivered, distinct = [], []
    for e in range(epochs):
        parts = [s.set_epoch(e).batch_rows() for s in streams]
        rows = np.concatenate([p[0] for p in parts], axis=1)  # [batches, W * B]: global batches
        passes = np.concatenate([p[1] for p in parts], axis=1)
        distinct += [len(np.unique(gid[r])) for r in rows]
        delivered.append(np.stack([passes.reshape(-1), rows.reshape(-1)]))
    pairs = np.concatenate(delivered, axis=1)
    coverage = _coverage(pairs[:, pairs[0] < epochs], groups, gid, epochs)
    expect = uniform_distinct_groups(groups.variants * groups.size, batch_size)
    return {
        "uri": uri, "split": split, "rows": groups.num_rows, "groups": groups.num_groups,
        "rows_per_epoch": first.rows_per_epoch, "batch_size": batch_size,
        "world_size": world_size, "epochs": epochs, "seed": seed, "augment": first.regime,
        "batches_per_epoch": [first.set_epoch(e).num_batches for e in range(epochs)],
        "coverage": coverage,
        "groups_per_batch": {
            "median": float(np.median(distinct)), "min": float(np.min(distinct)),
            "uniform_expectation": round(expect, 2),
            "median_vs_uniform": round(float(np.median(distinct)) / expect, 4),
        },
    }  # fmt: skip


def _coverage(pairs: np.ndarray, groups, gid: np.ndarray, epochs: int) -> dict:
    """Coverage of (epoch, row) pairs delivered across ranks: every epoch must hold every
    group once, with all rows of one of its variants."""
    per_epoch_rows = int(groups.size.sum())
    uniq = np.unique(pairs, axis=1)
    seen = uniq.shape[1]
    # per (epoch, group): rows seen must be exactly one variant's rows
    eg = np.unique(np.stack([uniq[0], gid[uniq[1]]]), axis=1, return_counts=True)
    groups_seen = eg[0].shape[1]
    whole = int((eg[1] == groups.size[eg[0][1]]).sum())
    return {
        "rows": per_epoch_rows * epochs,
        "seen": seen,
        "duplicates": int(pairs.shape[1] - seen),
        "missed": per_epoch_rows * epochs - seen,
        "groups": groups.num_groups * epochs,
        "groups_seen": groups_seen,
        "groups_whole_variant": whole,
        "epochs": epochs,
    }


def format_report(r: dict) -> str:
    c, g = r["coverage"], r["groups_per_batch"]
    exact = c["duplicates"] == 0 and c["missed"] == 0 and c["groups_seen"] == c["groups"]
    return "\n".join([
        f"{r['uri']} [{r['split']}]: {r['rows']} rows in {r['groups']} groups; an epoch takes "
        f"one variant per group: {r['rows_per_epoch']} rows (augment: {r['augment']})",
        f"sampler: global batch {r['batch_size']} = {r['world_size']} rank(s) x "
        f"{r['batch_size'] // r['world_size']}, seed {r['seed']}, {r['epochs']} epoch(s), "
        f"batches per epoch {sorted(set(r['batches_per_epoch']))}",
        f"coverage over {r['epochs']} epoch(s), all ranks: {c['seen']} of {c['rows']} rows seen, "
        f"{c['duplicates']} duplicates, {c['missed']} missed; groups seen {c['groups_seen']} of "
        f"{c['groups']} ({c['groups_whole_variant']} as one whole variant) -> "
        + ("exact" if exact else "NOT exact"),
        f"distinct groups per global batch: median {g['median']:g}, min {g['min']:g}; uniform "
        f"sampling expects {g['uniform_expectation']:g} ({100 * g['median_vs_uniform']:.1f}%)",
    ])  # fmt: skip
