"""The document-store MCP tools: thin, typed wrappers over DocStore and lm.rag.answer.

Shared limits, argument checks and the worker-thread hop live in tool_support; the kNN-LM tools
live in lm_tools. Each tool is registered by a function of its own.
"""
from __future__ import annotations

from typing import Annotated, Any, Literal

import anyio
from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import ResourceError, ResourceNotFoundError, ToolError
from mcp_types import CallToolResult, ToolAnnotations
from pydantic import Field

from mcp_server import schemas as S
from mcp_server import tool_support as T
from mcp_server.paths import escaping_symlinks, exclude_pattern, resolve_allowed
from mcp_server.tool_support import COLLECTION_RE, COMPUTE, MAX_QUERY_CHARS, READ, Collection, Filters, log
from retrieval.errors import KnnragError


def _register_search(server: Any) -> None:
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
        T.text(query, "query", MAX_QUERY_CHARS)
        state = T.state(ctx)
        fdict = filters.model_dump(exclude_none=True) if filters else None

        def work():
            store = state.store()
            T.require_collection(store, collection)
            return store.search(query, k=k, mode=mode, filters=fdict or None, collection=collection)

        hits = [T.hit(h) for h in await T.run(work)]
        kept, truncated, note = T.bound_hits(hits, state.config.max_result_chars - 1000)
        return T.result(S.SearchOut(query=query[:500], collection=collection, mode=mode, hits=kept,
                                   returned=len(kept), truncated=truncated, note=note))


def _register_ask(server: Any) -> None:
    @server.tool(annotations=COMPUTE, title="Answer a question with citations")
    async def ask(
        question: Annotated[str, Field(description="the question", min_length=1, max_length=MAX_QUERY_CHARS)],
        ctx: Context,
        k: Annotated[int, Field(description="sources to retrieve", ge=1, le=20)] = 5,
        collection: Collection = "default",
    ) -> Annotated[CallToolResult, S.AskOut]:
        """Retrieve, then answer with the local LM from numbered sources; [n] maps to file and lines.
        Says so instead of answering when nothing relevant is found."""
        T.text(question, "question", MAX_QUERY_CHARS)
        state = T.state(ctx)

        def work():
            from lm.rag.answer import RagConfig, answer

            store = state.store()
            T.require_collection(store, collection)
            cfg = RagConfig(k=k) if state.config.min_score is None else RagConfig(k=k, min_score=state.config.min_score)
            with state.lm_lock:  # the LM loads only if something relevant was retrieved
                return answer(question, store=store, knnlm=state.knnlm, collection=collection, config=cfg)

        res = await T.run(work)
        d = res.to_dict()
        cites = [S.CitationOut(**{f: c[f] for f in S.CitationOut.model_fields if f in c}) for c in d["citations"]]
        return T.result(S.AskOut(question=question[:500], answer=d["answer"][:20_000], grounded=d["grounded"],
                                citations=cites, model=d["model"], used_knn=d["used_knn"],
                                attributed=bool(d.get("attributed")), note=d.get("note")))


def _register_index_paths(server: Any) -> None:
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
        state = T.state(ctx)
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
                                        progress=T.throttled_progress(ctx))
            return resolved, [f"{p}/{rel}" for p, rel in links], rep

        resolved, exclude, rep = await T.run(work)
        d = rep.to_dict()
        skipped = [S.SkippedOut(source=str(s["source"]), reason=str(s["reason"])) for s in d.get("skipped", [])]
        skipped += [S.SkippedOut(source=s, reason="symlink pointing outside the allowed roots") for s in exclude]
        dropped = {k: int(v) for k, v in (d.get("dropped") or {}).items()}
        return T.result(S.IndexOut(
            collection=collection, paths=[str(p) for p in resolved], skipped=skipped[:50], skipped_total=len(skipped),
            dropped=dropped, **{f: d[f] for f in ("files_seen", "added", "updated", "removed", "unchanged",
                                                   "chunks_added", "chunks_removed", "seconds") if f in d}))


def _register_delete(server: Any) -> None:
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
        state = T.state(ctx)

        def work():
            store = state.store()
            T.require_collection(store, collection)
            with state.write_lock:
                return store.delete(sources=sources or None, ids=ids or None, collection=collection)

        d = await T.run(work)
        return T.result(S.DeleteOut(collection=collection, removed_chunks=int(d.get("removed_chunks", 0)),
                                   removed_sources=int(d.get("removed_sources", 0))))


def _register_list_collections(server: Any) -> None:
    @server.tool(annotations=READ, title="List collections")
    async def list_collections(ctx: Context) -> Annotated[CallToolResult, S.CollectionsOut]:
        """Collections in the store with their sizes and embedding model."""
        state = T.state(ctx)
        rows = await T.run(lambda: state.store().list_collections())
        return T.result(S.CollectionsOut(collections=[
            S.CollectionOut(**{f: r.get(f) for f in S.CollectionOut.model_fields if r.get(f) is not None}) for r in rows]))


def _register_stats(server: Any) -> None:
    @server.tool(annotations=READ, title="Store statistics")
    async def stats(
        ctx: Context,
        collection: Annotated[str | None, Field(description="a collection, or omit for the whole store",
                                                pattern=COLLECTION_RE, max_length=64)] = None,
    ) -> Annotated[CallToolResult, S.StatsOut]:
        """Counts, sizes and models of the store or one collection."""
        state = T.state(ctx)

        def work():
            store = state.store()
            if collection is not None:
                T.require_collection(store, collection)
            return store.stats(collection)

        d = await T.run(work)
        return T.result(S.StatsOut(collection=collection, store=str(state.config.store), stats=T.jsonable(d)))


def _register_chunk_resource(server: Any) -> None:
    @server.resource("chunk://{collection}/{id}", mime_type="text/plain",
                     description="the full text of one chunk (ids come from search hits)")
    async def chunk(collection: str, id: str, ctx: Context) -> str:
        state = T.state(ctx)
        try:
            hits = await anyio.to_thread.run_sync(lambda: state.store().get([id], collection=collection))
        except KnnragError as e:
            raise ResourceNotFoundError(e.message) from e
        except Exception as e:
            raise ResourceError(f"cannot read chunk {id!r}: {type(e).__name__}") from e
        if not hits:
            raise ResourceNotFoundError(f"no chunk {id!r} in collection {collection!r}")
        return hits[0].to_dict()["text"]


REGISTRARS = (_register_search, _register_ask, _register_index_paths, _register_delete, _register_list_collections, _register_stats, _register_chunk_resource)


def register(server: Any) -> None:
    for reg in REGISTRARS:
        reg(server)
