"""DocStore: add/search/get/delete/stats, incremental indexing, filters before ranking, fusion,
index choice, embedder mismatch, bad input, read-only stores, the writer lock and lazy loading."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from retrieval.embed.embedder import HashEmbedder
from retrieval.errors import InvalidInputError, MismatchError, NotFoundError, StoreWriteError
from retrieval.index import bm25_index, fusion, vector_index
from retrieval.index.bm25_index import BM25Config
from retrieval.index.fusion import FusionConfig
from retrieval.store.docstore import DocStore

HIT_FIELDS = {"id", "score", "scores", "text", "source", "start_char", "end_char", "start_line", "end_line",
              "heading", "metadata", "doc_id", "collection"}
WORDS = ("alpha beta gamma delta epsilon zeta theta iota kappa lambda omicron sigma tau upsilon omega "
         "river mountain forest desert ocean valley island canyon glacier meadow").split()


class CountingEmbedder(HashEmbedder):
    """HashEmbedder that counts how many texts it embedded (to prove incremental re-embedding)."""

    def __init__(self, dim: int = 64) -> None:
        super().__init__(dim)
        self.embedded = 0

    def embed(self, texts, *, batch_size=64, progress=None):
        self.embedded += len(texts)
        return super().embed(texts, batch_size=batch_size, progress=progress)


def _text(rng: np.random.Generator, n: int = 30) -> str:
    return " ".join(rng.choice(WORDS, size=n))


def _corpus(root: Path, n_files: int = 12, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    (root / "sub").mkdir(parents=True, exist_ok=True)
    for i in range(n_files):
        d = root / ("sub" if i % 3 == 0 else ".")
        (d / f"doc{i}.md").write_text(f"# Doc {i}\n\n{_text(rng)}.\n\n## Part two\n\n{_text(rng)} number{i}.\n", encoding="utf-8")
    return root


@pytest.fixture()
def store(tmp_path):
    s = DocStore.open(tmp_path / "store", embedder="hash-64")
    yield s
    s.close()


def test_add_search_get_delete_stats(store):
    ids = store.add_texts(["the cat sat on the mat", "dogs bark at night", "a cat and a dog play"],
                          [{"source": "a.txt"}, {"source": "b.txt", "tags": ["pets"]}, {"source": "c.txt", "author": "x"}])
    assert ids == [ids[0], ids[1], ids[2]] and all(isinstance(i, str) for i in ids)
    for mode in ("dense", "bm25", "hybrid"):
        hits = store.search("cat mat", k=2, mode=mode)
        assert hits and hits[0].id == ids[0]
        d = hits[0].to_dict()
        assert set(d) == HIT_FIELDS
        assert set(d["scores"]) == ({"dense", "bm25"} if mode == "hybrid" else {mode})
        assert json.loads(json.dumps(d)) == d
    got = store.get([ids[2], "nope"])
    assert [h.id for h in got] == [ids[2]] and got[0].score == 0 and got[0].metadata["author"] == "x"
    assert store.delete(ids=[ids[0]]) == {"removed_chunks": 1, "removed_sources": 0}
    assert ids[0] not in [h.id for h in store.search("cat mat", k=3)]
    st = store.stats("default")
    assert st["chunks"] == 2 and st["vectors"] == 2 and st["embedder"] == "hash-64@v1" and st["index_type"] == "Flat"
    assert store.list_collections()[0]["name"] == "default"
    assert store.verify()["ok"]


def test_add_texts_ids_replace(store):
    store.add_texts(["first version about rivers"], ids=["doc-1"])
    store.add_texts(["second version about mountains"], ids=["doc-1"])
    hits = store.get(["doc-1"])
    assert len(hits) == 1 and hits[0].text == "second version about mountains"
    assert store.stats("default")["chunks"] == 1
    assert store.verify()["ok"]


def test_index_paths_incremental(tmp_path):
    corpus = _corpus(tmp_path / "corpus")
    emb = CountingEmbedder()
    with DocStore.open(tmp_path / "s", embedder=emb) as s:
        r = s.index_paths([corpus]).to_dict()
        assert r["added"] == 12 and r["files_seen"] == 12 and r["chunks_added"] > 0
        first = emb.embedded
        r = s.index_paths([corpus]).to_dict()
        assert r["unchanged"] == 12 and r["chunks_added"] == 0 and emb.embedded == first
        p = corpus / "doc1.md"
        p.write_text(p.read_text() + "\nA new paragraph about glaciers and canyons appears here.\n")
        (corpus / "sub" / "doc0.md").unlink()
        (corpus / "new.md").write_text("# New\n\nA brand new file about oceans and islands.\n")
        before = emb.embedded
        r = s.index_paths([corpus]).to_dict()
        assert (r["added"], r["updated"], r["removed"], r["unchanged"]) == (1, 1, 1, 10)
        assert 0 < emb.embedded - before <= r["chunks_added"]
        assert not [h for h in s.search("number0", k=50, mode="bm25") if h.source.endswith("doc0.md")]
        assert s.verify()["ok"]
        # hit offsets and lines reproduce the file text exactly
        for h in s.search("glaciers canyons", k=20):
            text = Path(h.source).read_text(encoding="utf-8")
            assert text[h.start_char : h.end_char] == h.text
            assert h.start_line == text.count("\n", 0, h.start_char) + 1


def test_rename_keeps_content_despite_exact_dedup(tmp_path):
    corpus = _corpus(tmp_path / "c", n_files=3)
    with DocStore.open(tmp_path / "s", embedder="hash-64") as s:
        s.index_paths([corpus])
        n = s.stats("default")["chunks"]
        (corpus / "doc1.md").rename(corpus / "renamed.md")
        r = s.index_paths([corpus]).to_dict()
        assert r["added"] == 1 and r["removed"] == 1 and r["dropped"]["exact_duplicate"] == 0
        assert s.stats("default")["chunks"] == n


def test_skips_and_bad_paths(tmp_path):
    d = tmp_path / "c"
    d.mkdir()
    (d / "bin.dat").write_bytes(b"\x00\x01\x02binary")
    (d / "bad.txt").write_bytes(b"caf\xe9 invalid utf8 text here")
    (d / "ok.md").write_text("# Ok\n\nSome real words to index here.\n")
    with DocStore.open(tmp_path / "s", embedder="hash-64") as s:
        r = s.index_paths([d]).to_dict()
        assert {x["source"].rsplit("/", 1)[-1] for x in r["skipped"]} == {"bin.dat", "bad.txt"}
        assert all(x["reason"] for x in r["skipped"])
        with pytest.raises(InvalidInputError):
            s.index_paths([tmp_path / "missing"])
        (tmp_path / "empty").mkdir()
        with pytest.raises(InvalidInputError, match="nothing to index"):
            s.index_paths([tmp_path / "empty"])
        assert s.verify()["ok"]


def _tagged_store(tmp_path, n=300):
    rng = np.random.default_rng(1)
    s = DocStore.open(tmp_path / "s", embedder="hash-64")
    texts = [_text(rng, 12) for _ in range(n)]
    metas = [{"source": f"dir{i % 4}/f{i}.md", "kind": "markdown" if i % 2 else "text", "tags": ["rare"] if i % 50 == 7 else []}
             for i in range(n)]
    s.add_texts(texts, metas)
    return s, texts, metas


@pytest.mark.parametrize("mode", ["dense", "bm25", "hybrid"])
def test_filters_apply_before_ranking(tmp_path, mode):
    s, texts, metas = _tagged_store(tmp_path)
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
        texts = [_text(rng, 10) for _ in range(400)]
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
    texts = [_text(rng, int(rng.integers(0, 25))) for _ in range(150)]
    toks = [tok(t) for t in texts]
    idx = bm25_index.update(None, np.zeros(0, np.int64), np.arange(150), toks, cfg)
    ref = bm25s.BM25(k1=cfg.k1, b=cfg.b)
    ref.index(toks, show_progress=False)
    q = tok("gamma rivers mountain mountain")
    assert np.allclose(idx.scores(q), ref.get_scores(q), atol=1e-5)
    # re-scored postings == bm25s built from scratch with those parameters
    ref2 = bm25s.BM25(k1=1.5, b=0.75)
    ref2.index(toks, show_progress=False)
    assert np.allclose(bm25_index.rescore(idx, BM25Config(k1=1.5, b=0.75)).scores(q), ref2.get_scores(q), atol=1e-5)
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
    assert np.allclose(r, [1 / 61 + 1 / 63, 1 / 62 + 1 / 61, 1 / 63 + 1 / 62])
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


def test_bad_input_errors(store, tmp_path):
    store.add_texts(["some text about rivers"])
    for bad in [dict(query=""), dict(query="   "), dict(query="x", k=0), dict(query="x", k=-3),
                dict(query="x", k=10**6), dict(query="x", mode="fuzzy")]:
        q = bad.pop("query")
        with pytest.raises(InvalidInputError):
            store.search(q, **bad)
    with pytest.raises(NotFoundError, match="default"):
        store.search("x", collection="nope")
    with pytest.raises(InvalidInputError):
        store.add_texts(["a"], collection="../evil")
    with pytest.raises(InvalidInputError):
        store.delete()
    (tmp_path / "notastore").mkdir()
    (tmp_path / "notastore" / "file.txt").write_text("x")
    with pytest.raises(InvalidInputError, match="not a knnrag store"):
        DocStore.open(tmp_path / "notastore")
    with pytest.raises(NotFoundError):
        DocStore.open(tmp_path / "missing", read_only=True)


def test_embedder_mismatch(tmp_path):
    with DocStore.open(tmp_path / "s", embedder="hash-64") as s:
        s.add_texts(["hello world"])
    with DocStore.open(tmp_path / "s", embedder="hash-32") as s:
        with pytest.raises(MismatchError, match="hash-64"):
            s.search("hello")
        with pytest.raises(MismatchError, match="hash-64"):
            s.add_texts(["more"])
    with pytest.raises(MismatchError, match="hash-64"):
        DocStore.open(tmp_path / "s", embedder=HashEmbedder(16)).collection("default")
    with DocStore.open(tmp_path / "s") as s:  # None: the recorded embedder
        assert s.search("hello")[0].text == "hello world"


def test_read_only_open(tmp_path):
    with DocStore.open(tmp_path / "s", embedder="hash-64") as s:
        s.add_texts(["hello world"])
    with DocStore.open(tmp_path / "s", read_only=True) as s:
        assert s.search("hello")[0].text == "hello world"
        with pytest.raises(StoreWriteError):
            s.add_texts(["nope"])


READ_ONLY_SCRIPT = """
import sys
from retrieval.store.docstore import DocStore
from retrieval.errors import StoreWriteError
s = DocStore.open(sys.argv[1])
print(s.search("hello")[0].text)
try:
    s.add_texts(["nope"])
except StoreWriteError as e:
    print("StoreWriteError:", e.message, "|", e.hint)
"""


def _make_read_only(root: Path) -> tuple[list, dict]:
    """Make `root` unwritable for this process: chmod for normal users; root ignores permissions,
    so as root use the immutable attribute (chattr +i), which stops root too."""
    if os.geteuid() != 0:
        for p in [root, *root.rglob("*")]:
            p.chmod(0o555 if p.is_dir() else 0o444)
        undo = ["chmod", "-R", "u+w", str(root)]
    else:
        r = subprocess.run(["chattr", "-R", "+i", str(root)], capture_output=True)
        if r.returncode != 0:
            pytest.skip(f"cannot make a directory read-only for root here: {r.stderr.decode()[:200]}")
        undo = ["chattr", "-R", "-i", str(root)]
    return undo, {}


def test_read_only_directory(tmp_path):
    """A store in a directory the user cannot write: searches work, writes fail clearly."""
    root = tmp_path / "ro"
    with DocStore.open(root, embedder="hash-64") as s:
        s.add_texts(["hello world"])
    undo, _ = _make_read_only(root)
    try:
        out = subprocess.run([sys.executable, "-c", READ_ONLY_SCRIPT, str(root)], capture_output=True, text=True, timeout=120)
    finally:
        subprocess.run(undo, check=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[0] == "hello world"
    assert "StoreWriteError: " in out.stdout and "read-only" in out.stdout


LOCK_HOLDER = """
import sys, time
from pathlib import Path
from retrieval.store.durable import WriterLock
with WriterLock(Path(sys.argv[1])):
    print("locked", flush=True)
    time.sleep(30)
"""


def test_second_writer_gets_store_write_error(tmp_path):
    with DocStore.open(tmp_path / "s", embedder="hash-64") as s:
        s.add_texts(["hello world"])
        p = subprocess.Popen([sys.executable, "-c", LOCK_HOLDER, str(tmp_path / "s")], stdout=subprocess.PIPE, text=True,
                             env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])})
        try:
            assert p.stdout.readline().strip() == "locked"
            with pytest.raises(StoreWriteError, match="another process") as ei:
                s.add_texts(["second"])
            assert "wait" in ei.value.hint
            assert s.search("hello")[0].text == "hello world"  # reads still work
        finally:
            p.kill()
            p.wait()
        s.add_texts(["second"])  # the kernel released the lock
        assert s.stats("default")["chunks"] == 2


def test_readers_see_committed_snapshots_during_writes(store):
    store.add_texts([f"seed text number {i}" for i in range(20)])
    errors: list[BaseException] = []
    stop = threading.Event()

    def reader():
        try:
            while not stop.is_set():
                hits = store.search("text number", k=5)
                assert len(hits) == 5
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    t = threading.Thread(target=reader)
    t.start()
    for i in range(10):
        store.add_texts([f"more text number {i}"])
    stop.set()
    t.join()
    assert not errors
    assert store.verify()["chunks"] == 30


def test_open_and_search_do_not_import_torch(tmp_path):
    with DocStore.open(tmp_path / "s", embedder="hash-64") as s:
        s.add_texts(["hello world"])
    code = (
        "import sys\nfrom retrieval.store.docstore import DocStore\n"
        f"s = DocStore.open({str(tmp_path / 's')!r}, read_only=True)\n"
        "s.stats(); s.list_collections()\n"
        "s.search('hello')\n"
        "bad = [m for m in ('torch', 'transformers', 'sentence_transformers', 'bm25s') if m in sys.modules]\n"
        "print(bad)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_no_pickle_in_store_files(store):
    store.add_texts(["some text", "more text"])
    gens = list((store.path / "default").glob("gen-*"))
    assert len(gens) == 1
    for f in gens[0].rglob("*.npy"):
        np.load(f, allow_pickle=False)
    manifest = json.loads((store.path / "default" / "manifest.json").read_text())
    assert manifest["format_version"] == 1 and manifest["embedder"]["model_id"] == "hash-64@v1"
    assert manifest["embedder"]["dim"] == 64 and manifest["metric"] == "inner_product" and "chunker" in manifest
    assert manifest["index"]["factory"] == "auto"


def test_collections_and_delete_by_source(tmp_path):
    corpus = _corpus(tmp_path / "c", n_files=6)
    with DocStore.open(tmp_path / "s", embedder="hash-64") as s:
        s.index_paths([corpus], collection="docs", tags=["t1"])
        s.add_texts(["other collection text"], collection="notes")
        assert [c["name"] for c in s.list_collections()] == ["docs", "notes"]
        hits = s.search("alpha", k=100, collection="docs", filters={"tags": ["t1"]})
        assert hits and all(h.collection == "docs" for h in hits)
        res = s.delete(sources=[str(corpus / "sub")], collection="docs")
        assert res["removed_sources"] == 2 and res["removed_chunks"] > 0
        assert not [h for h in s.search("alpha", k=100, collection="docs") if "/sub/" in h.source]
        assert s.verify("docs")["ok"]
        st = s.stats()
        assert {c["name"] for c in st["collections"]} == {"docs", "notes"}


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
