"""`knnrag serve` (MCP over stdio or streamable HTTP) and `knnrag ask` (RAG answer in the terminal).

Cheap to import: the SDK, torch and the stores load inside the handlers.
"""
from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
from pathlib import Path

from mcp_server.http import REPLIES
from retrieval.errors import InvalidInputError, StoreWriteError

log = logging.getLogger("knnrag.ask")


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

    a = sub.add_parser("ask", help="answer a question from the store with citations (streams to the terminal)")
    a.add_argument("question", help="the question, in plain words")
    a.add_argument("--store", required=True, help="store folder (built by `knnrag index`)")
    a.add_argument("--datastore", help="mix kNN-LM from this token datastore into generation "
                                        "(default: the collection's own, built by `index --knn`)")
    a.add_argument("--no-knn", action="store_true", help="generate with the plain LM, without the collection's datastore")
    a.add_argument("--mode", choices=("auto", "extractive", "generate"), default="auto",
                   help="extractive: copy the answer from a source (no LM); generate: the LM writes it; "
                        "auto (default): generate only with a model of >= 1B parameters")
    a.add_argument("--model", help="answering LM: HF id or local path (default: bundled SmolLM2-135M-Instruct)")
    a.add_argument("-k", type=int, default=5, help="sources to retrieve (default 5)")
    a.add_argument("--collection", default="default", help="collection to answer from (default `default`)")
    a.add_argument("--max-new-tokens", type=int, default=256, help="generate: answer length limit (default 256)")
    a.add_argument("--min-score", type=float, help="relevance threshold (dense cosine) below which it refuses")
    a.add_argument("--abstain-threshold", type=float,
                   help="p(answerable) below which it abstains (default 0.5; 0 never abstains)")
    a.add_argument("--context-tokens", type=int,
                   help="prompt+answer token budget (default: min(LM context, 1024): CPU prefill delays the first token)")
    a.add_argument("--json", action="store_true", help="print one JSON object (no streaming)")
    a.set_defaults(func=ask)


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


def serve(args: argparse.Namespace) -> int:
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
                          ray=args.ray, shards=args.shards)
    server = build_server(config)
    if args.transport == "stdio":
        import anyio

        from mcp_server.stdio import serve_stdio

        anyio.run(serve_stdio, server, backend_options={"use_uvloop": _has_uvloop()})
        return 0
    token = os.environ.get("KNNRAG_MCP_TOKEN") or None
    cfg = HttpConfig(host=args.host, port=args.port, token=token, max_request_bytes=args.max_request_bytes,
                     allowed_hosts=tuple(args.allowed_host), allowed_origins=tuple(args.allowed_origin),
                     allow_unauthenticated=args.allow_unauthenticated, replies=_replies(args))
    _port_free(cfg.host, cfg.port)
    run_http(server, cfg)
    return 0


def _ask_knnlm(args: argparse.Namespace):
    """The answering kNN-LM: --datastore, else the collection's own datastore (citations from
    provenance need it), else the plain LM. The collection's is skipped, with a warning, when
    --model is another LM than the one that built it."""
    from lm.knn_index import datastore_dir
    from lm.knnlm import KNNLM
    from retrieval.errors import MismatchError

    if args.datastore or args.no_knn:
        return KNNLM.load(args.model, datastore=None if args.no_knn else args.datastore)
    own = datastore_dir(Path(args.store).expanduser(), args.collection)
    if not (own / "manifest.json").is_file():
        return KNNLM.load(args.model)
    try:
        return KNNLM.load(args.model, datastore=own)
    except MismatchError as e:
        log.warning("not using the collection's kNN datastore %s: %s", own, e)
        return KNNLM.load(args.model)


def ask(args: argparse.Namespace) -> int:
    from lm.rag.answer import RagConfig, answer, format_sources
    from retrieval.cli.output import emit_json
    from retrieval.store.docstore import DocStore

    if not Path(args.store).expanduser().is_dir():
        raise InvalidInputError(f"no store at {args.store}", "build one with `knnrag index PATH --store DIR`")
    kw = {"k": args.k, "max_new_tokens": args.max_new_tokens, "answer_mode": args.mode, "model": args.model}
    if args.min_score is not None:
        kw["min_score"] = args.min_score
    if args.abstain_threshold is not None:
        kw["abstain_threshold"] = args.abstain_threshold
    if args.context_tokens is not None:
        kw["context_tokens"] = args.context_tokens
    cfg = RagConfig(**kw)
    with DocStore.open(Path(args.store).expanduser(), create=False, read_only=True) as store:
        stream = None
        last = [""]
        if not args.json:
            def stream(piece: str) -> None:
                sys.stdout.write(piece)
                sys.stdout.flush()
                last[0] = piece or last[0]
        # loaded only when something relevant was retrieved; model None + datastore = the datastore's LM
        res = answer(args.question, store=store, knnlm=lambda: _ask_knnlm(args), collection=args.collection,
                     config=cfg, on_token=stream)
    if args.json:
        emit_json(res.to_dict())
        return 0
    if not res.streamed:
        sys.stdout.write(res.answer)
    if not last[0].endswith("\n"):
        sys.stdout.write("\n")
    if res.citations:
        sys.stdout.write("\n" + format_sources(res) + "\n")
    sys.stdout.flush()
    return 0


def _has_uvloop() -> bool:
    """uvloop's event loop when installed (a dependency on Linux and macOS); a plain asyncio loop otherwise.
    Over stdio it measured within noise of asyncio (BENCHMARKS.md, session 3 MCP section)."""
    import importlib.util

    return importlib.util.find_spec("uvloop") is not None
