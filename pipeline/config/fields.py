"""The machinery under every config file: the typed base (`StrictConfig`, pydantic, from
`trm.config`, which `trm` cannot import from here), dotted-key overrides, validation helpers
that name the failing field, and type names for `--help`. Used by the run config
(`pipeline.config.run`) and the sweep config (`pipeline.sweeping.config`)."""

from __future__ import annotations

import math
import types
import typing
from typing import Any

import yaml

from trm.config import ConfigError, Float, StrictConfig, require

__all__ = ["ConfigError", "Float", "StrictConfig", "require"]


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


def with_values(d: dict[str, Any], values: dict[str, Any], where: str = "") -> dict[str, Any]:
    """A copy of `d` with each dotted key of `values` set to its value, taken as it is."""
    import copy

    d = copy.deepcopy(d)
    for key, value in values.items():
        set_dotted(d, key, copy.deepcopy(value), where)
    return d


def apply_overrides(d: dict[str, Any], overrides: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """Return a copy of `d` with each 'a.b.c=value' applied; value parsed as YAML (command-line
    strings; code that holds typed values uses `with_values`)."""
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


def type_name(hint: Any) -> str:
    """A field type as `--help` shows it: 'int', 'float | null', 'rope | learned | none'."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType, typing.Literal):
        return " | ".join(type_name(a) if origin is not typing.Literal else str(a) for a in args)
    if origin is typing.Annotated:
        return type_name(args[0])
    if origin in (list, dict):
        return f"{origin.__name__}[{', '.join(type_name(a) for a in args)}]"
    if hint is type(None):
        return "null"
    return getattr(hint, "__name__", str(hint))
