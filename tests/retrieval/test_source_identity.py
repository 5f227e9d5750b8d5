"""One file, one identity: however a path is typed (relative, absolute, through `..` or a symlinked
folder), it is stored once, and delete and the source filter accept every spelling (issue 30, case 3)."""
from __future__ import annotations

import json
import os
import sqlite3

import pytest

from retrieval.store.docstore import DocStore


@pytest.fixture
def project(tmp_path, monkeypatch):
    (tmp_path / "inc").mkdir()
    (tmp_path / "inc" / "query-params.md").write_text("# Query parameters\n\nThe server listens on port 4711 by default.\n")
    (tmp_path / "inc" / "other.md").write_text("# Other\n\nSomething unrelated about glaciers and valleys.\n")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _port_texts(s):
    return sorted(h.text for h in s.search("which port does the server listen on", k=10, mode="bm25") if "port" in h.text)


def test_two_spellings_one_file(project):
    s = DocStore.open(project / "store", embedder="hash-64")
    s.index_paths(["inc"])
    (project / "inc" / "query-params.md").write_text("# Query parameters\n\nThe server listens on port 9999 by default.\n")
    rep = s.index_paths([str(project / "inc")])  # the same folder, typed absolute
    assert rep.updated == 1 and rep.added == 0
    texts = _port_texts(s)
    assert len(texts) == 1 and "9999" in texts[0]
    assert s.stats("default")["indexed_files"] == 2
    s.index_paths(["./inc/../inc"])
    assert s.stats("default")["indexed_files"] == 2
    hit = s.search("port", k=1, mode="bm25")[0]
    assert hit.source == os.path.realpath(project / "inc" / "query-params.md")


@pytest.mark.parametrize("spelling", ["inc/query-params.md", "./inc/query-params.md", "{abs}", "inc/../inc/query-params.md",
                                      "inc/*.md", "inc", "link/query-params.md"])
def test_delete_and_filter_take_any_spelling(project, spelling):
    os.symlink(project / "inc", project / "link")
    s = DocStore.open(project / "store", embedder="hash-64")
    s.index_paths([str(project / "inc")])
    spelling = spelling.replace("{abs}", str(project / "inc" / "query-params.md"))
    assert s.search("port", k=5, mode="bm25", filters={"source": spelling})
    assert s.delete(sources=[spelling])["removed_sources"] >= 1
    assert _port_texts(s) == []


def test_relative_sources_of_older_versions_are_adopted(project):
    s = DocStore.open(project / "store", embedder="hash-64")
    s.index_paths(["inc"])
    s.close()
    # what an older version stored: the path as typed, and no "source_paths" record
    db = sqlite3.connect(project / "store" / "default" / "chunks.sqlite")
    for table in ("chunks", "sources"):
        db.execute(f"UPDATE {table} SET source = substr(source, ?)", (len(os.path.realpath(project)) + 2,))
    db.commit()
    db.close()
    man = project / "store" / "default" / "manifest.json"
    m = json.loads(man.read_text())
    del m["source_paths"]
    man.write_text(json.dumps(m))
    s = DocStore.open(project / "store")
    assert {h.source for h in s.search("port", k=5, mode="bm25")} == {"inc/query-params.md"}
    (project / "inc" / "query-params.md").write_text("# Query parameters\n\nThe server listens on port 9999 by default.\n")
    s.index_paths([str(project / "inc")])
    texts = _port_texts(s)
    assert len(texts) == 1 and "9999" in texts[0]
    assert s.stats("default")["indexed_files"] == 2
