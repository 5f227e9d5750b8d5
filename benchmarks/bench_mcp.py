"""MCP round-trip cost of `search`: stdio and streamable HTTP vs the direct Python call, on SciFact.

Peer = the same DocStore.search call made in-process (no protocol). Measured in one run:
  1. direct:  DocStore.search(q, k=10) in this process            -> p50 / p95 ms
  2. stdio:   `knnrag serve` subprocess, SDK stdio client, tools/call search -> p50 / p95, ratio to direct
  3. http:    `knnrag serve --transport http`, one SDK client     -> p50 / p95, ratio to direct
  4. http x8: 8 concurrent SDK clients for --duration s           -> requests/s, errors (target 0)
Target: stdio p50 <= 1.5x direct p50. Appends a section to BENCHMARKS.md with the command.

usage: python benchmarks/bench_mcp.py [--store DIR] [--queries N] [--duration 60] [--no-append]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import anyio

REPO = Path(__file__).resolve().parents[1]
SCIFACT = Path(os.environ.get("KNNRAG_SCIFACT", "/work/shared/data/beir-scifact"))


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


def summary(ms: list[float]) -> dict:
    return {"n": len(ms), "p50_ms": round(pct(ms, 0.5), 2), "p95_ms": round(pct(ms, 0.95), 2),
            "mean_ms": round(statistics.fmean(ms), 2)}


def knnrag() -> list[str]:
    exe = shutil.which("knnrag") or str(Path(sys.executable).with_name("knnrag"))
    return [exe] if Path(exe).exists() else [sys.executable, "-m", "retrieval.cli.root"]


def load_queries(n: int) -> list[str]:
    qs = [json.loads(line)["text"] for line in (SCIFACT / "queries.jsonl").open()]
    return qs[:n]


def ensure_store(store: Path, docs: int) -> None:
    """SciFact corpus (or its first `docs` records: embedding all 5,183 abstracts with MiniLM takes
    ~20 CPU-minutes, too long on a shared 2-core box; the protocol overhead does not depend on it)."""
    from retrieval.store.docstore import DocStore

    if (store / "store.json").exists():
        return
    store.parent.mkdir(parents=True, exist_ok=True)  # the work folder may not exist yet
    corpus = SCIFACT / "corpus.jsonl"
    if docs:
        corpus = store.parent / f"scifact-corpus-{docs}.jsonl"
        with (SCIFACT / "corpus.jsonl").open() as src, corpus.open("w") as dst:
            for i, line in enumerate(src):
                if i >= docs:
                    break
                dst.write(line)
    print(f"building the SciFact store in {store} from {corpus.name} (once)...", file=sys.stderr)
    t = time.perf_counter()
    with DocStore.open(store) as s:
        rep = s.index_paths([str(corpus)])
    print(f"  indexed {rep.to_dict().get('chunks_added')} chunks in {time.perf_counter() - t:.0f} s", file=sys.stderr)


def _chunks(store: Path) -> int:
    from retrieval.store.docstore import DocStore

    with DocStore.open(store, read_only=True) as s:
        return int(s.stats()["chunks"])


def bench_direct(store: Path, queries: list[str]) -> dict:
    from retrieval.store.docstore import DocStore

    with DocStore.open(store, read_only=True) as s:
        for q in queries[:5]:
            s.search(q, k=10)  # warm: embedder, index pages
        ms = []
        for q in queries:
            t = time.perf_counter()
            s.search(q, k=10)
            ms.append((time.perf_counter() - t) * 1000)
    return summary(ms)


async def timed_calls(session, queries: list[str]) -> list[float]:
    for q in queries[:5]:
        r = await session.call_tool("search", {"query": q, "k": 10})
        assert not r.is_error, r.content
    ms = []
    for q in queries:
        t = time.perf_counter()
        r = await session.call_tool("search", {"query": q, "k": 10})
        ms.append((time.perf_counter() - t) * 1000)
        assert not r.is_error, r.content
    return ms


async def bench_stdio(store: Path, queries: list[str]) -> dict:
    from mcp import ClientSession, StdioServerParameters
    from mcp.client.stdio import stdio_client

    cmd = knnrag()
    params = StdioServerParameters(command=cmd[0], args=cmd[1:] + ["serve", "--store", str(store)],
                                   env={**os.environ, "HF_HUB_OFFLINE": "1"})
    async with stdio_client(params) as (r, w):
        async with ClientSession(r, w) as s:
            await s.initialize()
            return summary(await timed_calls(s, queries))


def start_http(store: Path) -> tuple[subprocess.Popen, str]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    proc = subprocess.Popen(knnrag() + ["serve", "--store", str(store), "--transport", "http", "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    for _ in range(300):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1)
            return proc, f"http://127.0.0.1:{port}/mcp"
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("HTTP server did not start")


async def bench_http(url: str, queries: list[str]) -> dict:
    from mcp import ClientSession
    from mcp.client.streamable_http import streamable_http_client

    async with streamable_http_client(url) as streams:
        async with ClientSession(streams[0], streams[1]) as s:
            await s.initialize()
            return summary(await timed_calls(s, queries))


async def bench_http_load(url: str, queries: list[str], clients: int, duration: float) -> dict:
    from mcp import ClientSession
    from mcp.client.streamable_http import streamable_http_client

    done, errors, ms = [0], [0], []
    deadline = time.perf_counter() + duration

    async def client(i: int) -> None:
        async with streamable_http_client(url) as streams:
            async with ClientSession(streams[0], streams[1]) as s:
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

    t0 = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for i in range(clients):
            tg.start_soon(client, i)
    wall = time.perf_counter() - t0
    return {"clients": clients, "seconds": round(wall, 1), "requests": done[0], "errors": errors[0],
            "req_per_s": round(done[0] / wall, 1), **{k: v for k, v in summary(ms).items() if k != "n"}}


def append(res: dict, cmd: str) -> None:
    d, s, h, load = res["direct"], res["stdio"], res["http"], res["http_load"]
    lines = [
        "", "## MCP round trip: `search` over stdio / streamable HTTP vs direct Python (SciFact, k=10)",
        "", f"Command: `{cmd}`  ", f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
        f"{res['queries']} SciFact queries against a store of {res['chunks']} SciFact chunks (MiniLM, hybrid), {res['date']}; "
        f"load average {os.getloadavg()[0]:.1f} at the end", "",
        "| path | p50 ms | p95 ms | p50 ratio to direct |", "|---|---|---|---|",
        f"| direct DocStore.search (peer) | {d['p50_ms']} | {d['p95_ms']} | 1.00 |",
        f"| MCP stdio | {s['p50_ms']} | {s['p95_ms']} | {res['stdio_ratio']:.2f} (target <= 1.5) |",
        f"| MCP streamable HTTP | {h['p50_ms']} | {h['p95_ms']} | {res['http_ratio']:.2f} |", "",
        f"HTTP load: {load['clients']} concurrent clients for {load['seconds']} s: {load['requests']} requests, "
        f"{load['errors']} errors, **{load['req_per_s']} req/s** (p50 {load['p50_ms']} ms, p95 {load['p95_ms']} ms).", "",
    ]
    with (REPO / "BENCHMARKS.md").open("a") as f:
        f.write("\n".join(lines))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", default="/tmp/knnrag-bench/scifact-store")
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--docs", type=int, default=0, help="index only the first N corpus records (0 = all 5,183)")
    ap.add_argument("--duration", type=float, default=60.0)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--no-append", action="store_true")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    store = Path(args.store)
    ensure_store(store, args.docs)
    queries = load_queries(args.queries)
    res: dict = {"queries": len(queries), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                 "chunks": _chunks(store)}
    res["direct"] = bench_direct(store, queries)
    res["stdio"] = anyio.run(bench_stdio, store, queries)
    proc, url = start_http(store)
    try:
        res["http"] = anyio.run(bench_http, url, queries)
        res["http_load"] = anyio.run(bench_http_load, url, queries, args.clients, args.duration)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    res["stdio_ratio"] = res["stdio"]["p50_ms"] / res["direct"]["p50_ms"]
    res["http_ratio"] = res["http"]["p50_ms"] / res["direct"]["p50_ms"]
    print(json.dumps(res, indent=2))
    if not args.no_append:
        append(res, "python benchmarks/bench_mcp.py " + " ".join(sys.argv[1:]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
