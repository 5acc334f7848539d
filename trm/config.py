"""`TRMConfig`: the typed, validated architecture config of the Tiny Recursive Model, and the
base every config of the project is built on (`StrictConfig`, pydantic v2).

Field names are the official implementation's, so an official `arch` config dict loads as it is
(`TRMConfig.from_dict(d)`); unknown keys and bad values raise `ConfigError` (a `ValueError`)
naming the key instead of being silently dropped. Defaults are the paper's Sudoku-Extreme attention model except
`forward_dtype` (fp32 here, so small CPU runs are exact; the paper trained in bfloat16).
One field is ours, not official: `halt_threshold` (the test-time ACT halting threshold).
"""

from __future__ import annotations

import difflib
import math
import types
import typing
from typing import Annotated, Any, Literal

import annotated_types
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator
from pydantic.fields import FieldInfo


class ConfigError(ValueError):
    """A config that cannot run; the message names the field (dotted key) and what is wrong."""

    def __init__(self, message: str, where: str = "") -> None:
        super().__init__(f"{where}: {message}" if where else message)
        self.where, self.problem = where, message


def require(ok: bool, where: str, msg: str) -> None:
    """Raise `ConfigError("<where>: <msg>")` unless `ok` (`where` names the config field; in a
    validator of a `StrictConfig`, relative to that config: `one_line` prefixes its path)."""
    if not ok:
        raise ConfigError(msg, where)


def is_int(v: Any) -> bool:
    """An int that is not a bool (YAML `true` is not a count); the one such check of the
    project (`pipeline` imports it from here: `trm` imports nothing from `pipeline`)."""
    return isinstance(v, int) and not isinstance(v, bool)


def _yaml_float(v: Any) -> Any:
    # YAML 1.1 reads `1e-4` (no dot) as a string: accept what float() parses
    if isinstance(v, str):
        try:
            return float(v)
        except ValueError:
            return v
    return v


Float = Annotated[float, BeforeValidator(_yaml_float)]
"""A float field: ints and YAML's exponent strings ('1e4') are accepted, bools are not."""


class StrictConfig(BaseModel):
    """Base of every typed config: unknown keys are errors, values keep their YAML type (strict:
    `true` is not a count and '5' is not an integer; ints are accepted where floats are wanted),
    no NaN or infinity; each field's description is its attribute docstring (for `--help`)."""

    model_config = ConfigDict(
        extra="forbid", strict=True, allow_inf_nan=False, use_attribute_docstrings=True
    )

    @classmethod
    def build(cls, d: Any, where: str = "") -> Any:
        """`cls` from the mapping `d` (an instance passes through); a `ConfigError` of one line
        (`one_line`) instead of pydantic's `ValidationError`; `where` prefixes its key."""
        if isinstance(d, cls):
            return d
        if not isinstance(d, dict):
            raise ConfigError(f"must be a mapping, got {type(d).__name__}", where or "config")
        try:
            return cls.model_validate(d)
        except ValidationError as e:
            raise ConfigError(one_line(e, cls, where)) from None


def one_line(e: ValidationError, cls: type[BaseModel], where: str = "") -> str:
    """The first error of `e` as '<dotted.key>: <what is wrong>' ('must be <what the field
    takes>, got <value>'; an unknown key: "unknown config key 'a.b'; known keys here: ..."
    with the closest key suggested)."""
    err = e.errors(include_url=False)[0]
    loc = [str(p) if isinstance(p, str) else f"[{p}]" for p in err["loc"]]
    key = ".".join([where, *loc] if where else loc).replace(".[", "[")
    owner = _model_at(cls, err["loc"][:-1])
    if err["type"] == "extra_forbidden" and owner is not None:
        return _unknown_key(key, owner)
    if err["type"] == "invalid_key":  # a YAML key such as `1:` or `true:`
        parent = ".".join([where, *loc[:-1]] if where else loc[:-1]).replace(".[", "[")
        return f"{parent or 'config'}: keys must be strings, got {err.get('input')!r}"
    error = err.get("ctx", {}).get("error")
    if isinstance(error, ConfigError):  # `require` in a validator: its key is relative
        inner = ".".join(p for p in (key, error.where) if p)
        return f"{inner}: {error.problem}" if inner else error.problem
    if err["type"] in ("value_error", "assertion_error"):
        return f"{key}: {error}" if key else str(error)
    key = key or "config"
    if err["type"] == "missing":
        return f"{key}: is required"
    field = owner.model_fields.get(err["loc"][-1]) if owner and err["loc"] else None
    takes = _spec(field.annotation, field.metadata) if field else _fallback(err)
    return f"{key}: must be {takes}, got {err.get('input')!r}"


_TYPES = {int: "an integer", float: "a number", bool: "true/false", str: "a string"}


def _spec(ann: Any, metadata: list[Any]) -> str:
    """What a field of type `ann` with constraints `metadata` takes, in words: 'an integer
    >= 0', 'a number in (0, 1)', 'one of a, b', 'true/false or null'."""
    origin, args = typing.get_origin(ann), typing.get_args(ann)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_spec(a, metadata) for a in args)
    if origin is Annotated:
        return _spec(args[0], [*ann.__metadata__, *metadata])
    if origin is Literal:
        return "one of " + ", ".join(map(str, args))
    if ann is type(None):
        return "null"
    flat = [m for x in metadata for m in (x.metadata if isinstance(x, FieldInfo) else [x])]
    if origin is list:
        non_empty = any(isinstance(m, annotated_types.MinLen) and m.min_length > 0 for m in flat)
        return "a non-empty list" if non_empty else "a list"
    if origin is dict or (isinstance(ann, type) and issubclass(ann, BaseModel)):
        return "a mapping"
    lo = next((m for m in flat if isinstance(m, (annotated_types.Gt, annotated_types.Ge))), None)
    hi = next((m for m in flat if isinstance(m, (annotated_types.Lt, annotated_types.Le))), None)
    words = _TYPES.get(ann, getattr(ann, "__name__", str(ann)))
    if lo is not None and hi is not None:
        left = "(" if isinstance(lo, annotated_types.Gt) else "["
        right = ")" if isinstance(hi, annotated_types.Lt) else "]"
        return f"{words} in {left}{_bound(lo)}, {_bound(hi)}{right}"
    for b, sign in ((lo, ">"), (hi, "<")):
        if b is not None:
            words += f" {sign}{'=' if type(b).__name__ in ('Ge', 'Le') else ''} {_bound(b)}"
    return words


def _bound(b: Any) -> str:
    return _num(next(getattr(b, n) for n in ("gt", "ge", "lt", "le") if hasattr(b, n)))


def _num(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def _fallback(err: dict[str, Any]) -> str:
    """What a value inside a field (a list item, a mapping value) must be, from the error."""
    ctx = err.get("ctx", {})
    signs = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<"}
    signs["less_than_equal"] = "<="
    if err["type"] in signs:
        return f"{signs[err['type']]} {_num(next(iter(ctx.values())))}"
    words = {"float_type": float, "int_type": int, "bool_type": bool, "string_type": str}
    if err["type"] in words:
        return _TYPES[words[err["type"]]]
    return err["msg"].removeprefix("Input should be ")


def _model_at(cls: type[BaseModel], loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The config class reached from `cls` along the field names of `loc`; None when `loc`
    goes inside a value that is not a config (a list, a mapping)."""
    for part in loc:
        field = cls.model_fields.get(part) if isinstance(part, str) else None
        ann = field.annotation if field is not None else None
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return None
        cls = ann
    return cls


def _unknown_key(key: str, cls: type[BaseModel]) -> str:
    known = sorted(cls.model_fields)
    close = difflib.get_close_matches(key.rsplit(".", 1)[-1], known, n=1, cutoff=0.6)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"unknown config key {key!r}; known keys here: {', '.join(known)}{hint}"


class TRMConfig(StrictConfig):
    """Architecture of one TRM; every field but `halt_threshold` is an official `arch` field."""

    hidden_size: int = Field(512, gt=0)
    """Width D of every token state (z_H, z_L, the embedded question)."""
    num_heads: int = Field(8, gt=0)
    """Attention heads; must divide `hidden_size` (unused when `mlp_t`)."""
    expansion: Float = Field(4.0, gt=0)
    """SwiGLU width factor: inner size = ceil_256(round(expansion * in * 2/3))."""
    L_layers: int = Field(2, gt=0)
    """Blocks in the single network used for both the z_L and the z_H update."""
    H_layers: int = Field(0, ge=0)
    """Accepted for compatibility with official configs; ignored (there is one network)."""
    H_cycles: int = Field(3, gt=0)
    """Outer cycles per ACT step; all but the last run without gradient."""
    L_cycles: int = Field(6, gt=0)
    """z_L updates per outer cycle (each followed by one z_H update)."""
    mlp_t: bool = False
    """Mix tokens with a SwiGLU over the sequence axis instead of self-attention (TRM-MLP)."""
    pos_encodings: Literal["rope", "learned", "none"] = "rope"
    """'rope' (rotary, half-split), 'learned' (table added to the input) or 'none'."""
    rope_theta: Float = Field(10000.0, gt=0)
    """RoPE base."""
    rms_norm_eps: Float = Field(1e-5, gt=0)
    """Epsilon of the weightless post-norm RMSNorm."""

    seq_len: int = Field(81, gt=0)
    """Tokens per example (without the puzzle-embedding prefix)."""
    vocab_size: int = Field(11, gt=0)
    """Token vocabulary size (inputs and labels)."""
    num_puzzle_identifiers: int = Field(1, ge=0)
    """Rows of the sparse puzzle-embedding table."""
    puzzle_emb_ndim: Annotated[int, Field(ge=0)] | None = None
    """Width of a puzzle-table row; None means hidden_size (the paper's setting); 0 disables
    the table (the prefix slots are then zeros)."""
    puzzle_emb_len: int = Field(16, ge=0)
    """Prefix slots before the tokens; 0 means ceil(puzzle_emb_ndim / hidden_size)."""

    halt_max_steps: int = Field(16, gt=0)
    """ACT steps after which an example always halts (every step in eval mode)."""
    halt_exploration_prob: Float = Field(0.1, ge=0, le=1)
    """Train mode: probability that an example gets a random minimum number of steps."""
    no_ACT_continue: bool = True
    """True: halt when q_halt > 0, no q-continue loss. False: halt when q_halt > q_continue
    and learn q_continue from a bootstrapped target (one extra no-grad inner step)."""
    halt_threshold: Float = Field(0.5, gt=0, lt=1)
    """Not an official field. Test-time halting threshold tau in (0, 1) of `predict(halt=True)`
    and the at-halt evaluation metrics: halt when sigmoid(q_halt) > tau (sigmoid(q_halt -
    q_continue) > tau when `no_ACT_continue` is False). 0.5 is the official rule (q_halt > 0);
    a higher tau halts later. Training always halts with the official rule (see
    `trm.model.should_halt`), so this field changes no training run."""

    forward_dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """Compute dtype of activations ('float32', 'bfloat16', 'float16'); parameters stay fp32."""
    batch_size: Annotated[int, Field(gt=0)] | None = None
    """Accepted for compatibility with official configs (their puzzle table needed it); unused."""

    @model_validator(mode="after")
    def _check(self) -> TRMConfig:
        if self.puzzle_emb_ndim is None:
            self.puzzle_emb_ndim = self.hidden_size
            # derived, not given: a run config's model section stays as written (to_dict)
            self.model_fields_set.discard("puzzle_emb_ndim")
        if not self.mlp_t:
            require(self.hidden_size % self.num_heads == 0, "num_heads",
                    f"({self.num_heads}) must divide hidden_size ({self.hidden_size})")  # fmt: skip
            require(
                self.pos_encodings != "rope" or (self.hidden_size // self.num_heads) % 2 == 0,
                "pos_encodings",
                "rope needs an even head dim, got hidden_size/num_heads = "
                f"{self.hidden_size}/{self.num_heads}",
            )
        if self.puzzle_emb_ndim > 0:
            require(self.num_puzzle_identifiers > 0, "num_puzzle_identifiers",
                    "must be > 0 when puzzle_emb_ndim > 0")  # fmt: skip
            require(
                self.puzzle_emb_ndim <= self.prefix_len * self.hidden_size,
                "puzzle_emb_ndim",
                f"({self.puzzle_emb_ndim}) must fit in puzzle_emb_len * hidden_size "
                f"({self.prefix_len} * {self.hidden_size})",
            )
        return self

    @property
    def prefix_len(self) -> int:
        """Puzzle-embedding prefix slots P prepended to the tokens."""
        if self.puzzle_emb_len > 0:
            return self.puzzle_emb_len
        return math.ceil(self.puzzle_emb_ndim / self.hidden_size)

    @property
    def total_len(self) -> int:
        """Sequence length T inside the model: prefix plus tokens."""
        return self.prefix_len + self.seq_len

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TRMConfig:
        """Build from a dict of official field names; an unknown key or a bad value is a
        `ConfigError` (a `ValueError`) naming the key."""
        try:
            return cls.build(d)
        except ConfigError as e:
            raise ConfigError(f"TRMConfig: {e}") from None

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (official field names), e.g. to send across a process boundary."""
        return self.model_dump()
