"""The knnrag MCP server: one `MCPServer`, state loaded lazily in its lifespan.

`initialize` must answer at once, so nothing heavy happens at construction or when the
lifespan starts: the document store, the LM and the kNN datastore are opened on the first
tool call that needs them (in a worker thread), once, and shared by every session.
Stdout is the stdio transport: everything here logs to stderr through `logging`.
"""
from __future__ import annotations

import logging
import math
import os
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mcp_server.jobs import JobRegistry
from mcp_server.locks import Gate, WriteLock
from retrieval.errors import InvalidInputError

log = logging.getLogger("knnrag.mcp")

SERVER_NAME = "knnrag"
INSTRUCTIONS = (
    "knnrag searches a local document store (hybrid BM25 + dense retrieval) and answers questions "
    "with numbered citations. Use `search` to find passages (each hit names its source file and "
    "line range; read the whole chunk with the chunk://{collection}/{id} resource), `ask` for a short "
    "grounded answer from the bundled small LM, `index_paths` to add files under the allowed roots "
    "(`start_indexing` + `index_status` for big trees), `add_texts` to add text directly, `get_chunks` and "
    "`chunk_context` to read chunks and their neighbours, `list_sources` to see which files a collection holds. "
    "The knn_* tools and `perplexity` expose the kNN-LM (base LM mixed with a token datastore)."
)


@dataclass(frozen=True)
class ServerConfig:
    """Everything `knnrag serve` decides; env vars are read by the CLI, not here."""

    store: Path
    datastore: Path | None = None
    model: str | None = None  # LM spec for ask / knn_* / perplexity; None = bundled SmolLM2
    embedder: str | None = None  # None = the one recorded in the store (MiniLM for a new store)
    allow_roots: tuple[Path, ...] = ()
    max_result_chars: int = 40_000  # ~10k tokens of JSON; clients cap tool results near 25k tokens
    min_score: float | None = None  # RAG relevance threshold (None = lm.rag.answer default)
    max_write_seconds: float = 3600.0  # an index run past this stops at its next progress point, uncommitted
    index_wait_seconds: float = 300.0  # index_paths waits this long, then leaves the job running and says so
    ray: str | None = None  # search the datastore on Ray actors: "local" or HOST:PORT (lm.datastore.shards)
    shards: int | None = None  # with ray: shards, one actor each (default 2)
    watch: tuple[Path, ...] = ()  # folders/files kept indexed while serving (mcp_server/watching.py); under allow_roots
    watch_collection: str = "default"

    def __post_init__(self) -> None:
        for name in ("max_write_seconds", "index_wait_seconds"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                flag = "--" + name.replace("_", "-")
                raise InvalidInputError(f"{flag} must be a positive number of seconds, got {v!r}", "e.g. 600")
        if self.min_score is not None and not math.isfinite(self.min_score):
            raise InvalidInputError(f"--min-score must be a finite number, got {self.min_score}", "e.g. 0.3")
        roots = tuple(Path(os.path.realpath(os.path.expanduser(str(r)))) for r in self.allow_roots)
        for r in roots:
            if not r.is_dir():
                raise InvalidInputError(f"--allow-root {r} is not a folder", "pass an existing folder the server may index")
        if self.shards is not None and not self.ray:
            raise InvalidInputError("--shards needs --ray", "add --ray local (or a cluster address), or drop --shards")
        object.__setattr__(self, "allow_roots", roots)
        object.__setattr__(self, "watch", tuple(_watched(self.watch, roots)))
        object.__setattr__(self, "store", Path(os.path.expanduser(str(self.store))))


def _watched(paths: tuple[Path, ...], roots: tuple[Path, ...]) -> list[Path]:
    """--watch paths, real, each under an --allow-root (the watcher reads nothing a client could not index)."""
    from mcp_server.paths import resolve_allowed

    if paths and not roots:
        raise InvalidInputError("--watch needs --allow-root: watched paths must lie under an allowed root",
                                f"add --allow-root {paths[0]} (or a folder above it)")
    return [resolve_allowed(str(p), roots) for p in paths]


@dataclass
class ServerState:
    """Lazily opened resources, shared by every session of one server process.

    Each loader runs in a worker thread (the tools call it through anyio.to_thread) and is
    guarded by its own lock so concurrent first calls load once. `lm_lock` serialises the
    forward passes: one torch model, many callers.
    """

    config: ServerConfig
    _store: Any = None
    _knnlm: Any = None
    _lm: Any = None
    _ask_knnlms: dict = field(default_factory=dict)  # collection -> (datastore manifest mtime, KNNLM)
    _store_lock: threading.Lock = field(default_factory=threading.Lock)
    _lm_load_lock: threading.Lock = field(default_factory=threading.Lock)
    lm_lock: threading.Lock = field(default_factory=threading.Lock)
    write: WriteLock = field(default_factory=WriteLock)
    gate: Gate = field(default_factory=Gate)
    jobs: JobRegistry = field(default_factory=JobRegistry)

    def store(self):
        if self._store is None:
            with self._store_lock:
                if self._store is None:
                    from retrieval.store.docstore import DocStore

                    log.info("opening document store %s", self.config.store)
                    self._store = DocStore.open(self.config.store, embedder=self.config.embedder, create=True)
        return self._store

    def knnlm(self):
        """The kNN-LM (base LM alone when no datastore was given); also loads `lm`."""
        if self._knnlm is None:
            with self._lm_load_lock:
                if self._knnlm is None:
                    from lm.knnlm import KNNLM

                    log.info("loading LM %s (datastore: %s)", self.config.model or "default", self.config.datastore)
                    # model None + datastore: the datastore's own LM (it records which one built it)
                    knn = KNNLM.load(self.config.model, datastore=self.config.datastore)
                    if self.config.ray and self.config.datastore is not None:
                        from lm.datastore.shards import shard_knnlm

                        shard_knnlm(knn, address=self.config.ray, shards=self.config.shards or 2)
                    self._lm = knn.lm
                    self._knnlm = knn
        if self.config.datastore is not None:
            self._knnlm.refresh()  # deletes committed since (by any process) are masked at once
        return self._knnlm

    def lm(self):
        self.knnlm()
        return self._lm

    def ask_knnlm(self, collection: str):
        """The kNN-LM that answers from `collection`: the server's, or, when it has no --datastore,
        the server's LM with the collection's own datastore (`index_paths knn: true`), reopened
        when that datastore changes. Another LM's datastore is skipped with a warning."""
        from lm.knn_index import datastore_dir

        base = self.knnlm()
        own = datastore_dir(self.config.store, collection) / "manifest.json"
        if self.config.datastore is not None or not own.is_file():
            return base
        stamp = own.stat().st_mtime_ns
        cached = self._ask_knnlms.get(collection)
        if cached is None or cached[0] != stamp:
            from lm.knnlm import KNNLM
            from retrieval.errors import MismatchError

            try:
                cached = (stamp, KNNLM.load(base.lm, datastore=own.parent))
            except MismatchError as e:
                log.warning("collection %s: not using its kNN datastore: %s", collection, e)
                cached = (stamp, base)
            self._ask_knnlms[collection] = cached
        cached[1].refresh()
        return cached[1]

    @property
    def has_datastore(self) -> bool:
        return self.config.datastore is not None

    def close(self) -> None:
        if self._store is not None:
            try:
                self._store.close()
            except Exception:  # closing must never mask the real shutdown reason
                log.exception("closing the document store failed")
            self._store = None


def _server_class():
    """MCPServer whose argument errors are one caller-facing sentence (see validation.py)."""
    from mcp.server.mcpserver import MCPServer
    from mcp.server.mcpserver.exceptions import ToolError
    from pydantic import ValidationError

    from mcp_server.validation import describe

    class KnnragMCP(MCPServer):
        async def list_tools(self) -> Any:
            from mcp_server.schemas import compact_schema

            return [t.model_copy(update={"output_schema": compact_schema(t.output_schema)}) if t.output_schema else t
                    for t in await super().list_tools()]

        async def call_tool(self, name: str, arguments: dict[str, Any], context: Any = None) -> Any:
            try:
                return await super().call_tool(name, arguments, context)
            except ToolError as e:
                cause = e.__cause__
                if isinstance(cause, ValidationError) and str(e).startswith(f"Error executing tool {name}: "):
                    raise ToolError(describe(name, cause.errors(include_url=False))) from cause
                raise

    return KnnragMCP


def build_server(config: ServerConfig, *, state: ServerState | None = None):
    """The MCPServer with every tool and the chunk resource registered; nothing loaded yet."""
    import anyio

    from mcp_server import admin_tools, lm_tools, source_tools, tools, write_tools
    from mcp_server.watching import ServerWatch

    shared = state or ServerState(config)

    @asynccontextmanager
    async def lifespan(_server: Any) -> AsyncIterator[ServerState]:
        # Streamable HTTP enters this once per process; stdio once per connection.
        watch = ServerWatch(shared).start() if config.watch else None
        try:
            yield shared
        finally:
            if watch is not None:
                await anyio.to_thread.run_sync(watch.stop)
            if state is None:  # we own it
                shared.close()

    server = _server_class()(
        SERVER_NAME,
        title="knnrag: document RAG and kNN-LM",
        instructions=INSTRUCTIONS,
        version=_version(),
        lifespan=lifespan,
        log_level="WARNING",
    )
    for module in (tools, write_tools, admin_tools, lm_tools, source_tools):
        module.register(server)
    server.knnrag_state = shared  # the web page (mcp_server/web) serves from the same loaded store and models
    return server


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("knnrag")
    except Exception:
        return "0"


def run_stdio(config: ServerConfig) -> None:
    import anyio

    from mcp_server.stdio import serve_stdio

    anyio.run(serve_stdio, build_server(config))
