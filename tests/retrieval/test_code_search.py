"""Code end to end: index a folder, find definitions by name and words, filter on kind/symbol/language."""
from __future__ import annotations

import json

import pytest

from retrieval.embed.hash_embedder import HashEmbedder
from retrieval.ingest.code_syntax import grammar_available
from retrieval.store.docstore import DocStore

pytestmark = pytest.mark.skipif(not grammar_available("python"), reason="tree-sitter grammars not installed")

PY = '''class SessionStore:
    """Keeps session data in a signed cookie."""

    def loadSignedCookie(self, raw):
        return self.verify_signature(raw)

    def verify_signature(self, raw):
        return raw


def merge_settings(request_value, session_value):
    """Merge per-request settings with the session defaults."""
    return request_value or session_value
'''
GO = "package p\n\n// Get returns a value\nfunc (s *Store) Get(key string) string { return key }\n"
MD = "# Guide\n\nThe session cookie is signed.\n"


@pytest.fixture()
def store(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "sessions.py").write_text(PY, encoding="utf-8")
    (src / "store.go").write_text(GO, encoding="utf-8")
    (src / "guide.md").write_text(MD, encoding="utf-8")
    s = DocStore.open(tmp_path / "store", embedder=HashEmbedder(64))
    s.index_paths([str(src)])
    return s


def test_definitions_are_found_by_identifier_parts_and_whole(store):
    hits = store.search("signed cookie load", k=3, mode="bm25")
    assert hits[0].heading == "SessionStore.loadSignedCookie"
    assert hits[0].metadata["kind"] == "method" and hits[0].metadata["language"] == "python"
    assert hits[0].text.startswith("def loadSignedCookie(self, raw):")
    assert store.search("verify_signature", k=1, mode="bm25")[0].heading == "SessionStore.verify_signature"


def test_filters_on_kind_symbol_and_language(store):
    methods = store.search("session", k=10, filters={"kind": "method"})
    assert methods and {h.metadata["kind"] for h in methods} == {"method"}
    go = store.search("value", k=10, filters={"language": "go"})
    assert [h.heading for h in go] == ["Store.Get"]
    one = store.search("settings", k=10, filters={"symbol": "merge_settings"})
    assert [h.heading for h in one] == ["merge_settings"]
    files = store.search("session", k=10, filters={"kind": "markdown"})  # a file's kind still filters
    assert files and all(h.source.endswith("guide.md") for h in files)


def test_the_store_records_the_identifiers_tokenizer(store, tmp_path):
    manifest = json.loads((tmp_path / "store" / "default" / "manifest.json").read_text())
    assert manifest["bm25"]["pattern"] == "identifiers"


def test_mcp_filters_accept_code_keys():
    from pydantic import TypeAdapter

    from mcp_server.tool_support import Filters

    want = {"kind": "method", "symbol": "SessionStore.loadSignedCookie", "language": "python"}
    assert TypeAdapter(Filters).validate_python(want) == want


def test_editing_one_function_re_embeds_only_its_chunk(tmp_path):
    from tests.retrieval.docstore_helpers import CountingEmbedder

    src = tmp_path / "src"
    src.mkdir()
    (src / "sessions.py").write_text(PY, encoding="utf-8")
    emb = CountingEmbedder(64)
    s = DocStore.open(tmp_path / "store", embedder=emb)
    s.index_paths([str(src)])
    first = emb.embedded
    assert first >= 4
    (src / "sessions.py").write_text(PY.replace("return raw\n", "return raw.strip()\n"), encoding="utf-8")
    rep = s.index_paths([str(src)])
    assert rep.updated == 1 and emb.embedded - first == 1  # SessionStore.verify_signature only
    hit = s.search("strip", k=1, mode="bm25")[0]
    assert hit.heading == "SessionStore.verify_signature" and "raw.strip()" in hit.text
    dense = s.search("Merge per-request settings with the session defaults", k=1, mode="dense")[0]
    assert dense.heading == "merge_settings"  # a reused vector still finds its chunk
