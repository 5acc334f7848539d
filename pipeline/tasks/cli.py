"""A builder's parameters as build CLI flags, read from its signature (`build_data.py <task>`):
the type and default come from the signature, the help from the task's `TaskSpec.arguments`
(or, for the parameters every builder shares, from `COMMON`). Sweeps read the same signature
(`pipeline/sweeping/dataset.py`), so a builder's arguments are written once.
"""

from __future__ import annotations

import argparse
import inspect
import os
import types
import typing
from collections.abc import Callable
from typing import Any

from pipeline.tasks.registry import Arg, TaskSpec

SET_BY_CALLER = ("out_uri", "progress")
"""Builder parameters the CLI and sweeps set themselves (`--out`, `--quiet`)."""

COMMON = {
    "out_uri": Arg("dataset directory or s3://bucket/prefix"),
    "seed": Arg("random seed"),
    "overwrite": Arg("replace a dataset at --out"),
    "rows_per_shard": Arg("rows per Parquet shard"),
    "row_group_rows": Arg("rows per row group (the reader's unit)"),
    "workers": Arg("worker processes (the default is this machine's core count)"),
    "progress": Arg("no progress lines"),
}
"""Help of the parameters builders share."""

CLI_DEFAULTS = {"workers": os.cpu_count() or 1}
"""Where the CLI's default differs from the builder's (a library call uses one process; the
command uses the machine)."""


def flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def builder_parameters(builder: Callable[..., Any]) -> dict[str, inspect.Parameter]:
    """The builder's parameters a caller chooses (all but `SET_BY_CALLER`), in order."""
    sig = inspect.signature(builder)
    return {k: p for k, p in sig.parameters.items() if k not in SET_BY_CALLER}


def _unwrap_optional(hint: Any) -> Any:
    """`X | None` -> X; anything else unchanged."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        rest = [h for h in typing.get_args(hint) if h is not type(None)]
        if len(rest) == 1:
            return rest[0]
    return hint


def _type_options(hint: Any, where: str) -> dict[str, Any]:
    """argparse keywords for a value of type `hint` (int, float, str, tuple[T, ...] of a fixed
    length, list[T], each possibly `| None`)."""
    base = _unwrap_optional(hint)
    origin, args = typing.get_origin(base), typing.get_args(base)
    if base in (int, float, str):
        return {"type": base}
    if origin is tuple and args and Ellipsis not in args:
        return {"type": args[0], "nargs": len(args)}
    if origin is list and args:
        return {"type": args[0], "nargs": "+"}
    raise TypeError(f"{where} has type {hint}, which the build CLI cannot read")


def builder_options(parser: argparse.ArgumentParser, spec: TaskSpec) -> None:
    """Add one flag per builder parameter of `spec` (plus `--out` and `--quiet`) to `parser`;
    ValueError naming the parameter when its help is missing."""
    builder = spec.builder
    hints = typing.get_type_hints(builder)
    parser.add_argument("--out", required=True, help=COMMON["out_uri"].help)
    for name, p in builder_parameters(builder).items():
        where = f"task {spec.name!r}: {builder.__name__} parameter {name!r}"
        arg = spec.arguments.get(name) or COMMON.get(name)
        if arg is None:
            raise ValueError(f"{where} has no help: add it to the TaskSpec's `arguments`")
        kw: dict[str, Any] = {"dest": name, "help": arg.help}
        if arg.metavar is not None:
            kw["metavar"] = arg.metavar
        default = CLI_DEFAULTS.get(name, p.default)
        if hints.get(name) is bool:  # off by default: --name; on: --name / --no-name
            action = argparse.BooleanOptionalAction if default is True else "store_true"
            parser.add_argument(flag_name(name), action=action, default=default, **kw)
            continue
        kw.update(_type_options(hints.get(name), where))
        if arg.choices is not None:
            kw["choices"] = arg.choices
        if p.default is inspect.Parameter.empty:
            kw["required"] = True
        else:
            kw["default"] = default
        parser.add_argument(flag_name(name), **kw)
    parser.add_argument("--quiet", action="store_true", help=COMMON["progress"].help)
