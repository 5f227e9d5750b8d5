"""A PDF in a `--knn` collection: its chunks feed the token datastore, and once the PDF is deleted
its text never comes back from search, the kNN neighbours or `ask` (issue 27)."""
from __future__ import annotations

import json
import textwrap

import pytest

from tests.lm.test_shared_datastore import PLANTED, _cli, _neighbour_sources
from tests.support.pdfgen import make_pdf
from tests.support.tiny_lm import CORPUS, make_tiny_lm

pytest.importorskip("pypdfium2")
pytestmark = pytest.mark.slow


def _pdf(text: str) -> bytes:
    lines = textwrap.wrap(" ".join(text.split()), 80)
    return make_pdf([lines[i:i + 40] for i in range(0, len(lines), 40)])


def test_deleted_pdf_leaves_search_knn_and_ask(tmp_path, capsys):
    lm_dir = make_tiny_lm(tmp_path / "lm", "llama")
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "keep.pdf").write_bytes(_pdf(CORPUS))
    (docs / "planted.pdf").write_bytes(_pdf(PLANTED))
    store = tmp_path / "store"
    base = ["--store", str(store), "--embedder", "hash-64", "--knn", "--knn-model", str(lm_dir), "--json"]
    assert _cli(["index", str(docs), *base]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["added"] == 2 and rep["knn"]["entries_added"] > 100
    ctx = "Volcanic islands form where magma rises through the"
    sources, _ = _neighbour_sources(store, lm_dir, ctx)
    assert sources[0].endswith("planted.pdf")

    (docs / "planted.pdf").unlink()
    assert _cli(["index", str(docs), *base]) == 0
    assert json.loads(capsys.readouterr().out)["knn"]["entries_tombstoned"] > 0
    sources, res = _neighbour_sources(store, lm_dir, ctx)
    assert not any("planted" in s or s.startswith("deleted:") for s in sources)
    assert not any("Volcanic" in n["snippet"] for n in res["neighbours"])

    from retrieval.store.docstore import DocStore

    with DocStore.open(store, read_only=True) as s:
        for mode in ("hybrid", "dense", "bm25"):
            assert not any("Basalt" in h.text for h in s.search("volcanic islands basalt magma", k=20, mode=mode))
    from retrieval.cli.root import main

    word_lm = make_tiny_lm(tmp_path / "word-lm", vocab="word")  # the char-level LM's context cannot hold a prompt
    assert main(["ask", "Where do volcanic islands form?", "--store", str(store), "--model", str(word_lm), "--mode", "generate",
                 "--abstain-threshold", "0", "--min-score", "-1", "--max-new-tokens", "4", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["citations"] and not any(c["source"].endswith("planted.pdf") for c in out["citations"])
    assert all(c["page_start"] == 1 for c in out["citations"])
