"""The machinery under every config file: typed dataclass sections built from YAML mappings,
dotted-key overrides, validation helpers that name the failing field, and attribute docstrings
for `--help`. Used by the run config (`pipeline.config`) and the sweep config
(`pipeline.sweeping.config`)."""

from __future__ import annotations

import ast
import inspect
import itertools
import math
import textwrap
import types
import typing
from dataclasses import fields, is_dataclass
from typing import Any

import yaml

from trm.config import is_int


class ConfigError(ValueError):
    """A run config that cannot run; the message names the field and what is wrong."""


def require(ok: bool, where: str, msg: str) -> None:
    """Raise `ConfigError("<where>: <msg>")` unless `ok` (`where` names the config field)."""
    if not ok:
        raise ConfigError(f"{where}: {msg}")


def is_num(v: Any) -> bool:
    """A finite int or float that is not a bool."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def check_name(name: Any, where: str) -> None:
    """A run/sweep name that is safe as a directory and MLflow name; `ConfigError` if not."""
    require(
        isinstance(name, str) and name != "" and all(c.isalnum() or c in "-_." for c in name),
        where,
        f"must be a non-empty string of letters, digits, '-', '_', '.', got {name!r}",
    )


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v and k != "tags":
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def set_dotted(d: dict[str, Any], key: str, value: Any, where: str = "") -> None:
    """Set `d["a"]["b"]["c"] = value` for the dotted `key` "a.b.c", in place, creating missing
    sections; `ConfigError` (naming `where`, else the key) if a part of the path is a value."""
    parts = key.split(".")
    if not all(parts):
        raise ConfigError(f"{where or repr(key)}: bad key {key!r}")
    node = d
    for p in parts[:-1]:
        nxt = node.setdefault(p, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"{where or repr(key)}: {p!r} is not a section")
        node = nxt
    node[parts[-1]] = value


def apply_overrides(d: dict[str, Any], overrides: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """Return a copy of `d` with each 'a.b.c=value' applied; value parsed as YAML."""
    import copy

    d = copy.deepcopy(d)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like section.key=value")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw.strip() != "" else ""
        except yaml.YAMLError as e:
            raise ConfigError(f"override {item!r}: value is not valid YAML ({e})") from None
        set_dotted(d, key.strip(), value, where=f"override {item!r}")
    return d


def build_section(cls: type, d: Any, where: str) -> Any:
    """The dataclass `cls` from the mapping `d`, nested sections included; an unknown key or a
    value of the wrong type is a `ConfigError` naming `where.key`."""
    if isinstance(d, cls):
        return d
    if not isinstance(d, dict):
        raise ConfigError(f"{where or 'config'}: must be a mapping, got {type(d).__name__}")
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in fields(cls)}
    kwargs = {}
    for key, value in d.items():
        dotted = f"{where}.{key}" if where else str(key)
        if key not in known:
            raise ConfigError(
                f"unknown config key {dotted!r}; known keys here: {', '.join(sorted(known))}"
            )
        hint = hints[key]
        if is_dataclass(hint):
            kwargs[key] = build_section(hint, value, dotted)
        else:
            kwargs[key] = _coerce(value, hint)
    try:
        return cls(**kwargs)
    except TypeError as e:  # e.g. a required field missing
        raise ConfigError(f"{where or 'config'}: {e}") from None


def _coerce(value: Any, hint: Any) -> Any:
    # YAML reads 1e-4 as a float but `1e4` as a string and `5` where a float is wanted as an
    # int; accept those. Everything else is checked by the dataclass's own validation.
    if hint is float and is_int(value):
        return float(value)
    if hint is float and isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


# ---- documentation for --help ---------------------------------------------------------------
def field_docs(cls: type) -> dict[str, str]:
    """Attribute docstrings (the string literal under each field) of a dataclass."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs: dict[str, str] = {}
    for node, nxt in itertools.pairwise(body):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(nxt, ast.Expr)
            and isinstance(nxt.value, ast.Constant)
            and isinstance(nxt.value.value, str)
        ):
            docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def type_name(hint: Any) -> str:
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return " | ".join(type_name(a) for a in typing.get_args(hint))
    if hint is type(None):
        return "null"
    return getattr(hint, "__name__", str(hint)).replace("NoneType", "null")
