"""BM25 identifier splitting for code, and prose collections left as they were."""
from __future__ import annotations

from retrieval.index import bm25_index
from retrieval.index.bm25_index import BM25Config


def test_identifiers_split_and_keep_the_whole():
    tok = bm25_index.tokenizer_for(BM25Config(pattern="identifiers", stemmer=""))
    got = tok("getHelpExtra read_file HTTPServer max-age", True)
    for want in ("gethelpextra", "get", "help", "extra", "read_file", "read", "file", "httpserver", "http", "server",
                 "max-age", "max", "age"):
        assert want in got, want


def test_prose_documents_get_the_words_tokens_only():
    ident = bm25_index.tokenizer_for(BM25Config(pattern="identifiers"))
    words = bm25_index.tokenizer_for(BM25Config(pattern="words"))
    prose = "The T-cell response of mRNA vaccines, state-of-the-art in e-mail surveys."
    assert ident(prose, False) == words(prose)
    assert set(ident(prose, True)) > set(ident(prose)) > set(words(prose))  # code gets all extras, queries the wholes
    assert "mrna" in ident(prose) and "rna" not in ident(prose)


def test_new_tokenizer_has_its_own_id_and_old_ids_are_unchanged():
    assert bm25_index.tokenizer_id(BM25Config(pattern="identifiers")) != bm25_index.tokenizer_id(BM25Config(pattern="words"))
    assert bm25_index.tokenizer_id(BM25Config(pattern="words")).startswith(r"(?u)[^\W_]{2,}|lower")


def test_saved_tokenizer_reloads_with_its_pattern(tmp_path):
    for pattern in ("words", "identifiers"):
        cfg = BM25Config(pattern=pattern)
        idx = bm25_index.update(None, [], [1], [bm25_index.tokenizer_for(cfg)("readFile")], cfg)
        bm25_index.save(idx, tmp_path / pattern)
        assert bm25_index.load(tmp_path / pattern).config.pattern == pattern


def test_a_store_built_with_words_keeps_them_for_new_code(tmp_path, monkeypatch):
    from retrieval.store import docstore as docstore_module
    from retrieval.store.docstore import DocStore

    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("plain words here\n")
    monkeypatch.setattr(docstore_module, "BM25Config", lambda: BM25Config(pattern="words"))
    with DocStore.open(tmp_path / "old", embedder="hash-64") as s:
        s.index_paths([src])
    monkeypatch.undo()
    (src / "m.py").write_text("def getHelpExtra(ctx):\n    return ctx.extra_value\n")
    for name, found in (("old", False), ("new", True)):
        with DocStore.open(tmp_path / name, embedder="hash-64") as s:
            s.index_paths([src])
            assert s.collection("default").bm25_config.pattern == ("words" if name == "old" else "identifiers")
            hits = s.search("help", k=3, mode="bm25")
            assert bool(hits and hits[0].heading == "getHelpExtra") == found, name
