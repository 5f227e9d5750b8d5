"""The chunk tools over MCP: add_texts, get_chunks, list_collections, chunk_context (neighbours in
reading order), and search pages (a cursor up to k, refused for another query) with resource links.

A real DocStore with the "hash-64" embedder, the SDK's in-memory client (tests/support/mcp.py).
"""
from __future__ import annotations

import pytest
from mcp import Client

from tests.support.mcp import call, server_for, text_of

pytestmark = pytest.mark.anyio


# --------------------------------------------------------------------------- new tools


async def test_new_tools_are_typed_and_annotated(env):
    async with Client(server_for(env)) as c:
        tools = {t.name: t for t in (await c.list_tools()).tools}
    for name in ("add_texts", "create_collection", "drop_collection", "get_chunks", "chunk_context",
                 "start_indexing", "index_status", "cancel_indexing"):
        t = tools[name]
        assert t.output_schema and t.output_schema["type"] == "object" and t.annotations and t.description, name
    assert tools["drop_collection"].annotations.destructive_hint is True
    assert tools["get_chunks"].annotations.read_only_hint is True
    assert tools["add_texts"].annotations.read_only_hint is False
    assert set(tools["add_texts"].input_schema["required"]) == {"texts"}


async def test_add_texts_get_chunks_and_collections(env):
    res = await call(env, "create_collection", {"name": "notes15"})
    assert not res.is_error and res.structured_content["dim"] == 64, text_of(res)
    assert "already exists" in text_of(await call(env, "create_collection", {"name": "notes15"}))
    bad = await call(env, "create_collection", {"name": "other", "embedder": "hash-32"})
    assert bad.is_error and "--embedder hash-64" in text_of(bad)
    res = await call(env, "add_texts", {"texts": ["the platypus lays eggs", "the echidna also lays eggs"],
                                        "ids": ["p1", "e1"], "metadatas": [{"source": "zoo", "kind": "note"}, {}],
                                        "collection": "notes15"})
    assert not res.is_error and res.structured_content["ids"] == ["p1", "e1"], text_of(res)
    got = (await call(env, "get_chunks", {"ids": ["e1", "zz", "p1"], "collection": "notes15"})).structured_content
    assert [c["id"] for c in got["chunks"]] == ["e1", "p1"] and got["missing"] == ["zz"]
    assert got["chunks"][1]["source"] == "zoo" and got["chunks"][1]["metadata"]["kind"] == "note"
    hits = (await call(env, "search", {"query": "platypus eggs", "collection": "notes15", "mode": "bm25"}))
    assert hits.structured_content["hits"][0]["id"] == "p1"
    for args, why in [({"texts": ["a"], "ids": ["1", "2"]}, "2 ids for 1 texts"), ({"texts": ["\x00"]}, "empty"),
                      ({"texts": []}, "texts is empty")]:
        res = await call(env, "add_texts", {**args, "collection": "notes15"})
        assert res.is_error and why in text_of(res), text_of(res)
    dropped = await call(env, "drop_collection", {"name": "notes15"})
    assert dropped.structured_content == {"name": "notes15", "chunks": 2, "sources": 2}  # "zoo" and ""
    cols = (await call(env, "list_collections")).structured_content["collections"]
    assert "notes15" not in {c["name"] for c in cols}
    assert "not found" in text_of(await call(env, "search", {"query": "platypus", "collection": "notes15"}))
    assert "not found" in text_of(await call(env, "drop_collection", {"name": "notes15"}))
    assert not any(p.name.startswith(".dropped") for p in env["cfg"].store.iterdir())


async def test_chunk_context_reads_the_neighbours_in_order(env):
    doc = env["base"] / "long"
    doc.mkdir(exist_ok=True)
    (doc / "story.md").write_text("".join(f"# Part {i}\n\n" + f"paragraph {i} " * 60 + "\n\n" for i in range(6)))
    res = await call(env, "index_paths", {"paths": [str(doc)], "collection": "ctx"}, allow_roots=(env["base"],))
    assert not res.is_error and res.structured_content["chunks_added"] >= 4, text_of(res)
    hit = next(h for h in (await call(env, "search", {"query": "Part 3 paragraph 3", "collection": "ctx",
                                                       "mode": "bm25"})).structured_content["hits"]
               if "paragraph 3" in h["text"])
    out = (await call(env, "chunk_context", {"id": hit["id"], "before": 2, "after": 1, "collection": "ctx"}))
    body = out.structured_content
    assert body["chunk"]["id"] == hit["id"] and len(body["before"]) == 2 and len(body["after"]) == 1
    lines = [c["start_line"] for c in [*body["before"], body["chunk"], *body["after"]]]
    assert lines == sorted(lines) and len(set(lines)) == 4
    assert "paragraph 2" in body["before"][-1]["text"] and "paragraph 4" in body["after"][0]["text"]
    links = [b for b in out.content if b.type == "resource_link"]
    assert [link.uri for link in links][2] == f"chunk://ctx/{hit['id']}"
    res = await call(env, "chunk_context", {"id": "999999", "collection": "ctx"})
    assert res.is_error and "no chunk" in text_of(res)


# --------------------------------------------------------------------------- pages and resource links


async def test_search_pages_with_a_cursor_up_to_k(env):
    texts = [f"gardening note number {i} about compost soil and worms " + "filler " * 40 for i in range(60)]
    await call(env, "add_texts", {"texts": texts, "collection": "pages"})
    seen: list[str] = []
    args = {"query": "gardening compost soil", "k": 50, "mode": "bm25", "collection": "pages"}
    pages = 0
    async with Client(server_for(env, max_result_chars=12_000)) as c:
        res = await c.call_tool("search", args)
        while True:
            out = res.structured_content
            assert not res.is_error and out["offset"] == len(seen), text_of(res)
            seen += [h["id"] for h in out["hits"]]
            links = [b for b in res.content if b.type == "resource_link"]
            assert [link.uri for link in links] == [h["uri"] for h in out["hits"]]
            pages += 1
            if not out["next_cursor"]:
                break
            assert "next pages" in out["note"]
            res = await c.call_tool("search", {"query": args["query"], "cursor": out["next_cursor"]})
        bad = await c.call_tool("search", {"query": args["query"], "cursor": "eyJ4IjoxfQ"})  # {"x":1}
        assert bad.is_error and "cursor is not one this server returned" in text_of(bad)
    assert pages >= 3 and len(seen) == 50 == len(set(seen))
    whole = (await call(env, "search", {**args, "k": 50}, max_result_chars=10_000_000)).structured_content
    assert [h["id"] for h in whole["hits"]] == seen and whole["next_cursor"] is None


async def test_cursor_of_another_query_is_refused(env):
    async with Client(server_for(env, max_result_chars=12_000)) as c:
        first = (await c.call_tool("search", {"query": "gardening compost", "k": 30, "mode": "bm25",
                                              "collection": "pages"})).structured_content
        assert first["next_cursor"]
        res = await c.call_tool("search", {"query": "something else", "cursor": first["next_cursor"]})
        assert res.is_error and "another query" in text_of(res)
