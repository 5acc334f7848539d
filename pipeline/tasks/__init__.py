"""Puzzle families, one `TaskSpec` each, registered by name (pipeline/tasks/registry.py).

    from pipeline.tasks import get_task, task_of
    spec = task_of(meta)            # the dataset's family, its meta checked against it
    spec.builder, spec.augment, spec.picture, spec.text

Importing this package registers the built-in families: sudoku, maze, arc. A family registered
by the caller (`register_task`) reaches Ray workers and sweep trials with the run
(`carried_tasks` on the driver, `adopt_tasks` in the worker).
"""

from __future__ import annotations

from typing import Any

from pipeline.tasks import arc, maze, sudoku
from pipeline.tasks.registry import (
    Arg,
    Picture,
    TaskSpec,
    TextPuzzle,
    get_task,
    register_task,
    task_names,
    unregister_task,
)

# the built-in families, in the order the build CLI lists them and the solver tries a model's
# shape against them (a 4x4 Sudoku model has the vocabulary size of a maze model)
for _spec in (sudoku.SPEC, maze.SPEC, arc.SPEC):
    register_task(_spec)
BUILT_IN = tuple(task_names())


def carried_tasks() -> tuple[TaskSpec, ...]:
    """The families registered in this process beyond the built-in ones: what a driver hands
    its Ray workers and trials (`adopt_tasks`), which start without them."""
    return tuple(get_task(n) for n in task_names() if n not in BUILT_IN)


def adopt_tasks(specs: tuple[TaskSpec, ...]) -> None:
    """Register each of `specs` that this process does not know yet (a worker receiving its
    driver's `carried_tasks`; a reused worker process already has them)."""
    for spec in specs:
        if spec.name not in task_names():
            register_task(spec)


def task_of(meta: Any, uri: str = "") -> TaskSpec:
    """The spec of the dataset described by `meta` (read from `uri`, which errors name),
    after checking that its encoding and augmentation records are what the spec reads;
    `DatasetError` if not, or if no family of that name is registered."""
    from pipeline.data.errors import DatasetError

    where = f"{uri.rstrip('/')}/meta.json" if uri else "meta.json"
    try:
        spec = get_task(meta.task)
    except ValueError as e:
        raise DatasetError(f"{where} task: {e}") from None
    try:
        spec.check_meta(meta)
    except DatasetError as e:
        raise DatasetError(f"{where}: {e}") from None
    return spec


__all__ = [
    "BUILT_IN",
    "Arg",
    "Picture",
    "TaskSpec",
    "TextPuzzle",
    "adopt_tasks",
    "carried_tasks",
    "get_task",
    "register_task",
    "task_names",
    "task_of",
    "unregister_task",
]
