"""Every MCP tool through the SDK's in-memory client, errors and hostile arguments included.

Real DocStore with the deterministic "hash-64" embedder, a tiny random LM for the LM tools.
"""
from __future__ import annotations

import os

import anyio
import pytest
from mcp import Client

from mcp_server import schemas as S  # noqa: E402
from mcp_server.server import ServerConfig, ServerState, build_server  # noqa: E402
from mcp_server.tool_support import MAX_QUERY_CHARS, bound_hits  # noqa: E402
from mcp_server.tools import MAX_SEARCH_K
from tests.support.docs import write_docs
from tests.support.mcp import call, server_for, text_of
from tests.support.tiny_lm import make_tiny_lm

os.environ.setdefault("HF_HUB_OFFLINE", "1")
TOOLS = {"search", "ask", "index_paths", "delete", "list_collections", "stats", "knn_next_tokens", "knn_generate",
         "perplexity", "add_texts", "create_collection", "drop_collection", "get_chunks", "chunk_context",
         "start_indexing", "index_status", "cancel_indexing", "list_sources"}
pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def lm_dir(tmp_path_factory):
    return make_tiny_lm(tmp_path_factory.mktemp("tiny-lm"), vocab='word')


@pytest.fixture(scope="module")
def env(tmp_path_factory, lm_dir):
    """One shared server state (store, LM loaded once) for the module, like a real server process."""
    base = tmp_path_factory.mktemp("mcp")
    root = write_docs(base / "root")
    outside = base / "outside"
    outside.mkdir()
    (outside / "secret.md").write_text("# Secret\n\nplatypus credentials live here\n")
    cfg = ServerConfig(store=base / "store", model=str(lm_dir), embedder="hash-64", allow_roots=(root,))
    state = ServerState(cfg)
    yield {"cfg": cfg, "state": state, "root": root, "outside": outside, "base": base}
    state.close()


# --------------------------------------------------------------------------- listing


async def test_tools_are_typed_bounded_annotated(env):
    async with Client(server_for(env)) as c:
        tools = {t.name: t for t in (await c.list_tools()).tools}
        templates = (await c.list_resource_templates()).resource_templates
    assert set(tools) == TOOLS
    for t in tools.values():
        assert t.output_schema and t.output_schema.get("type") == "object", t.name
        assert t.description and t.annotations is not None
    props = tools["search"].input_schema["properties"]
    assert props["k"]["minimum"] == 1 and props["k"]["maximum"] == MAX_SEARCH_K
    assert props["query"]["maxLength"] == MAX_QUERY_CHARS and props["query"]["description"]
    assert tools["search"].annotations.read_only_hint is True
    assert tools["delete"].annotations.destructive_hint is True and tools["delete"].annotations.read_only_hint is False
    assert tools["index_paths"].annotations.read_only_hint is False
    assert "hits" in tools["search"].output_schema["properties"]
    assert any(t.uri_template == "chunk://{collection}/{id}" for t in templates)


# --------------------------------------------------------------------------- documents


async def test_index_paths_reports_counts_and_progress(env):
    events = []

    async def on_progress(progress, total, message):
        events.append((progress, total, message))

    async with Client(server_for(env)) as c:
        res = await c.call_tool("index_paths", {"paths": [str(env["root"])], "collection": "progress"},
                                progress_callback=on_progress)
    assert not res.is_error, text_of(res)
    out = S.IndexOut.model_validate(res.structured_content)
    assert out.files_seen == 3 and out.added == 3 and out.chunks_added >= 3
    assert events and events[-1][0] == events[-1][1]  # the last notification says "done"
    values = [e[0] for e in events]
    assert values == sorted(set(values))  # MCP: progress strictly increases
    again = (await call(env, "index_paths", {"paths": ["notes"], "collection": "progress"})).structured_content
    assert again["unchanged"] == 1 and again["added"] == 0  # relative paths start at the first root


async def test_search_returns_hits_with_sources_and_lines(env, indexed):
    res = await call(env, "search", {"query": "how are path parameters declared", "k": 3})
    assert not res.is_error, text_of(res)
    out = S.SearchOut.model_validate(res.structured_content)
    top = out.hits[0]
    assert top.source.endswith("routing.md") and (top.start_line, top.end_line) == (1, 4)
    assert "curly braces" in top.text and top.scores.get("dense") is not None
    assert out.returned == len(out.hits) <= 3 and not out.truncated
    async with Client(server_for(env)) as c:
        body = (await c.read_resource(top.uri)).contents[0].text
    assert body == top.text


async def test_search_modes_and_filters(env, indexed):
    for mode in ("dense", "bm25", "hybrid"):
        out = (await call(env, "search", {"query": "reverse proxy TLS", "k": 2, "mode": mode})).structured_content
        assert out["hits"][0]["source"].endswith("deploy.md"), mode
    out = (await call(env, "search", {"query": "curly braces", "filters": {"source": "*notes/*"}})).structured_content
    assert out["hits"] and all("notes/" in h["source"] for h in out["hits"])
    res = await call(env, "search", {"query": "x", "filters": {"colour": "red"}})  # a key no chunk has: refused, keys listed
    assert res.is_error and "colour" in text_of(res) and "language" not in text_of(res) and "source" in text_of(res)


async def test_results_are_bounded_and_say_so(env, indexed):
    res = await call(env, "search", {"query": "the", "k": 10}, max_result_chars=1500)
    out = res.structured_content
    assert out["truncated"] and "next pages" in out["note"] and out["returned"] >= 1 and out["next_cursor"]
    hits = [S.HitOut(id=str(i), uri="u", score=1.0, source="s", start_line=1, end_line=2, start_char=0, end_char=9,
                     text="x" * 4000, text_truncated=True, collection="c") for i in range(30)]
    kept, truncated, note = bound_hits(hits, 40_000)
    assert 1 <= len(kept) < 30 and truncated and "uri" in note
    assert sum(len(h.model_dump_json()) for h in kept) <= 40_000


async def test_chunk_resource_errors(env, indexed):
    from mcp.shared.exceptions import MCPError

    async with Client(server_for(env)) as c:
        with pytest.raises(MCPError, match="no chunk"):
            await c.read_resource("chunk://default/999999")
        with pytest.raises(MCPError):
            await c.read_resource("chunk://nope/1")


async def test_collections_and_stats(env, indexed):
    cols = (await call(env, "list_collections")).structured_content["collections"]
    default = next(c for c in cols if c["name"] == "default")
    assert default["chunks"] >= 3 and default["embedder"].startswith("hash") and default["dim"] == 64
    whole = (await call(env, "stats")).structured_content
    assert whole["collection"] is None and whole["stats"]["chunks"] >= 3
    one = (await call(env, "stats", {"collection": "default"})).structured_content
    assert one["collection"] == "default"
    res = await call(env, "stats", {"collection": "nope"})
    assert res.is_error and "collection 'nope' not found" in text_of(res) and "list_collections" in text_of(res)


async def test_delete_by_source_and_id(env, indexed):
    await call(env, "index_paths", {"paths": [str(env["root"])], "collection": "scratch"})
    hits = (await call(env, "search", {"query": "ETag max-age", "collection": "scratch"})).structured_content["hits"]
    cache = next(h for h in hits if h["source"].endswith("cache.md"))
    out = (await call(env, "delete", {"ids": [cache["id"]], "collection": "scratch"})).structured_content
    assert out["removed_chunks"] == 1
    out = (await call(env, "delete", {"sources": [next(h["source"] for h in hits if h["source"].endswith("deploy.md"))],
                                      "collection": "scratch"})).structured_content
    assert out["removed_sources"] == 1 and out["removed_chunks"] >= 1
    left = (await call(env, "search", {"query": "reverse proxy TLS ETag", "collection": "scratch"})).structured_content
    assert all(h["source"].endswith("routing.md") for h in left["hits"])
    for bad in ({}, {"sources": []}, {"ids": ["1"], "collection": "nope"}):
        res = await call(env, "delete", bad)
        assert res.is_error, bad


# --------------------------------------------------------------------------- index_paths security


async def test_index_paths_refuses_everything_outside_the_roots(env):
    root, outside = env["root"], env["outside"]
    (root / "link-out.md").unlink(missing_ok=True)
    (root / "link-out.md").symlink_to(outside / "secret.md")
    (root / "dir-out").unlink(missing_ok=True)
    (root / "dir-out").symlink_to(outside, target_is_directory=True)
    try:
        for paths, why in [(["/etc"], "outside the allowed roots"),
                           ([str(root / ".." / "outside")], "'..'"),
                           (["../outside"], "'..'"),
                           ([str(root / "link-out.md")], "outside the allowed roots"),
                           ([str(root / "dir-out")], "outside the allowed roots"),
                           ([str(root / "missing")], "does not exist"),
                           (["bad\x00name"], "NUL")]:
            res = await call(env, "index_paths", {"paths": paths, "collection": "sec"})
            assert res.is_error and why in text_of(res), (paths, text_of(res))
        # a folder holding links that point out: indexed, the links skipped and reported
        res = await call(env, "index_paths", {"paths": [str(root)], "collection": "sec"})
        out = res.structured_content
        assert not res.is_error and {s["source"].rsplit("/", 1)[-1] for s in out["skipped"]} >= {"link-out.md", "dir-out"}
        found = (await call(env, "search", {"query": "platypus credentials", "mode": "bm25", "collection": "sec"}))
        assert not any("platypus" in h["text"] for h in found.structured_content["hits"])
    finally:
        (root / "link-out.md").unlink()
        (root / "dir-out").unlink()
    res = await call(env, "index_paths", {"paths": [str(root)]}, allow_roots=())
    assert res.is_error and "without --allow-root" in text_of(res)


async def test_reads_stay_correct_while_index_paths_writes(env, indexed):
    big = env["root"] / "bulk"
    big.mkdir(exist_ok=True)
    for i in range(150):
        (big / f"f{i}.md").write_text(f"# File {i}\n\nfiller paragraph number {i} about gardening and soil.\n")
    results, errors = [], []
    async with Client(server_for(env)) as c:
        async def writer():
            r = await c.call_tool("index_paths", {"paths": ["bulk"]})
            assert not r.is_error, text_of(r)

        async def reader():
            for _ in range(15):
                r = await c.call_tool("search", {"query": "path parameters curly braces", "k": 1})
                (errors if r.is_error else results).append(r)
                await anyio.sleep(0.01)

        async with anyio.create_task_group() as tg:
            tg.start_soon(writer)
            tg.start_soon(reader)
    assert not errors and len(results) == 15
    assert all(r.structured_content["hits"][0]["source"].endswith("routing.md") for r in results)


# --------------------------------------------------------------------------- LM tools (no datastore)


async def test_ask_answers_with_citations(env, indexed):
    res = await call(env, "ask", {"question": "How are path parameters declared in the route?", "k": 2})
    assert not res.is_error, text_of(res)
    out = S.AskOut.model_validate(res.structured_content)
    assert out.grounded and out.citations[0].source.endswith("routing.md") and out.used_knn is False
    await call(env, "index_paths", {"paths": ["notes"], "collection": "asktest"})  # hash-64 collides on big sets
    off = (await call(env, "ask", {"question": "quantum zebra migration", "collection": "asktest"})).structured_content
    assert off["grounded"] is False and "could not find anything relevant" in off["answer"]


async def test_knn_tools_without_datastore_use_the_base_lm_and_say_so(env):
    out = (await call(env, "knn_next_tokens", {"context": "Path parameters are", "top": 5})).structured_content
    assert out["datastore"] is False and len(out["base"]) == 5 and "base LM alone" in out["note"]
    assert abs(sum(t["prob"] for t in out["base"])) <= 1.0 + 1e-6
    gen = (await call(env, "knn_generate", {"prompt": "The route", "max_new_tokens": 5})).structured_content
    assert isinstance(gen["text"], str) and gen["datastore"] is False and "base LM alone" in gen["note"]
    ppl = (await call(env, "perplexity", {"text": "Path parameters are declared with curly braces"})).structured_content
    assert ppl["base_ppl"] > 1.0 and ppl["knn_ppl"] is None and ppl["tokens"] >= 2


# --------------------------------------------------------------------------- fuzz

HOSTILE = {
    "search": [{}, {"query": 5}, {"query": ""}, {"query": "   "}, {"query": "x" * 200_000}, {"query": "x", "k": -1},
               {"query": "x", "k": 0}, {"query": "x", "k": 10**12}, {"query": "x", "k": "many"},
               {"query": "x", "mode": "fuzzy"}, {"query": "x", "collection": "no-such"},
               {"query": "x", "collection": "../../etc"}, {"query": "x", "filters": "source=*"},
               {"query": "x", "filters": {"tags": "notalist"}}, {"query": ["a", "b"]}, {"query": None},
               {"query": {"$gt": ""}}],
    "ask": [{}, {"question": ""}, {"question": "y" * 50_000}, {"question": "q", "k": -5}, {"question": "q", "k": 99},
            {"question": "q", "collection": "nope"}, {"question": 3.5}],
    "index_paths": [{}, {"paths": []}, {"paths": "/etc"}, {"paths": ["/etc/passwd"]}, {"paths": ["~/.ssh"]},
                    {"paths": ["x" * 5000]}, {"paths": [None]}, {"paths": ["/"] * 101}, {"paths": ["a"], "collection": "a/b"}],
    "delete": [{}, {"sources": "all"}, {"ids": [""]}, {"ids": [1, 2]}, {"sources": ["*"], "collection": "nope"},
               {"ids": ["1"] * 10_001}],
    "list_collections": [],
    "stats": [{"collection": "nope"}, {"collection": ""}, {"collection": 7}, {"collection": "x" * 100}],
    "knn_next_tokens": [{}, {"context": ""}, {"context": "The", "top": -3}, {"context": "The", "top": 10_000},
                        {"context": "x" * 100_000}, {"context": 42}],
    "knn_generate": [{}, {"prompt": ""}, {"prompt": "a", "max_new_tokens": -1}, {"prompt": "a", "max_new_tokens": 10**9},
                     {"prompt": "a", "lambda_": 1.5}, {"prompt": "a", "lambda_": -0.1}, {"prompt": "a", "temperature": 0},
                     {"prompt": "a", "top_p": 2}, {"prompt": "x" * 100_000}],
    "perplexity": [{}, {"text": ""}, {"text": "   "}, {"text": "x" * 100_000}, {"text": ["a"]}],
}


async def test_fuzz_every_tool_with_hostile_arguments(env, indexed):
    async with Client(server_for(env)) as c:
        for name, cases in HOSTILE.items():
            for args in cases:
                res = await c.call_tool(name, args)
                msg = text_of(res)
                assert res.is_error, (name, str(args)[:100], msg[:300])
                assert msg and "Traceback" not in msg and len(msg) < 5000, (name, msg[:300])
        # an unknown tool and extra arguments
        assert (await c.call_tool("rm_rf", {})).is_error
        assert (await c.call_tool("list_collections", {"evil": 1})).is_error is False  # extra keys are ignored
        # still up and correct
        ok = await c.call_tool("search", {"query": "curly braces", "k": 1})
        assert not ok.is_error and ok.structured_content["hits"]


@pytest.mark.slow  # hypothesis fuzzing of every tool
async def test_fuzz_random_arguments_never_crash_the_server(env, indexed):
    """Random JSON values for every parameter: each call is either a valid result or an isError, never a crash."""
    hypothesis = pytest.importorskip("hypothesis")
    from hypothesis import strategies as st

    json_values = st.recursive(st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=False)
                               | st.text(max_size=50), lambda kids: st.lists(kids, max_size=3)
                               | st.dictionaries(st.text(max_size=5), kids, max_size=3), max_leaves=6)
    async with Client(server_for(env)) as c:
        schemas = {t.name: t.input_schema for t in (await c.list_tools()).tools}
        examples = []

        @hypothesis.given(st.sampled_from(sorted(TOOLS - {"index_paths", "delete"})),
                          st.data())
        @hypothesis.settings(max_examples=60, deadline=None, derandomize=True, database=None)
        def gen(name, data):
            props = list(schemas[name].get("properties", {}))
            args = {p: data.draw(json_values) for p in props if data.draw(st.booleans())}
            examples.append((name, args))

        gen()
        for name, args in examples:
            if name in ("knn_generate",) and isinstance(args.get("max_new_tokens"), int):
                args["max_new_tokens"] = max(1, min(args["max_new_tokens"], 4))
            res = await c.call_tool(name, args)
            if res.is_error:
                assert text_of(res), (name, args)
            else:
                assert res.structured_content is not None, (name, args)
        assert not (await c.call_tool("list_collections", {})).is_error


async def test_knn_tools_with_a_datastore(env, indexed, lm_dir, tmp_path):
    """A real token datastore built from the docs with the tiny LM: kNN and mix are populated."""
    from lm.datastore.build import build_datastore

    knn = env["state"].knnlm()  # the loaded tiny LM
    ds = tmp_path / "ds"
    build_datastore(knn.lm, [str(env["root"] / "routing.md"), str(env["root"] / "deploy.md")], ds,
                    progress=False, lm_spec=str(lm_dir))
    cfg = ServerConfig(store=env["cfg"].store, datastore=ds, model=str(lm_dir), embedder="hash-64",
                       allow_roots=env["cfg"].allow_roots)
    state = ServerState(cfg)
    state._store = env["state"].store()
    async with Client(build_server(cfg, state=state)) as c:
        out = (await c.call_tool("knn_next_tokens", {"context": "Path parameters are", "top": 3})).structured_content
        assert out["datastore"] is True and out["note"] is None
        assert out["knn"] and out["mix"] and out["neighbours"]
        assert any(n["source"] and n["source"].endswith(("routing.md", "deploy.md")) for n in out["neighbours"])
        ppl = (await c.call_tool("perplexity", {"text": "Path parameters are declared with curly braces"})).structured_content
        assert ppl["datastore"] is True and ppl["knn_ppl"] is not None and ppl["knn_ppl"] > 0
        gen = (await c.call_tool("knn_generate", {"prompt": "Path parameters", "max_new_tokens": 3,
                                                  "lambda_": 0.5})).structured_content
        assert gen["datastore"] is True and gen["lambda_"] == 0.5
        ans = (await c.call_tool("ask", {"question": "How are path parameters declared in the route?",
                                         "mode": "generate"})).structured_content
        assert ans["grounded"] and ans["used_knn"] is True and ans["mode"] == "generate"
        ext = (await c.call_tool("ask", {"question": "How are path parameters declared in the route?"})).structured_content
        assert ext["mode"] == "extractive" and ext["used_knn"] is False and ext["answer_span"]
        cited = next(x for x in ext["citations"] if x["cited"])
        text = (env["root"] / "routing.md").read_text()
        assert text[cited["start_char"]:cited["end_char"]] == ext["answer"]
        st = (await c.call_tool("stats")).structured_content
        assert st["datastore"]["count"] > 0 and "calibration" in st["datastore"]
    assert (await call(env, "stats")).structured_content["datastore"] is None
