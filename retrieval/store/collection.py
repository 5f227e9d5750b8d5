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

import dataclasses
import json
import logging
import os
import shutil
import sqlite3
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import numpy as np

from retrieval.errors import CorruptStoreError, KnnragError, NotFoundError, StoreWriteError
from retrieval.index import bm25_index, vector_index
from retrieval.index.bm25_index import BM25Config, BM25Index
from retrieval.index.vector_index import IndexConfig
from retrieval.store import chunk_db
from retrieval.store.durable import (
    atomic_write_json,
    checkpoint,
    db_write_error,
    fsync_dir,
    fsync_tree,
    generation_write_error,
    read_json,
    write_error,
)
from retrieval.store.manifest import COLLECTION_FORMAT, check_collection, check_format, iter_generation_dirs, typed_config
from retrieval.store.open_collections import out_of_files
from retrieval.store.verify import FIX, check_sizes
from retrieval.store.verify import record as checksums
from retrieval.store.write_records import Changes, Snapshot

log = logging.getLogger(__name__)

MANIFEST, DB, GEN_RECORD = "manifest.json", "chunks.sqlite", "gen.json"
_INDEX_MIN = {"hnsw_threshold": 0, "hnsw_m": 2, "ef_construction": 1, "ef_search": 1, "nprobe": 1, "exact_fallback_max": 0,
              "rebuild_tombstone_fraction": 0.0}
_BM25_MIN = {"k1": 0.0, "b": 0.0}


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
        self.dim = int(check_collection(self.manifest, path)["dim"])
        self.index_config = typed_config(IndexConfig, self.manifest.get("index"), path, "index", _INDEX_MIN)
        if self.index_config.factory != "auto":
            try:
                vector_index.validate_factory(self.index_config.factory, self.dim)
            except KnnragError as e:
                raise CorruptStoreError(f"{path}: {e.message}", FIX) from e
        self.bm25_config = typed_config(BM25Config, bm25_index.legacy_section(self.manifest.get("bm25")), path, "bm25", _BM25_MIN)
        # the validated sections, so every reader of the manifest (search, stats) sees sound values
        self.manifest.update(index=self.index_config.to_dict(), bm25=self.bm25_config.to_dict())
        self._conn = chunk_db.connect(self.dir / DB, read_only=read_only)
        self._ino = os.stat(self.dir).st_ino  # a drop renames the folder away; a re-create makes a new one
        self._lock = threading.RLock()
        self._snap: Snapshot | None = None
        self._tokenizer: bm25_index.Tokenizer | None = None

    def same_folder(self) -> bool:
        """Is STORE/<name> still the folder this handle opened? (one stat: checked on every use)"""
        try:
            return os.stat(self.dir).st_ino == self._ino
        except OSError:
            return False

    @property
    def uid(self) -> str:
        """This incarnation's identity (manifest "uid"); "" for a collection made before uids, until its next write."""
        return str(self.manifest.get("uid") or "")

    # ----------------------------------------------------------------- reading
    def tokenizer(self) -> bm25_index.Tokenizer:
        if self._tokenizer is None:
            try:
                self._tokenizer = bm25_index.tokenizer_for(self.bm25_config)
            except (KeyError, ValueError) as e:  # PyStemmer: unknown stemming algorithm
                raise CorruptStoreError(f"collection {self.name!r}: BM25 stemmer {self.bm25_config.stemmer!r} is unknown: {e}", FIX) from e
        return self._tokenizer

    def _load(self, gen: int, *, mmap: bool = True) -> Snapshot:
        if gen == 0:
            return Snapshot(0, None)
        gdir = self.dir / f"gen-{gen}"
        if not gdir.is_dir():
            raise FileNotFoundError(gdir)
        try:
            meta = read_json(gdir / GEN_RECORD, "generation record")
            if "files" in meta:
                check_sizes(gdir, meta["files"])
            index = vector_index.read_index(gdir / "index.faiss", mmap=mmap)
            tomb = np.load(gdir / "tombstones.npy", allow_pickle=False)
            bm25 = bm25_index.load(gdir / "bm25", mmap=mmap)
        except (CorruptStoreError, OSError, ValueError) as e:
            if out_of_files(e, f"collection {self.name!r}"):
                raise out_of_files(e, f"collection {self.name!r}") from e  # type: ignore[misc]
            if not gdir.is_dir() or any(g > gen for g, _ in iter_generation_dirs(self.dir)):
                raise FileNotFoundError(gdir) from None  # a writer is garbage-collecting it: retry on the newer one
            if isinstance(e, CorruptStoreError):
                raise
            # a file of a generation that still exists is missing or unreadable: damage, not a race
            raise CorruptStoreError(f"collection {self.name!r}, generation {gen}: cannot read {getattr(e, 'filename', None) or gdir}: "
                                    f"{getattr(e, 'strerror', None) or e}", FIX) from e
        factory = meta.get("factory", "Flat")
        if index.d != self.dim or not isinstance(factory, str) or tomb.dtype != np.int64 or tomb.ndim != 1:
            raise CorruptStoreError(f"collection {self.name!r}, generation {gen}: the index (dim {index.d}) or tombstones "
                                    f"do not match the manifest (dim {self.dim})", FIX)
        if bm25_index.tokenizer_id(bm25.config) != bm25_index.tokenizer_id(self.bm25_config):
            raise CorruptStoreError(f"collection {self.name!r}: its BM25 index was tokenised with {bm25_index.tokenizer_id(bm25.config)}, "
                                    f"its manifest says {bm25_index.tokenizer_id(self.bm25_config)}", FIX)
        return Snapshot(gen, index, tomb, bm25, factory)

    def _begin(self) -> Snapshot:
        """Open a read transaction and return the snapshot matching it (retries if a writer just
        garbage-collected the generation we were about to load). A writer deletes a generation only
        after committing the next one, so a generation still committed on the retry is damage."""
        failed = None
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
                if gen == failed:
                    break
                failed = gen
                time.sleep(0.02 * (attempt + 1))
        raise CorruptStoreError(
            f"collection {self.name!r} names generation {gen} but {self.dir}/gen-{gen} is missing or incomplete",
            "the store was damaged outside knnrag; restore a backup, or delete the collection and re-index",
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
            self._check_chunker()
            self._gc(chunk_db.generation(conn))
            yield conn
        finally:
            conn.close()

    def _check_chunker(self) -> None:
        """The chunker section, validated where it is used: writes (a search never imports the chunker)."""
        from retrieval.ingest.chunking import ChunkerConfig

        chunker = typed_config(ChunkerConfig, self.manifest.get("chunker"), self.dir / MANIFEST, "chunker")
        self.manifest["chunker"] = dataclasses.asdict(chunker)

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
        next_id = int(chunk_db.get_meta(conn, "next_id") or 1)
        new_ids = np.arange(next_id, next_id + len(ch.rows), dtype=np.int64)  # (n,)
        remove = np.unique(np.asarray(ch.remove_ids, dtype=np.int64))  # (r,)
        old = self._current_for_write(conn, cur)
        n_live = conn.execute("SELECT count(*) FROM chunks").fetchone()[0] - len(remove) + len(new_ids)
        factory = vector_index.choose_factory(n_live, self.index_config)
        checkpoint("before_index")
        index, tomb = self._next_index(conn, old, cur, factory, remove, ch.xb.reshape(-1, self.dim), new_ids)
        bm25 = bm25_index.update(old.bm25, remove, new_ids, ch.tokens, self.bm25_config)
        gen = cur + 1
        gdir = self._write_generation(gen, index, tomb, bm25, {"factory": factory, "chunks": int(n_live)})
        checkpoint("before_commit")
        self._commit_rows(conn, gdir, ch, remove, new_ids, gen, next_id + len(new_ids))
        checkpoint("after_commit")
        try:
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
        except sqlite3.Error:
            pass
        self._gc(gen)
        with self._lock:
            self._snap = Snapshot(gen, index, tomb, bm25, factory)
        return new_ids.tolist()

    def _next_index(self, conn: sqlite3.Connection, old: Snapshot, cur: int, factory: str, remove: np.ndarray,
                    xb_new: np.ndarray, new_ids: np.ndarray) -> tuple[Any, np.ndarray]:
        """The FAISS index of the next generation and its tombstones: rebuilt from the stored vectors
        when the factory changes or HNSW tombstones pile up, else the current one updated."""
        cfg = self.index_config
        tomb = np.asarray(old.tombstones, dtype=np.int64)
        rebuild = (
            old.index is None
            or factory != old.factory
            or (not vector_index.supports_remove(old.index)
                and (len(tomb) + len(remove)) > cfg.rebuild_tombstone_fraction * max(1, old.index.ntotal))
        )
        if rebuild:
            ids_all, xb_all = chunk_db.all_vectors(conn, self.dim)  # (N,), (N, D)
            keep = ~np.isin(ids_all, remove)
            index = vector_index.build_index(np.concatenate([xb_all[keep], xb_new]), np.concatenate([ids_all[keep], new_ids]), factory, cfg)
            return index, np.zeros(0, np.int64)
        # a private, writable copy read from disk (the snapshot's index may be memory-mapped read-only)
        index = vector_index.read_index(self.dir / f"gen-{cur}" / "index.faiss", mmap=False)
        if vector_index.supports_remove(index):
            vector_index.remove_vectors(index, remove)
        else:
            tomb = np.union1d(tomb, remove)
        vector_index.add_vectors(index, xb_new, new_ids)
        return index, tomb

    def _write_generation(self, gen: int, index: Any, tomb: np.ndarray, bm25: BM25Index, record: dict) -> Path:
        """gen-<gen>/ complete and fsync'ed, with the size and sha256 of every file in gen.json. Any
        failure (FAISS reports a full disk as RuntimeError) removes the partial folder."""
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
            with ThreadPoolExecutor(1) as pool:  # hashing (CPU, GIL released) overlaps the fsyncs (I/O)
                files = pool.submit(checksums, gdir)
                fsync_tree(gdir)
                record = {"generation": gen, **record, "vectors": int(index.ntotal), "tombstones": int(len(tomb)),
                          "created": time.time(), "files": files.result()}
            with open(gdir / GEN_RECORD, "w", encoding="utf-8") as f:
                f.write(json.dumps(record, indent=2))
                f.flush()
                os.fsync(f.fileno())
            fsync_dir(gdir)
            fsync_dir(self.dir)
        except (OSError, RuntimeError) as e:
            shutil.rmtree(gdir, ignore_errors=True)
            raise generation_write_error(gdir, e) from e
        except BaseException:
            shutil.rmtree(gdir, ignore_errors=True)
            raise
        return gdir

    def _commit_rows(self, conn: sqlite3.Connection, gdir: Path, ch: Changes, remove: np.ndarray, new_ids: np.ndarray, gen: int,
                     next_id: int) -> None:
        """One SQLite transaction: the rows, and meta.generation pointing at `gdir` (the commit point)."""
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                chunk_db.delete_chunks(conn, remove.tolist())
                chunk_db.delete_sources(conn, ch.delete_sources)
                chunk_db.insert_chunks(conn, ch.rows, new_ids, ch.xb.reshape(-1, self.dim))
                chunk_db.upsert_sources(conn, ch.upsert_sources)
                chunk_db.set_meta(conn, "generation", gen)
                chunk_db.set_meta(conn, "next_id", next_id)
                checkpoint("in_transaction")
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:  # SQLITE_FULL and friends roll back by themselves
                    try:
                        conn.execute("ROLLBACK")
                    except sqlite3.Error:
                        pass  # the error that got us here is the one to report
                raise
        except (sqlite3.Error, OSError) as e:
            shutil.rmtree(gdir, ignore_errors=True)
            if isinstance(e, sqlite3.IntegrityError):
                raise
            raise db_write_error(self.dir / DB, e) from e
        except BaseException:
            shutil.rmtree(gdir, ignore_errors=True)
            raise

    # ----------------------------------------------------------------- info
    def verify(self, *, checksums: bool = True) -> dict:
        """Check that FAISS, BM25 and the SQLite rows of the committed generation agree and (with
        `checksums`) that every generation file still has the sha256 recorded at commit; raises
        CorruptStoreError naming every problem found."""
        from retrieval.store.verify import check_collection

        report = check_collection(self, checksums=checksums)
        if report["problems"]:
            raise CorruptStoreError(f"collection {self.name!r} is inconsistent: " + "; ".join(report["problems"]), FIX)
        return report

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
                "bm25_terms": len(snap.bm25.vocab) if snap.bm25 is not None else 0, "bm25": self.manifest["bm25"],
                "generation": snap.generation,
                "chunker": self.manifest.get("chunker", {}),
                "disk_bytes": disk,
                "path": str(self.dir),
            }

    def close(self) -> None:
        with self._lock, suppress(sqlite3.Error):
            self._snap = None
            self._conn.close()
