"""The `list_sources` read tool: the files a collection holds, a page at a time.

Its cursor is stateless like search's (paging.py): URL-safe base64 of the collection, the source
glob, the page size, the offset of the next page and the collection's generation when the first
page was served; a page served after the collection changed says so. A cursor is untrusted input:
each field is checked again as if passed directly.
"""
from __future__ import annotations

import base64
import json
import re
from typing import Annotated, Any, NamedTuple

from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import ToolError
from mcp_types import CallToolResult
from pydantic import Field

from mcp_server import schemas as S
from mcp_server import tool_support as T
from mcp_server.paging import MAX_CURSOR_CHARS
from mcp_server.tool_support import COLLECTION_RE, READ, Collection

MAX_LIMIT = 500  # rows of ~300 characters of JSON: the size bound below cuts sooner with long paths


class SourcePage(NamedTuple):
    collection: str
    source: str | None
    limit: int
    offset: int
    generation: int


def encode(page: SourcePage) -> str:
    body = {"c": page.collection, "s": page.source, "l": page.limit, "o": page.offset, "g": page.generation}
    return base64.urlsafe_b64encode(json.dumps(body, separators=(",", ":")).encode()).decode().rstrip("=")


def decode(cursor: str) -> SourcePage:
    bad = ToolError("cursor is not one this server returned. Hint: pass `next_cursor` from the previous list_sources "
                    "result unchanged, or call list_sources without cursor")
    if len(cursor) > MAX_CURSOR_CHARS:
        raise bad
    try:
        body = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        page = SourcePage(str(body["c"]), body["s"], int(body["l"]), int(body["o"]), int(body["g"]))
    except (ValueError, KeyError, TypeError):
        raise bad from None
    if (not re.match(COLLECTION_RE, page.collection) or not 1 <= page.limit <= MAX_LIMIT or page.offset < 1
            or not (page.source is None or isinstance(page.source, str) and len(page.source) <= 1000)):
        raise bad
    return page


def _rows_that_fit(rows: list[S.SourceOut], budget: int) -> list[S.SourceOut]:
    kept: list[S.SourceOut] = []
    used = 0
    for r in rows:
        used += len(r.model_dump_json())
        if kept and used > budget:
            break
        kept.append(r)
    return kept


def _page(state: Any, page: SourcePage) -> S.SourcesOut:
    with state.gate.shared():
        store = state.store()
        T.require_collection(store, page.collection)
        got = store.list_sources(page.collection, limit=page.limit, offset=page.offset, source=page.source)
    rows = _rows_that_fit([S.SourceOut(**r) for r in got["sources"]], state.config.max_result_chars - 1000)
    end = page.offset + len(rows)
    nxt = encode(page._replace(offset=end, generation=got["generation"])) if end < got["total"] else None
    notes = []
    if len(rows) < len(got["sources"]):
        notes.append(f"{len(got['sources']) - len(rows)} sources of this page moved to the next to keep the result small")
    if nxt:
        notes.append(f"sources {end + 1}-{got['total']} are on the next pages: call list_sources with cursor=next_cursor")
    if page.offset and page.generation not in (-1, got["generation"]):
        notes.append("the collection changed since the first page: sources may repeat or be missing")
    return S.SourcesOut(collection=page.collection, sources=rows, total=got["total"], offset=page.offset,
                        returned=len(rows), next_cursor=nxt, note="; ".join(notes) or None)


def _register_list_sources(server: Any) -> None:
    @server.tool(annotations=READ, title="List the files of a collection")
    async def list_sources(
        ctx: Context,
        collection: Collection = "default",
        source: Annotated[str | None, Field(description="only paths matching this glob or folder, e.g. '*/docs/*.md'",
                                            max_length=1000)] = None,
        limit: Annotated[int, Field(description=f"sources per page (at most {MAX_LIMIT})", ge=1, le=MAX_LIMIT,
                                    strict=True)] = 100,
        cursor: Annotated[str | None, Field(description="next_cursor of the previous page; collection, source and "
                                                        "limit then come from it", max_length=MAX_CURSOR_CHARS)] = None,
    ) -> Annotated[CallToolResult, S.SourcesOut]:
        """The indexed files of a collection by path, with their chunks, kind, pages, tags and when they were
        indexed; paged (next_cursor)."""
        page = decode(cursor) if cursor is not None else SourcePage(collection, source, limit, 0, -1)
        state = T.state(ctx)
        return T.result(await T.run(lambda: _page(state, page)))


def register(server: Any) -> None:
    _register_list_sources(server)
