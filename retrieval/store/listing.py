"""What a collection holds, file by file: `knnrag sources`, MCP `list_sources`, `DocStore.list_sources`.

A source is a file that `index` read (the `sources` table: hash, kind, size, when indexed; a file
whose every chunk was dropped is listed with 0 chunks) or the `source` of texts added with
`add_texts` (chunks only). Ordered by path, so offsets page stably while nothing changes.
"""
from __future__ import annotations

import json
import sqlite3
from datetime import datetime, timezone
from typing import Any

from retrieval.errors import InvalidInputError

MAX_LIMIT = 1000
_UNION = "SELECT source AS src FROM sources UNION SELECT source FROM chunks"
# the last page a chunk reaches: PDF chunks carry page_start/page_end, others may carry `page`
_LAST_PAGE = ("max(coalesce(json_extract(metadata, '$.page_end'), json_extract(metadata, '$.page_start'), "
              "json_extract(metadata, '$.page')))")


def _iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def _check(limit: Any, offset: Any) -> None:
    for name, v, lo, hi in (("limit", limit, 1, MAX_LIMIT), ("offset", offset, 0, None)):
        if isinstance(v, bool) or not isinstance(v, int) or v < lo or (hi is not None and v > hi):
            bound = f"{lo}-{hi}" if hi is not None else f">= {lo}"
            raise InvalidInputError(f"{name} must be an integer {bound}, got {v!r}", f"e.g. --limit 100 --offset {100}")


def _one(conn: sqlite3.Connection, src: str) -> dict:
    row = conn.execute("SELECT kind, tags, mtime, size, indexed_at, content_hash, chunks FROM sources WHERE source=?",
                       (src,)).fetchone()
    n, kind, pages, pages_given = conn.execute(
        f"SELECT count(*), min(kind), {_LAST_PAGE}, max(json_extract(metadata, '$.pages')) FROM chunks WHERE source=?",
        (src,)).fetchone()
    pages = pages_given if isinstance(pages_given, int) else pages
    out = {"source": src, "kind": row[0] if row is not None else kind, "chunks": int(n),
           "pages": int(pages) if isinstance(pages, (int, float)) else None,
           "tags": json.loads(row[1]) if row is not None and row[1] else [],
           "indexed_at": _iso(row[4]) if row is not None else None,
           "modified": _iso(row[2]) if row is not None else None,
           "size": row[3] if row is not None else None,
           "content_hash": row[5] if row is not None else None}
    return out


def list_sources(conn: sqlite3.Connection, *, limit: int = 100, offset: int = 0, source: str | None = None) -> dict:
    """One page of the collection's sources: {"sources": [...], "total", "offset", "next_offset"}.
    `source`: a glob (or folder) the paths must match, as in search filters."""
    _check(limit, offset)
    from retrieval.store.source_paths import spellings  # a path as the user sees it: relative, ~, ..

    pats = spellings(source) if source else []
    where, args = ("WHERE (" + " OR ".join(["knn_glob(?, src)"] * len(pats)) + ")", pats) if pats else ("", [])
    total = conn.execute(f"SELECT count(*) FROM ({_UNION}) {where}", args).fetchone()[0]
    names = [r[0] for r in conn.execute(f"SELECT src FROM ({_UNION}) {where} ORDER BY src LIMIT ? OFFSET ?",
                                        [*args, limit, offset])]
    end = offset + len(names)
    return {"sources": [_one(conn, s) for s in names], "total": int(total), "offset": offset,
            "next_offset": end if end < total else None}
