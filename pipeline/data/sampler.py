"""The training order: which rows each rank reads in each epoch, a pure function of
(seed, epoch, world size). No I/O here: pipeline/data/stream.py reads the rows this plans.

    groups = Groups.from_columns(group_R, variant_R)        # a split's puzzle structure
    plan = EpochPlan(groups, seed=0, shuffle=True, stored_pool=1, virtual_pool=1001)
    rows, k = plan.pass_rows(epoch)                          # one epoch's rows, permuted
    pos = rank_positions(len(rows), world, batch, rank, epoch, start_batch)

Groups. A dataset declares them in its `group` column (an original puzzle and its augmented
copies share a value; the builders write it) and, where a puzzle is several rows, its
`variant` column (ARC: the rows of one task variant share it). Without a `variant` column every
row of a group is its own variant (Sudoku and Maze copies are one row each). A group of one row
is a dataset without groups: every row its own group.

Epochs (pass). Each epoch takes one variant per group, as the official loader does, and permutes
the rows of all chosen variants together with one global permutation keyed by (seed, epoch).
The official loader keeps a puzzle's examples next to each other in a batch; here they are
spread over the epoch, so a batch holds as many distinct puzzles as uniform sampling gives
(`python pipeline/build_data.py inspect` measures it).

Ranks. The permuted epochs, one after the other, form one endless stream of positions; global
batch j is positions [j*W*B, (j+1)*W*B) and rank r takes the r-th B of them: disjoint, equal
slices. Epoch e is the global batches that start inside its permutation, so its last batch may
end with the first rows of epoch e+1's permutation: across ranks every row of an epoch is read
exactly once, and the rows past the last full batch are not dropped but start the next epoch.
Batches per epoch are ceil((e+1)M/(WB)) - ceil(eM/(WB)) for M rows per epoch: equal on every
rank, differing by at most one between epochs.

Augmentation regimes (`data.augment`):
  none        rows as stored (on stored pools: the original, variant 0, of every group);
  on_the_fly  a fresh symmetry per (seed, epoch, row): effectively unlimited augmentation;
  fixed_pool  the paper's regime: per puzzle a pool of 1 + num_aug variants (k = 0 is the
              original), one drawn per epoch. On a dataset that stores its variants
              (materialised) the pool is in storage; otherwise variant k of puzzle p is computed
              from (dataset aug seed, p, k) and costs no storage (ARC: per task its pool of
              distinct variants, which may be smaller, `virtual_pool` per group). Both draw
              with the same key, so they pick the same variant index per group and epoch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from pipeline.config.sections import REGIMES
from pipeline.data.errors import DatasetError
from pipeline.data.meta import DatasetMeta
from trm.puzzles.rng import example_keys, random_ints, random_permutations


@dataclass(frozen=True)
class Groups:
    """A split's rows as groups of equally sized variants."""

    order: np.ndarray
    """int64 [N]: row indices sorted by (group, variant, row)."""
    start: np.ndarray
    """int64 [G]: where group g's rows begin in `order`."""
    variants: np.ndarray
    """int64 [G]: stored variants of group g."""
    size: np.ndarray
    """int64 [G]: rows per variant of group g."""
    key: np.ndarray
    """int64 [N]: each row's `group` value (keys computed pool variants)."""

    @property
    def num_rows(self) -> int:
        return len(self.order)

    @property
    def num_groups(self) -> int:
        return len(self.start)

    @property
    def group_of_row(self) -> np.ndarray:
        """int64 [N]: each row's group index 0..G-1."""
        out = np.empty(self.num_rows, np.int64)
        out[self.order] = np.repeat(np.arange(self.num_groups), self.variants * self.size)
        return out

    @classmethod
    def from_columns(cls, group: np.ndarray, variant: np.ndarray | None = None) -> Groups:
        group = np.asarray(group, np.int64)
        n = len(group)
        rows = np.arange(n)
        if variant is None:
            order = np.argsort(group, kind="stable")
        else:
            order = np.lexsort((rows, np.asarray(variant, np.int64), group))
        g = group[order]
        new_group = np.r_[True, g[1:] != g[:-1]] if n else np.zeros(0, bool)
        start = np.flatnonzero(new_group)
        counts = np.diff(np.r_[start, n])
        if variant is None:
            return cls(order, start, counts, np.ones_like(counts), group)
        v = np.asarray(variant, np.int64)[order]
        vstart = np.flatnonzero(new_group | np.r_[True, v[1:] != v[:-1]] if n else new_group)
        owner = np.searchsorted(start, vstart, side="right") - 1
        variants = np.bincount(owner, minlength=len(start))
        size = counts // variants
        bad = np.flatnonzero(np.diff(np.r_[vstart, n]) != size[owner])
        if len(bad):
            raise DatasetError(
                f"group {int(g[vstart[bad[0]]])}: its variants have different row counts; "
                "every variant of a puzzle must hold the same examples"
            )
        return cls(order, start, variants, size, group)


class EpochPlan:
    """The rows of each epoch: one variant per group, permuted (shuffle) or all rows in storage
    order (no shuffle: evaluation reads everything)."""

    def __init__(self, groups: Groups, *, seed: int, shuffle: bool, stored_pool: int,
                 virtual_pool: int | np.ndarray):  # fmt: skip
        self.groups, self.seed, self.shuffle = groups, seed, shuffle
        self.stored_pool, self.virtual_pool = stored_pool, virtual_pool
        self._cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    @property
    def rows_per_epoch(self) -> int:
        if not self.shuffle:
            return self.groups.num_rows
        return int(self.groups.size.sum())

    def pass_rows(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """(rows int64 [M], k int64 [M]): epoch's rows in reading order and each row's computed
        pool variant (0 = as stored)."""
        if epoch not in self._cache:
            if len(self._cache) > 2:
                self._cache.clear()
            self._cache[epoch] = self._pass(epoch)
        return self._cache[epoch]

    def _pass(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        g = self.groups
        if not self.shuffle:
            rows = np.arange(g.num_rows, dtype=np.int64)
            return rows, np.zeros_like(rows)
        keys = example_keys(self.seed, epoch, np.arange(g.num_groups))
        # a stored pool and a computed one draw alike: the same seed picks the same variant
        # index of a group whether its variants are stored (materialised) or computed
        choice = np.zeros(g.num_groups, np.int64)
        if self.stored_pool > 1:
            choice = random_ints(keys, np.minimum(g.variants, self.stored_pool), stream=103)
        k = np.zeros(g.num_groups, np.int64)
        if (np.asarray(self.virtual_pool) > 1).any():
            k = random_ints(keys, self.virtual_pool, stream=103)
        first = g.start + choice * g.size
        ends = np.cumsum(g.size)
        within = np.arange(int(ends[-1]) if len(ends) else 0) - np.repeat(ends - g.size, g.size)
        rows = g.order[np.repeat(first, g.size) + within]
        k_rows = np.repeat(k, g.size)
        perm = random_permutations(example_keys(self.seed, epoch, np.array([-1])), len(rows),
                                   stream=105)[0]  # fmt: skip
        return rows[perm], k_rows[perm]


def epoch_batch_range(rows_per_epoch: int, global_batch: int, epoch: int) -> tuple[int, int]:
    """Global batches [first, end) of `epoch` in the endless stream of epochs (see the module
    docstring); empty when an epoch holds fewer rows than one global batch."""
    if rows_per_epoch < global_batch:
        return 0, 0
    first = math.ceil(epoch * rows_per_epoch / global_batch)
    return first, math.ceil((epoch + 1) * rows_per_epoch / global_batch)


def rank_positions(rows_per_epoch: int, world: int, batch: int, rank: int, epoch: int,
                   start_batch: int = 0) -> np.ndarray:  # fmt: skip
    """Stream positions (int64 [batches * batch]) rank `rank` reads in `epoch` from batch
    `start_batch` on; position s is row s % M of epoch s // M's permutation."""
    first, end = epoch_batch_range(rows_per_epoch, world * batch, epoch)
    j = np.arange(first + start_batch, end, dtype=np.int64)
    return ((j * world + rank) * batch)[:, None] + np.arange(batch, dtype=np.int64)


def padded_positions(rows_per_epoch: int, world: int, batch: int, rank: int, epoch: int,
                     start_batch: int = 0) -> np.ndarray:  # fmt: skip
    """Evaluation layout: rank r reads a contiguous 1/world of epoch `epoch`'s rows, padded
    to whole batches with position -1 (every row exactly once, no row dropped)."""
    per_rank = math.ceil(rows_per_epoch / world)
    lo = rank * per_rank
    n = min(per_rank, max(0, rows_per_epoch - lo))
    pos = np.full(math.ceil(per_rank / batch) * batch, -1, np.int64)
    pos[:n] = epoch * rows_per_epoch + lo + np.arange(n)
    return pos[start_batch * batch :]


def stored_pool_size(meta: DatasetMeta) -> int:
    """Variants per puzzle a materialised dataset stores (original included); 1 otherwise."""
    a = meta.augmentation
    if a.get("mode") != "materialised":
        return 1
    if "transforms" in a:
        return int(a["transforms"])
    return 1 + int(a.get("num_aug", 0))


def regime_problem(meta: DatasetMeta, regime, num_aug) -> tuple[str, str] | None:
    """(config key, what is wrong) when augmentation `regime` with `num_aug` cannot run on the
    dataset described by `meta`; None when it can."""
    if regime not in REGIMES:
        old = " (true/false were the old values)" if isinstance(regime, bool) else ""
        return "data.augment", f"unknown regime {regime!r}{old}; expected one of {REGIMES}"
    if regime == "fixed_pool" and not (isinstance(num_aug, int) and num_aug >= 1):
        return "data.num_aug", f"must be an integer >= 1 with fixed_pool, got {num_aug!r}"
    mode = meta.augmentation.get("mode")
    if regime == "none":
        return None
    if mode == "materialised":
        stored = stored_pool_size(meta) - 1
        if regime == "on_the_fly":
            return "data.augment", (
                f"on_the_fly: the dataset stores {stored} augmented variants per puzzle "
                "(materialised); use fixed_pool (one stored variant per puzzle per epoch) or none"
            )
        if num_aug > stored:
            return "data.num_aug", f"{num_aug} exceeds the {stored} variants the dataset stores"
        return None
    if mode != "on_the_fly":
        return "data.augment", (
            f"{regime}: the {meta.task} dataset has no augmentations (augmentation mode "
            f"{mode!r}); use none"
        )
    # a family whose on-the-fly variants are puzzle identifiers (ARC) records how many it has
    cover = meta.augmentation.get("num_aug")
    if regime == "fixed_pool" and cover is not None and num_aug > cover:
        return "data.num_aug", (
            f"{num_aug} exceeds the dataset's num_aug {cover} (its puzzle identifiers cover "
            "that many variants per task)"
        )
    return None
