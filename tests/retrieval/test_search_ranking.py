"""Search ranking: filters before ranking, HNSW/flat paths, BM25 against bm25s, fusion, doc aggregation, MMR."""
from __future__ import annotations

import numpy as np
import pytest

from retrieval.errors import InvalidInputError
from retrieval.index import bm25_index, fusion, vector_index
from retrieval.index.bm25_index import BM25Config
from retrieval.index.fusion import FusionConfig
from retrieval.store.docstore import MAX_K, DocStore
from tests.retrieval.docstore_helpers import tagged_store, text_of


@pytest.fixture()
def store(tmp_path):
    s = DocStore.open(tmp_path / "store", embedder="hash-64")
    yield s
    s.close()


@pytest.mark.parametrize("mode", ["dense", "bm25", "hybrid"])
def test_filters_apply_before_ranking(tmp_path, mode):
    s, texts, metas = tagged_store(tmp_path)
    rare = [i for i, m in enumerate(metas) if m["tags"]]
    q = texts[rare[0]]  # matched by many untagged chunks too
    hits = s.search(q, k=len(rare), mode=mode, filters={"tags": ["rare"]})
    assert len(hits) == len(rare) and all("rare" in h.metadata["tags"] for h in hits)
    hits = s.search(q, k=10, mode=mode, filters={"source": "dir1/*", "kind": "markdown"})
    assert len(hits) == 10 and all(h.source.startswith("dir1/") and h.metadata["kind"] == "markdown" for h in hits)
    assert s.search(q, k=5, mode=mode, filters={"source": "nowhere/*"}) == []
    s.close()


def test_hnsw_filtered_search_returns_k_and_tombstones(tmp_path):
    rng = np.random.default_rng(2)
    with DocStore.open(tmp_path / "s", embedder="hash-64") as s:
        texts = [text_of(rng, 10) for _ in range(400)]
        metas = [{"source": f"f{i}", "tags": ["few"] if i % 80 == 0 else []} for i in range(400)]
        ids = s.add_texts(texts[:10], metas[:10])
        ids += s.add_texts(texts[10:], metas[10:], index_factory="HNSW16,Flat")  # switch: rebuilt as HNSW
        st = s.stats("default")
        assert st["index_type"] == "HNSW16,Flat" and st["vectors"] == 400
        hits = s.search(texts[5], k=5, mode="dense", filters={"tags": ["few"]})
        assert len(hits) == 5
        s.delete(ids=ids[:20])  # HNSW cannot remove: tombstones
        st = s.stats("default")
        assert st["tombstones"] == 20 and st["chunks"] == 380
        assert not set(ids[:20]) & {h.id for h in s.search(texts[3], k=50, mode="dense")}
        assert s.verify()["ok"]
        s.delete(ids=ids[20:150])  # past the tombstone fraction: rebuilt
        st = s.stats("default")
        assert st["tombstones"] == 0 and st["vectors"] == 250
        assert s.verify()["ok"]


def test_vector_index_filtered_equals_exact():
    rng = np.random.default_rng(0)
    xb = rng.standard_normal((3000, 32)).astype(np.float32)
    xb /= np.linalg.norm(xb, axis=1, keepdims=True)
    ids = np.arange(3000, dtype=np.int64) * 7 + 3
    xq = xb[:8] + 0.1 * rng.standard_normal((8, 32)).astype(np.float32)
    allowed = ids[rng.choice(3000, 300, replace=False)]
    idx = vector_index.build_index(xb, ids, "Flat", vector_index.IndexConfig())
    D, I = vector_index.search(idx, xq, 10, allowed=allowed)
    pos = np.searchsorted(ids, allowed)
    De, Ie = vector_index.exact_search(xq, xb[pos], allowed, 10)
    assert np.array_equal(I, Ie) and np.allclose(D, De, atol=1e-5)
    h = vector_index.build_index(xb, ids, "HNSW32,Flat", vector_index.IndexConfig())
    _, Ih = vector_index.search(h, xq, 10)
    _, Iex = vector_index.exact_search(xq, xb, ids, 10)
    assert vector_index.recall_at_k(Ih, Iex) >= 0.9
    assert vector_index.choose_factory(10, vector_index.IndexConfig()) == "Flat"
    assert vector_index.choose_factory(60_000, vector_index.IndexConfig()).startswith("HNSW32")
    assert vector_index.choose_factory(60_000, vector_index.IndexConfig(factory="IVF64,Flat")) == "IVF64,Flat"
    with pytest.raises(InvalidInputError):
        vector_index.validate_factory("NotAnIndex", 32)


def test_bm25_matches_bm25s(tmp_path):
    bm25s = pytest.importorskip("bm25s")
    rng = np.random.default_rng(3)
    cfg = bm25_index.BM25Config()
    tok = bm25_index.tokenizer_for(cfg)
    texts = [text_of(rng, int(rng.integers(0, 25))) if i % 7 else "" for i in range(150)]
    toks = [tok(t) for t in texts]
    idx = bm25_index.update(None, np.zeros(0, np.int64), np.arange(150), toks, cfg)
    real = np.array([bool(t) for t in toks])
    assert 0 < real.sum() < len(toks)  # some rows have no tokens (a record's later chunks)
    ref = bm25s.BM25(k1=cfg.k1, b=cfg.b)
    ref.index([t for t in toks if t], show_progress=False)  # rows without tokens are not documents
    q = tok("gamma rivers mountain mountain")
    assert np.allclose(idx.scores(q)[real], ref.get_scores(q), atol=1e-5) and not idx.scores(q)[~real].any()
    # re-scored postings == bm25s built from scratch with those parameters
    ref2 = bm25s.BM25(k1=1.5, b=0.75)
    ref2.index([t for t in toks if t], show_progress=False)
    assert np.allclose(bm25_index.rescore(idx, BM25Config(k1=1.5, b=0.75)).scores(q)[real], ref2.get_scores(q), atol=1e-5)
    # incremental == from scratch
    inc = bm25_index.update(idx, np.arange(0, 150, 4), np.arange(150, 170), toks[:20], cfg)
    keep = [i for i in range(150) if i % 4]
    full = bm25_index.update(None, np.zeros(0, np.int64), np.array(keep + list(range(150, 170))), [toks[i] for i in keep] + toks[:20], cfg)
    assert np.allclose(inc.scores(q), full.scores(q))
    bm25_index.save(inc, tmp_path / "b")
    loaded = bm25_index.load(tmp_path / "b", mmap=True)
    assert np.allclose(loaded.scores(q), inc.scores(q))
    assert np.allclose(bm25s.BM25.load(tmp_path / "b").get_scores(q), inc.scores(q), atol=1e-5)


def test_fusion_functions():
    d = np.array([0.9, 0.5, 0.1])
    b = np.array([0.0, 10.0, 5.0])
    assert np.allclose(fusion.normalize(d, "minmax"), [1, 0.5, 0])
    assert np.allclose(fusion.convex(d, b, 1.0, "minmax"), fusion.normalize(d, "minmax"))
    assert np.allclose(fusion.convex(d, b, 0.0, "minmax"), fusion.normalize(b, "minmax"))
    r = fusion.rrf(d, b, 60)
    # reference formula: sum over modes of 1 / (k + rank), ranks from 1
    # scaled by (k + 1) / 2 so rank 1 in both modes scores 1: the same order, a [0, 1] scale
    assert np.allclose(r, np.array([1 / 61 + 1 / 63, 1 / 62 + 1 / 61, 1 / 63 + 1 / 62]) * 61 / 2)
    assert np.isclose(fusion.rrf(d, d, 60)[0], 1.0)
    assert r[1] > r[0] > r[2]
    rep, (mx,) = fusion.aggregate_max(["a", "b", "a"], d, by=d)
    assert list(rep) == [0, 1] and np.allclose(mx, [0.9, 0.5])
    xc = np.array([[1, 0], [1, 0], [0, 1]], np.float32)
    picked = fusion.mmr(None, xc, np.array([1.0, 0.99, 0.5]), 2, 0.5)
    assert list(picked) == [0, 2]
    with pytest.raises(InvalidInputError):
        FusionConfig(alpha=1.5)
    with pytest.raises(InvalidInputError):
        FusionConfig(norm="weird")


def test_doc_aggregation_mmr_min_score(store):
    store.add_texts(["rivers rivers rivers one", "rivers rivers two", "mountains only", "rivers and valleys"],
                    [{"doc_id": "D1"}, {"doc_id": "D1"}, {"doc_id": "D2"}, {"doc_id": "D3"}])
    hits = store.search("rivers", k=3)
    assert [h.doc_id for h in hits].count("D1") == 1
    every = store.search("rivers", k=4, fusion=FusionConfig(doc_agg="none"))
    assert [h.doc_id for h in every].count("D1") == 2
    assert all(h.score >= 0.5 for h in store.search("rivers", k=4, min_score=0.5))
    store.add_texts(["rivers rivers rivers one"] * 1 + ["valleys and rivers"], [{"source": "dup"}, {"source": "v"}])
    plain = store.search("rivers one", k=2, mode="dense", fusion=FusionConfig(doc_agg="none"))
    diverse = store.search("rivers one", k=2, mode="dense", mmr=True, mmr_lambda=0.3, fusion=FusionConfig(doc_agg="none"))
    assert plain[0].text == plain[1].text == "rivers rivers rivers one"
    assert diverse[0].text != diverse[1].text


def test_one_query_flat_view_scan_equals_faiss_flat():
    faiss = pytest.importorskip("faiss")
    rng = np.random.default_rng(5)
    xb = rng.standard_normal((2000, 48)).astype(np.float32)
    xb /= np.linalg.norm(xb, axis=1, keepdims=True)
    ids = np.arange(2000, dtype=np.int64) * 3 + 11
    idx = vector_index.build_index(xb, ids, "Flat", vector_index.IndexConfig())
    ref = faiss.IndexFlatIP(48)
    ref.add(xb)
    view = vector_index.flat_view(idx)
    assert view is not None and np.array_equal(view[1], ids) and np.array_equal(view[0], xb)
    for q in range(5):
        xq = xb[q : q + 1] + 0.05 * rng.standard_normal((1, 48)).astype(np.float32)  # (1, D)
        for k in (1, 10, 2000, 2500):
            D, I = vector_index.exact_search(xq, view[0], view[1], k)
            Dr, Ir = ref.search(xq, min(k, 2000))
            assert D.shape == I.shape == (1, k)
            n = min(k, 2000)
            assert np.allclose(D[0, :n], Dr[0], atol=1e-5)  # same ranked scores
            assert np.allclose(xb[(I[0, :n] - 11) // 3] @ xq[0], D[0, :n], atol=1e-5)  # each id carries its own score
            assert len(set(I[0, :n].tolist())) == n
            if k <= 10:  # well-separated head: identical ids
                assert np.array_equal(I[0, :n], ids[Ir[0]])
            assert (I[0, 2000:] == -1).all()
    assert vector_index.flat_view(vector_index.build_index(xb, ids, "HNSW32,Flat", vector_index.IndexConfig())) is None


def test_flat_view_of_mmapped_index_is_usable(tmp_path):
    rng = np.random.default_rng(6)
    xb = rng.standard_normal((300, 24)).astype(np.float32)
    ids = np.arange(300, dtype=np.int64)
    vector_index.write_index(vector_index.build_index(xb, ids, "Flat", vector_index.IndexConfig()), tmp_path / "i.faiss")
    idx = vector_index.read_index(tmp_path / "i.faiss", mmap=True)
    view = vector_index.flat_view(idx)
    assert view[0].flags.aligned and np.array_equal(view[0], xb)
    _, I = vector_index.exact_search(xb[7:8], view[0], view[1], 3)
    assert I[0, 0] == 7


def test_fast_dense_path_and_doc_id_cache_follow_commits(store):
    store.add_texts(["rivers flow to the ocean", "mountains rise high", "rivers cut canyons"],
                    [{"doc_id": "R"}, {"doc_id": "M"}, {"doc_id": "R"}])
    first = store.search("rivers", k=3, mode="dense")
    assert len(first) == 2 and {h.doc_id for h in first} == {"R", "M"}
    store.add_texts(["glacier melts into a river"], [{"doc_id": "G"}])
    assert {h.doc_id for h in store.search("rivers", k=3, mode="dense")} == {"R", "M", "G"}
    store.delete(ids=[h.id for h in store.search("glacier", k=3, mode="dense") if h.doc_id == "G"])
    again = store.search("glacier", k=3, mode="dense")
    assert {h.doc_id for h in again} == {"R", "M"}
    # the one-query fast path agrees with the batched FAISS path
    batch = store.search_batch(["rivers", "mountains"], k=3, mode="dense")
    assert [h.id for h in batch[0]] == [h.id for h in store.search("rivers", k=3, mode="dense")]


@pytest.mark.parametrize("cfg", [FusionConfig(norm=n, alpha=a) for n in fusion.NORMS for a in (0.0, 0.3, 1.0)]
                         + [FusionConfig(method="rrf", alpha=a) for a in (0.0, 0.5, 1.0)])
def test_fused_scores_lie_in_unit_interval(cfg):
    rng = np.random.default_rng(3)
    for _ in range(20):
        n = int(rng.integers(1, 40))
        d = rng.uniform(-1, 1, n)  # cosines
        b = rng.exponential(8.0, n) * (rng.random(n) > 0.3)  # BM25, some zero
        s = fusion.fuse(d, b, cfg)
        assert s.shape == (n,) and np.all(s >= 0.0) and np.all(s <= 1.0), (cfg, s)
    # the order of a convex fusion is that of alpha * norm(dense) + (1 - alpha) * norm(bm25)
    d, b = rng.uniform(-1, 1, 30), rng.exponential(5.0, 30)
    if cfg.method == "convex" and cfg.norm != "none":
        raw = fusion.convex(d, b, cfg.alpha, cfg.norm)
        fused = fusion.fuse(d, b, cfg)
        assert np.all(np.diff(fused[np.argsort(raw, kind="stable")]) >= -1e-12)


def test_tmm_uses_each_modes_floor():
    d = np.array([0.2, 0.1, -1.0])
    assert np.allclose(fusion.normalize(d, "tmm", -1.0), [1.0, 1.1 / 1.2, 0.0])
    assert np.allclose(fusion.normalize(np.array([4.0, 1.0, 0.0]), "tmm", 0.0), [1.0, 0.25, 0.0])
    assert np.allclose(fusion.normalize(np.array([0.0, 0.0]), "tmm", 0.0), [0.0, 0.0])  # no BM25 match at all


def test_hybrid_hits_and_min_score_on_documented_scales(store):
    rng = np.random.default_rng(5)
    store.add_texts([text_of(rng, 20) for _ in range(40)])
    for mode in ("dense", "bm25", "hybrid"):
        hits = store.search("river mountain", k=40, mode=mode)
        assert len(hits) > 4
        if mode != "hybrid":  # a single mode ranks by its own raw score
            assert all(h.score == h.scores[mode] for h in hits)
        lo, hi = {"dense": (-1.0, 1.0), "bm25": (0.0, np.inf), "hybrid": (0.0, 1.0)}[mode]
        assert all(lo <= h.score <= hi for h in hits)
        cut = hits[len(hits) // 2].score
        kept = store.search("river mountain", k=40, mode=mode, min_score=cut)
        assert kept == [h for h in hits if h.score >= cut] and 0 < len(kept) < len(hits)


def test_search_request_carries_the_settings(store):
    from retrieval.store.search import SearchRequest
    from retrieval.types import chunk_uri

    rng = np.random.default_rng(9)
    store.add_texts([text_of(rng, 15) for _ in range(20)], [{"kind": "a" if i % 2 else "b"} for i in range(20)])
    req = SearchRequest(k=3, mode="bm25", filters={"kind": "a"})
    by_req = store.search("river ocean", req)
    assert by_req == store.search("river ocean", k=3, mode="bm25", filters={"kind": "a"})
    assert by_req == store.search_batch(["river ocean", "forest"], req)[0]
    assert all(h.metadata["kind"] == "a" for h in by_req)
    assert store.search("river ocean", req, k=5)[:3] == by_req  # keywords override the request's fields
    assert by_req[0].uri == chunk_uri("default", by_req[0].id) == f"chunk://default/{by_req[0].id}"
    assert SearchRequest(k=1000).k == 1000  # the MCP server pages through up to 1000 hits
    for bad in (dict(k=0), dict(k=True), dict(k=MAX_K + 1), dict(mode="x"), dict(filters=["kind"]), dict(mmr_lambda=2.0),
                dict(min_score=float("nan")), dict(min_score=float("-inf")), dict(fusion={"alpha": 0.5})):
        with pytest.raises(InvalidInputError):
            SearchRequest(**bad)
    with pytest.raises(InvalidInputError, match="unknown search setting"):
        store.search("river", top_k=3)


@pytest.mark.slow  # calibrates fusion twice on a growing collection
def test_calibration_records_its_choice_and_reruns_when_the_collection_grows(tmp_path):
    from retrieval.store import calibrate

    rng = np.random.default_rng(11)
    docs = tmp_path / "docs"
    docs.mkdir()
    for i in range(30):
        (docs / f"d{i}.md").write_text(f"# {text_of(rng, 4)}\n\n{text_of(rng, 12).capitalize()}. {text_of(rng, 10).capitalize()}.\n")
    with DocStore.open(tmp_path / "s", embedder="hash-64") as s:
        s.index_paths([docs])
        measured = s.calibrate_fusion("default", calibrate.CalibrationConfig(n_queries=20))
        assert not measured["applied"] and s.fusion_for(s.collection("default")) == s.fusion  # off unless asked for
        entry = s.calibrate_fusion("default", calibrate.CalibrationConfig(n_queries=20, regrow=1.5, apply=True))
        assert entry["pseudo_queries"] >= 10 and sum(entry["kinds"].values()) == entry["pseudo_queries"]
        assert entry["at_chunks"] == s.stats("default")["chunks"]
        assert 0.0 <= entry["default_mrr10"] <= entry["pseudo_mrr10"] <= 1.0
        info = s.stats("default")["fusion"]
        assert info["source"] == entry["source"] and info["calibration"] == entry
        if entry["source"] == "calibrated":  # kept: searches use it
            assert s.fusion_for(s.collection("default")) == FusionConfig(**entry["config"])
        else:
            assert s.fusion_for(s.collection("default")) == s.fusion and entry["config"] is None
        for i in range(30, 60):  # the collection doubles: index_paths re-calibrates
            (docs / f"d{i}.md").write_text(f"# {text_of(rng, 4)}\n\n{text_of(rng, 12).capitalize()}.\n")
        s.index_paths([docs])
        assert s.stats("default")["fusion"]["calibration"]["at_chunks"] == s.stats("default")["chunks"] > entry["at_chunks"]
    with DocStore.open(tmp_path / "s", read_only=True) as s:  # recorded in the manifest
        assert s.stats("default")["fusion"]["calibration"]["at_chunks"] > entry["at_chunks"]
    with pytest.raises(InvalidInputError):
        calibrate.CalibrationConfig(n_queries=3)
    qs = calibrate.pseudo_queries([(1, "D", "Intro > Getting started", "One two three four five six seven.", "T\nx")], 5)
    assert qs and all(q.target == "D" for q in qs)
