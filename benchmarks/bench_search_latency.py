"""Search-only latency on a synthetic 100k-chunk collection: exact flat vs the automatic choice.

usage: python -m benchmarks search_latency [--n 100000] [--dim 384] [--queries 300] [--quick]

Builds a real DocStore collection (SQLite rows + FAISS + BM25, one atomic commit) from 100k short
synthetic texts embedded by a deterministic clustered embedder (no model: this measures the store,
not the embedder). Then, with the query vectors already computed:
- raw FAISS search p50/p95 of an exact IndexFlatIP over the same vectors (the peer) and of the
  index the store chose automatically (HNSW above 50k vectors);
- the store's whole search-only path (`DocStore.search_by_vector`: FAISS + SQLite rows + hits);
- recall@10 of the automatic index against the exact flat search.
Prints the figures and the flat/auto p50 ratio, and records them. --quick: 5,000 chunks, 50 queries.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import percentile, record

PEER = "an exact FAISS IndexFlatIP over the same vectors, one query at a time"

WORDS = [f"w{i}" for i in range(5000)]


class ClusteredEmbedder:
    """Deterministic synthetic embeddings with topical structure: a text's first word picks one of
    256 cluster centres, the rest of the text seeds the noise around it."""

    special_tokens = 0

    def __init__(self, dim: int = 384, clusters: int = 256) -> None:
        self.dim, self.max_tokens, self.model_id = dim, 512, f"synthetic-clustered-{dim}@v1"
        rng = np.random.default_rng(0)
        self.centres = rng.standard_normal((clusters, dim)).astype(np.float32)  # (C, D)

    def token_spans(self, text: str) -> list[tuple[int, int]]:
        out, i = [], 0
        for w in text.split(" "):
            out.append((i, i + len(w)))
            i += len(w) + 1
        return out

    def _vec(self, text: str) -> np.ndarray:
        seed = int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")
        c = int(text.split(" ", 1)[0][1:]) % len(self.centres)
        v = self.centres[c] + 0.9 * np.random.default_rng(seed).standard_normal(self.dim).astype(np.float32)  # (D,)
        return v / np.linalg.norm(v)

    def embed(self, texts, *, batch_size: int = 64, progress=None) -> np.ndarray:
        return np.stack([self._vec(t) for t in texts]) if len(texts) else np.zeros((0, self.dim), np.float32)  # (N, D)

    def embed_query(self, text: str) -> np.ndarray:
        return self._vec(text)


def timed(fn, n: int) -> list[float]:
    out = []
    for i in range(n):
        t = time.perf_counter()
        fn(i)
        out.append((time.perf_counter() - t) * 1e3)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("--quick", action="store_true", help="5,000 chunks, 50 queries")
    a = ap.parse_args(argv)
    if a.quick:
        a.n, a.queries = 5000, 50

    import faiss

    from retrieval.index import vector_index
    from retrieval.store.docstore import DocStore

    rng = np.random.default_rng(1)
    texts = [" ".join(rng.choice(WORDS, size=12)) for _ in range(a.n)]
    emb = ClusteredEmbedder(a.dim)
    tmp = tempfile.mkdtemp(prefix="bench-latency-")
    t0 = time.perf_counter()
    with DocStore.open(Path(tmp) / "store", embedder=emb) as s:
        s.add_texts(texts, [{"source": f"syn/{i // 100}.txt"} for i in range(a.n)])
        build_s = time.perf_counter() - t0
    s = DocStore.open(Path(tmp) / "store", embedder=emb, read_only=True)
    st = s.stats("default")
    coll = s.collection("default")
    with coll.reading() as (conn, snap):
        auto_index = snap.index
        from retrieval.store import chunk_db

        ids, xb = chunk_db.all_vectors(conn, a.dim)  # (N,), (N, D)
    flat = vector_index.build_index(xb, ids, "Flat", vector_index.IndexConfig())
    qtexts = [" ".join(rng.choice(WORDS, size=6)) for _ in range(a.queries)]
    xq = emb.embed(qtexts)  # (Q, D)
    cfg = coll.index_config

    # raw index search, one query at a time (what a search request does)
    for _ in range(10):
        vector_index.search(flat, xq[0], 10, config=cfg)
        vector_index.search(auto_index, xq[0], 10, config=cfg)
    flat_ms = timed(lambda i: vector_index.search(flat, xq[i], 10, config=cfg), a.queries)
    auto_ms = timed(lambda i: vector_index.search(auto_index, xq[i], 10, config=cfg), a.queries)
    store_ms = timed(lambda i: s.search_by_vector(xq[i], k=10), a.queries)
    _, I_exact = vector_index.search(flat, xq, 10, config=cfg)
    I_auto = np.stack([vector_index.search(auto_index, xq[i], 10, config=cfg)[1][0] for i in range(a.queries)])
    recall = vector_index.recall_at_k(I_auto, I_exact)
    threads = faiss.omp_get_max_threads()
    s.close()

    res = {
        "n": a.n, "dim": a.dim, "queries": a.queries, "auto_index": st["index_type"], "build_s": build_s,
        "flat_p50": statistics.median(flat_ms), "flat_p95": percentile(flat_ms, 95),
        "auto_p50": statistics.median(auto_ms), "auto_p95": percentile(auto_ms, 95),
        "store_p50": statistics.median(store_ms), "store_p95": percentile(store_ms, 95), "recall10": recall,
    }
    ratio = res["flat_p50"] / res["auto_p50"]
    cmd = "python -m benchmarks search_latency" + "".join(f" {x}" for x in (argv if argv is not None else sys.argv[1:]))
    lines = [
        f"## Search-only latency, synthetic {a.n:,}-chunk collection ({a.dim}-d)",
        "",
        f"Command: `{cmd}` ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at the end, "
        f"FAISS max threads {threads}; one query at a time, k=10, query vectors precomputed)",
        "",
        "| index | p50 ms | p95 ms | recall@10 vs exact |",
        "|---|---|---|---|",
        f"| exact IndexFlatIP (peer) | {res['flat_p50']:.2f} | {res['flat_p95']:.2f} | 1.000 |",
        f"| automatic choice: {res['auto_index']} | {res['auto_p50']:.2f} | {res['auto_p95']:.2f} | {recall:.3f} |",
        f"| DocStore.search_by_vector (FAISS + SQLite rows + hits) | {res['store_p50']:.2f} | {res['store_p95']:.2f} | |",
        "",
        f"Ratio flat p50 / automatic p50: **{ratio:.1f}x**. Target: search-only p50 <= 10 ms "
        f"({'met' if res['store_p50'] <= 10 else 'NOT met'}: {res['store_p50']:.2f} ms through the store). "
        f"Collection build (add_texts of {a.n:,} texts, one commit, synthetic embedder): {build_s:.1f} s.",
        "",
    ]
    print("\n".join(lines))
    extra = {"n": a.n, "dim": a.dim, "queries": a.queries, "auto_index": res["auto_index"], "recall10": recall,
             "auto_p50_ms": res["auto_p50"], "build_s": build_s}
    record("search_latency", f"search-only p50 through the store, {a.n:,} chunks (goal: <= 10 ms)", res["store_p50"],
           res["flat_p50"], "ms", peer_name="exact IndexFlatIP", higher_is_better=False, goal="<= 10 ms", extra=extra,
           quick=a.quick)
    return 0


if __name__ == "__main__":
    sys.exit(main())
