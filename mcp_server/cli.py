"""`knnrag serve` (MCP over stdio or streamable HTTP); `knnrag ask` lives in lm.ask_cli (it uses no MCP).

Cheap to import: the SDK, torch and the stores load inside the handlers.
"""
from __future__ import annotations

import argparse
import os
import socket
import sys
from pathlib import Path

from mcp_server.http import REPLIES
from retrieval.errors import InvalidInputError, StoreWriteError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="serve the store as MCP tools (stdio or streamable HTTP)",
                       description="Serve search, ask, index_paths, delete, stats and the kNN-LM tools over MCP. "
                                   "Stdout carries only protocol; logs go to stderr.")
    p.add_argument("--store", required=True, help="document store folder (created when missing)")
    p.add_argument("--datastore", help="kNN-LM token datastore folder (optional)")
    p.add_argument("--model", help="LM for ask/knn_*/perplexity: HF id or local path (default: bundled SmolLM2-135M-Instruct)")
    p.add_argument("--embedder", help="embedder for a NEW store (default: the store's own, MiniLM for a new one); "
                                      "'hash-64' is the deterministic test embedder")
    p.add_argument("--transport", choices=("stdio", "http"), default="stdio")
    p.add_argument("--host", default="127.0.0.1", help="HTTP bind address (default loopback only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--allow-root", action="append", default=[], metavar="PATH",
                   help="folder clients may index with index_paths (repeatable); without it indexing is refused")
    p.add_argument("--watch", action="append", default=[], metavar="PATH",
                   help="keep these files/folders indexed while serving (repeatable; under an --allow-root): "
                        "each burst of changes is re-indexed as one batch, deleted files leave the collection")
    p.add_argument("--watch-collection", default="default", metavar="NAME", help="collection --watch keeps (default `default`)")
    p.add_argument("--allowed-host", action="append", default=[], metavar="HOST[:PORT]",
                   help="extra Host header value accepted over HTTP (DNS-rebinding protection)")
    p.add_argument("--allowed-origin", action="append", default=[], metavar="ORIGIN",
                   help="extra Origin accepted over HTTP, e.g. https://app.example")
    p.add_argument("--allow-unauthenticated", action="store_true",
                   help="serve a non-loopback --host without KNNRAG_MCP_TOKEN (refused otherwise): only behind a "
                        "trusted network, e.g. a container port published on the host's loopback")
    p.add_argument("--replies", choices=REPLIES, default=None,
                   help="HTTP: how each request is answered. auto (default): an SSE stream for a request that asked "
                        "for progress, one JSON body for every other (less overhead per call); sse: a stream for "
                        "all; json: one JSON body for all (progress notifications are then dropped: use "
                        "start_indexing + index_status)")
    p.add_argument("--json-response", action="store_true", help="HTTP: the same as --replies json")
    p.add_argument("--max-request-bytes", type=int, default=1_048_576, help="HTTP request body limit (default 1 MiB)")
    p.add_argument("--max-sessions", type=int, default=1000,
                   help="HTTP: open MCP sessions at most; a new one closes the least recently used idle one (default 1000)")
    p.add_argument("--sessions-per-client", type=int, default=100, help="HTTP: sessions per client address (default 100)")
    p.add_argument("--session-idle-seconds", type=float, default=900.0,
                   help="HTTP: a session with no request for this long is closed (default 900)")
    p.add_argument("--connection-idle-seconds", type=float, default=30.0,
                   help="HTTP: a connection that starts no request for this long is closed (default 30)")
    p.add_argument("--min-score", type=float, help="ask: relevance threshold (dense cosine) below which it refuses")
    p.add_argument("--max-write-seconds", type=float, default=3600.0,
                   help="an index run that holds the write lock longer stops at its next file or batch, "
                        "committing nothing (default 3600)")
    p.add_argument("--index-wait-seconds", type=float, default=300.0,
                   help="index_paths waits this long, then answers with the job id and leaves the job running "
                        "(poll index_status; default 300)")
    p.add_argument("--ray", metavar="ADDRESS", help="search the datastore on Ray actors: `local` or HOST:PORT (needs knnrag[ray])")
    p.add_argument("--shards", type=int, help="with --ray: datastore shards, one actor each (default 2)")
    p.add_argument("--json", action="store_true", help="errors as one JSON object on stdout")
    p.set_defaults(func=serve)

    _register_ui(sub)


def _port_free(host: str, port: int) -> None:
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(fam, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host.strip("[]"), port))
        except OSError as e:
            raise InvalidInputError(f"cannot listen on {host}:{port}: {e.strerror}",
                                    "pick another --port, or stop the process using it") from e


def _replies(args: argparse.Namespace) -> str:
    """--json-response is the first round's name for --replies json."""
    if args.json_response and args.replies not in (None, "json"):
        raise InvalidInputError(f"--json-response contradicts --replies {args.replies}", "pass only one of them")
    return "json" if args.json_response else args.replies or "auto"


def _register_ui(sub: argparse._SubParsersAction) -> None:
    u = sub.add_parser("ui", help="the web page (search, ask, kNN-LM explorer, generate, index) on 127.0.0.1",
                       description="Serve the web page on loopback: `knnrag serve --transport http` on 127.0.0.1, "
                                   "the MCP endpoint included. Open the printed address in a browser.")
    u.add_argument("--store", required=True, help="document store folder")
    u.add_argument("--collection", default="default", help="collection the page opens on (default `default`)")
    u.add_argument("--datastore", help="kNN-LM token datastore for the explorer and generation (default: the "
                                       "collection's own, built by `index --knn`)")
    u.add_argument("--port", type=int, default=8000, help="port on 127.0.0.1 (default 8000)")
    u.add_argument("--model", help="LM: HF id or local path (default: the datastore's, else bundled SmolLM2-135M-Instruct)")
    u.add_argument("--embedder", help="embedder for a NEW store (default: the store's own)")
    u.add_argument("--allow-root", action="append", default=[], metavar="PATH",
                   help="folder the page may index (repeatable); without it indexing is refused")
    u.add_argument("--max-request-bytes", type=int, default=1_048_576, help="request body limit (default 1 MiB)")
    u.add_argument("--json", action="store_true", help="errors as one JSON object on stdout")
    u.set_defaults(func=ui)


def ui(args: argparse.Namespace) -> int:
    """`serve --transport http` pinned to loopback, announcing the page's address on stderr."""
    from urllib.parse import quote

    store = Path(args.store).expanduser()
    if not (store / "store.json").is_file():
        raise InvalidInputError(f"--store {store} is not a knnrag store", "build one with `knnrag index PATH --store DIR`")
    for k, v in {"transport": "http", "host": "127.0.0.1", "allowed_host": [], "allowed_origin": [],
                 "allow_unauthenticated": False, "replies": None, "json_response": False, "min_score": None,
                 "max_write_seconds": 3600.0, "index_wait_seconds": 300.0, "ray": None, "shards": None,
                 "watch": [], "watch_collection": "default", "max_sessions": 1000, "sessions_per_client": 100,
                 "session_idle_seconds": 900.0, "connection_idle_seconds": 30.0}.items():
        setattr(args, k, v)

    def announce(cfg) -> None:
        frag = "#token=" + quote(cfg.token) if cfg.token else ""
        sys.stderr.write(f"knnrag ui: http://127.0.0.1:{cfg.port}/?collection={quote(args.collection)}{frag}\n")
        sys.stderr.flush()

    return serve(args, announce=announce)


def serve(args: argparse.Namespace, announce=None) -> int:
    from mcp_server.http import HttpConfig, run_http
    from mcp_server.server import ServerConfig, build_server

    store = Path(args.store).expanduser()
    if store.exists() and not store.is_dir():
        raise InvalidInputError(f"--store {store} is a file", "pass a folder (it is created when missing)")
    if store.is_dir() and not (store / "store.json").exists() and any(
            not p.name.startswith(".") for p in store.iterdir()):
        raise InvalidInputError(f"--store {store} is a non-empty folder that is not a knnrag store",
                                "pass an existing store, or a new or empty folder")
    if args.datastore and not Path(args.datastore).expanduser().exists():
        raise InvalidInputError(f"--datastore {args.datastore} does not exist", "build one with `knnrag datastore build`, or omit it")
    try:
        store.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise StoreWriteError(f"cannot create the store folder {store}: {e.strerror}", "pass a writable --store") from e
    config = ServerConfig(store=store, datastore=Path(args.datastore).expanduser() if args.datastore else None,
                          model=args.model, embedder=args.embedder,
                          allow_roots=tuple(Path(r) for r in args.allow_root), min_score=args.min_score,
                          max_write_seconds=args.max_write_seconds, index_wait_seconds=args.index_wait_seconds,
                          ray=args.ray, shards=args.shards, watch=tuple(Path(w) for w in args.watch),
                          watch_collection=args.watch_collection)
    server = build_server(config)
    if args.transport == "stdio":
        import anyio

        from mcp_server.stdio import serve_stdio

        anyio.run(serve_stdio, server, backend_options={"use_uvloop": _has_uvloop()})
        return 0
    token = os.environ.get("KNNRAG_MCP_TOKEN") or None
    cfg = HttpConfig(host=args.host, port=args.port, token=token, max_request_bytes=args.max_request_bytes,
                     allowed_hosts=tuple(args.allowed_host), allowed_origins=tuple(args.allowed_origin),
                     allow_unauthenticated=args.allow_unauthenticated, replies=_replies(args),
                     max_sessions=args.max_sessions, sessions_per_client=args.sessions_per_client,
                     session_idle_seconds=args.session_idle_seconds, connection_idle_seconds=args.connection_idle_seconds)
    _port_free(cfg.host, cfg.port)
    if announce is not None:
        announce(cfg)
    run_http(server, cfg)
    return 0


def _has_uvloop() -> bool:
    """uvloop's event loop when installed (a dependency on Linux and macOS); a plain asyncio loop otherwise.
    Over stdio it measured within noise of asyncio (benchmarks/results/mcp.jsonl)."""
    import importlib.util

    return importlib.util.find_spec("uvloop") is not None
