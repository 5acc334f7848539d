"""The Sudoku family: generated boards of side 4, 6 or 9 (`build_sudoku`), augmented by
digit relabelling and the board's symmetries, drawn with their digits, read as text."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from pipeline.data.builders import SUDOKU_SIZES, build_sudoku
from pipeline.data.importers import SUDOKU_CSV
from pipeline.tasks.grid import check_square
from pipeline.tasks.registry import Arg, Picture, TaskSpec, TextPuzzle
from trm.puzzles import sudoku


def augment(x, y, pid, keys, meta: Any, split: str, k=None):
    x, y = sudoku.augment(x, y, keys, n=meta.encoding["size"])
    return x, y, pid


def annotate(ax: Any, puzzle: np.ndarray, grid: np.ndarray) -> None:
    """Digits on the cells (boards up to 16x16); the puzzle's givens bold on a grey dot."""
    if puzzle.shape[0] > 16:
        return
    given = puzzle >= 2  # tokens: 0 pad, 1 blank, 2.. digits 1..
    for (i, j), v in np.ndenumerate(grid):
        if given[i, j]:
            ax.plot(j, i, "o", ms=9, color="lightgrey", zorder=1)
        if v >= 2:
            ax.text(
                j,
                i,
                str(v - 1),
                ha="center",
                va="center",
                fontsize=7,
                fontweight="bold" if given[i, j] else "normal",
                zorder=2,
            )


def cells(tokens) -> list[str]:
    n = math.isqrt(len(tokens))
    return ["?" if t < 1 or t > n + 1 else "." if t == 1 else str(t - 1) for t in tokens]


def sudoku_verdict(question: np.ndarray, answer: np.ndarray) -> str:
    """Whether `answer` (tokens) is a valid, complete Sudoku keeping the clues of `question`."""
    n = math.isqrt(len(question))
    q, a = sudoku.decode(question), sudoku.decode(answer)
    changed = int(((q > 0) & (q != a)).sum())
    if sudoku.is_solution(a.tolist(), n) and changed == 0:
        return "a valid Sudoku (every row, column and box holds each digit once; clues kept)"
    why = "clues changed: " + str(changed) if changed else "a row, column or box repeats a digit"
    return f"NOT a valid Sudoku ({why})"


SPEC = TaskSpec(
    name="sudoku",
    summary="generate Sudoku puzzles with unique solutions",
    builder=build_sudoku,
    arguments={
        "size": Arg(
            f"board side, one of {', '.join(map(str, SUDOKU_SIZES))} (larger boards with a unique solution take far too long to generate)",
            choices=SUDOKU_SIZES,
        ),
        "num_train": Arg("training puzzles"),
        "num_test": Arg("test puzzles (none shared with training)"),
        "min_clues": Arg("stop removing clues at this many (easier)"),
        "min_rating": Arg("keep puzzles needing >= this many solver guesses (harder)"),
        "num_aug": Arg(
            "materialise this many augmented copies per training puzzle (0: on the fly)"
        ),
        "holdout_share": Arg(
            "4x4/6x6: share of symmetry classes held out for test (no test puzzle is a symmetry of a training one)"
        ),
    },
    augment=augment,
    check_meta=lambda meta: check_square(meta, "size"),
    picture=Picture(annotate, legend="bold digit on a grey dot = given in the puzzle"),
    text=TextPuzzle(
        parse=lambda text, n: sudoku.encode(sudoku.parse_board(text, n)),
        cells=cells,
        # a Sudoku of side n has seq_len n*n and vocab_size n + 2 (pad, blank, digits)
        fits=lambda seq_len, vocab: (
            math.isqrt(seq_len) ** 2 == seq_len and vocab == math.isqrt(seq_len) + 2
        ),
        separator=" ",
        verdict=sudoku_verdict,
    ),
    csv=SUDOKU_CSV,
)
