"""The task registry: one `TaskSpec` per puzzle family, looked up by the task name a dataset's
meta.json records. Data, the build CLI, sweeps, evaluation and the solver ask the spec; none
of them branches on a family's name.

    from pipeline.tasks import get_task, register_task
    spec = get_task(meta.task)
    x, y, pid = spec.augment(x, y, pid, keys, meta, "train")

A new family is one module that builds a `TaskSpec` and calls `register_task` (the built-in
ones: pipeline/tasks/{sudoku,maze,arc}.py, registered when `pipeline.tasks` is imported). A
family registered outside the package must be registered in every process that reads its data
(a Ray worker included) before it asks for it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Arg:
    """How one builder parameter reads on the build CLI (its type and default come from the
    builder's signature)."""

    help: str
    """The flag's help (a bool that defaults to True reads as `--name / --no-name`)."""
    choices: Sequence[Any] | None = None
    metavar: str | tuple[str, ...] | None = None


@dataclass(frozen=True)
class Picture:
    """How evaluation figures draw the family's test puzzles (every family gets a colour grid
    of token values with wrong cells outlined)."""

    annotate: Callable[[Any, Any, Any], None] | None = None
    """`annotate(ax, puzzle_grid, shown_grid)` draws extra marks on one grid's axes (Sudoku:
    digits, the given ones bold on a grey dot); None for none."""
    legend: str = ""
    """Appended to the figure's legend line when `annotate` marks something."""


@dataclass(frozen=True)
class TextPuzzle:
    """A family the solver (`evaluate.py --puzzle`) reads as text: a square grid of side n,
    one character a cell."""

    parse: Callable[[str, int], Any]
    """`parse(text, n)` -> the model's input tokens [n*n]; ValueError naming what is wrong."""
    cells: Callable[[Sequence[int]], list[str]]
    """Tokens -> one character a cell ('?' for a token the encoding lacks)."""
    fits: Callable[[int, int], bool]
    """`fits(seq_len, vocab_size)`: a model of this shape can be for this family (used when the
    run's dataset is out of reach)."""
    separator: str = ""
    """Between the cells of a printed row."""
    verdict: Callable[[Any, Any], str] | None = None
    """`verdict(question, answer)` -> a line saying whether the answer obeys the rules."""


@dataclass(frozen=True)
class TaskSpec:
    """One puzzle family: how its datasets are built, augmented, checked, pictured and read."""

    name: str
    """The task name a dataset's meta.json records and the build CLI's subcommand."""
    summary: str
    """One line: the build subcommand's help."""
    builder: Callable[..., Any]
    """`builder(out_uri, ..., progress=None)` -> DatasetMeta; its keyword parameters are the
    sweep file's `dataset` arguments and, through `arguments`, the build CLI's flags."""
    arguments: Mapping[str, Arg]
    """CLI help of the builder's own parameters (the shared ones, `seed`, `workers`,
    `rows_per_shard`, ..., are described once by the CLI)."""
    augment: Callable[..., tuple[Any, Any, Any]] | None
    """`augment(x, y, pid, keys, meta, split, k=None)` -> (x, y, pid): the family's random
    symmetry per row, keyed by `keys` (`k`: the fixed-pool variant per row, or None); None for
    a family that augments from stored variant pools (`pool_augment`)."""
    check_meta: Callable[[Any], None]
    """Raises `DatasetError` when a dataset's encoding or augmentation record cannot be read
    the way `augment` reads it (called before a dataset is streamed or evaluated)."""
    read_pools: Callable[[str, Any], Any] | None = None
    """`read_pools(uri, meta)`: the dataset's stored variant pools per puzzle (ARC: each task's
    distinct variants); None: variants are computed from the row alone."""
    pool_augment: Callable[..., tuple[Any, Any, Any]] | None = None
    """`pool_augment(stream, x, y, pid, rows, k, passes)` -> (x, y, pid): augmentation that reads
    the pools and the rows' places in their puzzle (`ShardStream.examples`); replaces `augment`."""
    votes: bool = False
    """Evaluation votes over test-time variants for pass@K (ARC; pipeline/evaluation/arc_vote)."""
    picture: Picture = field(default_factory=Picture)
    text: TextPuzzle | None = None
    """How the solver reads and prints a puzzle; None: `--puzzle` does not take this family."""
    csv: Any = None
    """How `build_data.py import-csv` reads the family's official CSV files (a
    `pipeline.data.importers.CsvFormat`); None: import-csv does not take this family."""

    def __post_init__(self) -> None:
        if (self.augment is None) == (self.pool_augment is None):
            raise ValueError(f"task {self.name!r}: give exactly one of augment and pool_augment")
        if not self.name or not self.name.replace("-", "").replace("_", "").isalnum():
            raise ValueError(f"task name {self.name!r}: use letters, digits, '-' and '_'")


_TASKS: dict[str, TaskSpec] = {}


def register_task(spec: TaskSpec) -> None:
    """Add `spec` under `spec.name`; ValueError if that name is taken."""
    if spec.name in _TASKS:
        raise ValueError(
            f"task {spec.name!r} is already registered (known tasks: {', '.join(_TASKS)})"
        )
    _TASKS[spec.name] = spec


def unregister_task(name: str) -> None:
    """Remove `name` (a test that registered a family leaves the registry as it found it)."""
    get_task(name)
    del _TASKS[name]


def get_task(name: str) -> TaskSpec:
    """The spec registered as `name`; ValueError naming the known tasks if there is none."""
    try:
        return _TASKS[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown task {name!r}: the known tasks are {', '.join(_TASKS)}"
        ) from None


def task_names() -> list[str]:
    """The registered task names, in registration order."""
    return list(_TASKS)
