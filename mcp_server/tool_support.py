"""What every MCP tool shares: limits, annotations, argument checks, the worker-thread hop, results.

Each tool validates its arguments through its Pydantic signature (bounds are in the
published inputSchema), runs the blocking work in a worker thread so the event loop keeps
serving other requests, and turns every library error into an isError result that names
the problem and the fix. Results are bounded in size and say so when something was cut.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Annotated, Any

import anyio
from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import ToolError
from mcp_types import CallToolResult, TextContent, ToolAnnotations
from pydantic import BaseModel, ConfigDict, Field

from mcp_server import schemas as S
from retrieval.errors import KnnragError, NotFoundError

log = logging.getLogger("knnrag.mcp")

MAX_QUERY_CHARS = 10_000
MAX_TEXT_CHARS = 20_000  # perplexity / generation inputs: a 135M LM on CPU, keep calls under a minute
MAX_HIT_TEXT = 4_000
COLLECTION_RE = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"
NO_DATASTORE = ("no kNN datastore is configured (start the server with --datastore DIR): "
                "this result uses the base LM alone")

Collection = Annotated[str, Field(description="collection name", pattern=COLLECTION_RE, max_length=64)]
READ = ToolAnnotations(readOnlyHint=True, destructiveHint=False, idempotentHint=True, openWorldHint=False)
COMPUTE = ToolAnnotations(readOnlyHint=True, destructiveHint=False, idempotentHint=False, openWorldHint=False)


class Filters(BaseModel):
    """Metadata filters applied inside the search (never after it)."""

    model_config = ConfigDict(extra="forbid")
    source: str | None = Field(default=None, max_length=1000, description="glob over source paths, e.g. 'docs/*.md'")
    kind: str | None = Field(default=None, max_length=64, description="file type, e.g. 'markdown', 'python', 'text'")
    tags: list[Annotated[str, Field(max_length=200)]] | None = Field(
        default=None, max_length=50, description="all of these tags must be present")
    doc_id: str | None = Field(default=None, max_length=1000)


def state(ctx: Context):
    return ctx.request_context.lifespan_context


def result(model: BaseModel) -> CallToolResult:
    """Structured content plus its compact JSON as text (for clients without outputSchema support)."""
    return CallToolResult(content=[TextContent(type="text", text=model.model_dump_json())],
                          structured_content=model.model_dump(mode="json"))


async def run(fn: Callable[[], Any]) -> Any:
    """Blocking work in a worker thread; library errors become clear isError results."""
    try:
        return await anyio.to_thread.run_sync(fn)
    except KnnragError as e:
        raise ToolError(f"{e.message}. Hint: {e.hint}" if e.hint else e.message) from e
    except (MemoryError, RecursionError) as e:
        raise ToolError(f"the request is too large to process ({type(e).__name__})") from e


def text(value: str, what: str, limit: int) -> str:
    if not value.strip():
        raise ToolError(f"{what} is empty. Hint: pass some text")
    if len(value) > limit:  # also bounded in the schema; kept for direct Python callers
        raise ToolError(f"{what} is {len(value)} characters, over the limit of {limit}. Hint: shorten it")
    return value


def require_collection(store: Any, name: str) -> None:
    """Unknown collection -> NotFoundError with an MCP-flavoured hint (cheap: collections are cached)."""
    try:
        store.collection(name)
    except NotFoundError as e:
        raise NotFoundError(e.message, "call list_collections to see them, or index_paths to create one") from e


def hit(h: Any) -> S.HitOut:
    d = h.to_dict() if hasattr(h, "to_dict") else dict(h)
    text = d.get("text") or ""
    cut = len(text) > MAX_HIT_TEXT
    coll = d.get("collection") or "default"
    return S.HitOut(
        id=str(d["id"]), uri=f"chunk://{coll}/{d['id']}", score=float(d.get("score") or 0.0),
        scores={k: float(v) for k, v in (d.get("scores") or {}).items() if v is not None},
        source=str(d.get("source")), start_line=int(d.get("start_line") or 0), end_line=int(d.get("end_line") or 0),
        start_char=int(d.get("start_char") or 0), end_char=int(d.get("end_char") or 0), heading=d.get("heading") or None,
        text=text[:MAX_HIT_TEXT], text_truncated=cut, collection=coll, metadata=dict(d.get("metadata") or {}),
    )


def bound_hits(hits: list[S.HitOut], budget_chars: int) -> tuple[list[S.HitOut], bool, str | None]:
    """Keep hits in rank order while their JSON fits `budget_chars`; say what was cut."""
    kept: list[S.HitOut] = []
    used = 0
    for h in hits:
        size = len(h.model_dump_json())
        if kept and used + size > budget_chars:
            break
        kept.append(h)
        used += size
    cut_texts = sum(h.text_truncated for h in kept)
    notes = []
    if len(kept) < len(hits):
        notes.append(f"{len(hits) - len(kept)} lower-ranked hits omitted to keep the result under the size limit; "
                     "ask for a smaller k or narrow the filters")
    if cut_texts:
        notes.append(f"{cut_texts} hit texts cut to {MAX_HIT_TEXT} characters; read the full chunk via its `uri` resource")
    return kept, bool(notes), ("; ".join(notes) or None)


def throttled_progress(ctx: Context) -> Callable[[int, int, str], None]:
    """A DocStore progress callback (worker thread) that forwards MCP progress notifications.

    DocStore reports per stage (scan, embed, ...) with counters restarting at 0; MCP wants one
    strictly increasing `progress`, so stages are laid end to end. At most ~4 notifications/s.
    """
    st = {"offset": 0, "stage": None, "done": 0, "total": 0, "sent": -1.0, "last": 0.0}

    def progress(done: int, total: int, what: str) -> None:
        if what != st["stage"] or done < st["done"]:
            st["offset"] += max(st["done"], st["total"]) if st["stage"] is not None else 0
            st["stage"] = what
        st["done"], st["total"] = done, total
        value = float(st["offset"] + done)
        now = time.monotonic()
        if value <= st["sent"] or (done < total and now - st["last"] < 0.25):
            return
        st["sent"], st["last"] = value, now
        try:
            anyio.from_thread.run(ctx.report_progress, value, float(st["offset"] + max(total, done)) or None,
                                  f"{what} {done}/{total}"[:200])
        except Exception:  # a client gone away must not fail the write
            log.debug("progress notification failed", exc_info=True)

    return progress


def jsonable(obj: Any) -> Any:
    import json

    return json.loads(json.dumps(obj, default=str))
