"""The CLI's two spellings of a search filter, turned into the one dict that DocStore takes.

`--filter KEY=VALUE` (repeatable, all must hold) is the short form: a repeated key means any of the
values, `tags=a,b` means both tags, and a number also matches its string spelling (metadata written
by hand is often "3" where a parser wrote 3). `--where JSON` is the full form with operators
($eq $ne $in $nin $gt $gte $lt $lte, $and $or; see retrieval/store/filters.py). Both together: both hold.
"""
from __future__ import annotations

import json
from typing import Any

from retrieval.errors import InvalidInputError

COLUMNS = ("source", "kind", "doc_id")
WHERE_HELP = ('filter with operators, as JSON: \'{"page": {"$gte": 3}}\', \'{"$or": [{"kind": "pdf"}, {"owner": "ana"}]}\'; '
              "operators $eq $ne $in $nin $gt $gte $lt $lte (numbers, ISO dates) and $and $or; ANDed with --filter")


def _number(text: str) -> int | float | None:
    try:
        return int(text)
    except ValueError:
        pass
    try:
        v = float(text)
    except ValueError:
        return None
    return v if v == v and v not in (float("inf"), float("-inf")) else None


def _simple(items: list[str]) -> dict[str, Any]:
    values: dict[str, list] = {}
    tags: list[str] = []
    for it in items:
        if "=" not in it:
            raise InvalidInputError(f"bad --filter {it!r}", "use KEY=VALUE, e.g. --filter kind=markdown or --filter source='docs/*'")
        key, val = it.split("=", 1)
        key = key.strip()
        if not key:
            raise InvalidInputError(f"bad --filter {it!r}: empty key", "use KEY=VALUE")
        if key in ("tags", "tag"):
            tags += [v for v in val.split(",") if v]
            continue
        num = None if key in COLUMNS else _number(val)
        if key == "page":
            if num is None:
                raise InvalidInputError(f"bad --filter {it!r}: a page is a number", "e.g. --filter page=3")
            values.setdefault(key, []).append(num)
        else:
            values.setdefault(key, []).extend([val] if num is None else [val, num])
    out: dict[str, Any] = {k: v[0] if len(v) == 1 else v for k, v in values.items()}
    if tags:
        out["tags"] = tags
    return out


def parse_where(text: str) -> dict:
    try:
        where = json.loads(text)
    except ValueError as e:
        raise InvalidInputError(f"--where is not valid JSON: {e}", "quote it for the shell: --where '{\"page\": {\"$gte\": 3}}'") from e
    if not isinstance(where, dict):
        raise InvalidInputError(f"--where must be a JSON object, got {type(where).__name__}", "e.g. --where '{\"kind\": \"markdown\"}'")
    from retrieval.store.filters import compile_where

    compile_where(where)  # a bad operator is named now, before the store opens
    return where


def combine(items: list[str] | None, where: str | None) -> dict | None:
    """The filter of `--filter` items and a `--where` JSON (None when neither was given)."""
    simple = _simple(items or [])
    full = parse_where(where) if where else None
    if simple and full:
        return {"$and": [simple, full]}
    return simple or full or None
