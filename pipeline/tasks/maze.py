"""The maze family: Maze-Hard style grids with a shortest path to find (`build_maze`),
augmented by the 8 dihedral transforms, read as text of `# SGo`."""

from __future__ import annotations

from typing import Any

from pipeline.data.builders import build_maze
from pipeline.data.importers import MAZE_CSV
from pipeline.tasks.grid import check_square
from pipeline.tasks.registry import Arg, TaskSpec, TextPuzzle
from trm.puzzles import maze


def augment(x, y, pid, keys, meta: Any, split: str, k=None):
    x, y = maze.augment(x, y, keys, side=meta.encoding["side"])
    return x, y, pid


SPEC = TaskSpec(
    name="maze",
    summary="generate Maze-Hard style 30x30 mazes with shortest-path labels",
    builder=build_maze,
    arguments={
        "side": Arg("maze side (cells)"),
        "num_train": Arg("training mazes"),
        "num_test": Arg("test mazes"),
        "min_path": Arg("keep mazes whose shortest path is longer than this (moves)"),
        "wall_density": Arg(
            "share of wall cells, drawn per maze between LOW and HIGH", metavar=("LOW", "HIGH")
        ),
        "materialise": Arg("write the 8 dihedral copies (official --aug)"),
    },
    augment=augment,
    check_meta=lambda meta: check_square(meta, "side"),
    text=TextPuzzle(
        parse=lambda text, n: maze.encode(text),
        cells=lambda tokens: [
            maze.CHARSET[t - 1] if 1 <= t <= len(maze.CHARSET) else "?" for t in tokens
        ],
        fits=lambda seq_len, vocab: vocab == maze.VOCAB_SIZE,
    ),
    csv=MAZE_CSV,
)
