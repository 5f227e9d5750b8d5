"""Streamable HTTP framing per request (mcp_server/replies.py): one JSON body for a request that only
waits for its result, an SSE stream for one that asked for progress.

The raw-protocol tests drive the ASGI app in process (Starlette's TestClient); the SDK-client test
runs the app on a real uvicorn server, with a progress-streamed index run and plain searches in
flight at once on one session, since the framing is chosen per request inside a shared transport.
"""
from __future__ import annotations

import argparse
import json
import socket
import threading
import time
from typing import Any

import anyio
import pytest
from starlette.testclient import TestClient

from mcp_server.cli import _replies
from mcp_server.http import HttpConfig, build_app
from mcp_server.replies import wants_stream
from mcp_server.server import ServerConfig, build_server
from retrieval.errors import InvalidInputError
from tests.support.docs import write_docs

ACCEPT_BOTH = "application/json, text/event-stream"
HEADERS = {"Content-Type": "application/json", "Accept": ACCEPT_BOTH}
INIT = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
    "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}}}


def rpc(i: int, method: str, params: dict) -> dict:
    return {"jsonrpc": "2.0", "id": i, "method": method, "params": params}


def app_for(tmp_path, replies: str, port: int):
    root = write_docs(tmp_path / "root")
    server = build_server(ServerConfig(store=tmp_path / "store", embedder="hash-64", allow_roots=(root,)))
    return build_app(server, HttpConfig(port=port, replies=replies)), root


class Session:
    """A raw JSON-RPC session over the TestClient: each reply with its content type."""

    def __init__(self, c: TestClient, host: str) -> None:
        self.c, self.headers = c, {**HEADERS, "Host": host}
        r = self.post(INIT)
        self.headers |= {"Mcp-Session-Id": r.headers["mcp-session-id"], "MCP-Protocol-Version": "2025-06-18"}
        self.first = r
        assert self.post({"jsonrpc": "2.0", "method": "notifications/initialized"}).status_code == 202

    def post(self, msg: dict, accept: str = ACCEPT_BOTH):
        return self.c.post("/mcp", content=json.dumps(msg), headers={**self.headers, "Accept": accept})


def messages(r) -> list[dict]:
    """The JSON-RPC messages of one reply, JSON body or SSE stream."""
    if r.headers["content-type"].startswith("application/json"):
        return [r.json()]
    return [json.loads(line[5:]) for line in r.text.splitlines() if line.startswith("data:") and line[5:].strip()]


def index_with_progress(root, i: int = 3) -> dict:
    return rpc(i, "tools/call", {"name": "index_paths", "arguments": {"paths": [str(root)]},
                                 "_meta": {"progressToken": "tok-1"}})


def test_auto_answers_a_plain_request_with_json_and_a_progress_request_with_a_stream(tmp_path):
    app, root = app_for(tmp_path, "auto", 8131)
    with TestClient(app, base_url="http://127.0.0.1:8131") as c:
        s = Session(c, "127.0.0.1:8131")
        assert s.first.headers["content-type"].startswith("application/json")
        streamed = s.post(index_with_progress(root))
        assert streamed.status_code == 200 and streamed.headers["content-type"].startswith("text/event-stream")
        msgs = messages(streamed)
        progress = [m for m in msgs if m.get("method") == "notifications/progress"]
        assert progress and progress[-1]["params"]["progress"] == 100.0
        assert all(m["params"]["progressToken"] == "tok-1" for m in progress)
        assert msgs[-1]["id"] == 3 and msgs[-1]["result"]["structuredContent"]["added"] == 3
        plain = s.post(rpc(4, "tools/call", {"name": "search", "arguments": {"query": "reverse proxy TLS", "k": 2}}))
        assert plain.headers["content-type"].startswith("application/json")
        assert plain.json()["result"]["structuredContent"]["hits"][0]["source"].endswith("deploy.md")
        # a client that takes only JSON (the spec says every client takes both): answered unless it asks for progress
        assert s.post(rpc(5, "tools/list", {}), accept="application/json").json()["id"] == 5
        assert s.post(index_with_progress(root, 5), accept="application/json").status_code == 406
        listed = s.post(rpc(6, "tools/list", {}))
        assert listed.headers["content-type"].startswith("application/json") and listed.json()["result"]["tools"]


@pytest.mark.parametrize("replies,plain_type,progress_type", [("sse", "text/event-stream", "text/event-stream"),
                                                              ("json", "application/json", "application/json")])
def test_pinned_framings_answer_every_request_the_same_way(tmp_path, replies, plain_type, progress_type):
    app, root = app_for(tmp_path, replies, 8132)
    with TestClient(app, base_url="http://127.0.0.1:8132") as c:
        s = Session(c, "127.0.0.1:8132")
        assert s.first.headers["content-type"].startswith(plain_type)
        streamed = s.post(index_with_progress(root))
        assert streamed.headers["content-type"].startswith(progress_type)
        assert messages(streamed)[-1]["result"]["structuredContent"]["added"] == 3
        assert any(m.get("method") == "notifications/progress" for m in messages(streamed)) == (replies == "sse")
        plain = s.post(rpc(4, "tools/call", {"name": "search", "arguments": {"query": "ETag", "k": 1}}))
        assert plain.headers["content-type"].startswith(plain_type)


def test_wants_stream_only_for_a_progress_token_in_meta():
    def body(params: dict) -> bytes:
        return json.dumps(rpc(1, "tools/call", params)).encode()

    assert wants_stream(body({"name": "x", "_meta": {"progressToken": 7}}))
    assert not wants_stream(body({"name": "x"}))
    assert not wants_stream(body({"name": "x", "arguments": {"query": "progressToken"}}))
    assert not wants_stream(body({"name": "x", "_meta": {"progressToken": None}}))
    assert not wants_stream(b'{"progressToken": ')
    assert not wants_stream(b'["progressToken"]')


def test_no_tool_sends_a_request_scoped_message_a_json_reply_would_lose():
    """A JSON reply holds one message: a tool that logged to the client (ctx.log / ctx.info ...),
    sampled or elicited inside a plain request would break its reply (mcp_server/replies.py)."""
    import ast
    from pathlib import Path

    import mcp_server

    banned = {"log", "debug", "info", "warning", "error", "elicit", "sample", "create_message", "send_log_message"}
    for path in Path(mcp_server.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr in banned and isinstance(node.value, ast.Name):
                assert node.value.id not in ("ctx", "session"), f"{path.name}:{node.lineno} {node.value.id}.{node.attr}"


def test_reply_flags_are_checked():
    with pytest.raises(InvalidInputError, match="--replies 'xml'"):
        HttpConfig(replies="xml")

    def ns(replies, json_response):
        return argparse.Namespace(replies=replies, json_response=json_response)

    assert _replies(ns(None, False)) == "auto" and _replies(ns("sse", False)) == "sse"
    assert _replies(ns(None, True)) == "json" and _replies(ns("json", True)) == "json"
    with pytest.raises(InvalidInputError, match="contradicts"):
        _replies(ns("sse", True))


def test_sdk_client_streams_progress_while_plain_calls_share_the_session(tmp_path):
    """Concurrent requests on one session, framed differently, each get their own reply."""
    import uvicorn
    from mcp import ClientSession
    from mcp.client.streamable_http import streamable_http_client

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    app, root = app_for(tmp_path, "auto", port)
    bulk = root / "bulk"
    bulk.mkdir()
    for i in range(30):
        (bulk / f"f{i}.md").write_text(f"# File {i}\n\nnote {i} about rivers and bridges.\n")
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    th = threading.Thread(target=srv.run, daemon=True)
    th.start()
    for _ in range(200):
        if srv.started:
            break
        time.sleep(0.05)
    events: list[float] = []

    async def on_progress(progress, total, message):
        events.append(progress)

    async def go() -> None:
        async with streamable_http_client(f"http://127.0.0.1:{port}/mcp") as streams, \
                ClientSession(streams[0], streams[1]) as s:
            await s.initialize()
            first = await s.call_tool("index_paths", {"paths": [str(root / "notes")]})
            assert not first.is_error and first.structured_content["added"] == 1, first.content
            results: dict[str, Any] = {}

            async def index() -> None:
                results["index"] = await s.call_tool("index_paths", {"paths": [str(bulk)]}, progress_callback=on_progress)

            async def search(i: int) -> None:
                results[f"s{i}"] = await s.call_tool("search", {"query": "ETag max-age caching", "k": 1})

            async with anyio.create_task_group() as tg:
                tg.start_soon(index)
                for i in range(6):
                    tg.start_soon(search, i)
            r = results["index"]
            assert not r.is_error and r.structured_content["added"] == 30, r.content
            for i in range(6):
                hit = results[f"s{i}"].structured_content["hits"][0]
                assert hit["source"].endswith("cache.md"), results[f"s{i}"].content
            after = await s.call_tool("search", {"query": "note 7 about rivers", "k": 1})
            assert after.structured_content["hits"][0]["source"].endswith("f7.md")

    try:
        anyio.run(go)
    finally:
        srv.should_exit = True
        th.join(timeout=20)
    assert events and events == sorted(events) and events[-1] == 100.0
