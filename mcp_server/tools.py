"""The MCP tools: thin, typed wrappers over DocStore, KNNLM and lm.rag.

Each tool validates its arguments through its Pydantic signature (bounds are in the
published inputSchema), runs the blocking work in a worker thread so the event loop keeps
serving other requests, and turns every library error into an isError result that names
the problem and the fix. Results are bounded in size and say so when something was cut.
"""
from __future__ import annotations

import logging
import time
from typing import Annotated, Any, Callable, Literal

import anyio
from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import ResourceError, ResourceNotFoundError, ToolError
from mcp_types import CallToolResult, TextContent, ToolAnnotations
from pydantic import BaseModel, ConfigDict, Field

from mcp_server import schemas as S
from mcp_server.paths import escaping_symlinks, exclude_pattern, resolve_allowed
from retrieval.errors import InvalidInputError, KnnragError, NotFoundError

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


# --------------------------------------------------------------------------- helpers


def _state(ctx: Context):
    return ctx.request_context.lifespan_context


def _result(model: BaseModel) -> CallToolResult:
    """Structured content plus its compact JSON as text (for clients without outputSchema support)."""
    return CallToolResult(content=[TextContent(type="text", text=model.model_dump_json())],
                          structured_content=model.model_dump(mode="json"))


async def _run(fn: Callable[[], Any]) -> Any:
    """Blocking work in a worker thread; library errors become clear isError results."""
    try:
        return await anyio.to_thread.run_sync(fn)
    except KnnragError as e:
        raise ToolError(f"{e.message}. Hint: {e.hint}" if e.hint else e.message) from e
    except (MemoryError, RecursionError) as e:
        raise ToolError(f"the request is too large to process ({type(e).__name__})") from e


def _text(value: str, what: str, limit: int) -> str:
    if not value.strip():
        raise ToolError(f"{what} is empty. Hint: pass some text")
    if len(value) > limit:  # also bounded in the schema; kept for direct Python callers
        raise ToolError(f"{what} is {len(value)} characters, over the limit of {limit}. Hint: shorten it")
    return value


def _require_collection(store: Any, name: str) -> None:
    """Unknown collection -> NotFoundError with an MCP-flavoured hint (cheap: collections are cached)."""
    try:
        store.collection(name)
    except NotFoundError as e:
        raise NotFoundError(e.message, "call list_collections to see them, or index_paths to create one") from e


def _hit(h: Any) -> S.HitOut:
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


def _throttled_progress(ctx: Context) -> Callable[[int, int, str], None]:
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


# --------------------------------------------------------------------------- tools


def register(server: Any) -> None:
    @server.tool(annotations=READ, title="Search the document store")
    async def search(
        query: Annotated[str, Field(description="what to look for (natural language or keywords)",
                                    min_length=1, max_length=MAX_QUERY_CHARS)],
        ctx: Context,
        k: Annotated[int, Field(description="number of hits", ge=1, le=100)] = 10,
        mode: Annotated[Literal["hybrid", "dense", "bm25"], Field(description="retrieval mode")] = "hybrid",
        filters: Annotated[Filters | None, Field(description="metadata filters")] = None,
        collection: Collection = "default",
    ) -> Annotated[CallToolResult, S.SearchOut]:
        """Hybrid (BM25 + dense) search; hits carry scores, text, source file and line range."""
        _text(query, "query", MAX_QUERY_CHARS)
        state = _state(ctx)
        fdict = filters.model_dump(exclude_none=True) if filters else None

        def work():
            store = state.store()
            _require_collection(store, collection)
            return store.search(query, k=k, mode=mode, filters=fdict or None, collection=collection)

        hits = [_hit(h) for h in await _run(work)]
        kept, truncated, note = bound_hits(hits, state.config.max_result_chars - 1000)
        return _result(S.SearchOut(query=query[:500], collection=collection, mode=mode, hits=kept,
                                   returned=len(kept), truncated=truncated, note=note))

    @server.tool(annotations=COMPUTE, title="Answer a question with citations")
    async def ask(
        question: Annotated[str, Field(description="the question", min_length=1, max_length=MAX_QUERY_CHARS)],
        ctx: Context,
        k: Annotated[int, Field(description="sources to retrieve", ge=1, le=20)] = 5,
        collection: Collection = "default",
    ) -> Annotated[CallToolResult, S.AskOut]:
        """Retrieve, then answer with the local LM from numbered sources; [n] maps to file and lines.
        Says so instead of answering when nothing relevant is found."""
        _text(question, "question", MAX_QUERY_CHARS)
        state = _state(ctx)

        def work():
            from lm.rag import RagConfig, answer

            store = state.store()
            _require_collection(store, collection)
            cfg = RagConfig(k=k) if state.config.min_score is None else RagConfig(k=k, min_score=state.config.min_score)
            with state.lm_lock:  # the LM loads only if something relevant was retrieved
                return answer(question, store=store, knnlm=state.knnlm, collection=collection, config=cfg)

        res = await _run(work)
        d = res.to_dict()
        cites = [S.CitationOut(**{f: c[f] for f in S.CitationOut.model_fields if f in c}) for c in d["citations"]]
        return _result(S.AskOut(question=question[:500], answer=d["answer"][:20_000], grounded=d["grounded"],
                                citations=cites, model=d["model"], used_knn=d["used_knn"],
                                attributed=bool(d.get("attributed")), note=d.get("note")))

    @server.tool(annotations=ToolAnnotations(readOnlyHint=False, destructiveHint=False, idempotentHint=True,
                                             openWorldHint=False), title="Index files under the allowed roots")
    async def index_paths(
        paths: Annotated[list[Annotated[str, Field(max_length=4096)]],
                         Field(description="files or folders under an --allow-root folder (relative paths start "
                                           "at the first root)", min_length=1, max_length=100)],
        ctx: Context,
        collection: Collection = "default",
    ) -> Annotated[CallToolResult, S.IndexOut]:
        """Add or refresh files in a collection (unchanged files are skipped by content hash); sends progress."""
        state = _state(ctx)
        roots = state.config.allow_roots

        def work():
            resolved = [resolve_allowed(p, roots) for p in paths]
            links = [(p, rel) for p in resolved for rel in escaping_symlinks(p, roots)]
            if links:
                log.warning("excluding %d symlinks that point outside the allowed roots", len(links))
            store = state.store()
            with state.write_lock:
                rep = store.index_paths([str(p) for p in resolved], collection=collection,
                                        exclude=tuple(exclude_pattern(rel) for _, rel in links),
                                        progress=_throttled_progress(ctx))
            return resolved, [f"{p}/{rel}" for p, rel in links], rep

        resolved, exclude, rep = await _run(work)
        d = rep.to_dict()
        skipped = [S.SkippedOut(source=str(s["source"]), reason=str(s["reason"])) for s in d.get("skipped", [])]
        skipped += [S.SkippedOut(source=s, reason="symlink pointing outside the allowed roots") for s in exclude]
        dropped = {k: int(v) for k, v in (d.get("dropped") or {}).items()}
        return _result(S.IndexOut(
            collection=collection, paths=[str(p) for p in resolved], skipped=skipped[:50], skipped_total=len(skipped),
            dropped=dropped, **{f: d[f] for f in ("files_seen", "added", "updated", "removed", "unchanged",
                                                   "chunks_added", "chunks_removed", "seconds") if f in d}))

    @server.tool(annotations=ToolAnnotations(readOnlyHint=False, destructiveHint=True, idempotentHint=True,
                                             openWorldHint=False), title="Delete sources or chunks")
    async def delete(
        ctx: Context,
        sources: Annotated[list[Annotated[str, Field(min_length=1, max_length=4096)]] | None,
                           Field(description="source paths to remove (as shown in hits)", max_length=1000)] = None,
        ids: Annotated[list[Annotated[str, Field(min_length=1, max_length=200)]] | None,
                       Field(description="chunk ids to remove", max_length=10_000)] = None,
        collection: Collection = "default",
    ) -> Annotated[CallToolResult, S.DeleteOut]:
        """Remove whole sources or single chunks from a collection. Destructive."""
        if not sources and not ids:
            raise ToolError("nothing to delete. Hint: pass `sources` (paths) or `ids` (chunk ids)")
        state = _state(ctx)

        def work():
            store = state.store()
            _require_collection(store, collection)
            with state.write_lock:
                return store.delete(sources=sources or None, ids=ids or None, collection=collection)

        d = await _run(work)
        return _result(S.DeleteOut(collection=collection, removed_chunks=int(d.get("removed_chunks", 0)),
                                   removed_sources=int(d.get("removed_sources", 0))))

    @server.tool(annotations=READ, title="List collections")
    async def list_collections(ctx: Context) -> Annotated[CallToolResult, S.CollectionsOut]:
        """Collections in the store with their sizes and embedding model."""
        state = _state(ctx)
        rows = await _run(lambda: state.store().list_collections())
        return _result(S.CollectionsOut(collections=[
            S.CollectionOut(**{f: r.get(f) for f in S.CollectionOut.model_fields if r.get(f) is not None}) for r in rows]))

    @server.tool(annotations=READ, title="Store statistics")
    async def stats(
        ctx: Context,
        collection: Annotated[str | None, Field(description="a collection, or omit for the whole store",
                                                pattern=COLLECTION_RE, max_length=64)] = None,
    ) -> Annotated[CallToolResult, S.StatsOut]:
        """Counts, sizes and models of the store or one collection."""
        state = _state(ctx)

        def work():
            store = state.store()
            if collection is not None:
                _require_collection(store, collection)
            return store.stats(collection)

        d = await _run(work)
        return _result(S.StatsOut(collection=collection, store=str(state.config.store), stats=_jsonable(d)))

    from mcp_server import lm_tools

    lm_tools.register(server)

    @server.resource("chunk://{collection}/{id}", mime_type="text/plain",
                     description="the full text of one chunk (ids come from search hits)")
    async def chunk(collection: str, id: str, ctx: Context) -> str:
        state = _state(ctx)
        try:
            hits = await anyio.to_thread.run_sync(lambda: state.store().get([id], collection=collection))
        except KnnragError as e:
            raise ResourceNotFoundError(e.message) from e
        except Exception as e:
            raise ResourceError(f"cannot read chunk {id!r}: {type(e).__name__}") from e
        if not hits:
            raise ResourceNotFoundError(f"no chunk {id!r} in collection {collection!r}")
        return hits[0].to_dict()["text"]


def _jsonable(obj: Any) -> Any:
    import json

    return json.loads(json.dumps(obj, default=str))


__all__ = ["register", "bound_hits", "Filters", "MAX_QUERY_CHARS", "MAX_TEXT_CHARS", "NO_DATASTORE",
           "InvalidInputError", "_run", "_text", "_state", "_result", "COMPUTE"]
