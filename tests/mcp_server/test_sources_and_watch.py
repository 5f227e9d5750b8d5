"""MCP `list_sources` (paged, output schema), search filters with operators and custom keys over MCP,
and `serve --watch` (a watcher thread in the lifespan) through the SDK's in-memory client."""
from __future__ import annotations

import time

import anyio
import pytest
from mcp import Client

from mcp_server.server import ServerConfig, ServerState, build_server
from retrieval.errors import InvalidInputError
from tests.support.mcp import text_of

pytestmark = pytest.mark.anyio
SENT = " is a word that this test looks for in a sentence long enough to pass the quality filter.\n"


async def call(env, name, args=None):
    async with Client(build_server(env["cfg"], state=env["state"])) as c:
        return await c.call_tool(name, args or {})


@pytest.fixture(scope="module")
async def indexed(env):
    res = await call(env, "index_paths", {"paths": [str(env["root"])]})
    assert not res.is_error, text_of(res)
    res = await call(env, "add_texts", {"texts": ["owned text about llamas" + SENT, "another owned text about llamas" + SENT],
                                        "metadatas": [{"source": "mem/one", "owner": "ana", "page": 2},
                                                      {"source": "mem/two", "owner": "bo", "page": 7}]})
    assert not res.is_error, text_of(res)
    return env


async def test_list_sources_pages_with_a_cursor(indexed):
    env = indexed
    out = (await call(env, "list_sources", {})).structured_content
    names = [s["source"] for s in out["sources"]]
    root = str(env["root"])
    assert names == sorted(names) and out["total"] == 5 and out["next_cursor"] is None
    assert {f"{root}/routing.md", f"{root}/notes/cache.md", "mem/one", "mem/two"} <= set(names)
    row = next(s for s in out["sources"] if s["source"] == f"{root}/deploy.md")
    assert row["kind"] == "markdown" and row["chunks"] >= 1 and row["pages"] is None and row["indexed_at"].endswith("Z")
    mem = next(s for s in out["sources"] if s["source"] == "mem/two")
    assert mem["pages"] == 7 and mem["indexed_at"] is None  # add_texts: no file behind it
    seen, cursor = [], None
    for _ in range(10):
        page = (await call(env, "list_sources", {"limit": 2} if cursor is None else {"cursor": cursor})).structured_content
        seen += [s["source"] for s in page["sources"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
        assert "next pages" in page["note"]
    assert seen == names
    only = (await call(env, "list_sources", {"source": "*/notes/*"})).structured_content
    assert [s["source"] for s in only["sources"]] == [f"{root}/notes/cache.md"]


async def test_list_sources_refuses_bad_input(indexed):
    for args, needle in [({"cursor": "garbage"}, "cursor is not one this server returned"),
                         ({"limit": 0}, "limit"), ({"limit": 10_000}, "limit"),
                         ({"collection": "nope"}, "not found")]:
        res = await call(indexed, "list_sources", args)
        assert res.is_error and needle in text_of(res), (args, text_of(res))
    async with Client(build_server(indexed["cfg"], state=indexed["state"])) as c:
        tool = next(t for t in (await c.list_tools()).tools if t.name == "list_sources")
    assert tool.output_schema and {"sources", "total", "next_cursor"} <= set(tool.output_schema["properties"])
    assert tool.annotations.read_only_hint


async def test_search_filters_take_custom_keys_and_operators(indexed):
    out = (await call(indexed, "search", {"query": "llamas", "filters": {"owner": "bo"}})).structured_content
    assert [h["source"] for h in out["hits"]] == ["mem/two"]
    out = (await call(indexed, "search", {"query": "llamas", "filters": {"page": {"$lte": 3}}})).structured_content
    assert [h["source"] for h in out["hits"]] == ["mem/one"]
    out = (await call(indexed, "search", {"query": "llamas text", "k": 10,
                                          "filters": {"$or": [{"owner": "ana"}, {"source": "*/deploy.md"}]}})).structured_content
    assert sorted(h["source"].rsplit("/", 1)[-1] for h in out["hits"]) == ["deploy.md", "one"]
    bad = await call(indexed, "search", {"query": "llamas", "filters": {"owner": {"$regex": "a"}}})
    assert bad.is_error and "$regex" in text_of(bad) and "$gte" in text_of(bad) and "$or" in text_of(bad)
    bad = await call(indexed, "search", {"query": "llamas", "filters": {"kind": "pdf"}})
    assert bad.is_error and "unknown kind 'pdf'" in text_of(bad) and "markdown" in text_of(bad)


@pytest.mark.slow  # waits on real time (watchers, queued writes, generation): 2-4 s alone
async def test_serve_watch_follows_the_files(tmp_path):
    root = tmp_path / "root"
    (root / "docs").mkdir(parents=True)
    (root / "docs" / "a.md").write_text("# A\n\nalpaca" + SENT)
    cfg = ServerConfig(store=tmp_path / "store", embedder="hash-64", allow_roots=(root,), watch=(root / "docs",))
    state = ServerState(cfg)
    server = build_server(cfg, state=state)

    async def sources(c):
        return {s["source"].rsplit("/", 1)[-1] for s in (await c.call_tool("list_sources", {})).structured_content["sources"]}

    async def until(pred, what):
        end = time.monotonic() + 30
        while time.monotonic() < end:
            if await pred():
                return
            await anyio.sleep(0.1)
        raise AssertionError(f"timed out waiting for {what}")

    try:
        async with Client(server) as c:
            async def caught_up():
                res = await c.call_tool("list_sources", {})
                return not res.is_error and [s["source"] for s in res.structured_content["sources"]] == [f"{root}/docs/a.md"]
            await until(caught_up, "the catch-up")
            (root / "docs" / "b.md").write_text("# B\n\nbison" + SENT)

            async def found_b():
                return (await c.call_tool("search", {"query": "bison", "mode": "bm25"})).structured_content["hits"]
            await until(found_b, "the new file")
            (root / "docs" / "a.md").unlink()

            async def a_gone():
                return await sources(c) == {"b.md"}
            await until(a_gone, "the deletion")
        # the lifespan ended: the watcher stopped, a change now is not indexed
        (root / "docs" / "c.md").write_text("# C\n\ncamel" + SENT)
        await anyio.sleep(1.0)
        assert not state.store().search("camel", mode="bm25")
    finally:
        state.close()


def test_serve_watch_must_stay_under_the_allowed_roots(tmp_path):
    (tmp_path / "root").mkdir()
    (tmp_path / "elsewhere").mkdir()
    with pytest.raises(InvalidInputError, match="--watch needs --allow-root"):
        ServerConfig(store=tmp_path / "s", watch=(tmp_path / "root",))
    with pytest.raises(InvalidInputError, match="outside the allowed roots"):
        ServerConfig(store=tmp_path / "s", allow_roots=(tmp_path / "root",), watch=(tmp_path / "elsewhere",))
