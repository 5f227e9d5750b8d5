"""MCP tools refuse lenient values and write errors for the caller: the problem and the fix in the
tool's own parameter names (never a CLI flag), and a delete that matches nothing says so.

A real DocStore with the "hash-64" embedder, the SDK's in-memory client (tests/support/mcp.py).
"""
from __future__ import annotations

import pytest

from mcp_server.tool_support import mcp_hint
from tests.support.mcp import call, text_of

pytestmark = pytest.mark.anyio


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
