"""MCP round-trip cost of `search`: stdio and streamable HTTP vs the direct Python call, on SciFact.

Peer = the same DocStore.search call made in-process (no protocol). Measured in one run:
  1. latency, interleaved: for each query, direct / stdio / HTTP one after the other (order rotating),
     so load from other jobs on a shared machine hits the three alike -> p50 / p95 and ratios to direct;
  2. throughput: 8 threads calling DocStore.search directly (peer), then 8 concurrent SDK clients over
     streamable HTTP, each for --duration s -> requests/s, p50 / p95, errors (target 0);
  3. where the overhead goes: the per-call pieces timed in this process (result conversion, the SDK's
     output re-validation, the client's jsonschema check, JSON-RPC encode/decode, the worker-thread hop).
Targets: stdio p50 <= 1.3x direct, HTTP <= 1.5x, >= 60 req/s with 8 HTTP clients, 0 errors, p95 <= 250 ms.

Paths: direct (peer), `knnrag serve` over stdio, the same server on the SDK's stdio transport,
streamable HTTP with the default `--replies auto` (one JSON body per call, SSE only for a request that
asks for progress), with `--replies sse` (an SSE stream for every call: the SDK's default and ours
before commit 627a71b, 2026-12-07) and with `--replies json`. Throughput: auto and sse.

usage: python -m benchmarks mcp [--store DIR] [--docs N] [--queries N] [--duration 60] [--quick]
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio

from benchmarks.common import ROOT, WORK, data_dir, percentile, record

PEER = "direct DocStore.search in the same process (latency) and direct threads (throughput), same queries"
REPO = ROOT


def scifact() -> Path:
    return Path(os.environ["KNNRAG_SCIFACT"]) if os.environ.get("KNNRAG_SCIFACT") else data_dir("beir-scifact")


def summary(ms: list[float]) -> dict:
    return {"n": len(ms), "p50_ms": round(percentile(ms, 50), 2), "p95_ms": round(percentile(ms, 95), 2),
            "mean_ms": round(statistics.fmean(ms), 2)}


def knnrag() -> list[str]:
    exe = shutil.which("knnrag") or str(Path(sys.executable).with_name("knnrag"))
    return [exe] if Path(exe).exists() else [sys.executable, "-m", "retrieval.cli.root"]


def load_queries(n: int) -> list[str]:
    qs = [json.loads(line)["text"] for line in (scifact() / "queries.jsonl").open()]
    return qs[:n]


def ensure_store(store: Path, docs: int) -> None:
    """SciFact corpus (or its first `docs` records: embedding all 5,183 abstracts with MiniLM takes
    ~20 CPU-minutes, too long on a shared 2-core box; the protocol overhead does not depend on it)."""
    from retrieval.store.docstore import DocStore

    if (store / "store.json").exists():
        return
    store.parent.mkdir(parents=True, exist_ok=True)  # the work folder may not exist yet
    corpus = scifact() / "corpus.jsonl"
    if docs:
        corpus = store.parent / f"scifact-corpus-{docs}.jsonl"
        with (scifact() / "corpus.jsonl").open() as src, corpus.open("w") as dst:
            for i, line in enumerate(src):
                if i >= docs:
                    break
                dst.write(line)
    print(f"building the SciFact store in {store} from {corpus.name} (once)...", file=sys.stderr)
    t = time.perf_counter()
    with DocStore.open(store) as s:
        rep = s.index_paths([str(corpus)])
    print(f"  indexed {rep.to_dict().get('chunks_added')} chunks in {time.perf_counter() - t:.0f} s", file=sys.stderr)


def _serve_http(argv_for_port: Callable[[int], list[str]], what: str, **popen: Any) -> tuple[subprocess.Popen, str]:
    """Start an HTTP MCP server on a free port and wait for its /healthz -> (process, MCP url)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    proc = subprocess.Popen(argv_for_port(port), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **popen)
    for _ in range(300):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1)
            return proc, f"http://127.0.0.1:{port}/mcp"
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"{what} did not start")


def start_http(store: Path, extra: list[str]) -> tuple[subprocess.Popen, str]:
    return _serve_http(lambda port: knnrag() + ["serve", "--store", str(store), "--transport", "http",
                                                "--port", str(port), *extra],
                       "HTTP server", env={**os.environ, "HF_HUB_OFFLINE": "1"})


# The same server on the SDK's own stdio transport (mcp.server.stdio), to show what ours saves.
SDK_STDIO = ("import sys, anyio; from pathlib import Path; from mcp_server.server import ServerConfig, build_server; "
             "anyio.run(build_server(ServerConfig(store=Path(sys.argv[1]))).run_stdio_async)")


# The floor: the same server class, transports and `search` output schema, whose tool does no work and
# returns one stored result of the same shape and size. What the SDK client and the transport cost
# alone, so "server + search" can be told apart from "what any server costs through this client".
STUB = r"""
import sys, anyio
from pathlib import Path
from typing import Annotated
from mcp_types import CallToolResult
from mcp_server import schemas as S, tool_support as T
from mcp_server.server import _server_class
payload = S.SearchOut.model_validate_json(Path(sys.argv[1]).read_text())
server = _server_class()("stub", log_level="WARNING")

@server.tool()
async def search(query: str, k: int = 10) -> Annotated[CallToolResult, S.SearchOut]:
    return T.result(payload, links=payload.hits)

if sys.argv[2] == "stdio":
    from mcp_server.stdio import serve_stdio
    anyio.run(serve_stdio, server)
else:
    from mcp_server.http import HttpConfig, run_http
    run_http(server, HttpConfig(port=int(sys.argv[3])))
"""


def stub_payload(store_obj, query: str, path: Path) -> Path:
    """A real 10-hit SearchOut, as JSON, for the stub server to return on every call."""
    from mcp_server import schemas as S
    from mcp_server import tool_support as T

    outs = [T.hit(h) for h in store_obj.search(query, k=10)]
    path.write_text(S.SearchOut(query=query, collection="default", mode="hybrid", hits=outs, returned=len(outs),
                                truncated=False).model_dump_json())
    return path


def start_stub_http(payload: Path) -> tuple[subprocess.Popen, str]:
    return _serve_http(lambda port: [sys.executable, "-c", STUB, str(payload), "http", str(port)],
                       "stub HTTP server", cwd=REPO)


async def interleaved(store_obj, store: Path, urls: dict[str, str], queries: list[str], payload: Path) -> dict:
    """Per query: direct, then each MCP path, back to back, the order rotating, after 5 warm-up rounds."""
    from contextlib import AsyncExitStack

    from mcp import ClientSession, StdioServerParameters
    from mcp.client.stdio import stdio_client
    from mcp.client.streamable_http import streamable_http_client

    cmd = knnrag()
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    stdio = {"stdio": StdioServerParameters(command=cmd[0], args=cmd[1:] + ["serve", "--store", str(store)], env=env),
             "stdio_sdk_transport": StdioServerParameters(command=sys.executable, args=["-c", SDK_STDIO, str(store)],
                                                          env=env),
             "stdio_floor": StdioServerParameters(command=sys.executable, args=["-c", STUB, str(payload), "stdio"],
                                                  env=env, cwd=str(REPO))}
    async with AsyncExitStack() as stack:
        sessions = {}
        for name, params in stdio.items():
            r, w = await stack.enter_async_context(stdio_client(params))
            sessions[name] = await stack.enter_async_context(ClientSession(r, w))
        for name, url in urls.items():
            streams = await stack.enter_async_context(streamable_http_client(url))
            sessions[name] = await stack.enter_async_context(ClientSession(streams[0], streams[1]))
        for s in sessions.values():
            await s.initialize()

        async def via(session, q: str) -> None:
            res = await session.call_tool("search", {"query": q, "k": 10})
            assert not res.is_error and res.structured_content["hits"], res.content

        def caller(session: Any) -> Callable[[str], Awaitable[None]]:
            return lambda q: via(session, q)

        raw_stdio = RawStdio(store)
        stack.callback(raw_stdio.close)
        raws = {"stdio_raw_client": raw_stdio, "http_raw_client": RawHttp(urls["http"])}
        if "http_sse" in urls:
            raws["http_sse_raw_client"] = RawHttp(urls["http_sse"])

        def raw(client: Any) -> Callable[[str], Awaitable[None]]:
            async def go(q: str) -> None:
                assert client.call("tools/call", {"name": "search", "arguments": {"query": q, "k": 10}})["structuredContent"]["hits"]
            return go

        paths: dict[str, Callable[[str], Awaitable[None]]] = {"direct": lambda q: _direct(store_obj, q)}
        paths.update({name: caller(s) for name, s in sessions.items()})
        paths.update({name: raw(c) for name, c in raws.items()})
        ms: dict[str, list[float]] = {name: [] for name in paths}
        order = list(paths)
        for i, q in enumerate(queries[:5] + queries):
            order = order[1:] + order[:1]
            for name in order:
                t = time.perf_counter()
                try:
                    await paths[name](q)
                except Exception as e:  # name the path: a bare ExceptionGroup from the SDK hides it
                    raise RuntimeError(f"{name} failed on query {i}: {e!r}") from None
                if i >= 5:
                    ms[name].append((time.perf_counter() - t) * 1000)
    return {name: summary(v) for name, v in ms.items()}


class RawStdio:
    """A bare JSON-RPC line client: what the server and the pipe cost, without the SDK client's own
    work (its anyio streams, pydantic parse and jsonschema check of every result)."""

    def __init__(self, store: Path) -> None:
        self.proc = subprocess.Popen(knnrag() + ["serve", "--store", str(store)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, bufsize=0,
                                     env={**os.environ, "HF_HUB_OFFLINE": "1"})
        assert self.proc.stdout is not None
        self.out = os.fdopen(self.proc.stdout.fileno(), "rb", buffering=1 << 16, closefd=False)
        self.n = 0
        self.call("initialize", {"protocolVersion": "2025-06-18", "capabilities": {},
                                 "clientInfo": {"name": "raw", "version": "0"}})
        self._send({"jsonrpc": "2.0", "method": "notifications/initialized"})

    def _send(self, msg: dict) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(msg).encode() + b"\n")

    def call(self, method: str, params: dict) -> dict:
        self.n += 1
        self._send({"jsonrpc": "2.0", "id": self.n, "method": method, "params": params})
        reply = json.loads(self.out.readline())
        assert "result" in reply, reply
        return reply["result"]

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


class RawHttp:
    """A bare keep-alive HTTP client posting JSON-RPC (SSE or JSON replies), parsed with json.loads."""

    def __init__(self, url: str) -> None:
        from urllib.parse import urlparse

        u = urlparse(url)
        self.conn = http.client.HTTPConnection(u.hostname or "127.0.0.1", u.port)
        self.path, self.n = u.path, 0
        self.sid: str | None = None
        self.call("initialize", {"protocolVersion": "2025-06-18", "capabilities": {},
                                 "clientInfo": {"name": "raw", "version": "0"}})
        self._post({"jsonrpc": "2.0", "method": "notifications/initialized"})

    def _post(self, msg: dict) -> bytes:
        h = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
        if self.sid:
            h.update({"Mcp-Session-Id": self.sid, "MCP-Protocol-Version": "2025-06-18"})
        try:
            self.conn.request("POST", self.path, json.dumps(msg), h)
            r = self.conn.getresponse()
        except (BrokenPipeError, ConnectionResetError, http.client.RemoteDisconnected):
            # uvicorn closes a keep-alive connection idle for 5 s (the first round, while every
            # server loads its embedder, can take longer): reconnect once, as HTTP clients do
            self.conn.close()
            self.conn.request("POST", self.path, json.dumps(msg), h)
            r = self.conn.getresponse()
        body = r.read()
        self.sid = self.sid or r.getheader("mcp-session-id")
        assert r.status in (200, 202), (r.status, body[:200])
        return body

    def call(self, method: str, params: dict) -> dict:
        self.n += 1
        body = self._post({"jsonrpc": "2.0", "id": self.n, "method": method, "params": params})
        data = next(ln[5:] for ln in body.splitlines() if ln.startswith(b"data:")) if body.startswith(b"event") else body
        return json.loads(data)["result"]


async def _direct(store_obj, q: str) -> None:
    assert store_obj.search(q, k=10)


def direct_load(store_obj, queries: list[str], clients: int, duration: float) -> dict:
    """The peer for throughput: `clients` threads calling DocStore.search in this process."""
    ms: list[float] = []
    deadline = time.perf_counter() + duration

    def worker(i: int) -> None:
        j = i
        while time.perf_counter() < deadline:
            t = time.perf_counter()
            store_obj.search(queries[j % len(queries)], k=10)
            ms.append((time.perf_counter() - t) * 1000)
            j += clients

    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    wall = time.perf_counter() - t0
    return {"clients": clients, "seconds": round(wall, 1), "requests": len(ms), "errors": 0,
            "req_per_s": round(len(ms) / wall, 1), **{k: v for k, v in summary(ms).items() if k != "n"}}


def _proc_cpu_s(pid: int) -> float:
    """utime + stime of a process (Linux /proc), in seconds; NaN elsewhere."""
    try:
        f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


async def http_load(url: str, queries: list[str], clients: int, duration: float, server_pid: int) -> dict:
    """`clients` SDK clients in this process calling one server; also the CPU each side spent per
    request, since both share the machine's cores (the clients' work caps the throughput too)."""
    from mcp import ClientSession
    from mcp.client.streamable_http import streamable_http_client

    done, errors, ms = [0], [0], []
    deadline = time.perf_counter() + duration

    async def client(i: int) -> None:
        async with streamable_http_client(url) as streams, ClientSession(streams[0], streams[1]) as s:
            await s.initialize()
            j = i
            while time.perf_counter() < deadline:
                t = time.perf_counter()
                try:
                    r = await s.call_tool("search", {"query": queries[j % len(queries)], "k": 10})
                    errors[0] += bool(r.is_error)
                except Exception:
                    errors[0] += 1
                ms.append((time.perf_counter() - t) * 1000)
                done[0] += 1
                j += clients

    t0, c0 = time.perf_counter(), time.process_time()
    s0 = _proc_cpu_s(server_pid)
    async with anyio.create_task_group() as tg:
        for i in range(clients):
            tg.start_soon(client, i)
    wall = time.perf_counter() - t0
    n = max(done[0], 1)
    cpu = {"server_cpu_ms_per_request": round((_proc_cpu_s(server_pid) - s0) / n * 1000, 1),
           "client_cpu_ms_per_request": round((time.process_time() - c0) / n * 1000, 1)}
    return {"clients": clients, "seconds": round(wall, 1), "requests": done[0], "errors": errors[0],
            "req_per_s": round(done[0] / wall, 1), **{k: v for k, v in summary(ms).items() if k != "n"}, **cpu}


def _each_ms(fn, n: int = 200) -> float:
    fn()
    t = time.perf_counter()
    for _ in range(n):
        fn()
    return round((time.perf_counter() - t) / n * 1000, 3)


def breakdown(store_obj, queries: list[str]) -> dict:
    """Per-call costs of the pieces between DocStore.search and the client's result, in this process."""
    import mcp_types as types
    from jsonschema.validators import validator_for
    from pydantic import TypeAdapter

    from mcp_server import schemas as S
    from mcp_server import tool_support as T

    hits = store_obj.search(queries[0], k=10)
    outs = [T.hit(h) for h in hits]
    model = S.SearchOut(query=queries[0], collection="default", mode="hybrid", hits=outs, returned=len(outs),
                        truncated=False)
    res = T.result(model, links=outs)
    schema = S.SearchOut.model_json_schema()
    plain = validator_for(schema)(schema)  # pydantic's schema, with $defs and anyOf-null
    check = validator_for(schema)(S.compact_schema(schema))  # what the server publishes
    msg = types.JSONRPCResponse(jsonrpc="2.0", id=1, result=res.model_dump(by_alias=True, exclude_none=True))
    wire = msg.model_dump_json(by_alias=True, exclude_unset=True)

    async def hops() -> float:
        t = time.perf_counter()
        for _ in range(200):
            await anyio.to_thread.run_sync(lambda: None)
        return round((time.perf_counter() - t) / 200 * 1000, 3)

    return {
        "search_ms": _each_ms(lambda: store_obj.search(queries[1], k=10), 30),
        "hits_to_result_ms": _each_ms(lambda: T.result(S.SearchOut(
            query=queries[0], collection="default", mode="hybrid", hits=T.bound_hits([T.hit(h) for h in hits], 39_000)[0],
            returned=10, truncated=False), links=outs)),
        "sdk_output_revalidation_ms": _each_ms(lambda: TypeAdapter(S.SearchOut).validate_python(res.structured_content)),
        "client_jsonschema_check_ms": _each_ms(lambda: list(check.iter_errors(res.structured_content))),
        "client_jsonschema_check_uncompacted_ms": _each_ms(lambda: list(plain.iter_errors(res.structured_content))),
        "jsonrpc_encode_ms": _each_ms(lambda: msg.model_dump_json(by_alias=True, exclude_unset=True)),
        "jsonrpc_decode_ms": _each_ms(lambda: types.jsonrpc_message_adapter.validate_json(wire, by_name=False)),
        "worker_thread_hop_ms": anyio.run(hops),
        "result_bytes": len(wire),
    }


LABELS = {"direct": "direct DocStore.search (peer)", "stdio": "MCP stdio (`knnrag serve`)",
          "stdio_sdk_transport": "MCP stdio, the SDK's stdio transport", "http": "MCP streamable HTTP (default --replies auto: a JSON body here)",
          "http_sse": "MCP streamable HTTP, --replies sse (the SDK's framing)",
          "http_json_response": "MCP streamable HTTP, --replies json",
          "stdio_raw_client": "MCP stdio, bare JSON-RPC line client (no SDK client work)",
          "http_raw_client": "MCP streamable HTTP (auto), bare HTTP client (no SDK client work)",
          "http_sse_raw_client": "MCP streamable HTTP, --replies sse, bare HTTP client",
          "stdio_floor": "floor: SDK client -> a stub server over our stdio transport (same schema and result, no search)",
          "http_floor": "floor: SDK client -> a stub server over streamable HTTP (auto; same schema and result, no search)"}


def markdown(res: dict, cmd: str) -> str:
    lat, dl, hl, b = res["latency"], res["direct_load"], res["http_load"], res["breakdown"]
    jl = res["http_sse_load"]
    lines = [
        "", "## MCP round trip: `search` over stdio / streamable HTTP vs direct Python (SciFact, k=10)",
        "", f"Command: `{cmd}`  ", f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"shared with other jobs (load average {os.getloadavg()[0]:.1f} at the end); {res['queries']} SciFact queries, "
        f"store of {res['chunks']} SciFact chunks (MiniLM, hybrid), {res['date']}. Latency interleaved per query.", "",
        "| path | p50 ms | p95 ms | p50 ratio to direct |", "|---|---|---|---|",
        *[f"| {LABELS[name]} | {v['p50_ms']} | {v['p95_ms']} | {res['ratios'][name]:.2f} |" for name, v in lat.items()
          if not name.endswith("_floor")],
        *[f"| {LABELS[name]} | {v['p50_ms']} | {v['p95_ms']} | (no search) |" for name, v in lat.items() if name.endswith("_floor")],
        "", "Targets: stdio <= 1.3x, HTTP <= 1.5x. The SDK rows include the Python SDK client's own work per "
        "result (anyio streams, pydantic parse, jsonschema check of the structured content: `client_jsonschema_check_ms` "
        "below); the bare-client rows are the server and the transport alone. The floor rows time a stub server that "
        "returns a stored result of the same shape at once: the SDK client and transport with no search. Search plus "
        f"floor, over direct, is the best ratio any server could show through the SDK client: stdio "
        f"{res['sdk_client_floor_ratio']['stdio']:.2f}, HTTP {res['sdk_client_floor_ratio']['http']:.2f}.", "",
        f"Throughput, {hl['clients']} concurrent callers for {hl['seconds']} s: direct threads (peer) **{dl['req_per_s']} req/s** "
        f"(p95 {dl['p95_ms']} ms); MCP HTTP clients **{hl['req_per_s']} req/s**, {hl['errors']} errors, p50 {hl['p50_ms']} ms, "
        f"p95 {hl['p95_ms']} ms (ratio {res['load_ratio']:.2f} of the peer); with --replies sse "
        f"**{jl['req_per_s']} req/s**, {jl['errors']} errors, p95 {jl['p95_ms']} ms (ratio {res['sse_load_ratio']:.2f}). "
        "Target >= 60 req/s, 0 errors, p95 <= 250 ms. CPU per request under load (server process / "
        f"the {hl['clients']} SDK clients, which share the same cores): auto {hl['server_cpu_ms_per_request']} / {hl['client_cpu_ms_per_request']} ms, "
        f"sse {jl['server_cpu_ms_per_request']} / {jl['client_cpu_ms_per_request']} ms.", "",
        "Per call, in process: " + ", ".join(f"{k} {v}" for k, v in b.items()) + ".", "",
    ]
    return "\n".join(lines)


def _record(res: dict, args) -> None:
    lat, dl, hl = res["latency"], res["direct_load"], res["http_load"]
    extra = {"queries": res["queries"], "chunks": res["chunks"], "ratios": res["ratios"],
             "sdk_client_floor_ratio": res["sdk_client_floor_ratio"]}
    direct = lat["direct"]["p50_ms"]
    for name, what, goal in (("stdio_raw_client", "MCP stdio search p50, bare JSON-RPC client", "<= 1.3x"),
                             ("stdio", "MCP stdio search p50, SDK client", "<= 1.3x"),
                             ("http_raw_client", "MCP streamable HTTP search p50, bare HTTP client", "<= 1.5x"),
                             ("http", "MCP streamable HTTP search p50, SDK client", "<= 1.5x")):
        if name in lat:
            record("mcp", f"{what} (goal: {goal} direct)", lat[name]["p50_ms"], direct, "ms", peer_name="direct DocStore.search",
                   higher_is_better=False, goal=goal, extra=extra, quick=args.quick)
    record("mcp", f"MCP HTTP throughput, {hl['clients']} SDK clients (goal: >= 60 req/s, p95 <= 250 ms)", hl["req_per_s"],
           dl["req_per_s"], "req/s", peer_name="direct threads", goal=">= 60 req/s",
           extra={"p95_ms": hl["p95_ms"], "errors": hl["errors"], "seconds": hl["seconds"]}, quick=args.quick)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--store", default=None, help="the SciFact store (default .bench/mcp-store, built once)")
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--docs", type=int, default=0, help="index only the first N corpus records (0 = all 5,183)")
    ap.add_argument("--duration", type=float, default=60.0)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--quick", action="store_true", help="200 records, 20 queries, 2 clients for 5 s")
    args = ap.parse_args(argv)
    if args.quick:
        args.docs, args.queries, args.clients, args.duration = 200, 20, 2, 5.0
    args.store = args.store or str(WORK / ("mcp-store-quick" if args.quick else "mcp-store"))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from retrieval.store.docstore import DocStore

    store = Path(args.store)
    ensure_store(store, args.docs)
    queries = load_queries(args.queries)
    res: dict = {"queries": len(queries), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    proc, url = start_http(store, [])
    proc_sse, url_sse = start_http(store, ["--replies", "sse"])
    proc_json, url_json = start_http(store, ["--replies", "json"])
    procs = [proc, proc_sse, proc_json]
    try:
        with DocStore.open(store, read_only=True) as s:
            res["chunks"] = int(s.stats()["chunks"])
            payload = stub_payload(s, queries[0], store.parent / "stub-search-result.json")
            proc_stub, url_stub = start_stub_http(payload)
            procs.append(proc_stub)
            urls = {"http": url, "http_sse": url_sse, "http_json_response": url_json, "http_floor": url_stub}
            res["latency"] = anyio.run(interleaved, s, store, urls, queries, payload)
            res["direct_load"] = direct_load(s, queries, args.clients, args.duration)
            res["http_load"] = anyio.run(http_load, url, queries, args.clients, args.duration, proc.pid)
            res["http_sse_load"] = anyio.run(http_load, url_sse, queries, args.clients, args.duration, proc_sse.pid)
            res["breakdown"] = breakdown(s, queries)
    finally:
        for p in procs:
            p.terminate()
            p.wait(timeout=30)
    lat = res["latency"]
    res["ratios"] = {name: round(v["p50_ms"] / lat["direct"]["p50_ms"], 3) for name, v in lat.items()}
    res["stdio_ratio"], res["http_ratio"] = res["ratios"]["stdio"], res["ratios"]["http"]
    # the best ratio any server could show through the SDK client: the search itself plus the floor
    res["sdk_client_floor_ratio"] = {t: round((lat["direct"]["p50_ms"] + lat[f"{t}_floor"]["p50_ms"]) / lat["direct"]["p50_ms"], 3)
                                     for t in ("stdio", "http")}
    res["load_ratio"] = res["http_load"]["req_per_s"] / max(res["direct_load"]["req_per_s"], 1e-9)
    res["sse_load_ratio"] = res["http_sse_load"]["req_per_s"] / max(res["direct_load"]["req_per_s"], 1e-9)
    print(json.dumps(res, indent=2))
    print(markdown(res, "python -m benchmarks mcp " + " ".join(argv if argv is not None else sys.argv[1:])))
    _record(res, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
