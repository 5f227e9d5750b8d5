"""Metadata filters: a chroma-style `where` dict compiled to one SQL condition over the chunk rows.

Why SQL: the ids it selects become FAISS's IDSelector and BM25's mask (search.py), so a filter acts
before ranking and `k` hits come back whenever `k` chunks match. The same dict is taken by
`DocStore.search(filters=...)`, the CLI (`--filter KEY=VALUE`, `--where JSON`), MCP `search`
and LangChain's `filter`.

    where  := {clause, ...}                      every clause holds
    clause := KEY: VALUE                         equal (source: glob; tags: has the tag)
            | KEY: [VALUE, ...]                  any of them (tags: has all of them)
            | KEY: {OP: VALUE, ...}              every operator holds
            | "$and": [where, ...] | "$or": [where, ...]

KEY is source, kind, doc_id, tags, `page` (a chunk's page, or its page_start..page_end range) or any
metadata key. $ne and $nin also match chunks without the key. $gt/$gte/$lt/$lte compare numbers,
or ISO dates (2024-05-01, 2024-05-01T12:00:00Z) as dates.
"""
from __future__ import annotations

import math
import re
import sqlite3
from collections.abc import Mapping
from datetime import datetime
from typing import Any, NamedTuple

import numpy as np

from retrieval.errors import InvalidInputError

EQUALITY = ("$eq", "$ne", "$in", "$nin")
ORDER = ("$gt", "$gte", "$lt", "$lte")
OPERATORS = EQUALITY + ORDER
LOGICAL = ("$and", "$or")
COLUMNS = ("source", "kind", "doc_id", "tags")
PAGE_KEYS = ("page", "page_start", "page_end")
MAX_CLAUSES = 256  # conditions in one filter: far above any hand-written one, bounds the SQL we build
MAX_DEPTH = 8
_SQL_OP = {"$gt": ">", "$gte": ">=", "$lt": "<", "$lte": "<="}
_ISO = re.compile(r"^\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d{1,6})?)?)?(Z|[+-]\d{2}:\d{2})?$")
_HINT = (f"valid: {', '.join(OPERATORS)} on a key, {' and '.join(LOGICAL)} over a list of filters; "
         'e.g. {"page": {"$gte": 3}, "kind": {"$in": ["markdown", "rst"]}}')
_Scalar = (str, int, float, bool, type(None))


class Compiled(NamedTuple):
    sql: str  # one boolean SQL expression over a `chunks` row
    args: list[Any]
    keys: frozenset[str]  # metadata keys the filter names (checked against the collection's)
    kinds: frozenset[str]  # kind values the filter names (checked against the collection's)
    tags: frozenset[str]  # tags the filter names (likewise)


def _bad(message: str) -> InvalidInputError:
    return InvalidInputError(message, _HINT)


class _Compiler:
    def __init__(self) -> None:
        self.args: list[Any] = []
        self.keys: set[str] = set()
        self.kinds: set[str] = set()
        self.tags_named: set[str] = set()
        self.clauses = 0

    # ------------------------------------------------------------------ structure
    def where(self, where: Any, depth: int = 0) -> str:
        if not isinstance(where, Mapping):
            raise _bad(f"a filter must be an object like {{'kind': 'markdown'}}, got {type(where).__name__}")
        if depth > MAX_DEPTH:
            raise _bad(f"filter nested deeper than {MAX_DEPTH} levels of $and / $or")
        parts = [self.logical(k, v, depth) if k in LOGICAL else self.clause(k, v) for k, v in where.items()]
        return "(" + " AND ".join(parts) + ")" if parts else "1"

    def logical(self, op: str, items: Any, depth: int) -> str:
        if not isinstance(items, (list, tuple)) or not items:
            raise _bad(f"{op} takes a non-empty list of filters, got {items!r}"[:200])
        return "(" + f" {op[1:].upper()} ".join(self.where(w, depth + 1) for w in items) + ")"

    def clause(self, key: Any, value: Any) -> str:
        if not isinstance(key, str) or not key:
            raise _bad(f"invalid filter key {key!r}")
        if key.startswith("$"):
            raise _bad(f"unknown operator {key!r} at the top of a filter (only {' and '.join(LOGICAL)} go there)")
        if not key.replace("_", "").replace("-", "").replace(".", "").isalnum() or len(key) > 128:
            raise InvalidInputError(f"invalid filter key {key!r}", "use source, kind, tags, doc_id or a metadata key "
                                                                   "(letters, digits, '_', '-', '.')")
        self.clauses += 1
        if self.clauses > MAX_CLAUSES:
            raise _bad(f"filter has more than {MAX_CLAUSES} conditions")
        if isinstance(value, Mapping):
            ops = list(value)
            bad = [o for o in ops if o not in OPERATORS]
            if bad or not ops:
                what = f"unknown operator {bad[0]!r} for {key!r}" if bad else f"empty operator object for {key!r}"
                raise _bad(what)
            return "(" + " AND ".join(self.op(key, o, value[o]) for o in ops) + ")"
        if isinstance(value, (list, tuple, set)):
            return self.op(key, "$all" if key == "tags" else "$in", list(value))
        return self.op(key, "$eq", value)

    # ------------------------------------------------------------------ one operator on one key
    def op(self, key: str, op: str, value: Any) -> str:
        if op in ("$in", "$nin", "$all"):
            if not isinstance(value, (list, tuple, set)):
                raise _bad(f"{key}: {op} takes a list, got {value!r}"[:200])
            values = list(value)
        else:
            values = [value]
        for v in values:
            if not isinstance(v, _Scalar) or isinstance(v, float) and not math.isfinite(v):
                raise _bad(f"{key}: {op} takes strings, numbers, booleans or null, got {v!r}"[:200])
        if op in ORDER:
            if key in COLUMNS:
                raise _bad(f"{key} cannot be compared with {op}; use $eq, $ne, $in or $nin")
            return self.order(key, op, value)
        if key == "tags":
            return self.tags(op, [str(v) for v in values if v is not None])
        if key == "source":
            inner = " OR ".join(["knn_glob(?, source)"] * len(values)) or "0"
            self.args += [str(v) for v in values]
            return f"NOT ({inner})" if op in ("$ne", "$nin") else f"({inner})"
        if key == "kind":  # the file's kind (code, markdown) or a code chunk's (function, method, class, module)
            kinds = [str(v) for v in values if v is not None]
            self.kinds.update(kinds)
            if not kinds:
                return "0" if op in ("$eq", "$in") else "1"
            marks = ",".join("?" * len(kinds))
            self.args += kinds * 2
            inner = f"(kind IN ({marks}) OR coalesce(json_extract(metadata, '$.kind'), '') IN ({marks}))"
            return f"NOT {inner}" if op in ("$ne", "$nin") else inner
        if key == "doc_id":
            return self.equal(key, op, [None if v is None else str(v) for v in values])
        if key == "page":
            return self.page(op, values)
        self.keys.add(key)
        return self.equal("json_extract(metadata, ?)", op, values, bind=[f'$."{key}"'])

    def equal(self, expr: str, op: str, values: list, bind: list | None = None) -> str:
        """expr = v / IN / NOT IN, with a missing value counting as not equal. `bind`: the arguments
        of `expr` itself, bound each time it is written."""

        def e() -> str:
            self.args.extend(bind or [])
            return expr

        real = [v for v in values if v is not None]
        has_null = len(real) < len(values)
        positive = op in ("$eq", "$in")
        parts = []
        if real:
            ph = ",".join("?" * len(real))
            parts.append(f"{e()} {'IN' if positive else 'NOT IN'} ({ph})")
            self.args.extend(real)
        if has_null:
            parts.append(f"{e()} {'IS NULL' if positive else 'IS NOT NULL'}")
        if not parts:
            return "0" if positive else "1"
        if positive:
            return "(" + " OR ".join(parts) + ")"
        if not has_null:  # "not one of these": chunks without the key pass too
            parts.append(f"{e()} IS NULL")
            return "(" + parts[0] + " OR " + parts[1] + ")"
        return "(" + " AND ".join(parts) + ")"

    def tags(self, op: str, values: list[str]) -> str:
        has = "EXISTS (SELECT 1 FROM json_each(chunks.tags) WHERE value = ?)"
        self.tags_named.update(values)
        self.args.extend(values)
        if not values:
            return "0" if op in ("$eq", "$in") else "1"
        if op in ("$eq", "$all"):
            return "(" + " AND ".join([has] * len(values)) + ")"
        if op == "$in":
            return "(" + " OR ".join([has] * len(values)) + ")"
        return "NOT (" + " OR ".join([has] * len(values)) + ")"

    def order(self, key: str, op: str, value: Any) -> str:
        kind = _order_kind(key, op, value)
        if key == "page":  # a range [page_start, page_end]: "> 3" when its end is past 3, "< 3" when its start is
            col = _page_end() if op in ("$gt", "$gte") else _page_start()
            self.keys.add("page")
            self.args.append(value)
            return f"({col} {_SQL_OP[op]} ?)"
        self.keys.add(key)
        path = f'$."{key}"'
        if kind == "number":
            self.args += [path, path, value]
            return f"(json_type(metadata, ?) IN ('integer', 'real') AND json_extract(metadata, ?) {_SQL_OP[op]} ?)"
        self.args += [path, path, value]
        return f"(json_type(metadata, ?) = 'text' AND julianday(json_extract(metadata, ?)) {_SQL_OP[op]} julianday(?))"

    def page(self, op: str, values: list) -> str:
        """page = n: n inside the chunk's page range (a chunk may span pages)."""
        self.keys.add("page")
        for v in values:
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
                raise _bad(f"page: {op} takes page numbers, got {v!r}"[:200])
        real = [v for v in values if v is not None]
        inside = " OR ".join([f"({_page_start()} <= ? AND {_page_end()} >= ?)"] * len(real)) or "0"
        for v in real:
            self.args += [v, v]
        return f"({inside})" if op in ("$eq", "$in") else f"NOT coalesce({inside}, 0)"


def _page_start() -> str:
    return "coalesce(json_extract(metadata, '$.page_start'), json_extract(metadata, '$.page'))"


def _page_end() -> str:
    return ("coalesce(json_extract(metadata, '$.page_end'), json_extract(metadata, '$.page_start'), "
            "json_extract(metadata, '$.page'))")


def _order_kind(key: str, op: str, value: Any) -> str:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return "number"
    if key != "page" and isinstance(value, str) and _ISO.match(value):
        try:
            datetime.fromisoformat(value.replace("Z", "+00:00"))
            return "date"
        except ValueError:
            pass
    want = "a page number" if key == "page" else "a number or an ISO date (2024-05-01 or 2024-05-01T12:00:00Z)"
    raise _bad(f"{key}: {op} takes {want}, got {value!r}"[:200])


def compile_where(where: Mapping[str, Any]) -> Compiled:
    """One SQL condition for `where`; InvalidInputError (naming the valid operators) on a bad one."""
    c = _Compiler()
    sql = c.where(where)
    return Compiled(sql, c.args, frozenset(c.keys), frozenset(c.kinds), frozenset(c.tags_named))


_VOCAB_SQL = {  # what the collection holds, each read only when a filter names it (json_each scans every row)
    "keys": "SELECT DISTINCT j.key FROM chunks, json_each(chunks.metadata) AS j",
    "kinds": "SELECT DISTINCT kind FROM chunks WHERE kind IS NOT NULL UNION "
             "SELECT DISTINCT json_extract(metadata, '$.kind') FROM chunks WHERE json_extract(metadata, '$.kind') IS NOT NULL",
    "tags": "SELECT DISTINCT j.value FROM chunks, json_each(chunks.tags) AS j",
}


def _vocabulary(conn: sqlite3.Connection, cache: dict | None, part: str) -> set[str]:
    """The metadata keys, kinds or tags present in the collection's rows, kept on the snapshot's cache."""
    slot = f"filter_{part}"
    if cache is not None and slot in cache:
        return cache[slot]
    got = {r[0] for r in conn.execute(_VOCAB_SQL[part])}
    if part == "keys" and got & set(PAGE_KEYS):
        got.add("page")
    if cache is not None:
        cache[slot] = got
    return got


def _check_names(conn: sqlite3.Connection, comp: Compiled, cache: dict | None) -> None:
    """A kind, tag or metadata key that no chunk has is a typo, not an empty result: say what there is."""
    if not (comp.keys or comp.kinds or comp.tags) or conn.execute("SELECT 1 FROM chunks LIMIT 1").fetchone() is None:
        return
    kinds = _vocabulary(conn, cache, "kinds") if comp.kinds else set()
    unknown_kinds = sorted(comp.kinds - kinds)
    if unknown_kinds:
        langs = {r[0] for r in conn.execute("SELECT DISTINCT json_extract(metadata, '$.language') FROM chunks")}
        tip = f"; {unknown_kinds[0]!r} is a language: filter language={unknown_kinds[0]}" if unknown_kinds[0] in langs else ""
        raise InvalidInputError(f"unknown kind {unknown_kinds[0]!r}: this collection holds the kinds {', '.join(sorted(kinds))}",
                                f"filter on one of them{tip}")
    tags = _vocabulary(conn, cache, "tags") if comp.tags else set()
    unknown_tags = sorted(comp.tags - tags)
    if unknown_tags:
        held = f"the tags {', '.join(sorted(tags)[:50])}" if tags else "no tags (tag files with `index --tag T`)"
        raise InvalidInputError(f"no chunk in this collection has the tag {unknown_tags[0]!r}; it holds {held}",
                                "filter on one of its tags")
    keys = _vocabulary(conn, cache, "keys") if comp.keys else set()
    unknown = sorted(comp.keys - keys)
    if unknown:
        shown = ", ".join(sorted(set(COLUMNS) | keys))
        raise InvalidInputError(f"no chunk in this collection has the metadata key {unknown[0]!r}",
                                f"filter on one of: {shown}")


def allowed_ids(conn: sqlite3.Connection, where: Mapping[str, Any] | None, cache: dict | None = None) -> np.ndarray | None:
    """Sorted chunk ids matching `where` (None when there is no filter). `cache`: the snapshot's."""
    if not where:
        return None
    comp = compile_where(where)
    _check_names(conn, comp, cache)
    rows = conn.execute(f"SELECT id FROM chunks WHERE {comp.sql} ORDER BY id", comp.args)
    return np.asarray([r[0] for r in rows], dtype=np.int64)
