"""Incremental indexing of files and folders into one collection (one atomic commit per run).

A file is re-chunked and re-embedded only when its content hash (or its tags) changed; files
that vanished from the indexed paths (deleted, now excluded, now unreadable) lose their chunks.
Dedup scope: exact duplicates (content hash) are dropped against the whole collection, near
duplicates (MinHash) against this run; chunks of BEIR-style JSONL records are deduplicated only
within their own record, so every `_id` stays retrievable.
"""
from __future__ import annotations

import hashlib
import logging
import os
import posixpath
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from typing import ContextManager

import numpy as np

from retrieval.errors import InvalidInputError
from retrieval.store import chunk_db
from retrieval.store.collection import Changes, Collection
from retrieval.types import Chunk, Skip, SourceDocument

log = logging.getLogger(__name__)

Progress = Callable[[int, int, str], None]  # (done, total, stage)
SMALL_BATCH = 32  # at most this many new chunks: embed on one thread (see DocStore._threads)


@dataclass
class IndexReport:
    files_seen: int = 0
    added: int = 0
    updated: int = 0
    removed: int = 0
    unchanged: int = 0
    skipped: list[dict] = field(default_factory=list)
    chunks_added: int = 0
    chunks_removed: int = 0
    dropped: dict = field(default_factory=lambda: {"empty": 0, "low_quality": 0, "exact_duplicate": 0, "near_duplicate": 0})
    seconds: float = 0.0
    collection: str = "default"

    def to_dict(self) -> dict:
        d = asdict(self)
        d["seconds"] = round(self.seconds, 3)
        return d


def _under(source: str, roots: Sequence[str]) -> bool:
    return any(r in (".", "") or source == r or source.startswith(r.rstrip("/") + "/") for r in roots)


def _group_hash(docs: list[SourceDocument]) -> str:
    if len(docs) == 1 and docs[0].doc_id is None:
        return docs[0].content_hash
    h = hashlib.sha256()
    for d in docs:
        h.update(d.content_hash.encode() + b"\n")
    return h.hexdigest()


def _row(c: Chunk, tags: Sequence[str]) -> dict:
    from retrieval.ingest.preprocess import content_hash

    return {"source": c.source, "text": c.text, "index_text": c.index_text, "start_char": c.start_char,
            "end_char": c.end_char, "start_line": c.start_line, "end_line": c.end_line, "heading": c.heading,
            "kind": c.kind, "doc_id": c.doc_id, "metadata": dict(c.metadata), "content_hash": content_hash(c.index_text),
            "tags": list(tags)}


class _Bar:
    """tqdm on stderr (files/s, chunks/s) when wanted, plus the caller's progress callback."""

    def __init__(self, show: bool, progress: Progress | None) -> None:
        self.show, self.progress, self.bar = show, progress, None

    def stage(self, desc: str, total: int | None, unit: str) -> None:
        self.close()
        if self.show:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, dynamic_ncols=True, leave=False)
        self.desc, self.total, self.done = desc, total, 0

    def update(self, n: int = 1, **postfix) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
            if postfix:
                self.bar.set_postfix(postfix, refresh=False)
        if self.progress is not None:
            self.progress(self.done, self.total or 0, self.desc)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def run_index(
    coll: Collection, conn, embedder, paths: Sequence[str], *, exclude: Sequence[str] = (), tags: Sequence[str] = (),
    progress: Progress | None = None, show_progress: bool = False, force: bool = False,
    near_dup_threshold: float | None = 0.9, max_file_bytes: int = 20_000_000,
    limit_threads: Callable[[int], ContextManager] | None = None,
) -> IndexReport:
    """Scan `paths`, chunk + embed what changed, commit once. Caller holds the writer lock."""
    from retrieval.ingest.chunking import ChunkerConfig, chunk_document
    from retrieval.ingest.preprocess import NearDupFilter, PreprocessReport, preprocess_chunks
    from retrieval.ingest.sources import iter_sources

    t0 = time.perf_counter()
    rep = IndexReport(collection=coll.name)
    tags = sorted(set(tags))
    cfg = ChunkerConfig(**{k: v for k, v in coll.manifest.get("chunker", {}).items() if k in ChunkerConfig.__dataclass_fields__})
    roots = [posixpath.normpath(os.fspath(p).replace(os.sep, "/")) for p in paths]
    known = chunk_db.source_table(conn)
    pre = PreprocessReport()
    seen: set[str] = set()
    changed: list[str] = []
    new_chunks: list[Chunk] = []
    upserts: list[dict] = []
    bar = _Bar(show_progress, progress)
    bar.stage("scanning", None, "file")
    todo: list[list[SourceDocument]] = []

    def scan(group: list[SourceDocument]) -> None:
        src = group[0].source
        seen.add(src)
        rep.files_seen += 1
        old = known.get(src)
        if old is not None and old["content_hash"] == _group_hash(group) and sorted(old["tags"]) == tags and not force:
            rep.unchanged += 1
        else:
            todo.append(group)
            if old is None:
                rep.added += 1
            else:
                rep.updated += 1
                changed.append(src)
        bar.update(1)

    group: list[SourceDocument] = []
    for item in iter_sources(paths, exclude=exclude, max_file_bytes=max_file_bytes):
        if isinstance(item, Skip):
            rep.skipped.append({"source": item.source, "reason": item.reason})
            continue
        if group and item.source != group[0].source:
            scan(group)
            group = []
        group.append(item)
    if group:
        scan(group)
    bar.close()

    gone = [s for s in known if s not in seen and _under(s, roots)]
    rep.removed = len(gone)
    if rep.files_seen == 0 and not rep.skipped and not gone:
        raise InvalidInputError(
            f"nothing to index in {', '.join(map(str, paths))}: no files found",
            "check the path and --exclude patterns (.gitignore'd files are left out)",
        )
    # exact duplicates are judged against the chunks that stay, so a renamed or edited file keeps its text
    released = set(changed) | set(gone)
    stay_hashes = {h for src, h in conn.execute("SELECT source, content_hash FROM chunks") if h and src not in released} if todo else set()
    near = NearDupFilter(threshold=near_dup_threshold) if near_dup_threshold and todo else None
    bar.stage("chunking", len(todo), "file")
    for group in todo:
        chunks_of_src: list[Chunk] = []
        for doc in group:
            chunks = chunk_document(doc, embedder.token_spans, cfg)
            if doc.doc_id is not None:  # a record: dedup within the record only
                chunks_of_src += preprocess_chunks(chunks, pre, seen_hashes=set(), near_dup=None)
            else:
                chunks_of_src += preprocess_chunks(chunks, pre, seen_hashes=stay_hashes, near_dup=near)
        new_chunks.extend(chunks_of_src)
        src = group[0].source
        try:
            st = os.stat(src)
            mtime, size = st.st_mtime, st.st_size
        except OSError:
            mtime = size = None
        upserts.append({"source": src, "content_hash": _group_hash(group), "kind": group[0].kind, "tags": tags,
                        "mtime": mtime, "size": size, "chunks": len(chunks_of_src), "indexed_at": time.time()})
        bar.update(1, chunks=len(new_chunks))
    bar.close()
    remove_ids = chunk_db.chunk_ids_of_sources(conn, changed + gone)
    rows = [_row(c, tags) for c in new_chunks]
    bar.stage("embedding", len(rows), "chunk")
    # a handful of changed chunks (the common incremental case) embeds faster on one thread
    ctx = limit_threads(1) if limit_threads is not None and 0 < len(rows) <= SMALL_BATCH else nullcontext()
    with ctx:
        xb = embedder.embed([r["index_text"] for r in rows], progress=lambda d, t: bar.update(d - bar.done)) if rows else np.zeros((0, coll.dim), np.float32)
    bar.close()
    tok = coll.tokenizer()
    tokens = [tok(r["index_text"]) for r in rows]
    coll.commit(conn, Changes(np.asarray(remove_ids, np.int64), rows, np.asarray(xb, np.float32).reshape(-1, coll.dim), tokens, upserts, gone))
    rep.chunks_added = len(rows)
    rep.chunks_removed = len(remove_ids)
    rep.dropped = pre.to_dict()
    rep.seconds = time.perf_counter() - t0
    return rep
