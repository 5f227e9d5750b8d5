"""Issue 15 on the MCP side: strict inputs and caller-facing errors, the new tools, search pages and
resource links, background index jobs with real progress, bounded write-lock waits, FIFOs.

Same set-up as test_mcp_tools: a real DocStore with the "hash-64" embedder, the SDK's in-memory client.
"""
from __future__ import annotations

import os
import threading
import time

import anyio
import pytest
from mcp import Client

from mcp_server import schemas as S
from mcp_server.jobs import StageProgress
from mcp_server.server import ServerConfig, ServerState, build_server
from mcp_server.tool_support import mcp_hint
from tests.support.mcp import text_of

pytestmark = pytest.mark.anyio


def server(env, **overrides):
    if not overrides:
        return build_server(env["cfg"], state=env["state"])
    cfg = ServerConfig(**{**env["cfg"].__dict__, **overrides})
    state = ServerState(cfg)
    state._store = env["state"].store()
    return build_server(cfg, state=state)


async def call(env, name, args=None, **overrides):
    async with Client(server(env, **overrides)) as c:
        return await c.call_tool(name, args or {})


@pytest.fixture(scope="module")
async def indexed(env):
    res = await call(env, "index_paths", {"paths": [str(env["root"])]})
    assert not res.is_error, text_of(res)
    return res.structured_content


# --------------------------------------------------------------------------- strict inputs, caller-facing errors


async def test_lenient_values_are_refused(env, indexed):
    for args, why in [({"query": "x", "k": "5"}, "k must be an integer, got a string '5'"),
                      ({"query": "x", "k": True}, "k must be an integer, got a boolean True"),
                      ({"query": "x", "k": 2.0}, "k must be an integer"),
                      ({"query": "\x00"}, "query is empty"),
                      ({"query": "\x00\x00 \x01"}, "query is empty")]:
        res = await call(env, "search", args)
        assert res.is_error and why in text_of(res), (args, text_of(res))


async def test_errors_are_written_for_the_caller(env, indexed):
    res = await call(env, "search", {"query": "x", "k": 10000})
    msg = text_of(res)
    assert res.is_error and "k=10000 is over the limit of 1000; ask for fewer or page with cursor" in msg
    assert "pydantic" not in msg and "http" not in msg and "validation error" not in msg
    cases = [("search", {"query": "x", "mode": "fuzzy"}, "mode='fuzzy' is not one of"),
             ("search", {"query": "x", "collection": "../etc"}, "collection='../etc' is not a valid name"),
             ("search", {}, "missing required parameter query"),
             ("search", {"query": "x" * 20_000}, "query has 20000 characters, over the limit of 10000"),
             ("ask", {"question": "q", "k": 99}, "k=99 is over the limit of 20"),
             ("chunk_context", {"id": "1", "before": -1}, "before=-1 is below the minimum of 0")]
    for name, args, want in cases:
        res = await call(env, name, args)
        assert res.is_error and want in text_of(res) and "errors.pydantic.dev" not in text_of(res), text_of(res)


def test_library_hints_name_mcp_parameters_not_cli_flags():
    assert "--" not in mcp_hint("shorten the question, or raise --context-tokens / lower --max-new-tokens")
    assert mcp_hint("use --collection docs") == 'use collection="docs"'
    assert "index_paths" in mcp_hint("index something first: knnrag index PATH --store DIR")
    assert "--" not in mcp_hint("pass --source PATH or --id ID")


async def test_index_errors_name_mcp_parameters(env):
    empty = env["root"] / "empty15"
    empty.mkdir(exist_ok=True)
    res = await call(env, "index_paths", {"paths": ["empty15"], "collection": "empty"})
    assert res.is_error and "nothing to index" in text_of(res) and "--" not in text_of(res), text_of(res)


async def test_ask_errors_name_mcp_parameters(env, indexed):
    res = await call(env, "ask", {"question": "path parameters", "collection": "nope"})
    assert res.is_error and "--collection" not in text_of(res) and "list_collections" in text_of(res)


# --------------------------------------------------------------------------- delete


async def test_delete_with_a_relative_path_and_one_that_matches_nothing(env, indexed):
    await call(env, "index_paths", {"paths": ["notes"], "collection": "del"})
    res = await call(env, "delete", {"sources": ["notes/cache.md"], "collection": "del"})
    assert not res.is_error, text_of(res)
    out = res.structured_content
    assert out["removed_sources"] == 1 and out["sources"] == [str(env["root"] / "notes" / "cache.md")]
    again = await call(env, "delete", {"sources": ["notes/cache.md"], "collection": "del"})
    assert again.is_error and "nothing matched" in text_of(again)
    assert (await call(env, "delete", {"ids": ["no-such-id"], "collection": "del"})).is_error


# --------------------------------------------------------------------------- new tools


async def test_new_tools_are_typed_and_annotated(env):
    async with Client(server(env)) as c:
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
    async with Client(server(env, max_result_chars=12_000)) as c:
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
    async with Client(server(env, max_result_chars=12_000)) as c:
        first = (await c.call_tool("search", {"query": "gardening compost", "k": 30, "mode": "bm25",
                                              "collection": "pages"})).structured_content
        assert first["next_cursor"]
        res = await c.call_tool("search", {"query": "something else", "cursor": first["next_cursor"]})
        assert res.is_error and "another query" in text_of(res)


# --------------------------------------------------------------------------- background jobs, progress, lock bound


def test_stage_progress_is_monotonic_and_ends_below_100():
    p = StageProgress(files_hint=4)
    seen = []
    for done, total, what in [(1, 0, "scanning"), (2, 0, "scanning"), (4, 0, "scanning"), (0, 2, "chunking"),
                              (1, 2, "chunking"), (2, 2, "chunking"), (0, 100, "embedding"), (50, 100, "embedding"),
                              (100, 100, "embedding")]:
        p.update(done, total, what)
        seen.append(p.percent)
    assert seen == sorted(seen) and seen[0] > 0 and seen[-1] < 100
    assert p.message() == "embedding 100/100 chunks"
    p2 = StageProgress(files_hint=10)
    p2.update(3, 0, "scanning")
    assert p2.message() == "scanning 3/10 files"


async def test_index_progress_is_real_and_jobs_can_be_polled(env):
    bulk = env["root"] / "bulk15"
    bulk.mkdir(exist_ok=True)
    for i in range(40):
        (bulk / f"f{i}.md").write_text(f"# File {i}\n\nnote {i} about rivers and bridges.\n")
    events = []

    async def on_progress(progress, total, message):
        events.append((progress, total, message))

    async with Client(server(env)) as c:
        res = await c.call_tool("index_paths", {"paths": ["bulk15"], "collection": "jobs"},
                                progress_callback=on_progress)
        assert not res.is_error and res.structured_content["added"] == 40, text_of(res)
        values = [e[0] for e in events]
        assert values == sorted(set(values)) and events[-1][:2] == (100.0, 100.0)
        assert all(e[1] == 100.0 for e in events) and not any("1/0" in e[2] for e in events)
        started = await c.call_tool("start_indexing", {"paths": ["bulk15"], "collection": "jobs2"})
        job = S.JobOut.model_validate(started.structured_content)
        assert job.state in ("queued", "running", "done") and job.job_id
        for _ in range(200):
            st = (await c.call_tool("index_status", {"job_id": job.job_id})).structured_content["jobs"][0]
            if st["state"] not in ("queued", "running"):
                break
            await anyio.sleep(0.05)
        assert st["state"] == "done" and st["percent"] == 100 and st["result"]["added"] == 40, st
        everything = (await c.call_tool("index_status", {})).structured_content["jobs"]
        assert job.job_id in {j["job_id"] for j in everything}
        assert "no job" in text_of(await c.call_tool("index_status", {"job_id": "job-999"}))


async def test_a_write_waits_a_bounded_time_and_says_who_holds_the_lock(env, monkeypatch):
    import mcp_server.tool_support as T

    monkeypatch.setattr(T, "LOCK_WAIT_S", 0.3)
    state = env["state"]
    release = threading.Event()

    def hold():
        with state.write.held("job-x: index_paths into 'default'", wait_s=1):
            release.wait(10)

    t = threading.Thread(target=hold)
    t.start()
    try:
        time.sleep(0.05)
        t0 = time.monotonic()
        res = await call(env, "add_texts", {"texts": ["x y z"], "collection": "busy"})
        assert res.is_error and "busy" in text_of(res) and "job-x" in text_of(res)
        assert time.monotonic() - t0 < 5
    finally:
        release.set()
        t.join()


async def test_a_long_index_run_stops_at_its_time_bound_uncommitted(env):
    slow = env["root"] / "slow15"
    slow.mkdir(exist_ok=True)
    for i in range(30):
        (slow / f"s{i}.md").write_text(f"# Slow {i}\n\nslow note {i}\n")
    res = await call(env, "index_paths", {"paths": ["slow15"], "collection": "bounded"}, max_write_seconds=1e-6)
    assert res.is_error and "limit on holding the write lock" in text_of(res), text_of(res)
    cols = {c["name"]: c for c in (await call(env, "list_collections")).structured_content["collections"]}
    assert cols.get("bounded", {}).get("chunks", 0) == 0


async def test_fifos_are_refused_or_skipped_never_opened(env):
    fifo_dir = env["root"] / "fifo15"
    fifo_dir.mkdir(exist_ok=True)
    (fifo_dir / "ok.md").write_text("# Ok\n\nregular file next to a pipe\n")
    if not (fifo_dir / "pipe.md").exists():
        os.mkfifo(fifo_dir / "pipe.md")
    with anyio.fail_after(60):
        res = await call(env, "index_paths", {"paths": ["fifo15/pipe.md"], "collection": "fifo"})
        assert res.is_error and "not a regular file" in text_of(res)
        res = await call(env, "index_paths", {"paths": ["fifo15"], "collection": "fifo"})
    assert not res.is_error and res.structured_content["added"] == 1, text_of(res)
    assert any(s["source"].endswith("pipe.md") and "FIFO" in s["reason"] for s in res.structured_content["skipped"])


def test_gate_keeps_readers_off_while_a_collection_is_dropped():
    from mcp_server.locks import Gate
    from retrieval.errors import StoreWriteError

    gate = Gate()
    order: list[str] = []
    reader_in = threading.Event()

    def reader():
        with gate.shared():
            reader_in.set()
            time.sleep(0.2)
            order.append("reader done")

    t = threading.Thread(target=reader)
    t.start()
    reader_in.wait(5)
    with gate.exclusive(5):  # waits for the running reader
        order.append("exclusive")
    t.join()
    assert order == ["reader done", "exclusive"]
    with gate.shared():
        with pytest.raises(StoreWriteError, match="busy"):
            with gate.exclusive(0.05):
                pass
    with gate.shared():  # a timed-out exclusive leaves the gate usable
        pass


async def test_searches_stay_correct_while_collections_are_dropped(env, indexed):
    results, errors = [], []
    async with Client(server(env)) as c:
        async def dropper():
            for i in range(3):
                r = await c.call_tool("add_texts", {"texts": [f"scratch text {i}"], "collection": f"tmp{i}"})
                assert not r.is_error, text_of(r)
                r = await c.call_tool("drop_collection", {"name": f"tmp{i}"})
                assert not r.is_error, text_of(r)

        async def reader():
            for _ in range(12):
                r = await c.call_tool("search", {"query": "path parameters curly braces", "k": 1})
                (errors if r.is_error else results).append(r)

        async with anyio.create_task_group() as tg:
            tg.start_soon(dropper)
            tg.start_soon(reader)
    assert not errors, [text_of(e) for e in errors]
    assert all(r.structured_content["hits"][0]["source"].endswith("routing.md") for r in results)
