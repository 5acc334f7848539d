"""`import_csv`: official-format CSV files of a family, by task name (`build_data.py
import-csv`); the family's entry says how its rows read (`TaskSpec.csv`, a
`pipeline.data.importers.CsvFormat`)."""

from __future__ import annotations

from typing import Any

from pipeline.data.importers import import_rows
from pipeline.tasks.registry import get_task, task_names


def csv_tasks() -> list[str]:
    """The registered families whose CSV files `import_csv` reads."""
    return [n for n in task_names() if get_task(n).csv is not None]


def import_csv(out_uri: str, task: str, train_csv: str, test_csv: str | None = None,
               **options: Any) -> Any:  # fmt: skip
    """Import `train_csv` (and `test_csv`) of family `task` as a dataset at `out_uri`;
    `options` are those of `pipeline.data.importers.import_rows` (subsample, min_difficulty,
    num_aug, seed, check_unique, workers, rows_per_shard, row_group_rows, overwrite, progress).
    ValueError naming the families it takes when `task` is none of them."""
    fmt = get_task(task).csv if task in task_names() else None
    if fmt is None:
        raise ValueError(f"import-csv task must be one of {', '.join(csv_tasks())}, got {task!r}")
    return import_rows(out_uri, fmt, train_csv, test_csv, **options)
