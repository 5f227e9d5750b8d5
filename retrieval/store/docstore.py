"""DocStore: the document store's Python API (add / index / search / get / delete / stats).

A store is a directory: STORE/store.json, STORE/write.lock and one folder per collection (see
retrieval/store/collection.py for the on-disk layout and the atomic commit protocol). Opening a store
loads no model: the embedder is loaded on the first search or write, and a search embeds its
query with `embed_query` (numpy BERT, no torch).

    with DocStore.open("my-store") as store:
        store.index_paths(["docs/"])
        for hit in store.search("how do I install it?", k=5):
            print(hit.source, hit.start_line, hit.score)
"""
from __future__ import annotations

import logging
import os
import re
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from retrieval.errors import InvalidInputError, MismatchError, NotFoundError, StoreWriteError
from retrieval.index.bm25_index import BM25Config
from retrieval.index.fusion import FusionConfig
from retrieval.index.vector_index import IndexConfig, validate_factory
from retrieval.store import chunk_db
from retrieval.store import search as _search
from retrieval.store.collection import Changes, Collection
from retrieval.store.collection import create as create_collection
from retrieval.store.durable import WriterLock, atomic_write_json, probe_writable, read_json, write_error
from retrieval.store.indexing import IndexOptions, IndexReport, run_index, text_rows
from retrieval.store.manifest import STORE_FORMAT, check_format, new_collection_manifest, new_store_manifest
from retrieval.store.open_collections import OpenCollections
from retrieval.store.search import MAX_K, MODES, Hit, SearchRequest
from retrieval.store.source_paths import expand
from retrieval.store.threads import BlasThreads
from retrieval.types import LiveChunks

log = logging.getLogger(__name__)

__all__ = ["DocStore", "Hit", "IndexReport", "LiveChunks", "FusionConfig", "SearchRequest", "MAX_K", "MODES"]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")


def _check_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise InvalidInputError(f"invalid collection name {name!r}", "use letters, digits, '-' and '_' (at most 64), e.g. 'docs'")
    return name


class DocStore:
    """A directory of collections. Thread-safe: searches see the last committed snapshot while a
    write is in progress; one writer at a time per store (across processes too)."""

    def __init__(self, path: Path, embedder: Any, read_only: bool, fusion: FusionConfig) -> None:
        self.path = path
        self.read_only = read_only
        self.fusion = fusion
        self._embedder_arg = embedder
        self._embedders: dict[str, Any] = {}
        self._collections: OpenCollections = OpenCollections()
        self._lock = threading.RLock()
        self._write_problem: StoreWriteError | None = None
        self._threads = BlasThreads()  # small jobs on 1 BLAS thread (retrieval/store/threads.py)

    # ----------------------------------------------------------------- open / close
    @classmethod
    def open(
        cls, path: str | os.PathLike, *, embedder: Any = None, create: bool = True, read_only: bool = False,
        fusion: FusionConfig | None = None,
    ) -> DocStore:
        """Open (or create) a store. `embedder`: an Embedder, a spec for load_embedder, or None to use
        the one each collection was built with (the bundled MiniLM for new collections)."""
        p = Path(path).expanduser()
        manifest = p / "store.json"
        if p.exists() and not p.is_dir():
            raise InvalidInputError(f"{p} is a file, not a store directory", "pass a directory for --store")
        if not manifest.exists():
            if read_only or not create:
                raise NotFoundError(f"no knnrag store at {p}", "create one with `knnrag index PATH --store DIR`")
            if p.exists() and any(x for x in p.iterdir() if not x.name.startswith(".")):
                raise InvalidInputError(f"{p} exists and is not a knnrag store (no store.json)", "choose a new or empty directory for --store")
            try:
                p.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise write_error(p, e) from e
            atomic_write_json(manifest, new_store_manifest())
        check_format(read_json(manifest, "store manifest"), STORE_FORMAT, manifest)
        store = cls(p, embedder, read_only, fusion or FusionConfig())
        if not read_only:
            store._write_problem = probe_writable(p)
            store.read_only = store._write_problem is not None
        if not store.read_only:
            from retrieval.store.admin import recover_drops

            recover_drops(store)  # a drop killed half-way is finished before anyone reads
        return store

    def close(self) -> None:
        with self._lock:
            self._collections.close_all()

    def __enter__(self) -> DocStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----------------------------------------------------------------- collections
    def _names(self) -> list[str]:
        # only valid names: a hidden folder (an interrupted drop's trash, a sidecar) is never a collection
        return sorted(d.name for d in self.path.iterdir()
                      if _NAME.match(d.name) and d.is_dir() and (d / "manifest.json").exists())

    def collection(self, name: str = "default") -> Collection:
        with self._lock:
            c = self._collections.get(name)
            if c is not None and not c.same_folder():  # dropped (and maybe re-created) by another process
                c.close()
                del self._collections[name]
                c = None
            if c is None:
                _check_name(name)
                if not (self.path / name / "manifest.json").exists():
                    names = self._names()
                    raise NotFoundError(
                        f"collection {name!r} not found in {self.path}" + (f"; it has: {', '.join(names)}" if names else "; the store is empty"),
                        f"use --collection {names[0]}" if names else "index something first: knnrag index PATH --store DIR",
                    )
                c = self._collections[name] = Collection(self.path, name, read_only=self.read_only)
                if self._embedder_arg is not None and not isinstance(self._embedder_arg, str):
                    self._check_embedder(c, self._embedder_arg)
            return c

    def list_collections(self) -> list[dict]:
        out = []
        for name in self._names():
            i = self.collection(name).info()
            out.append({k: i[k] for k in ("name", "chunks", "sources", "embedder", "dim", "index_type")})
        return out

    def _ensure_collection(self, name: str, index_factory: str | None) -> Collection:
        _check_name(name)
        if not (self.path / name / "manifest.json").exists():
            from retrieval.embed.embedder import content_budget
            from retrieval.ingest.chunking import ChunkerConfig

            emb = self._load_embedder(self._embedder_arg)
            factory = index_factory or "auto"
            validate_factory(factory, emb.dim)
            spec = self._embedder_arg if isinstance(self._embedder_arg, str) else (None if self._embedder_arg is None else emb.model_id)
            manifest = new_collection_manifest(
                name,
                {"model_id": emb.model_id, "spec": spec, "dim": int(emb.dim), "max_tokens": int(emb.max_tokens)},
                asdict(ChunkerConfig(max_tokens=content_budget(emb))),
                IndexConfig(factory=factory).to_dict(),
                BM25Config().to_dict(),
            )
            create_collection(self.path, name, manifest)
        c = self.collection(name)
        if index_factory and index_factory != c.index_config.factory:
            validate_factory(index_factory, c.dim)
            c.manifest["index"]["factory"] = index_factory
            atomic_write_json(c.dir / "manifest.json", c.manifest)
            c.index_config = IndexConfig.from_dict(c.manifest["index"])
        return c

    # ----------------------------------------------------------------- embedders
    def _load_embedder(self, spec: Any):
        if spec is not None and not isinstance(spec, str):
            return spec
        key = spec or "default"
        with self._lock:
            if key not in self._embedders:
                from retrieval.embed.embedder import load_embedder

                self._embedders[key] = load_embedder(spec)
            return self._embedders[key]

    def _check_embedder(self, c: Collection, emb: Any) -> None:
        built = c.manifest["embedder"]
        if emb.model_id != built["model_id"] or int(emb.dim) != int(built["dim"]):
            raise MismatchError(
                f"collection {c.name!r} was built with embedder {built['model_id']} (dim {built['dim']}), "
                f"not {emb.model_id} (dim {emb.dim})",
                f"search it without --embedder (uses {built['model_id'].split('@')[0]}), or index into a new "
                "collection (--collection NAME) or store to use another model",
            )

    def embedder_for(self, c: Collection):
        """The collection's embedder, loaded on first use and checked against the manifest."""
        built = c.manifest["embedder"]
        emb = self._load_embedder(self._embedder_arg if self._embedder_arg is not None else (built.get("spec") or built["model_id"]))
        self._check_embedder(c, emb)
        return emb

    # ----------------------------------------------------------------- writes
    @contextmanager
    def _writing(self, collection: str, index_factory: str | None = None) -> Iterator[tuple[Collection, Any]]:
        if self._write_problem is not None:
            raise self._write_problem
        if self.read_only:
            raise StoreWriteError(f"the store {self.path} was opened read-only", "open it without read_only to write")
        with WriterLock(self.path):
            c = self._ensure_collection(collection, index_factory)
            if not c.manifest.get("uid"):  # made before collections had one: give it one now, once
                import uuid

                c.manifest["uid"] = uuid.uuid4().hex
                atomic_write_json(c.dir / "manifest.json", c.manifest)
            with c.writer() as conn:
                yield c, conn

    def index_paths(
        self, paths: Sequence[str | os.PathLike], *, collection: str = "default", exclude: Sequence[str] = (),
        tags: Sequence[str] = (), progress: Callable[[int, int, str], None] | None = None, show_progress: bool = False,
        index_factory: str | None = None, force: bool = False, near_dup_threshold: float | None = 0.9,
        max_file_bytes: int = 20_000_000, confine_to: Sequence[str | os.PathLike] | None = None, documents: Any = None,
        missing_ok: bool = False,
    ) -> IndexReport:
        """Index files and folders incrementally. `confine_to`: a remote caller's allowed roots, checked
        on each opened file (one swapped for a symlink mid-walk is never read); `documents`: DocumentOptions.
        `missing_ok`: a path that no longer exists is a deletion (its sources leave the collection)."""
        if isinstance(paths, (str, os.PathLike)):
            paths = [paths]
        with self._writing(collection, index_factory) as (c, conn):
            emb = self.embedder_for(c)
            opts = IndexOptions(exclude=tuple(exclude), tags=tuple(tags), force=force, near_dup_threshold=near_dup_threshold,
                                max_file_bytes=max_file_bytes, show_progress=show_progress, missing_ok=missing_ok,
                                confine_to=None if confine_to is None else tuple(os.fspath(r) for r in confine_to), documents=documents)
            rep = run_index(c, conn, emb, [os.fspath(p) for p in paths], opts, progress=progress, limit_threads=self._threads.limit)
        kept = c.manifest.get("fusion") or {}
        if kept.get("applied") and rep.chunks_added and c.info()["chunks"] >= kept.get("regrow", 2.0) * kept["at_chunks"]:
            from retrieval.store.calibrate import CalibrationConfig

            log.info("collection %s grew past %s x its calibration size: re-calibrating its fusion", c.name, kept["regrow"])
            self.calibrate_fusion(collection, CalibrationConfig(seed=kept.get("seed", 0), regrow=kept.get("regrow", 2.0), apply=True))
        return rep

    def calibrate_fusion(self, collection: str = "default", config: Any = None) -> dict:
        """Tune the collection's hybrid fusion on pseudo-queries from its own text (see
        retrieval/store/calibrate.py) and record the outcome in its manifest ("fusion"). Searches use
        it only with config.apply and when it beat the default there: it lost on SciFact and CACM."""
        from retrieval.store import calibrate

        entry = calibrate.run(self, self.collection(collection), config or calibrate.CalibrationConfig())
        with self._writing(collection) as (c, _):
            c.manifest["fusion"] = entry
            atomic_write_json(c.dir / "manifest.json", c.manifest)
        return entry

    def add_texts(
        self, texts: Sequence[str], metadatas: Sequence[dict] | None = None, ids: Sequence[str] | None = None, *,
        collection: str = "default", index_factory: str | None = None,
    ) -> list[str]:
        """Add raw texts (one chunk each). Given ids replace existing chunks with the same id.
        Metadata keys source, kind, heading, doc_id and tags fill the hit fields of the same name."""
        texts = list(texts)
        if metadatas is not None and len(metadatas) != len(texts):
            raise InvalidInputError(f"{len(metadatas)} metadatas for {len(texts)} texts", "pass one metadata dict per text")
        given = [str(i) for i in ids if i is not None] if ids is not None else []
        if ids is not None and (len(ids) != len(texts) or len(set(given)) != len(given)):
            raise InvalidInputError("ids must be unique and one per text", "pass one distinct id per text (None: assign one), or none")
        if any(not isinstance(t, str) for t in texts):
            raise InvalidInputError("every text must be a string", "convert your documents to str first")
        if not texts:
            return []
        with self._writing(collection, index_factory) as (c, conn):
            emb = self.embedder_for(c)
            rows = text_rows(texts, metadatas, ids)
            replaced = list(chunk_db.resolve_ids(conn, [r["ext_id"] for r in rows if r["ext_id"]]).values()) if ids is not None else []
            chunk_db.reserve_ids(conn, given)
            xb = emb.embed([r["index_text"] for r in rows])  # (n, D)
            tokens = [c.tokenizer()(r["index_text"], r["kind"] == "code") for r in rows]  # identifier parts for code only
            new_ids = c.commit(conn, Changes(np.asarray(replaced, np.int64), rows, np.asarray(xb, np.float32), tokens))
            return [r["ext_id"] or str(i) for r, i in zip(rows, new_ids)]

    def delete(self, *, sources: Sequence[str] | None = None, ids: Sequence[str] | None = None, collection: str = "default") -> dict:
        """Delete chunks by source path (exact, folder prefix or glob) and/or by id: vectors, rows and
        BM25 entries go together in one commit."""
        if not sources and not ids:
            raise InvalidInputError("nothing to delete", "pass --source PATH or --id ID")
        self.collection(collection)  # NotFoundError before taking the lock
        with self._writing(collection) as (c, conn):
            rm: set[int] = set()
            src_rows: list[str] = []
            for s in expand(str(x) for x in sources or []):  # as typed, and the stored spellings it means
                s = s.rstrip("/") or s
                rm.update(r[0] for r in conn.execute("SELECT id FROM chunks WHERE knn_glob(?, source)", (s,)))
                src_rows += [r[0] for r in conn.execute("SELECT source FROM sources WHERE knn_glob(?, source)", (s,))]
            if ids:
                rm.update(chunk_db.resolve_ids(conn, [str(i) for i in ids]).values())
            c.commit(conn, Changes(np.asarray(sorted(rm), np.int64), [], np.zeros((0, c.dim), np.float32), [], [], sorted(set(src_rows))))
            return {"removed_chunks": len(rm), "removed_sources": len(set(src_rows))}

    # ----------------------------------------------------------------- reads
    def search(self, query: str, request: SearchRequest | None = None, **settings: Any) -> list[Hit]:
        """Top-k chunks for `query`. Settings: a SearchRequest, or its fields as keywords (k, mode,
        filters, collection, mmr, mmr_lambda, min_score, fusion). Filters (source glob, kind, tags,
        doc_id, any metadata key; operators as in store/filters.py) apply before ranking."""
        return self._run([query], _search.as_request(request, settings), single=True)[0]

    def search_batch(self, queries: Sequence[str], request: SearchRequest | None = None, **settings: Any) -> list[list[Hit]]:
        """Many queries with the same settings; the queries are embedded in one batch."""
        return self._run(list(queries), _search.as_request(request, settings), single=len(queries) == 1)

    def search_by_vector(self, vector: Sequence[float], request: SearchRequest | None = None, **settings: Any) -> list[Hit]:
        """Dense search with a query vector you embedded yourself (same model as the collection)."""
        req = _search.as_request(request, settings).with_(mode="dense")
        c = self.collection(req.collection)
        xq = np.asarray(vector, dtype=np.float32).reshape(1, -1)  # (1, D)
        if xq.shape[1] != c.dim:
            raise MismatchError(f"query vector has dimension {xq.shape[1]}, collection {req.collection!r} has {c.dim}",
                                f"embed the query with {c.manifest['embedder']['model_id']}")
        with c.reading() as (conn, snap):
            return _search.search_one(self._scope(c, conn, snap, req), req, "", xq)

    def fusion_for(self, c: Collection, req: SearchRequest | None = None) -> FusionConfig:
        """The fusion in force: the request's, else the one the collection calibrated and kept
        (manifest "fusion"), else the store's default."""
        if req is not None and req.fusion is not None:
            return req.fusion
        kept = c.manifest.get("fusion")
        if kept and kept.get("config"):
            return FusionConfig(**{k: v for k, v in kept["config"].items() if k in FusionConfig.__dataclass_fields__})
        return self.fusion

    def _scope(self, c: Collection, conn: Any, snap: Any, req: SearchRequest) -> _search.Scope:
        filters = dict(req.filters) if req.filters else None
        if filters and isinstance(filters.get("source"), (str, list, tuple)):  # a path as the user sees it
            given = [filters["source"]] if isinstance(filters["source"], str) else list(filters["source"])
            filters["source"] = expand(str(g) for g in given)
        return _search.Scope(c, conn, snap, chunk_db.filter_ids(conn, filters, snap.cache), self.fusion_for(c, req),
                             _search.has_doc_ids(conn, snap))

    def _run(self, queries: list[str], req: SearchRequest, single: bool, xq: np.ndarray | None = None) -> list[list[Hit]]:
        queries = [_search.clean_query(q) for q in queries]
        c = self.collection(req.collection)
        # One query: everything on one BLAS thread. Two-thread BLAS calls on a 2-core box fight
        # onnxruntime's spinning workers both ways (measured: embed 8.3 + scan 3.0 ms vs 4.8 + 1.5 ms).
        with self._threads.limit(1) if single else nullcontext():
            if xq is None and (req.mode != "bm25" or req.mmr):
                emb = self.embedder_for(c)
                if single:
                    xq = np.asarray(emb.embed_query(queries[0]), np.float32).reshape(1, -1)  # (1, D)
                else:
                    xq = np.asarray(emb.embed(queries), np.float32)  # (nq, D)
            with c.reading() as (conn, snap):
                sc = self._scope(c, conn, snap, req)
                return [_search.search_one(sc, req, q, None if xq is None else xq[i : i + 1]) for i, q in enumerate(queries)]

    def live_chunks(self, collection: str = "default") -> LiveChunks:
        """Every live chunk's id and text, with the collection's uid and generation: what a derived
        index keyed by chunk id (lm's kNN datastore) compares itself with to drop what is gone."""
        c = self.collection(collection)
        with c.reading() as (conn, snap):
            return LiveChunks(c.uid, snap.generation, chunk_db.live_texts(conn))

    def get(self, ids: Sequence[str], *, collection: str = "default") -> list[Hit]:
        """Chunks by id (unknown ids are left out), score 0."""
        return _search.get_hits(self.collection(collection), [str(i) for i in ids])

    def list_sources(self, collection: str = "default", *, limit: int = 100, offset: int = 0, source: str | None = None) -> dict:
        """The indexed files, by path: chunks, kind, pages, tags, when indexed (see store/listing.py)."""
        from retrieval.store.listing import list_sources

        with self.collection(collection).reading() as (conn, snap):
            return list_sources(conn, limit=limit, offset=offset, source=source) | {"collection": collection, "generation": snap.generation}

    def verify(self, collection: str = "default") -> dict:
        """Check that vectors, rows and BM25 entries of the committed state agree (CorruptStoreError if not)."""
        return self.collection(collection).verify()

    def _info(self, name: str) -> dict:
        c = self.collection(name)
        kept = c.manifest.get("fusion") or {}
        return {**c.info(), "fusion": {"source": kept.get("source", "default"), **asdict(self.fusion_for(c)),
                                       "calibration": kept or None}}

    def stats(self, collection: str | None = None) -> dict:
        if collection is not None:
            return self._info(collection)
        cols = [self._info(n) for n in self._names()]
        return {"store": str(self.path), "collections": cols, "chunks": sum(c["chunks"] for c in cols),
                "disk_bytes": sum(c["disk_bytes"] for c in cols), "read_only": self.read_only}
