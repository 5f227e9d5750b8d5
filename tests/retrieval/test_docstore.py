"""DocStore: add/search/get/delete/stats, incremental indexing, collections, embedder mismatch and bad input."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from retrieval.embed.hash_embedder import HashEmbedder
from retrieval.errors import InvalidInputError, MismatchError, NotFoundError
from retrieval.index.fusion import FusionConfig
from retrieval.store.docstore import DocStore
from tests.retrieval.docstore_helpers import HIT_FIELDS, CountingEmbedder, make_corpus, text_of


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
    corpus = make_corpus(tmp_path / "corpus")
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
    corpus = make_corpus(tmp_path / "c", n_files=3)
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


def test_collections_and_delete_by_source(tmp_path):
    corpus = make_corpus(tmp_path / "c", n_files=6)
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


def test_report_lists_files_and_records_left_without_chunks(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "good.md").write_text("# Notes\n\nRivers run down from the mountains to the sea.\n")
    (docs / "rule.txt").write_text("---- ==== ---- ==== ----\n")  # no words: every chunk is low quality
    (docs / "recs.jsonl").write_text(json.dumps({"_id": "r1", "title": "", "text": "Glaciers carve deep valleys."}) + "\n"
                                     + json.dumps({"_id": "r2", "title": "COBOL", "text": ""}) + "\n"
                                     + json.dumps({"_id": "r3", "title": "", "text": "   "}) + "\n")
    with DocStore.open(tmp_path / "s", embedder="hash-64") as s:
        rep = s.index_paths([docs])
        emptied = {(e["source"].rsplit("/", 1)[-1], e["doc_id"]): e["reason"] for e in rep.emptied}
        assert emptied == {("rule.txt", None): "1 low quality"}  # a file whose only chunk was dropped
        assert rep.to_dict()["emptied"] == rep.emptied
        assert {h.doc_id for h in s.search("glaciers valleys", k=5)} >= {"r1"}
        # a one-word record would fail the quality filter; it is kept, since it is a document the user named
        assert [h.doc_id for h in s.search("cobol", k=1, mode="bm25")] == ["r2"]


def test_bm25_scores_a_record_as_one_document(tmp_path):
    rng = np.random.default_rng(4)
    long_text = " ".join(f"{text_of(rng, 40).capitalize()}." for _ in range(40)) + " Zanzibar lighthouse keepers."
    recs = [{"_id": "long", "title": "Coastal notes", "text": long_text}] + [
        {"_id": f"r{i}", "title": f"Note {i}", "text": f"{text_of(rng, 30).capitalize()}."} for i in range(20)]
    (tmp_path / "c.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    with DocStore.open(tmp_path / "s", embedder="hash-64") as s:
        s.index_paths([tmp_path / "c.jsonl"])
        chunks = [h for h in s.search("coastal", k=100, mode="dense", fusion=FusionConfig(doc_agg="none")) if h.doc_id == "long"]
        assert len(chunks) > 2  # the record is split for the embedder
        # words only in the record's last chunk find it by BM25, through the record's first chunk
        hits = s.search("zanzibar lighthouse", k=3, mode="bm25")
        assert hits[0].doc_id == "long" and "Zanzibar" not in hits[0].text
        assert s.search("zanzibar lighthouse", k=3, mode="hybrid")[0].doc_id == "long"


def test_title_tokens_count_title_weight_times(tmp_path):
    rng = np.random.default_rng(8)
    recs = [{"_id": "titled", "title": "Quokka field notes", "text": f"{text_of(rng, 30).capitalize()}."},
            {"_id": "body", "title": "Other notes", "text": f"A quokka. {text_of(rng, 5).capitalize()}."}]
    recs += [{"_id": f"r{i}", "title": f"Note {i}", "text": f"{text_of(rng, 20).capitalize()}."} for i in range(10)]
    (tmp_path / "c.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    with DocStore.open(tmp_path / "s", embedder="hash-64") as s:
        s.index_paths([tmp_path / "c.jsonl"])
        assert s.collection("default").manifest["bm25"]["title_weight"] == 3
        hits = s.search("quokka", k=2, mode="bm25")
        # once each, the short body would win on length; the title counts three times
        assert [h.doc_id for h in hits] == ["titled", "body"] and hits[0].score > hits[1].score


def test_live_chunks_lists_live_chunks_with_their_generation(store):
    ids = store.add_texts(["first text", "second text"], ids=["x1", None])
    third = store.add_texts(["third text"])
    before = store.live_chunks()
    assert before.texts == {"x1": "first text", ids[1]: "second text", third[0]: "third text"}
    assert before.generation == store.stats("default")["generation"] == 2
    store.delete(ids=["x1"])
    after = store.live_chunks("default")
    assert after.generation == 3 and set(after.texts) == set(before.texts) - {"x1"} and after.uid == before.uid != ""
    assert all(h.text == after.texts[h.id] for h in store.get(list(after.texts)))  # the ids hits carry
    with pytest.raises(NotFoundError):
        store.live_chunks("missing")
