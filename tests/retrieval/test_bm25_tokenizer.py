"""BM25 tokeniser identity: the stopword lists, the manifest record, and stores built before them."""
from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from retrieval.errors import CorruptStoreError
from retrieval.index import bm25_index, stopwords
from retrieval.index.bm25_index import BM25Config
from retrieval.store import docstore as docstore_module
from retrieval.store.docstore import DocStore

DOCS = ["What about rivers? Which rivers flow north?", "Glaciers carve valleys.", "The delta of a river floods.",
        "Call read_file on the glacier log."]


def test_stopword_lists_are_bm25s():
    bm25s_stop = pytest.importorskip("bm25s.stopwords")
    assert tuple(stopwords.STOPWORDS_EN) == bm25s_stop.STOPWORDS_EN
    assert tuple(stopwords.STOPWORDS_EN_PLUS) == bm25s_stop.STOPWORDS_EN_PLUS
    assert stopwords.name_of(list(reversed(bm25s_stop.STOPWORDS_EN))) == "en" and stopwords.name_of(["zzz"]) is None


def test_default_list_drops_question_words_that_en_keeps():
    new = bm25_index.tokenizer_for(BM25Config())
    old = bm25_index.tokenizer_for(BM25Config(stopwords="en"))
    assert new("What about the rivers which flow?") == ["river", "flow"]
    assert old("What about the rivers which flow?") == ["what", "about", "river", "which", "flow"]
    assert bm25_index.tokenizer_for(BM25Config(stopwords=""))("the rivers") == ["the", "river"]
    with pytest.raises(ValueError, match="unknown BM25 stopword list"):
        BM25Config(stopwords="klingon")


def test_words_split_snake_case_where_bm25s_does_not():
    new = bm25_index.tokenizer_for(BM25Config(pattern="words"))
    old = bm25_index.tokenizer_for(BM25Config(pattern="bm25s"))
    assert new("read_file(path_2) x_y café p53") == ["read", "file", "path", "café", "p53"]
    assert old("read_file(path_2) x_y café p53") == ["read_fil", "path_2", "x_i", "café", "p53"]
    with pytest.raises(ValueError, match="unknown BM25 token pattern"):
        BM25Config(pattern=r"\w+")


def test_stopwords_change_the_scores():
    """A question word no longer matches: with "en" the first document scores for "what"."""
    for name, scored in (("en", True), ("en_plus", False)):
        cfg = BM25Config(stopwords=name)
        tok = bm25_index.tokenizer_for(cfg)
        idx = bm25_index.update(None, np.zeros(0, np.int64), np.arange(len(DOCS)), [tok(t) for t in DOCS], cfg)
        s = idx.scores(tok("what glaciers"))
        assert (s[0] > 0) == scored and s[1] > 0 and s[2] == 0


def test_manifest_and_index_record_the_tokenizer(tmp_path):
    _write_docs(tmp_path / "c", DOCS)
    with DocStore.open(tmp_path / "s", embedder="hash-64") as s:
        s.index_paths([tmp_path / "c"])
        coll = s.collection("default")
        assert coll.manifest["bm25"]["stopwords"] == "en_plus"
        assert coll.manifest["bm25"]["tokenizer"] == bm25_index.tokenizer_id(BM25Config()) and "en_plus:179" in coll.manifest["bm25"]["tokenizer"]
        assert s.search("what about", k=3, mode="bm25") == []
        assert [h.text.strip() for h in s.search("file", k=3, mode="bm25")] == [DOCS[3]]
        assert s.stats("default")["bm25"]["tokenizer"] == bm25_index.tokenizer_id(BM25Config())  # `knnrag stats` shows it
    on_disk = json.loads((tmp_path / "s" / "default" / "manifest.json").read_text())
    assert on_disk["bm25"]["tokenizer"] == bm25_index.tokenizer_id(BM25Config())
    (tok,) = [json.loads(p.read_text()) for p in (tmp_path / "s" / "default").glob("gen-*/bm25/tokenizer.json")]
    assert tok["stopwords_name"] == "en_plus" and len(tok["stopwords"]) == 179


def _write_docs(folder, docs: list[str]) -> None:
    folder.mkdir(exist_ok=True)
    for i, d in enumerate(docs):
        (folder / f"d{i}.txt").write_text(d + "\n")


def _legacy_store(tmp_path, monkeypatch):
    """A store as the version before the "en_plus" and "words" defaults wrote it: manifest
    stopwords "en", no pattern or tokenizer id, tokenizer.json holding bm25s's pattern and list."""
    monkeypatch.setattr(docstore_module, "BM25Config", lambda: BM25Config(stopwords="en", pattern="bm25s"))
    _write_docs(tmp_path / "c", DOCS)
    with DocStore.open(tmp_path / "s", embedder="hash-64") as s:
        s.index_paths([tmp_path / "c"])
    monkeypatch.undo()
    coll = tmp_path / "s" / "default"
    m = json.loads((coll / "manifest.json").read_text())
    del m["bm25"]["tokenizer"], m["bm25"]["pattern"]
    (coll / "manifest.json").write_text(json.dumps(m))
    _write_tokenizer_json(coll, {"token_pattern": bm25_index.TOKEN_PATTERN, "lower": True,
                                 "stopwords": stopwords.STOPWORDS_EN, "stemmer": "english"})
    return coll


def _write_tokenizer_json(coll, tok: dict) -> None:
    """Rewrite each generation's bm25/tokenizer.json and its size and checksum in gen.json."""
    for p in coll.glob("gen-*/bm25/tokenizer.json"):
        data = json.dumps(tok).encode()
        p.write_bytes(data)
        meta_path = p.parent.parent / "gen.json"
        meta = json.loads(meta_path.read_text())
        meta["files"]["bm25/tokenizer.json"] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        meta_path.write_text(json.dumps(meta))


def test_a_store_built_with_the_old_list_keeps_it(tmp_path, monkeypatch):
    _legacy_store(tmp_path, monkeypatch)
    with DocStore.open(tmp_path / "s", embedder="hash-64") as s:
        cfg = s.collection("default").bm25_config
        assert (cfg.stopwords, cfg.pattern) == ("en", "bm25s")
        hits = s.search("what about", k=3, mode="bm25")  # its queries are tokenised as its chunks were
        assert len(hits) == 1 and "What about" in hits[0].text
        assert s.search("file", k=3, mode="bm25") == [] and len(s.search("read_file", k=3, mode="bm25")) == 1
        _write_docs(tmp_path / "c", DOCS + ["What next, read_file?"])
        s.index_paths([tmp_path / "c"])  # and it grows with the same tokeniser
        assert len(s.search("what about", k=5, mode="bm25")) == 2 and len(s.search("read_file", k=5, mode="bm25")) == 2


def test_tokenizer_mismatch_is_refused_with_a_hint(tmp_path, monkeypatch):
    coll = _legacy_store(tmp_path, monkeypatch)
    m = json.loads((coll / "manifest.json").read_text())
    m["bm25"]["stopwords"] = "en_plus"  # the manifest no longer describes the index
    (coll / "manifest.json").write_text(json.dumps(m))
    with DocStore.open(tmp_path / "s", embedder="hash-64", read_only=True) as s, \
            pytest.raises(CorruptStoreError, match="tokenised with .*stopwords:en:33") as e:
        s.search("rivers", k=3, mode="bm25")
    assert "re-index" in e.value.hint
    _write_tokenizer_json(coll, {"token_pattern": bm25_index.TOKEN_PATTERN, "stopwords": ["zzz"], "stemmer": "english"})
    with DocStore.open(tmp_path / "s", embedder="hash-64", read_only=True) as s, \
            pytest.raises(CorruptStoreError, match="tokeniser this version does not know") as e:
        s.search("rivers", k=3, mode="bm25")
    assert "re-index" in e.value.hint
