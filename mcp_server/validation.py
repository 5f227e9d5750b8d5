"""Argument errors written for the caller: `k=10000 is over the limit of 1000; ask for fewer or page
with cursor`, not pydantic's multi-line report with a documentation link.

The SDK validates tool arguments against each tool's Pydantic signature and raises a ToolError
whose text is `str(ValidationError)`. `KnnragMCP.call_tool` (server.py) catches it and asks
`describe()` for one sentence per wrong argument, naming the MCP parameter and the fix.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

# extra advice for a parameter whose bound the caller hit, by parameter name
BOUND_HINTS = {
    "k": "ask for fewer or page with cursor",
    "query": "shorten it",
    "question": "shorten it",
    "paths": "pass fewer paths per call",
    "ids": "pass fewer ids per call",
    "texts": "add them in several calls",
}
_JSON_TYPES = {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "an array",
               dict: "an object", type(None): "null"}


def _shown(value: Any) -> str:
    text = repr(value) if not isinstance(value, (dict, list)) else type(value).__name__
    return text if len(text) <= 60 else text[:57] + "..."


def _kind(value: Any) -> str:
    return _JSON_TYPES.get(type(value), type(value).__name__)


def _param(loc: tuple) -> str:
    parts = [str(p) for p in loc]
    return ".".join(parts) if parts else "arguments"


def _hint(name: str) -> str:
    return BOUND_HINTS.get(name.split(".")[0], "")


def _one(err: dict) -> str:
    """One sentence for one pydantic error (its `type`, `loc`, `ctx` and `input`)."""
    name, kind, ctx, value = _param(err.get("loc", ())), err.get("type", ""), err.get("ctx") or {}, err.get("input")
    hint = _hint(name)
    tail = f"; {hint}" if hint else ""
    if kind in ("less_than_equal", "less_than"):
        return f"{name}={_shown(value)} is over the limit of {ctx.get('le', ctx.get('lt'))}{tail}"
    if kind in ("greater_than_equal", "greater_than"):
        bound = ctx.get("ge", ctx.get("gt"))
        return f"{name}={_shown(value)} is below the minimum of {bound}" + ("" if kind.endswith("equal") else " (exclusive)")
    if kind in ("string_too_long", "too_long"):
        limit = ctx.get("max_length")
        size = len(value) if isinstance(value, (str, list, dict)) else "?"
        unit = "characters" if isinstance(value, str) else "items"
        return f"{name} has {size} {unit}, over the limit of {limit}{tail}"
    if kind in ("string_too_short", "too_short"):
        return f"{name} is empty; pass at least {ctx.get('min_length', 1)} " + (
            "character" if kind == "string_too_short" else "item")
    if kind in ("int_type", "int_parsing", "int_from_float"):
        return f"{name} must be an integer, got {_kind(value)} {_shown(value)}"
    if kind in ("float_type", "float_parsing"):
        return f"{name} must be a number, got {_kind(value)} {_shown(value)}"
    if kind in ("bool_type", "bool_parsing"):
        return f"{name} must be true or false, got {_kind(value)} {_shown(value)}"
    if kind in ("string_type", "list_type", "dict_type", "model_type", "model_attributes_type"):
        want = {"string_type": "a string", "list_type": "an array", "dict_type": "an object"}.get(kind, "an object")
        return f"{name} must be {want}, got {_kind(value)} {_shown(value)}"
    if kind == "literal_error":
        return f"{name}={_shown(value)} is not one of {ctx.get('expected')}"
    if kind == "string_pattern_mismatch":
        return f"{name}={_shown(value)} is not a valid name: use letters, digits, '-' and '_' (at most 64)"
    if kind == "missing":
        return f"missing required parameter {name}"
    if kind == "extra_forbidden":
        return f"unknown parameter {name}"
    if kind == "value_error":
        return f"{name}: {str(err.get('msg', '')).removeprefix('Value error, ')}"
    return f"{name}: {err.get('msg', 'invalid value')}"


def describe(tool: str, errors: Sequence[Any]) -> str:
    """The caller-facing text for a failed argument validation of `tool`."""
    seen: list[str] = []
    for err in errors[:5]:
        line = _one(err)
        if line not in seen:
            seen.append(line)
    more = f" (and {len(errors) - 5} more problems)" if len(errors) > 5 else ""
    return f"invalid arguments for {tool}: " + "; ".join(seen) + more
