"""What `knnrag serve` decided (ServerConfig) and what it opened (ServerState), shared by every tool.

Its own module so that the tools' shared helpers (tool_support) can name the state's type without
importing the server module that registers them.
"""
from __future__ import annotations

import logging
import math
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from mcp_server.jobs import JobRegistry
from mcp_server.locks import Gate, WriteLock
from retrieval.errors import InvalidInputError

if TYPE_CHECKING:
    from lm.knnlm import KNNLM
    from lm.models import LoadedLM
    from retrieval.store.docstore import DocStore

log = logging.getLogger("knnrag.mcp")


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
    _store: DocStore | None = None
    _knnlm: KNNLM | None = None
    _ask_knnlms: dict[str, tuple[int, KNNLM]] = field(default_factory=dict)  # collection -> (datastore manifest mtime, KNNLM)
    _store_lock: threading.Lock = field(default_factory=threading.Lock)
    _lm_load_lock: threading.Lock = field(default_factory=threading.Lock)
    lm_lock: threading.Lock = field(default_factory=threading.Lock)
    write: WriteLock = field(default_factory=WriteLock)
    gate: Gate = field(default_factory=Gate)
    jobs: JobRegistry = field(default_factory=JobRegistry)

    def store(self) -> DocStore:
        if self._store is None:
            with self._store_lock:
                if self._store is None:
                    from retrieval.store.docstore import DocStore

                    log.info("opening document store %s", self.config.store)
                    self._store = DocStore.open(self.config.store, embedder=self.config.embedder, create=True)
        return self._store

    def knnlm(self) -> KNNLM:
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
                    self._knnlm = knn
        if self.config.datastore is not None:
            self._knnlm.refresh()  # deletes committed since (by any process) are masked at once
        return self._knnlm

    def lm(self) -> LoadedLM:
        return self.knnlm().lm

    def ask_knnlm(self, collection: str) -> KNNLM:
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
