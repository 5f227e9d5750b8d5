"""Search over one collection snapshot: dense (FAISS), BM25, hybrid fusion, doc aggregation, MMR.

Filters become a set of allowed chunk ids (SQLite) that both FAISS (IDSelector) and BM25 (mask)
apply *before* ranking. Hybrid candidates get both scores computed exactly (stored vectors for
BM25-only candidates, the full BM25 score array for dense-only ones) before they are fused.
"""
from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, NamedTuple

import numpy as np

from retrieval.errors import InvalidInputError
from retrieval.index import fusion, vector_index
from retrieval.index.fusion import FusionConfig
from retrieval.store import chunk_db
from retrieval.store.collection import Collection, Snapshot
from retrieval.types import Hit

__all__ = ["MAX_K", "MODES", "Hit", "SearchRequest", "as_request", "Scope", "clean_query", "search_one", "get_hits", "has_doc_ids"]

MODES = ("dense", "bm25", "hybrid")
MAX_K = 10_000


@dataclass(frozen=True)
class SearchRequest:
    """The settings of one search, validated once at the edge (CLI, MCP, Python API) and carried
    unchanged down to `search_one`.

    min_score is on the scale of `Hit.score` for the mode: dense cosine in [-1, 1], bm25 raw
    Lucene BM25 (>= 0), hybrid fused score in [0, 1]. fusion=None: the collection's own fusion
    (calibrated, when it recorded one) else the store's default."""

    k: int = 10
    mode: str = "hybrid"
    filters: Mapping[str, Any] | None = None
    collection: str = "default"
    mmr: bool = False
    mmr_lambda: float = 0.5
    min_score: float | None = None
    fusion: FusionConfig | None = None

    def __post_init__(self) -> None:
        k = self.k
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
            raise InvalidInputError(f"k must be an integer, got {k!r}", "use e.g. -k 10")
        if k <= 0:
            raise InvalidInputError(f"k must be >= 1, got {k}", "use e.g. -k 10")
        if k > MAX_K:
            raise InvalidInputError(f"k={k} is above the maximum of {MAX_K}", f"ask for at most {MAX_K} results per query")
        if self.mode not in MODES:
            raise InvalidInputError(f"unknown search mode {self.mode!r}", f"use one of {', '.join(MODES)}")
        if self.filters is not None and not isinstance(self.filters, Mapping):
            raise InvalidInputError("filters must be a dict like {'kind': 'markdown'}", "keys: source, kind, tags, doc_id or a metadata key")
        if self.filters:
            from retrieval.store.filters import compile_where

            compile_where(self.filters)  # a bad operator is refused here, before any model loads
        if isinstance(self.mmr_lambda, bool) or not isinstance(self.mmr_lambda, (int, float)) or not 0.0 <= self.mmr_lambda <= 1.0:
            raise InvalidInputError(f"mmr_lambda must be in [0, 1], got {self.mmr_lambda}", "1 = pure relevance, 0 = pure diversity")
        ms = self.min_score
        if ms is not None and (isinstance(ms, bool) or not isinstance(ms, (int, float)) or not math.isfinite(ms)):
            raise InvalidInputError(f"min_score must be a finite number, got {ms!r}",
                                    "dense: a cosine in [-1, 1]; bm25: a BM25 score >= 0; hybrid: a fused score in [0, 1]")
        if self.fusion is not None and not isinstance(self.fusion, FusionConfig):
            raise InvalidInputError("fusion must be a FusionConfig", "build one with FusionConfig(alpha=..., norm=...)")

    def with_(self, **kw: Any) -> SearchRequest:
        return replace(self, **kw)


def as_request(request: SearchRequest | None, settings: dict[str, Any]) -> SearchRequest:
    """A SearchRequest from either a request or its fields as keywords (not both)."""
    if request is not None and not isinstance(request, SearchRequest):
        raise InvalidInputError(f"expected a SearchRequest, got {type(request).__name__}", "pass settings as keywords, e.g. k=10")
    unknown = sorted(set(settings) - set(SearchRequest.__dataclass_fields__))
    if unknown:
        raise InvalidInputError(f"unknown search setting(s) {', '.join(unknown)}",
                                f"use {', '.join(SearchRequest.__dataclass_fields__)}")
    if request is None:
        return SearchRequest(**settings)
    return request.with_(**settings) if settings else request


class Scope(NamedTuple):
    """What every query of one request shares: the snapshot read, the filter's allowed ids and
    the fusion in force."""

    coll: Collection
    conn: Any
    snap: Snapshot
    allowed: np.ndarray | None  # chunk ids the filters allow; None = all
    fusion: FusionConfig
    has_doc_ids: bool


def clean_query(query: str) -> str:
    if not isinstance(query, str) or not query.strip():
        raise InvalidInputError("the query is empty", "pass some words to search for")
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


class _Cands(NamedTuple):
    ids: np.ndarray  # (n,) chunk ids
    dense: np.ndarray | None  # (n,) cosine, None when the mode did not use it
    bm25: np.ndarray | None  # (n,) BM25


def _candidates(sc: Scope, query: str, xq: np.ndarray | None, mode: str, depth: int) -> _Cands:
    """Top `depth` of each mode used; in hybrid every candidate gets both scores exactly."""
    coll, conn, snap = sc.coll, sc.conn, sc.snap
    dense_s = bm25_s = None
    ids = np.zeros(0, np.int64)
    if mode in ("dense", "hybrid"):
        assert xq is not None, "dense and hybrid searches need the query's embedding"
        dense_s, ids = _dense(coll, conn, snap, xq, depth, sc.allowed)
    if mode == "bm25" or (mode == "hybrid" and snap.bm25 is not None):
        if snap.bm25 is None:
            return _Cands(ids, None, None)
        toks = coll.tokenizer()(query)
        if mode == "bm25":
            bm25_s, ids = snap.bm25.top_k(toks, depth, sc.allowed)
        else:
            full = snap.bm25.scores(toks)  # (D,)
            _, b_ids = snap.bm25.top_k(toks, depth, sc.allowed)
            extra = np.setdiff1d(b_ids, ids)
            assert xq is not None and dense_s is not None
            if len(extra):  # BM25-only candidates: exact cosine from the stored vectors
                xe = vectors_of(coll, conn, snap, extra)  # (e, D)
                dense_s = np.concatenate([dense_s, (xe @ xq.reshape(-1)).astype(np.float32)])
                ids = np.concatenate([ids, extra])
            pos = np.searchsorted(snap.bm25.ids, ids)
            pos = np.clip(pos, 0, max(len(snap.bm25.ids) - 1, 0))
            found = snap.bm25.ids[pos] == ids if len(snap.bm25.ids) else np.zeros(len(ids), bool)
            bm25_s = np.where(found, full[pos] if len(full) else 0.0, 0.0).astype(np.float32)
    return _Cands(ids, dense_s, bm25_s)


def _rank_score(c: _Cands, mode: str, cfg: FusionConfig) -> np.ndarray:
    """The score that ranks: the mode's own, or the fused one in [0, 1]. (n,)"""
    if mode == "hybrid":
        assert c.dense is not None
        bm = c.bm25 if c.bm25 is not None else np.zeros(len(c.ids), np.float32)
        return fusion.fuse(c.dense, bm, cfg)
    own = c.dense if mode == "dense" else c.bm25
    assert own is not None
    return own.astype(np.float64)


def _by_doc(sc: Scope, c: _Cands, score: np.ndarray, mode: str) -> tuple[_Cands, np.ndarray]:
    """One candidate per doc_id: its best chunk, with the max of each mode over the doc's chunks."""
    rows_doc = dict(zip(c.ids.tolist(), _doc_ids(sc.conn, sc.snap, c.ids)))
    keys = [rows_doc[i] if rows_doc[i] is not None else ("#", i) for i in c.ids.tolist()]
    present = [m for m in ("dense", "bm25") if getattr(c, m) is not None]
    rep, maxes = fusion.aggregate_max(keys, *[getattr(c, m) for m in present], by=score)
    got = dict(zip(present, maxes))
    agg = _Cands(c.ids[rep], got.get("dense"), got.get("bm25"))
    return agg, _rank_score(agg, mode, sc.fusion)


def search_one(sc: Scope, req: SearchRequest, query: str, xq: np.ndarray | None) -> list[Hit]:
    """The top req.k hits of one query (xq (1, D) its embedding; None in bm25 mode without MMR)."""
    k, mode, cfg = req.k, req.mode, sc.fusion
    agg = cfg.doc_agg == "max" and sc.has_doc_ids
    depth = k if (mode != "hybrid" and not agg and not req.mmr) else max(cfg.depth, 3 * k)
    c = _candidates(sc, query, xq, mode, depth)
    if len(c.ids) == 0 or (mode == "bm25" and c.bm25 is None):
        return []
    score = _rank_score(c, mode, cfg)
    if agg:
        c, score = _by_doc(sc, c, score, mode)
    order = np.argsort(-score, kind="stable")
    if req.mmr and len(order) > 1:
        cand = order[: max(cfg.depth, 3 * k)]
        xc = vectors_of(sc.coll, sc.conn, sc.snap, c.ids[cand])  # (c, D)
        order = cand[fusion.mmr(xq.reshape(-1) if xq is not None else None, xc, score[cand], k, req.mmr_lambda)]
    if req.min_score is not None:
        order = order[score[order] >= req.min_score]
    order = order[:k]
    rows = chunk_db.fetch_rows(sc.conn, c.ids[order].tolist())
    per_mode = {m: getattr(c, m) for m in ("dense", "bm25") if getattr(c, m) is not None}
    return [make_hit(rows[int(c.ids[j])], float(score[j]), {m: float(v[j]) for m, v in per_mode.items()}, sc.coll.name)
            for j in order]


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
