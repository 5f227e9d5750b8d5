"""`knnrag serve` as a subprocess, driven by the SDK client over stdio and streamable HTTP.

Also: stdout carries nothing but JSON-RPC, `initialize` answers before anything is loaded,
and the HTTP binding enforces Host/Origin (DNS rebinding), the body-size limit and the token.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client

from tests.support.docs import write_docs

pytestmark = pytest.mark.anyio
TOKEN = "test-token-0123456789abcdef"


def knnrag() -> list[str]:
    exe = shutil.which("knnrag") or str(Path(sys.executable).with_name("knnrag"))
    return [exe] if Path(exe).exists() else [sys.executable, "-m", "retrieval.cli.root"]


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


@pytest.fixture()
def root(tmp_path):
    return write_docs(tmp_path / "root")


def serve_args(store: Path, root: Path, *extra: str) -> list[str]:
    return ["serve", "--store", str(store), "--embedder", "hash-64", "--allow-root", str(root), *extra]


async def exercise(session: ClientSession, root: Path) -> None:
    tools = {t.name for t in (await session.list_tools()).tools}
    assert {"search", "ask", "index_paths", "knn_generate", "perplexity"} <= tools
    r = await session.call_tool("index_paths", {"paths": [str(root)]})
    assert not r.is_error, r.content
    r = await session.call_tool("search", {"query": "path parameters curly braces", "k": 2})
    assert not r.is_error and r.structured_content["hits"][0]["source"].endswith("routing.md")
    for name, args in [("search", {"query": "x", "k": -1}), ("index_paths", {"paths": ["/etc"]}),
                       ("search", {"query": "x", "collection": "nope"}), ("perplexity", {"text": ""})]:
        assert (await session.call_tool(name, args)).is_error
    assert (await session.list_tools()).tools  # still up


async def test_stdio_end_to_end_and_lazy_initialize(tmp_path, root):
    store = tmp_path / "store"
    params = StdioServerParameters(command=knnrag()[0], args=knnrag()[1:] + serve_args(store, root),
                                   env={**os.environ, "HF_HUB_OFFLINE": "1"})
    async with stdio_client(params) as (r, w):
        async with ClientSession(r, w) as s:
            init = await s.initialize()
            assert init.server_info.name == "knnrag"
            assert not (store / "store.json").exists()  # nothing opened before the first tool call
            await exercise(s, root)
    assert (store / "store.json").exists()


@pytest.mark.slow  # a stdio server process driven line by line: 2.7 s (tests/mcp_server/test_stdio.py stays in the fast lane)
def test_stdout_carries_only_json_rpc(tmp_path, root):
    msgs = [
        {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "raw", "version": "0"}}},
        {"jsonrpc": "2.0", "method": "notifications/initialized"},
        {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "index_paths", "arguments": {"paths": [str(root)]}}},
        {"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": "search", "arguments": {"query": "TLS proxy"}}},
        {"jsonrpc": "2.0", "id": 4, "method": "tools/call", "params": {"name": "search", "arguments": {"query": "", "k": -1}}},
    ]
    proc = subprocess.Popen(knnrag() + ["-v"] + serve_args(tmp_path / "store", root), stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    got: dict[int, dict] = {}
    lines: list[str] = []
    try:
        for m in msgs:
            proc.stdin.write(json.dumps(m) + "\n")
            proc.stdin.flush()
            if "id" in m:
                while m["id"] not in got:
                    line = proc.stdout.readline()
                    assert line, proc.stderr.read()[-2000:]
                    lines.append(line)
                    obj = json.loads(line)  # every stdout line is JSON-RPC
                    assert obj.get("jsonrpc") == "2.0"
                    if "id" in obj:
                        got[obj["id"]] = obj
        proc.stdin.close()
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    stderr = proc.stderr.read()
    assert got[3]["result"]["structuredContent"]["hits"][0]["source"].endswith("deploy.md")
    assert got[4]["result"]["isError"] is True
    assert "DEBUG" in stderr or "INFO" in stderr  # logs went to stderr (-v), not stdout


class HttpServer:
    def __init__(self, tmp_path: Path, root: Path, token: str | None, extra=()):
        self.port = free_port()
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        env.pop("KNNRAG_MCP_TOKEN", None)
        if token:
            env["KNNRAG_MCP_TOKEN"] = token
        self.proc = subprocess.Popen(
            knnrag() + serve_args(tmp_path / "store", root, "--transport", "http", "--port", str(self.port),
                                  "--max-request-bytes", "65536", *extra),
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
        self.url = f"http://127.0.0.1:{self.port}"
        for _ in range(200):
            if self.proc.poll() is not None:
                raise RuntimeError(self.proc.stderr.read())
            try:
                urllib.request.urlopen(self.url + "/healthz", timeout=1)
                return
            except OSError:
                time.sleep(0.2)
        raise RuntimeError("server did not start")

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=20)


def post(url: str, body: bytes, **headers) -> tuple[int, str]:
    h = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream", **headers}
    req = urllib.request.Request(url, data=body, headers=h, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read(2000).decode(errors="replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")


INIT = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
    "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "raw", "version": "0"}}}).encode()


@pytest.mark.slow  # an HTTP server process, bearer-token and host checks: 2.4 s (in-process HTTP tests stay in the fast lane)
async def test_http_end_to_end_with_token_and_checks(tmp_path, root):
    import httpx2
    from mcp.client.streamable_http import streamable_http_client

    srv = HttpServer(tmp_path, root, TOKEN)
    try:
        mcp_url = srv.url + "/mcp"
        auth = {"Authorization": f"Bearer {TOKEN}"}
        async with httpx2.AsyncClient(headers=auth, timeout=60) as http:
            async with streamable_http_client(mcp_url, http_client=http) as streams:
                async with ClientSession(streams[0], streams[1]) as s:
                    await s.initialize()
                    await exercise(s, root)
        status, _ = post(mcp_url, INIT, **auth)
        assert status == 200
        assert post(mcp_url, INIT)[0] == 401  # no token
        assert post(mcp_url, INIT, Authorization="Bearer wrong-token-wrong-token")[0] == 401
        assert post(mcp_url, INIT, Host="evil.example:80", **auth)[0] == 421  # DNS rebinding
        assert post(mcp_url, INIT, Origin="http://evil.example", **auth)[0] == 403
        assert post(mcp_url, INIT, Origin=f"http://localhost:{srv.port}", **auth)[0] == 200
        assert post(mcp_url, INIT, Origin="http://localhost:3000", **auth)[0] == 403  # another local page
        assert post(mcp_url, INIT, Host="127.0.0.1:80@evil.com", **auth)[0] == 421
        huge = json.dumps({"jsonrpc": "2.0", "id": 9, "method": "ping", "params": {"pad": "x" * 100_000}}).encode()
        assert post(mcp_url, huge, **auth)[0] == 413
        with urllib.request.urlopen(srv.url + "/healthz", timeout=5) as r:  # open for the container healthcheck
            assert json.loads(r.read())["status"] == "ok"
    finally:
        srv.close()


@pytest.mark.slow  # two HTTP server processes: 3.9 s CPU
async def test_http_without_token_and_port_in_use(tmp_path, root):
    from mcp.client.streamable_http import streamable_http_client

    srv = HttpServer(tmp_path, root, None)
    try:
        async with streamable_http_client(srv.url + "/mcp") as streams:
            async with ClientSession(streams[0], streams[1]) as s:
                await s.initialize()
                await exercise(s, root)
        r = subprocess.run(knnrag() + serve_args(tmp_path / "store2", root, "--transport", "http", "--port",
                                                 str(srv.port), "--json"), capture_output=True, text=True, timeout=60)
        assert r.returncode == 2 and "cannot listen" in json.loads(r.stdout)["error"]
    finally:
        srv.close()


@pytest.mark.slow  # a server process per bad argument: 3.9 s CPU
def test_serve_refuses_bad_arguments(tmp_path):
    r = subprocess.run(knnrag() + ["serve", "--store", str(tmp_path / "s"), "--allow-root", str(tmp_path / "missing"),
                                   "--json"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "--allow-root" in json.loads(r.stdout)["error"]
    short = subprocess.run(knnrag() + ["serve", "--store", str(tmp_path / "s"), "--transport", "http", "--json"],
                           capture_output=True, text=True, timeout=60, env={**os.environ, "KNNRAG_MCP_TOKEN": "short"})
    assert short.returncode == 2 and "shorter than 16" in json.loads(short.stdout)["error"]
    env = {k: v for k, v in os.environ.items() if k != "KNNRAG_MCP_TOKEN"}
    wide = subprocess.run(knnrag() + ["serve", "--store", str(tmp_path / "s"), "--transport", "http", "--host", "0.0.0.0",
                                      "--json"], capture_output=True, text=True, timeout=60, env=env)
    err = json.loads(wide.stdout)
    assert wide.returncode == 2 and "without a bearer token" in err["error"] and "--allow-unauthenticated" in err["hint"]
    nan = subprocess.run(knnrag() + ["serve", "--store", str(tmp_path / "s"), "--min-score", "nan", "--json"],
                         capture_output=True, text=True, timeout=60)
    assert nan.returncode == 2 and "finite" in json.loads(nan.stdout)["error"]


@pytest.mark.slow  # Node MCP Inspector against stdio and HTTP servers
@pytest.mark.timeout(900)  # its own subprocess limit: 300 s ran out under load 21
def test_independent_client_mcp_inspector_cli():
    """The official MCP Inspector CLI (Node) against `knnrag serve`, stdio and HTTP: tests/inspector_check.sh.

    Needs node + npm (it fetches Node 22 and the Inspector from the npm registry once, into
    ~/.cache/knnrag-inspector); skipped where they are missing or KNNRAG_SKIP_INSPECTOR=1.
    """
    if os.environ.get("KNNRAG_SKIP_INSPECTOR") == "1":
        pytest.skip("KNNRAG_SKIP_INSPECTOR=1")
    if not (shutil.which("node") and shutil.which("npm") and shutil.which("bash")):
        pytest.skip("node/npm not available")
    script = Path(__file__).with_name("inspector_check.sh")
    env = {**os.environ, "KNNRAG": knnrag()[0] if len(knnrag()) == 1 else "knnrag", "HF_HUB_OFFLINE": "1"}
    r = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=900, env=env)
    if r.returncode == 2 and "need Node" in r.stderr:
        pytest.skip(r.stderr.strip())
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    assert " 0 failed" in r.stdout
