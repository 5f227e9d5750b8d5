"""SQLite (WAL) half of a collection: chunk rows, source files, vectors and the commit pointer.

Why SQLite holds the vectors too (fp32 blobs): incremental updates and deletes never re-embed
unchanged chunks, and any FAISS index can be rebuilt from the rows alone. `meta.generation` is the
single commit pointer: it names the gen-<N>/ directory whose FAISS and BM25 files match the rows.
"""
from __future__ import annotations

import fnmatch
import json
import os
import re
import sqlite3
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from retrieval.errors import CorruptStoreError
from retrieval.store.filters import allowed_ids

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS sources(
    source TEXT PRIMARY KEY, content_hash TEXT NOT NULL, kind TEXT, tags TEXT NOT NULL DEFAULT '[]',
    mtime REAL, size INTEGER, chunks INTEGER NOT NULL DEFAULT 0, indexed_at REAL);
CREATE TABLE IF NOT EXISTS chunks(
    id INTEGER PRIMARY KEY, ext_id TEXT UNIQUE, source TEXT NOT NULL, text TEXT NOT NULL,
    index_text TEXT NOT NULL, start_char INTEGER, end_char INTEGER, start_line INTEGER, end_line INTEGER,
    heading TEXT NOT NULL DEFAULT '', kind TEXT, doc_id TEXT, metadata TEXT NOT NULL DEFAULT '{}',
    content_hash TEXT, tags TEXT NOT NULL DEFAULT '[]', vec BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS chunks_source ON chunks(source);
CREATE INDEX IF NOT EXISTS chunks_doc ON chunks(doc_id);
CREATE INDEX IF NOT EXISTS chunks_hash ON chunks(content_hash);
"""

ROW_COLS = "id, ext_id, text, source, start_char, end_char, start_line, end_line, heading, kind, doc_id, metadata, tags"
_BATCH = 900


def _glob_match(pattern: str, source: str) -> int:
    """Path glob: fnmatch ('*' crosses '/'), or a directory prefix ('docs' matches 'docs/a.md')."""
    if fnmatch.fnmatchcase(source, pattern):
        return 1
    p = pattern.rstrip("/")
    return int(bool(p) and source.startswith(p + "/"))


def connect(db_path: Path, *, read_only: bool = False) -> sqlite3.Connection:
    """Autocommit connection (transactions are explicit). A read-only directory, where SQLite cannot
    create its -shm file, is opened immutable: nobody can write there anyway."""
    try:
        if read_only:
            conn = _connect_ro(db_path, immutable=not os.access(db_path.parent, os.W_OK))
        else:
            conn = sqlite3.connect(str(db_path), isolation_level=None, check_same_thread=False, timeout=30)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.create_function("knn_glob", 2, _glob_match, deterministic=True)
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.DatabaseError as e:
        raise CorruptStoreError(f"cannot open {db_path}: {e}", "the collection database is damaged; re-index into a new store") from e
    return conn


def _connect_ro(db_path: Path, *, immutable: bool) -> sqlite3.Connection:
    uri = f"file:{db_path}?mode=ro" + ("&immutable=1" if immutable else "")
    conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False, timeout=30)
    try:
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.OperationalError:
        conn.close()
        if immutable:
            raise
        return _connect_ro(db_path, immutable=True)  # e.g. root on an immutable or read-only mount
    return conn


def create_schema(conn: sqlite3.Connection) -> None:
    conn.executescript(SCHEMA)
    conn.execute("INSERT OR IGNORE INTO meta VALUES('generation', '0')")
    conn.execute("INSERT OR IGNORE INTO meta VALUES('next_id', '1')")


def get_meta(conn: sqlite3.Connection, key: str, default: str | None = None) -> str | None:
    row = conn.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
    return row[0] if row else default


def set_meta(conn: sqlite3.Connection, key: str, value: Any) -> None:
    conn.execute("INSERT INTO meta(key, value) VALUES(?, ?) ON CONFLICT(key) DO UPDATE SET value=excluded.value", (key, str(value)))


def generation(conn: sqlite3.Connection) -> int:
    try:
        return int(get_meta(conn, "generation", "0") or 0)
    except sqlite3.DatabaseError as e:
        raise CorruptStoreError(f"cannot read the collection database: {e}", "re-index into a new store") from e


def _batches(ids: Sequence[int]) -> Iterable[list[int]]:
    ids = [int(i) for i in ids]
    for i in range(0, len(ids), _BATCH):
        yield ids[i : i + _BATCH]


def fetch_rows(conn: sqlite3.Connection, ids: Sequence[int]) -> dict[int, tuple]:
    out: dict[int, tuple] = {}
    for b in _batches(ids):
        q = f"SELECT {ROW_COLS} FROM chunks WHERE id IN ({','.join('?' * len(b))})"
        for row in conn.execute(q, b):
            out[row[0]] = row
    return out


def fetch_vectors(conn: sqlite3.Connection, ids: Sequence[int], dim: int) -> np.ndarray:
    """Stored fp32 vectors of the given ids, in the given order. (n, D)"""
    got: dict[int, bytes] = {}
    for b in _batches(ids):
        for i, blob in conn.execute(f"SELECT id, vec FROM chunks WHERE id IN ({','.join('?' * len(b))})", b):
            got[i] = blob
    xb = np.zeros((len(ids), dim), dtype=np.float32)  # (n, D)
    for r, i in enumerate(ids):
        blob = got.get(int(i))
        if blob is not None:
            xb[r] = np.frombuffer(blob, dtype=np.float32)
    return xb


def all_vectors(conn: sqlite3.Connection, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """Every live chunk id (ascending) and its vector: the input of an index rebuild. (N,), (N, D)"""
    rows = conn.execute("SELECT id, vec FROM chunks ORDER BY id").fetchall()
    ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
    xb = np.frombuffer(b"".join(r[1] for r in rows), dtype=np.float32).reshape(len(rows), dim) if rows else np.zeros((0, dim), np.float32)
    return ids, xb


def all_index_texts(conn: sqlite3.Connection) -> tuple[np.ndarray, list[str]]:
    rows = conn.execute("SELECT id, index_text FROM chunks ORDER BY id").fetchall()
    return np.asarray([r[0] for r in rows], dtype=np.int64), [r[1] for r in rows]


# An assigned chunk id is its row id written in ASCII decimal, without sign or leading zero. Only that
# exact spelling names it: "03", "٣" (Arabic-Indic) or "３" (full width) are other, opaque ids, as is a
# number too long for a row id. 15 digits keep every assigned id far below int64 (FAISS ids).
_ASSIGNED = re.compile(r"[1-9][0-9]{0,14}")


def assigned_id(key: str) -> int | None:
    """The row id an id string spells when it is in the assigned form, else None."""
    return int(key) if _ASSIGNED.fullmatch(key) else None


def live_texts(conn: sqlite3.Connection) -> dict[str, str]:
    """Every live chunk's text, keyed by the id its hits carry (the external id, else the row id)."""
    return {str(ext or rid): text for rid, ext, text in conn.execute("SELECT id, ext_id, text FROM chunks")}


def resolve_ids(conn: sqlite3.Connection, ids: Sequence[str | int]) -> dict[str, int]:
    """Chunk ids (opaque strings: given by the user / LangChain, or assigned) -> row ids.

    A given id is looked up exactly; an assigned one ("17") names the row it was assigned to. The
    two never collide: a given id in the assigned form moves the next assigned id past it
    (`reserve_ids`)."""
    out: dict[str, int] = {}
    for s in ids:
        key = str(s)
        row = conn.execute("SELECT id FROM chunks WHERE ext_id=?", (key,)).fetchone()
        rid = assigned_id(key) if row is None else None
        if rid is not None:
            row = conn.execute("SELECT id FROM chunks WHERE id=? AND ext_id IS NULL", (rid,)).fetchone()
        if row is not None:
            out[key] = row[0]
    return out


def reserve_ids(conn: sqlite3.Connection, given: Sequence[str]) -> None:
    """Move meta.next_id past every given id in the assigned form, so no chunk is ever assigned the
    id another chunk was given (two chunks answering to chunk://c/2)."""
    top = max((n for n in map(assigned_id, given) if n is not None), default=0)
    if top >= int(get_meta(conn, "next_id") or 1):
        set_meta(conn, "next_id", top + 1)


def filter_ids(conn: sqlite3.Connection, filters: dict | None, cache: dict | None = None) -> np.ndarray | None:
    """Chunk ids matching a filter (None when there is none): see retrieval/store/filters.py."""
    return allowed_ids(conn, filters, cache)


def chunk_ids_of_sources(conn: sqlite3.Connection, sources: Sequence[str]) -> list[int]:
    out: list[int] = []
    for i in range(0, len(sources), _BATCH):
        b = list(sources[i : i + _BATCH])
        out += [r[0] for r in conn.execute(f"SELECT id FROM chunks WHERE source IN ({','.join('?' * len(b))})", b)]
    return out


def insert_chunks(conn: sqlite3.Connection, rows: list[dict], ids: np.ndarray, xb: np.ndarray) -> None:
    conn.executemany(
        "INSERT INTO chunks(id, ext_id, source, text, index_text, start_char, end_char, start_line, end_line, heading,"
        " kind, doc_id, metadata, content_hash, tags, vec) VALUES(?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
        [
            (int(i), r.get("ext_id"), r["source"], r["text"], r["index_text"], r.get("start_char"), r.get("end_char"),
             r.get("start_line"), r.get("end_line"), r.get("heading") or "", r.get("kind"), r.get("doc_id"),
             json.dumps(r.get("metadata") or {}, ensure_ascii=False, default=str), r.get("content_hash"),
             json.dumps(list(r.get("tags") or [])), np.ascontiguousarray(v, dtype=np.float32).tobytes())
            for i, r, v in zip(ids, rows, xb)
        ],
    )


def delete_chunks(conn: sqlite3.Connection, ids: Sequence[int]) -> None:
    for b in _batches(ids):
        conn.execute(f"DELETE FROM chunks WHERE id IN ({','.join('?' * len(b))})", b)


def upsert_sources(conn: sqlite3.Connection, rows: list[dict]) -> None:
    conn.executemany(
        "INSERT INTO sources(source, content_hash, kind, tags, mtime, size, chunks, indexed_at) VALUES(?,?,?,?,?,?,?,?)"
        " ON CONFLICT(source) DO UPDATE SET content_hash=excluded.content_hash, kind=excluded.kind, tags=excluded.tags,"
        " mtime=excluded.mtime, size=excluded.size, chunks=excluded.chunks, indexed_at=excluded.indexed_at",
        [(r["source"], r["content_hash"], r.get("kind"), json.dumps(list(r.get("tags") or [])), r.get("mtime"),
          r.get("size"), r.get("chunks", 0), r.get("indexed_at")) for r in rows],
    )


def delete_sources(conn: sqlite3.Connection, sources: Sequence[str]) -> None:
    conn.executemany("DELETE FROM sources WHERE source=?", [(s,) for s in sources])


def source_table(conn: sqlite3.Connection) -> dict[str, dict]:
    rows = conn.execute("SELECT source, content_hash, kind, tags, mtime, size, chunks FROM sources").fetchall()
    return {r[0]: {"content_hash": r[1], "kind": r[2], "tags": json.loads(r[3]), "mtime": r[4], "size": r[5], "chunks": r[6]} for r in rows}


def counts(conn: sqlite3.Connection) -> dict:
    n_chunks = conn.execute("SELECT count(*) FROM chunks").fetchone()[0]
    n_sources = conn.execute("SELECT count(DISTINCT source) FROM chunks").fetchone()[0]
    kinds = dict(conn.execute("SELECT coalesce(kind, ''), count(*) FROM chunks GROUP BY kind").fetchall())
    n_docs = conn.execute("SELECT count(DISTINCT doc_id) FROM chunks WHERE doc_id IS NOT NULL").fetchone()[0]
    return {"chunks": n_chunks, "sources": n_sources, "kinds": kinds, "doc_ids": n_docs}
