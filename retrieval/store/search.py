"""Search over one collection snapshot: dense (FAISS), BM25, hybrid fusion, doc aggregation, MMR.

Filters become a set of allowed chunk ids (SQLite) that both FAISS (IDSelector) and BM25 (mask)
apply *before* ranking. Hybrid candidates get both scores computed exactly (stored vectors for
BM25-only candidates, the full BM25 score array for dense-only ones) before they are fused.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from retrieval.errors import InvalidInputError
from retrieval.index import fusion, vector_index
from retrieval.index.fusion import FusionConfig
from retrieval.store import chunk_db
from retrieval.store.collection import Collection, Snapshot

MODES = ("dense", "bm25", "hybrid")
MAX_K = 10_000


@dataclass(frozen=True)
class Hit:
    """One search result; field names are fixed (other tools parse them)."""

    id: str
    score: float
    scores: dict[str, float]
    text: str
    source: str
    start_char: int | None
    end_char: int | None
    start_line: int | None
    end_line: int | None
    heading: str
    metadata: dict[str, Any] = field(default_factory=dict)
    doc_id: str | None = None
    collection: str = "default"

    def to_dict(self) -> dict:
        return {
            "id": self.id, "score": self.score, "scores": dict(self.scores), "text": self.text, "source": self.source,
            "start_char": self.start_char, "end_char": self.end_char, "start_line": self.start_line,
            "end_line": self.end_line, "heading": self.heading, "metadata": dict(self.metadata),
            "doc_id": self.doc_id, "collection": self.collection,
        }


def validate(query: str, k: int, mode: str, filters: dict | None) -> str:
    if not isinstance(query, str) or not query.strip():
        raise InvalidInputError("the query is empty", "pass some words to search for")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise InvalidInputError(f"k must be an integer, got {k!r}", "use e.g. -k 10")
    if k <= 0:
        raise InvalidInputError(f"k must be >= 1, got {k}", "use e.g. -k 10")
    if k > MAX_K:
        raise InvalidInputError(f"k={k} is above the maximum of {MAX_K}", f"ask for at most {MAX_K} results per query")
    if mode not in MODES:
        raise InvalidInputError(f"unknown search mode {mode!r}", f"use one of {', '.join(MODES)}")
    if filters is not None and not isinstance(filters, dict):
        raise InvalidInputError("filters must be a dict like {'kind': 'markdown'}", "keys: source, kind, tags, doc_id or a metadata key")
    return query.strip()


def make_hit(row: tuple, score: float, scores: dict, collection: str) -> Hit:
    (rid, ext_id, text, source, sc, ec, sl, el, heading, kind, doc_id, meta, tags) = row
    md = json.loads(meta) if meta else {}
    md.setdefault("kind", kind)
    t = json.loads(tags) if tags else []
    if t:
        md.setdefault("tags", t)
    return Hit(ext_id or str(rid), float(score), {k: float(v) for k, v in scores.items()}, text, source,
               sc, ec, sl, el, heading or "", md, doc_id, collection)


def vectors_of(coll: Collection, conn, snap: Snapshot, ids: np.ndarray) -> np.ndarray:
    """Stored vectors of live chunk ids: from the (memory-mapped) flat codes of the index when they
    are exact, else from the SQLite rows. (n, D)"""
    if snap.index is not None and "Flat" in snap.factory and "PQ" not in snap.factory and "SQ" not in snap.factory:
        try:
            return np.asarray(snap.index.reconstruct_batch(np.ascontiguousarray(ids, dtype=np.int64)), np.float32)
        except RuntimeError:
            pass
    return chunk_db.fetch_vectors(conn, ids.tolist(), coll.dim)


def _dense(coll: Collection, conn, snap: Snapshot, xq: np.ndarray, depth: int, allowed: np.ndarray | None):
    """(scores, ids) of the top `depth` chunks by cosine, among `allowed`."""
    cfg = coll.index_config
    if snap.index is None or (allowed is not None and len(allowed) == 0):
        return np.zeros(0, np.float32), np.zeros(0, np.int64)
    hnsw = vector_index.is_hnsw(snap.index)
    if allowed is not None and (hnsw or vector_index.is_ivf(snap.index)) and len(allowed) <= cfg.exact_fallback_max:
        D, I = vector_index.exact_search(xq, vectors_of(coll, conn, snap, allowed), allowed, depth)
    elif allowed is None and len(snap.tombstones) == 0 and xq.shape[0] == 1 and (view := _flat_view(snap)) is not None:
        D, I = vector_index.exact_search(xq, view[0], view[1], depth)
    else:
        D, I = vector_index.search(snap.index, xq, depth, allowed=allowed, excluded=snap.tombstones, config=cfg)
        want = min(depth, len(allowed) if allowed is not None else snap.index.ntotal - len(snap.tombstones))
        if (I[0] >= 0).sum() < want and allowed is not None:  # graph search starved by the filter: go exact
            D, I = vector_index.exact_search(xq, vectors_of(coll, conn, snap, allowed), allowed, depth)
    ok = I[0] >= 0
    return D[0][ok], I[0][ok]


def search_one(
    coll: Collection, conn, snap: Snapshot, query: str, xq: np.ndarray | None, *, k: int, mode: str,
    allowed: np.ndarray | None, mmr: bool, mmr_lambda: float, min_score: float | None, cfg: FusionConfig,
    has_doc_ids: bool,
) -> list[Hit]:
    agg = cfg.doc_agg == "max" and has_doc_ids
    depth = k if (mode != "hybrid" and not agg and not mmr) else max(cfg.depth, 3 * k)
    dense_s = bm25_s = None
    ids = np.zeros(0, np.int64)
    if mode in ("dense", "hybrid"):
        dense_s, ids = _dense(coll, conn, snap, xq, depth, allowed)
    if mode in ("bm25", "hybrid") and snap.bm25 is not None:
        toks = coll.tokenizer()(query)
        if mode == "bm25":
            bm25_s, ids = snap.bm25.top_k(toks, depth, allowed)
        else:
            full = snap.bm25.scores(toks)  # (D,)
            b_s, b_ids = snap.bm25.top_k(toks, depth, allowed)
            extra = np.setdiff1d(b_ids, ids)
            if len(extra):  # BM25-only candidates: exact cosine from the stored vectors
                xe = vectors_of(coll, conn, snap, extra)  # (e, D)
                dense_s = np.concatenate([dense_s, (xe @ xq.reshape(-1)).astype(np.float32)])
                ids = np.concatenate([ids, extra])
            pos = np.searchsorted(snap.bm25.ids, ids)
            pos = np.clip(pos, 0, max(len(snap.bm25.ids) - 1, 0))
            found = snap.bm25.ids[pos] == ids if len(snap.bm25.ids) else np.zeros(len(ids), bool)
            bm25_s = np.where(found, full[pos] if len(full) else 0.0, 0.0).astype(np.float32)
    elif mode == "bm25":
        return []
    if len(ids) == 0:
        return []
    if mode == "hybrid":
        score = fusion.fuse(dense_s, bm25_s, cfg) if bm25_s is not None else dense_s.astype(np.float64)
    else:
        score = (dense_s if mode == "dense" else bm25_s).astype(np.float64)
    per_mode = {"dense": dense_s, "bm25": bm25_s}
    if agg:
        rows_doc = dict(zip(ids.tolist(), _doc_ids(conn, snap, ids)))
        keys = [rows_doc[i] if rows_doc[i] is not None else ("#", i) for i in ids.tolist()]
        present = [m for m in ("dense", "bm25") if per_mode[m] is not None]
        rep, maxes = fusion.aggregate_max(keys, *[per_mode[m] for m in present], by=score)
        ids = ids[rep]
        for m, mx in zip(present, maxes):
            per_mode[m] = mx
        if mode == "hybrid" and per_mode["bm25"] is not None:
            score = fusion.fuse(per_mode["dense"], per_mode["bm25"], cfg)
        else:
            score = per_mode[present[0]]
    order = np.argsort(-score, kind="stable")
    if mmr and len(order) > 1:
        cand = order[: max(cfg.depth, 3 * k)]
        xc = vectors_of(coll, conn, snap, ids[cand])  # (c, D)
        order = cand[fusion.mmr(xq.reshape(-1) if xq is not None else None, xc, score[cand], k, mmr_lambda)]
    if min_score is not None:
        order = order[score[order] >= min_score]
    order = order[:k]
    rows = chunk_db.fetch_rows(conn, ids[order].tolist())
    hits = []
    for j in order:
        scores = {m: float(per_mode[m][j]) for m in ("dense", "bm25") if per_mode[m] is not None}
        hits.append(make_hit(rows[int(ids[j])], float(score[j]), scores, coll.name))
    return hits


def _flat_view(snap: Snapshot):
    if "flat" not in snap.cache:
        snap.cache["flat"] = vector_index.flat_view(snap.index)
    return snap.cache["flat"]


DOC_KEY_CACHE_MAX = 2_000_000  # chunk rows; above this, doc ids come from SQLite per query


def _doc_ids(conn, snap: Snapshot, ids: np.ndarray) -> list[str | None]:
    """doc_id of each chunk id. The whole (id -> doc_id) table of a generation is read once and kept
    on its snapshot: a per-query SQL lookup of 100 candidates cost ~0.6 ms, a third of a search."""
    if "doc_ids" not in snap.cache:  # None: too many rows to keep, ask SQLite each time
        table = None
        if conn.execute("SELECT count(*) FROM chunks").fetchone()[0] <= DOC_KEY_CACHE_MAX:
            rows = conn.execute("SELECT id, doc_id FROM chunks ORDER BY id").fetchall()
            names = sorted({d for _, d in rows if d is not None})
            code = {d: j for j, d in enumerate(names)}
            table = (np.fromiter((r for r, _ in rows), np.int64, len(rows)),  # (n,) sorted ids
                     np.fromiter((-1 if d is None else code[d] for _, d in rows), np.int32, len(rows)), names)
        snap.cache["doc_ids"] = table
    table = snap.cache["doc_ids"]
    if table is not None:
        row_ids, codes, names = table
        pos = np.clip(np.searchsorted(row_ids, ids), 0, max(len(row_ids) - 1, 0))  # (n,)
        return [names[codes[p]] if len(row_ids) and row_ids[p] == i and codes[p] >= 0 else None
                for p, i in zip(pos.tolist(), ids.tolist())]
    got: dict[int, str | None] = {}
    for i in range(0, len(ids), 900):
        b = ids[i : i + 900].tolist()
        got.update(conn.execute(f"SELECT id, doc_id FROM chunks WHERE id IN ({','.join('?' * len(b))})", b).fetchall())
    return [got.get(int(i)) for i in ids]


def has_doc_ids(conn, snap: Snapshot) -> bool:
    if "has_doc_ids" not in snap.cache:
        snap.cache["has_doc_ids"] = conn.execute("SELECT 1 FROM chunks WHERE doc_id IS NOT NULL LIMIT 1").fetchone() is not None
    return snap.cache["has_doc_ids"]


def get_hits(coll: Collection, ids: Sequence[str | int]) -> list[Hit]:
    """Chunks by id, in the order asked (unknown ids are left out), score 0."""
    with coll.reading() as (conn, _):
        resolved = chunk_db.resolve_ids(conn, ids)
        rows = chunk_db.fetch_rows(conn, list(resolved.values()))
        return [make_hit(rows[resolved[str(i)]], 0.0, {}, coll.name) for i in ids if str(i) in resolved]
