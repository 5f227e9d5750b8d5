"""Search cursors: the next page of a search whose hits were cut to the result size limit.

A cursor is stateless (it works on any server process and over any session): URL-safe base64 of
the request (query digest, k, mode, filters, collection), the offset of the next hit and the
collection's generation when the first page was served. The next page runs the same search
again and skips `offset` hits; when the collection changed in between, the page says so,
since hits may then repeat or be skipped. A cursor is untrusted input: every field is checked
again as if the caller had passed it directly.
"""
from __future__ import annotations

import base64
import hashlib
import json
from typing import Any, NamedTuple

from mcp.server.mcpserver.exceptions import ToolError

MAX_CURSOR_CHARS = 8_000


class Page(NamedTuple):
    k: int
    mode: str
    filters: dict[str, Any] | None
    collection: str
    offset: int
    generation: int


def digest(query: str) -> str:
    return hashlib.sha256(query.encode("utf-8", "surrogatepass")).hexdigest()[:16]


def encode(query: str, page: Page) -> str:
    body = {"q": digest(query), "k": page.k, "m": page.mode, "f": page.filters, "c": page.collection,
            "o": page.offset, "g": page.generation}
    return base64.urlsafe_b64encode(json.dumps(body, separators=(",", ":")).encode()).decode().rstrip("=")


def decode(cursor: str, query: str) -> Page:
    """The page a cursor asks for; ToolError when it is damaged or belongs to another query."""
    bad = ToolError("cursor is not one this server returned. Hint: pass `next_cursor` from the previous "
                    "search result unchanged, or search again without cursor")
    if len(cursor) > MAX_CURSOR_CHARS:
        raise bad
    try:
        body = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        page = Page(int(body["k"]), str(body["m"]), body["f"], str(body["c"]), int(body["o"]), int(body["g"]))
        same = body["q"] == digest(query)
    except (ValueError, KeyError, TypeError):
        raise bad from None
    if not same:
        raise ToolError("this cursor belongs to another query. Hint: pass the same `query` as in the first call")
    if page.filters is not None and not isinstance(page.filters, dict) or not 0 < page.offset < page.k:
        raise bad
    return page
