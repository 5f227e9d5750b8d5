"""One collection on disk and its atomic commit protocol.

Layout: STORE/<name>/manifest.json, chunks.sqlite (rows, vectors, meta.generation) and
gen-<N>/ (index.faiss, tombstones.npy, bm25/, gen.json). A commit:
  1. builds the next FAISS index and BM25 in a fresh gen-<N+1>/ and fsyncs every file and dir;
  2. in ONE SQLite transaction updates the rows and sets meta.generation = N+1;
  3. only then deletes the older gen-*/ directories.
A kill before step 2 commits leaves gen-<N> and the rows of N; a kill after leaves N+1 complete.
Readers read meta.generation inside a read transaction, so rows and index always match.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from retrieval.errors import CorruptStoreError, NotFoundError, StoreWriteError
from retrieval.index import bm25_index, vector_index
from retrieval.index.bm25_index import BM25Config, BM25Index
from retrieval.index.vector_index import IndexConfig
from retrieval.store import chunk_db
from retrieval.store.durable import atomic_write_json, checkpoint, fsync_dir, fsync_tree, read_json, write_error
from retrieval.store.manifest import COLLECTION_FORMAT, check_format, iter_generation_dirs

log = logging.getLogger(__name__)

MANIFEST, DB = "manifest.json", "chunks.sqlite"


@dataclass
class Snapshot:
    """Everything a reader needs from one committed generation (FAISS and BM25 memory-mapped)."""

    generation: int
    index: Any | None  # faiss.IndexIDMap2
    tombstones: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # (t,) sorted ids deleted from HNSW
    bm25: BM25Index | None = None
    factory: str = "Flat"
    cache: dict = field(default_factory=dict, repr=False, compare=False)  # derived read-side arrays of this generation


@dataclass
class Changes:
    """What one commit does to a collection."""

    remove_ids: np.ndarray  # (r,) chunk row ids to delete
    rows: list[dict]  # new chunk rows (chunk_db.insert_chunks fields)
    xb: np.ndarray  # (n, D) their vectors
    tokens: list[list[str]]  # their BM25 tokens
    upsert_sources: list[dict] = field(default_factory=list)
    delete_sources: list[str] = field(default_factory=list)

    def empty(self) -> bool:
        return not len(self.remove_ids) and not self.rows and not self.upsert_sources and not self.delete_sources


def create(store_dir: Path, name: str, manifest: dict) -> None:
    """Create a collection atomically: build it in a temp dir, then rename it into place."""
    tmp = store_dir / f".tmp-{name}-{os.getpid()}-{threading.get_ident()}"
    try:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        conn = chunk_db.connect(tmp / DB)
        chunk_db.create_schema(conn)
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        conn.close()
        atomic_write_json(tmp / MANIFEST, manifest)
        fsync_tree(tmp)
        os.rename(tmp, store_dir / name)
        fsync_dir(store_dir)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise write_error(store_dir, e) from e


class Collection:
    """Stateful handle on one collection: a reader connection, the loaded snapshot, commits."""

    def __init__(self, store_dir: Path, name: str, *, read_only: bool) -> None:
        self.name = name
        self.dir = store_dir / name
        self.read_only = read_only
        path = self.dir / MANIFEST
        if not path.exists():
            raise NotFoundError(f"collection {name!r} not found in {store_dir}", "run `knnrag collections` to list them")
        self.manifest = read_json(path, "collection manifest")
        check_format(self.manifest, COLLECTION_FORMAT, path)
        self.dim = int(self.manifest["embedder"]["dim"])
        self.index_config = IndexConfig.from_dict(self.manifest.get("index", {}))
        b = self.manifest.get("bm25", {})
        self.bm25_config = BM25Config(**{k: b[k] for k in BM25Config.__dataclass_fields__ if k in b})
        self._conn = chunk_db.connect(self.dir / DB, read_only=read_only)
        self._lock = threading.RLock()
        self._snap: Snapshot | None = None
        self._tokenizer = None

    # ----------------------------------------------------------------- reading
    def tokenizer(self) -> bm25_index.Tokenizer:
        if self._tokenizer is None:
            self._tokenizer = bm25_index.tokenizer_for(self.bm25_config)
        return self._tokenizer

    def _load(self, gen: int, *, mmap: bool = True) -> Snapshot:
        if gen == 0:
            return Snapshot(0, None)
        gdir = self.dir / f"gen-{gen}"
        if not gdir.is_dir():
            raise FileNotFoundError(gdir)
        try:
            meta = read_json(gdir / "gen.json", "generation record")
            index = vector_index.read_index(gdir / "index.faiss", mmap=mmap)
            tomb = np.load(gdir / "tombstones.npy", allow_pickle=False)
            bm25 = bm25_index.load(gdir / "bm25", mmap=mmap)
        except (CorruptStoreError, OSError):
            if not gdir.is_dir():  # a writer garbage-collected it while we read: retry on the newer one
                raise FileNotFoundError(gdir) from None
            raise
        return Snapshot(gen, index, tomb, bm25, meta.get("factory", "Flat"))

    def _begin(self) -> Snapshot:
        """Open a read transaction and return the snapshot matching it (retries if a writer just
        garbage-collected the generation we were about to load)."""
        for attempt in range(50):
            self._conn.execute("BEGIN")
            gen = chunk_db.generation(self._conn)
            if self._snap is not None and self._snap.generation == gen:
                return self._snap
            try:
                self._snap = self._load(gen)
                return self._snap
            except FileNotFoundError:
                self._conn.execute("COMMIT")
                time.sleep(0.02 * (attempt + 1))
        raise CorruptStoreError(
            f"collection {self.name!r} names generation {gen} but {self.dir}/gen-{gen} is missing",
            "the store was damaged outside knnrag; delete the collection and re-index",
        )

    @contextmanager
    def reading(self) -> Iterator[tuple[sqlite3.Connection, Snapshot]]:
        with self._lock:
            snap = self._begin()
            try:
                yield self._conn, snap
            finally:
                self._conn.execute("COMMIT")

    # ----------------------------------------------------------------- writing
    @contextmanager
    def writer(self) -> Iterator[sqlite3.Connection]:
        """A writer connection (caller holds the store's WriterLock). Leftovers of crashed writers
        (uncommitted gen dirs) are removed first."""
        if self.read_only:
            raise StoreWriteError("the store was opened read-only", "open it without read_only / --read-only to write")
        try:
            conn = chunk_db.connect(self.dir / DB)
        except sqlite3.OperationalError as e:
            raise write_error(self.dir, e) from e  # type: ignore[arg-type]
        try:
            self._gc(chunk_db.generation(conn))
            yield conn
        finally:
            conn.close()

    def _gc(self, keep: int) -> None:
        for gen, path in iter_generation_dirs(self.dir):
            if gen != keep:
                shutil.rmtree(path, ignore_errors=True)

    def _current_for_write(self, conn: sqlite3.Connection, gen: int) -> Snapshot:
        snap = self._snap
        if snap is None or snap.generation != gen:
            snap = self._load(gen)
        return snap

    def commit(self, conn: sqlite3.Connection, ch: Changes) -> list[int]:
        """Apply `ch` atomically; returns the new chunk row ids. No-op (no new generation) if empty."""
        if ch.empty():
            return []
        cur = chunk_db.generation(conn)
        next_id = int(chunk_db.get_meta(conn, "next_id", "1"))
        new_ids = np.arange(next_id, next_id + len(ch.rows), dtype=np.int64)  # (n,)
        remove = np.unique(np.asarray(ch.remove_ids, dtype=np.int64))  # (r,)
        old = self._current_for_write(conn, cur)
        n_live = conn.execute("SELECT count(*) FROM chunks").fetchone()[0] - len(remove) + len(new_ids)
        cfg = self.index_config
        factory = vector_index.choose_factory(n_live, cfg)
        tomb = np.asarray(old.tombstones, dtype=np.int64)
        checkpoint("before_index")
        rebuild = (
            old.index is None
            or factory != old.factory
            or (not vector_index.supports_remove(old.index)
                and (len(tomb) + len(remove)) > cfg.rebuild_tombstone_fraction * max(1, old.index.ntotal))
        )
        if rebuild:
            ids_all, xb_all = chunk_db.all_vectors(conn, self.dim)  # (N,), (N, D)
            keep = ~np.isin(ids_all, remove)
            index = vector_index.build_index(
                np.concatenate([xb_all[keep], ch.xb.reshape(-1, self.dim)]), np.concatenate([ids_all[keep], new_ids]), factory, cfg
            )
            tomb = np.zeros(0, np.int64)
        else:
            # a private, writable copy read from disk (the snapshot's index may be memory-mapped read-only)
            index = vector_index.read_index(self.dir / f"gen-{cur}" / "index.faiss", mmap=False)
            if vector_index.supports_remove(index):
                vector_index.remove_vectors(index, remove)
            else:
                tomb = np.union1d(tomb, remove)
            vector_index.add_vectors(index, ch.xb.reshape(-1, self.dim), new_ids)
        bm25 = bm25_index.update(old.bm25, remove, new_ids, ch.tokens, self.bm25_config)

        gen = cur + 1
        gdir = self.dir / f"gen-{gen}"
        try:
            if gdir.exists():
                shutil.rmtree(gdir)
            gdir.mkdir()
            vector_index.write_index(index, gdir / "index.faiss")
            checkpoint("faiss_written")
            np.save(gdir / "tombstones.npy", tomb, allow_pickle=False)
            bm25_index.save(bm25, gdir / "bm25")
            checkpoint("bm25_written")
            record = {"generation": gen, "factory": factory, "vectors": int(index.ntotal), "tombstones": int(len(tomb)),
                      "chunks": int(n_live), "created": time.time()}
            (gdir / "gen.json").write_text(json.dumps(record, indent=2))
            fsync_tree(gdir)
            fsync_dir(self.dir)
        except OSError as e:
            shutil.rmtree(gdir, ignore_errors=True)
            raise write_error(gdir, e) from e
        checkpoint("before_commit")
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                chunk_db.delete_chunks(conn, remove.tolist())
                chunk_db.delete_sources(conn, ch.delete_sources)
                chunk_db.insert_chunks(conn, ch.rows, new_ids, ch.xb.reshape(-1, self.dim))
                chunk_db.upsert_sources(conn, ch.upsert_sources)
                chunk_db.set_meta(conn, "generation", gen)
                chunk_db.set_meta(conn, "next_id", int(next_id + len(new_ids)))
                checkpoint("in_transaction")
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        except (sqlite3.Error, OSError) as e:
            shutil.rmtree(gdir, ignore_errors=True)
            if isinstance(e, sqlite3.IntegrityError):
                raise
            raise StoreWriteError(f"cannot commit to {self.dir / DB}: {e}", "the last committed state is intact; check disk space and permissions") from e
        checkpoint("after_commit")
        try:
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
        except sqlite3.Error:
            pass
        self._gc(gen)
        with self._lock:
            self._snap = Snapshot(gen, index, tomb, bm25, factory)
        return new_ids.tolist()

    # ----------------------------------------------------------------- info
    def verify(self) -> dict:
        """Check that FAISS, BM25 and the SQLite rows of the committed generation agree (same chunk
        ids, same vectors); raises CorruptStoreError naming the first disagreement."""
        with self.reading() as (conn, snap):
            ids, xb = chunk_db.all_vectors(conn, self.dim)  # (N,), (N, D)
            problems = []
            if snap.index is None:
                if len(ids):
                    problems.append(f"{len(ids)} rows but no index")
            else:
                fids = vector_index.index_ids(snap.index)
                live = np.setdiff1d(fids, snap.tombstones)
                if len(live) != len(fids) - len(snap.tombstones) or not np.array_equal(np.sort(live), ids):
                    problems.append(f"FAISS holds {len(live)} live ids, SQLite {len(ids)} rows")
                elif len(ids):
                    try:
                        got = np.asarray(snap.index.reconstruct_batch(ids), np.float32)  # (N, D)
                    except RuntimeError:  # lossy or non-reconstructible factories: ids checked only
                        got = None
                    if got is not None and "Flat" in snap.factory and not np.allclose(got, xb, atol=1e-5):
                        problems.append("FAISS vectors differ from the stored vectors")
                if snap.bm25 is None or not np.array_equal(np.asarray(snap.bm25.ids), ids):
                    problems.append(f"BM25 holds {0 if snap.bm25 is None else snap.bm25.num_docs} rows, SQLite {len(ids)}")
            if problems:
                raise CorruptStoreError(f"collection {self.name!r} is inconsistent: " + "; ".join(problems), "re-index the collection")
            return {"collection": self.name, "generation": snap.generation, "chunks": int(len(ids)), "ok": True}

    def info(self) -> dict:
        with self.reading() as (conn, snap):
            c = chunk_db.counts(conn)
            n_src = conn.execute("SELECT count(*) FROM sources").fetchone()[0]
            disk = sum(p.stat().st_size for p in self.dir.rglob("*") if p.is_file())
            return {
                "name": self.name,
                "chunks": c["chunks"],
                "sources": c["sources"],
                "indexed_files": n_src,
                "doc_ids": c["doc_ids"],
                "kinds": c["kinds"],
                "embedder": self.manifest["embedder"]["model_id"],
                "dim": self.dim,
                "metric": self.manifest.get("metric", "inner_product"),
                "index_type": snap.factory if snap.index is not None else vector_index.choose_factory(0, self.index_config),
                "index_factory": self.index_config.factory,
                "vectors": int(snap.index.ntotal) if snap.index is not None else 0,
                "tombstones": int(len(snap.tombstones)),
                "bm25_terms": len(snap.bm25.vocab) if snap.bm25 is not None else 0,
                "generation": snap.generation,
                "chunker": self.manifest.get("chunker", {}),
                "disk_bytes": disk,
                "path": str(self.dir),
            }

    def close(self) -> None:
        with self._lock:
            try:
                self._conn.close()
            except sqlite3.Error:
                pass
            self._snap = None
