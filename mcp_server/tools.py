"""The read tools of the document store: search (paged), ask, get_chunks, chunk_context,
list_collections, stats and the chunk:// resource; thin, typed wrappers over DocStore and lm.rag.

Shared limits, argument checks and the worker-thread hop live in tool_support; writes live in
write_tools, collection administration in admin_tools, the kNN-LM tools in lm_tools. Each tool is
registered by a function of its own. Every store access holds the state's gate shared, so
drop_collection (exclusive) never closes a collection under a reader.
"""
from __future__ import annotations

import re
from dataclasses import asdict, replace
from typing import TYPE_CHECKING, Annotated, Any, Literal

import anyio
from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import ResourceError, ResourceNotFoundError, ToolError
from mcp_types import CallToolResult
from pydantic import Field

from mcp_server import paging
from mcp_server import schemas as S
from mcp_server import tool_support as T
from mcp_server.paging import Page
from mcp_server.tool_support import COLLECTION_RE, COMPUTE, MAX_QUERY_CHARS, READ, Collection, Filters
from retrieval.errors import KnnragError
from retrieval.store import admin
from retrieval.store.admin import MAX_NEIGHBOURS
from retrieval.store.filters import compile_where
from retrieval.store.search import MAX_K, MODES

if TYPE_CHECKING:
    from lm.rag.answer import RagAnswer
    from retrieval.types import Hit

MAX_SEARCH_K = min(1000, MAX_K)
MAX_PAGE_HITS = 200  # no page holds more (a hit is >= ~250 characters of JSON); spares converting all k


def _page_of(cursor: str | None, query: str, k: int, mode: str, filters: Filters | None, collection: str) -> Page:
    if cursor is None:
        return Page(k, mode, dict(filters) if filters else None, collection, 0, -1)
    page = paging.decode(cursor, query)
    try:  # a cursor is untrusted: its fields pass the same checks as direct arguments
        compile_where(page.filters or {})
    except KnnragError:
        raise ToolError("cursor is damaged. Hint: pass `next_cursor` unchanged") from None
    if not (1 <= page.k <= MAX_SEARCH_K and page.mode in MODES and re.match(COLLECTION_RE, page.collection)):
        raise ToolError("cursor is damaged. Hint: pass `next_cursor` unchanged")
    return page


def _search_page(state: Any, query: str, page: Page) -> S.SearchOut:
    """One page of hits (worker thread): the whole top k is ranked, then cut to what fits."""
    with state.gate.shared():
        store = state.store()
        T.require_collection(store, page.collection)
        found = store.search(query, k=page.k, mode=page.mode, filters=page.filters or None, collection=page.collection)
        hits = [T.hit(h) for h in found[page.offset:page.offset + MAX_PAGE_HITS]]
        kept, truncated, note = T.bound_hits(hits, state.config.max_result_chars - 1000)
        end = page.offset + len(kept)
        gen = page.generation
        if page.offset or end < len(found):  # the generation is needed only to page
            with store.collection(page.collection).reading() as (_conn, snap):
                gen = snap.generation
    nxt = paging.encode(query, page._replace(offset=end, generation=gen)) if end < len(found) else None
    notes = [note] if note else []
    if nxt:
        notes.append(f"hits {end + 1}-{len(found)} are on the next pages: call search again with the same query "
                     "and cursor=next_cursor")
    if page.offset and page.generation not in (-1, gen):
        notes.append("the collection changed since the first page: hits may repeat or be missing")
    return S.SearchOut(query=query[:500], collection=page.collection, mode=page.mode, hits=kept, returned=len(kept),
                       offset=page.offset, truncated=truncated, next_cursor=nxt, note="; ".join(notes) or None)


def _register_search(server: Any) -> None:
    @server.tool(annotations=READ, title="Search the document store")
    async def search(
        query: Annotated[str, Field(description="what to look for (natural language or keywords)",
                                    min_length=1, max_length=MAX_QUERY_CHARS)],
        ctx: Context,
        k: Annotated[int, Field(description=f"number of hits (pages of them when they do not fit one result; "
                                            f"at most {MAX_SEARCH_K})", ge=1, le=MAX_SEARCH_K, strict=True)] = 10,
        mode: Annotated[Literal["hybrid", "dense", "bm25"], Field(description="retrieval mode")] = "hybrid",
        filters: Filters | None = None,
        collection: Collection = "default",
        cursor: Annotated[str | None, Field(description="next_cursor of the previous page (same query); k, mode, "
                                                        "filters and collection then come from it",
                                            max_length=paging.MAX_CURSOR_CHARS)] = None,
    ) -> Annotated[CallToolResult, S.SearchOut]:
        """Hybrid (BM25 + dense) search; hits carry scores, text, source file and line range, and a
        resource_link to the full chunk. Results past the size limit come in pages (next_cursor)."""
        T.text(query, "query", MAX_QUERY_CHARS)
        page = _page_of(cursor, query, k, mode, filters, collection)
        state = T.state(ctx)
        out = await T.run(lambda: _search_page(state, query, page))
        return T.result(out, links=out.hits)


def _register_ask(server: Any) -> None:
    @server.tool(annotations=COMPUTE, title="Answer a question with citations")
    async def ask(
        question: Annotated[str, Field(description="the question", min_length=1, max_length=MAX_QUERY_CHARS)],
        ctx: Context,
        k: Annotated[int, Field(description="sources to retrieve", ge=1, le=20, strict=True)] = 5,
        collection: Collection = "default",
        mode: Annotated[Literal["auto", "extractive", "generate"],
                        Field(description="extractive: the answer is copied from a source, with its exact lines and "
                                          "characters (no LM); generate: the LM writes it from numbered sources; "
                                          "auto: generate only with a model of >= 1B parameters")] = "auto",
    ) -> Annotated[CallToolResult, S.AskOut]:
        """Answer from the collection with exact citations; says so (grounded: false) instead of answering
        when the sources do not hold an answer."""
        T.text(question, "question", MAX_QUERY_CHARS)
        state = T.state(ctx)

        def work() -> RagAnswer:
            from lm.rag.answer import RagConfig, answer

            with state.gate.shared():
                store = state.store()
                T.require_collection(store, collection)
                cfg = RagConfig(k=k, answer_mode=mode, model=state.config.model)
                if state.config.min_score is not None:
                    cfg = replace(cfg, min_score=state.config.min_score)
                with state.lm_lock:  # the LM loads only if something relevant was retrieved
                    return answer(question, store=store, knnlm=lambda: state.ask_knnlm(collection),
                                  collection=collection, config=cfg)

        res = await T.run(work)
        return T.result(S.AskOut(question=question[:500], answer=res.answer[:20_000], grounded=res.grounded,
                                citations=[S.CitationOut(**asdict(c)) for c in res.citations], model=res.model,
                                used_knn=res.used_knn, attributed=res.attributed, note=res.note, mode=res.mode,
                                answer_span=asdict(res.answer_span) if res.answer_span else None,
                                phrase=asdict(res.phrase) if res.phrase else None, phrase_confidence=res.phrase_confidence,
                                confidence=res.confidence, agreement=res.agreement,
                                spans=[S.SpanCitationOut(**T.jsonable(asdict(sp))) for sp in res.spans]))


def _register_get_chunks(server: Any) -> None:
    @server.tool(annotations=READ, title="Read chunks by id")
    async def get_chunks(
        ids: Annotated[list[Annotated[str, Field(min_length=1, max_length=200)]],
                       Field(description="chunk ids (from search hits or add_texts)", min_length=1, max_length=100)],
        ctx: Context,
        collection: Collection = "default",
    ) -> Annotated[CallToolResult, S.ChunksOut]:
        """The chunks with these ids, with text, source and lines; unknown ids are listed in `missing`."""
        state = T.state(ctx)

        def work() -> list[Hit]:
            with state.gate.shared():
                store = state.store()
                T.require_collection(store, collection)
                return store.get(ids, collection=collection)

        hits = [T.hit(h) for h in await T.run(work)]
        kept, _truncated, _note = T.bound_hits(hits, state.config.max_result_chars - 1000)
        found = {h.id for h in hits}
        missing = [i for i in dict.fromkeys(ids) if i not in found]
        if not hits:
            raise ToolError(f"no chunk with these ids in collection {collection!r}. Hint: use ids from search hits "
                            "of this collection")
        return T.result(S.ChunksOut(collection=collection, chunks=kept, missing=missing), links=kept)


def _register_chunk_context(server: Any) -> None:
    @server.tool(annotations=READ, title="Neighbouring chunks of a chunk")
    async def chunk_context(
        id: Annotated[str, Field(description="a chunk id from a search hit", min_length=1, max_length=200)],
        ctx: Context,
        before: Annotated[int, Field(description="preceding chunks of the same document", ge=0,
                                     le=MAX_NEIGHBOURS, strict=True)] = 1,
        after: Annotated[int, Field(description="following chunks of the same document", ge=0,
                                    le=MAX_NEIGHBOURS, strict=True)] = 1,
        collection: Collection = "default",
    ) -> Annotated[CallToolResult, S.ChunkContextOut]:
        """The chunk with its neighbours in the same file (or JSONL record), in reading order: read around
        a hit without fetching the whole file."""
        state = T.state(ctx)

        def work() -> tuple[list[Hit], Hit, list[Hit]]:
            with state.gate.shared():
                store = state.store()
                T.require_collection(store, collection)
                return admin.chunk_context(store, id, before=before, after=after, collection=collection)

        pre, mid, post = await T.run(work)
        chunk = T.hit(mid)
        before_, after_, note = T.bound_context([T.hit(h) for h in pre], chunk, [T.hit(h) for h in post],
                                                state.config.max_result_chars - 1000)
        out = S.ChunkContextOut(collection=collection, id=id, before=before_, chunk=chunk, after=after_, note=note)
        return T.result(out, links=[*out.before, out.chunk, *out.after])


def _register_list_collections(server: Any) -> None:
    @server.tool(annotations=READ, title="List collections")
    async def list_collections(ctx: Context) -> Annotated[CallToolResult, S.CollectionsOut]:
        """Collections in the store with their sizes and embedding model."""
        state = T.state(ctx)
        def work() -> list[dict]:
            with state.gate.shared():
                return state.store().list_collections()

        rows = await T.run(work)
        return T.result(S.CollectionsOut(collections=[
            S.CollectionOut.model_validate({f: r.get(f) for f in S.CollectionOut.model_fields if r.get(f) is not None})
            for r in rows]))


def _register_stats(server: Any) -> None:
    @server.tool(annotations=READ, title="Store statistics")
    async def stats(
        ctx: Context,
        collection: Annotated[str | None, Field(description="a collection, or omit for the whole store",
                                                pattern=COLLECTION_RE, max_length=64)] = None,
    ) -> Annotated[CallToolResult, S.StatsOut]:
        """Counts, sizes and models of the store or one collection."""
        state = T.state(ctx)

        def work() -> dict:
            with state.gate.shared():
                store = state.store()
                if collection is not None:
                    T.require_collection(store, collection)
                return store.stats(collection)

        def datastore_info() -> dict | None:
            if state.config.datastore is None:
                return None
            from lm.datastore.token_store import TokenStore

            return TokenStore.open(state.config.datastore).info()  # no LM load: the manifest and mmap'd arrays

        d = await T.run(work)
        ds = await T.run(datastore_info)
        return T.result(S.StatsOut(collection=collection, store=str(state.config.store), stats=T.jsonable(d),
                                   datastore=T.jsonable(ds) if ds is not None else None))


def _register_chunk_resource(server: Any) -> None:
    from mcp.server.mcpserver.resources.templates import ResourceSecurity

    # Ids are opaque strings, not paths: "..", "/x" or "C:\\x" are ids like any other (chunk_uri
    # percent-encodes them; the template decodes once), so the SDK's path checks do not apply to them.
    @server.resource("chunk://{collection}/{id}", mime_type="text/plain",
                     description="the full text of one chunk (ids come from search hits; the id part is "
                                 "percent-encoded, as in each hit's `uri`)",
                     security=ResourceSecurity(exempt_params={"id"}))
    async def chunk(collection: str, id: str, ctx: Context) -> str:
        state = T.state(ctx)
        def work() -> list[Hit]:
            with state.gate.shared():
                return state.store().get([id], collection=collection)

        try:
            hits = await anyio.to_thread.run_sync(work)
        except KnnragError as e:
            raise ResourceNotFoundError(e.message) from e
        except Exception as e:
            raise ResourceError(f"cannot read chunk {id!r}: {type(e).__name__}") from e
        if not hits:
            raise ResourceNotFoundError(f"no chunk {id!r} in collection {collection!r}")
        return hits[0].text

    @server.resource("chunk://{collection}/{id}{#page}", mime_type="text/plain",
                     description="the full text of one chunk of a PDF, as hits address it (#page=N: its first page)")
    async def pdf_chunk(collection: str, id: str, page: str, ctx: Context) -> str:
        return await chunk(collection, id, ctx)


REGISTRARS = (_register_search, _register_ask, _register_get_chunks, _register_chunk_context, _register_list_collections,
              _register_stats, _register_chunk_resource)


def register(server: Any) -> None:
    for reg in REGISTRARS:
        reg(server)
