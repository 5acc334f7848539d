"""What the square-grid families (Sudoku, maze) share: one cell a token, side n, seq_len n*n."""

from __future__ import annotations

from typing import Any

from pipeline.data.errors import DatasetError
from trm.config import is_int


def check_square(meta: Any, key: str) -> None:
    """On-the-fly augmentation reads the side from `meta.encoding[key]`: it must fit seq_len."""
    if meta.augmentation.get("mode") != "on_the_fly":
        return
    n = meta.encoding.get(key)
    if not is_int(n) or n < 2 or n * n != meta.seq_len:
        raise DatasetError(
            f"encoding.{key} = {n!r} does not fit seq_len {meta.seq_len} (a {meta.task} of side "
            "n has n*n cells)"
        )
