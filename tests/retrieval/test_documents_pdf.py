"""PDFs end to end: page citations that reproduce the extracted text, running headers dropped,
outline headings, broken files skipped while the rest of the folder is indexed, deletion."""
from __future__ import annotations

import json

import pytest

from retrieval.errors import InvalidInputError
from retrieval.store.docstore import DocStore
from tests.support.pdfgen import flipped, make_pdf, recursive_pdf

pytest.importorskip("pypdfium2")

PAGES = [
    ["ACME Field Notes", "Rivers carry sediment from the mountains to the sea,", "and their deltas grow where the current slows.", "Page 1"],
    ["ACME Field Notes", "Glaciers", "A glacier moves by internal deformation and by sliding", "over meltwater at its base; its snout retreats in a",
     "warm summer and advances in a snowy one.", "Page 2"],
    ["ACME Field Notes", "3 Deserts", "Deserts receive less than twenty-five centimetres", "of rain a year; dunes migrate downwind.", "Page 3"],
]


def write_pdfs(folder, extra=True):
    folder.mkdir(exist_ok=True)
    (folder / "notes.pdf").write_bytes(make_pdf(PAGES, outline=[("Glaciers", 1), ("Deserts", 2)]))
    if extra:
        (folder / "readme.md").write_text("# Readme\n\nThe field notes describe rivers, glaciers and deserts in plain words.\n")
    return folder


@pytest.fixture()
def store(tmp_path):
    s = DocStore.open(tmp_path / "store", embedder="hash-64")
    yield s
    s.close()


def test_citation_reproduces_the_text_of_its_page(tmp_path, store):
    from retrieval.ingest.documents.convert import parse
    from retrieval.ingest.documents.options import DocumentOptions

    docs = write_pdfs(tmp_path / "docs")
    rep = store.index_paths([docs])
    assert rep.added == 2 and not rep.skipped
    conv = [c for c in rep.converted if c["source"].endswith("notes.pdf")][0]
    assert conv["pages"] == 3 and conv["running_lines_dropped"] == 6  # the title line and "Page N" on each page
    got = parse(".pdf", (docs / "notes.pdf").read_bytes(), DocumentOptions())
    extracted, starts = got["text"], [s for s, _ in got["units"]] + [len(got["text"])]
    hits = store.search("glacier meltwater snout", k=3)
    hit = [h for h in hits if h.source.endswith("notes.pdf")][0]
    assert hit.text == extracted[hit.start_char:hit.end_char]
    assert hit.metadata["page_start"] == 2 and hit.metadata["page_end"] >= 2 and hit.uri.endswith("#page=2")
    page_text = extracted[starts[1]:starts[2]]
    assert "snout retreats" in page_text and "snout retreats" in hit.text
    assert "ACME Field Notes" not in extracted and "Page 2" not in extracted
    assert "Glaciers" in hit.heading  # the bookmark became the section heading
    [again] = store.get([hit.id])
    assert again.text == hit.text and again.metadata["page_start"] == 2


def _run_cli(*argv: str) -> str:
    import io
    import sys

    from retrieval.cli.root import main

    buf = io.StringIO()
    old, sys.stdout = sys.stdout, buf
    try:
        assert main(list(argv)) == 0
    finally:
        sys.stdout = old
    return buf.getvalue()


def test_cli_search_cites_pages(tmp_path):
    docs = write_pdfs(tmp_path / "docs", extra=False)
    base = ("--store", str(tmp_path / "store"))
    _run_cli("index", str(docs), *base, "--embedder", "hash-64", "--json")
    assert "notes.pdf p. 3" in _run_cli("search", "deserts rain dunes", *base, "-k", "1", "--mode", "bm25").splitlines()[0]
    hit = json.loads(_run_cli("search", "deserts rain dunes", *base, "-k", "1", "--json", "--mode", "bm25"))["hits"][0]
    assert hit["metadata"]["page_start"] == 3 and hit["metadata"]["page_end"] == 3


@pytest.mark.slow
def test_ask_cites_pages(tmp_path):
    from tests.support.tiny_lm import make_tiny_lm

    docs = write_pdfs(tmp_path / "docs", extra=False)
    base = ("--store", str(tmp_path / "store"))
    _run_cli("index", str(docs), *base, "--embedder", "hash-64", "--json")
    ask = ("ask", "How much rain do deserts receive?", *base, "--model", str(make_tiny_lm(tmp_path / "lm", vocab="word")), "-k", "2",
           "--mode", "generate", "--abstain-threshold", "0", "--min-score", "-1", "--max-new-tokens", "4")
    out = json.loads(_run_cli(*ask, "--json"))
    cites = [c for c in out["citations"] if c["source"].endswith("notes.pdf")]
    assert cites and all(c["page_start"] >= 1 and c["uri"].endswith(f"#page={c['page_start']}") for c in cites)
    assert "notes.pdf p. " in _run_cli(*ask)


def test_broken_pdfs_are_skipped_and_the_rest_indexed(tmp_path, store):
    docs = write_pdfs(tmp_path / "docs")
    good = make_pdf([["Lighthouses guide ships along rocky coasts at night."]])
    (docs / "truncated.pdf").write_bytes(good[: len(good) // 3])
    (docs / "flipped.pdf").write_bytes(flipped(make_pdf(PAGES), seed=3, share=0.05))
    (docs / "recursive.pdf").write_bytes(recursive_pdf())
    (docs / "encrypted.pdf").write_bytes(make_pdf([["secret plans"]], encrypt=True))
    (docs / "empty.pdf").write_bytes(b"")
    (docs / "notpdf.pdf").write_bytes(b"<html>not a pdf</html>")
    rep = store.index_paths([docs])
    reasons = {s["source"].rsplit("/", 1)[-1]: s["reason"] for s in rep.skipped}
    assert "password" in reasons["encrypted.pdf"]
    for name in ("truncated.pdf", "recursive.pdf", "notpdf.pdf", "empty.pdf"):
        assert name in reasons and reasons[name], reasons
    indexed = {s.rsplit("/", 1)[-1] for s in {h.source for h in store.search("rivers glaciers deserts", k=20)}}
    assert {"notes.pdf", "readme.md"} <= indexed
    assert "flipped.pdf" in reasons or rep.files_seen >= 3  # a damaged file is read as far as it goes, or skipped


def test_deleted_pdf_never_comes_back(tmp_path, store):
    docs = write_pdfs(tmp_path / "docs")
    (docs / "extra.pdf").write_bytes(make_pdf([["Volcanoes erupt basalt lava at mid-ocean ridges."]]))
    store.index_paths([docs])
    assert any(h.source.endswith("extra.pdf") for h in store.search("volcanoes basalt lava", k=5))
    (docs / "extra.pdf").unlink()
    rep = store.index_paths([docs])
    assert rep.removed == 1
    for mode in ("hybrid", "dense", "bm25"):
        assert not any("basalt" in h.text or h.source.endswith("extra.pdf") for h in store.search("volcanoes basalt lava", k=20, mode=mode))


def test_reindex_unchanged_pdf_is_not_parsed_again(tmp_path, store):
    docs = write_pdfs(tmp_path / "docs")
    store.index_paths([docs])
    rep = store.index_paths([docs])
    assert rep.unchanged == 2 and rep.chunks_added == 0


def test_no_text_layer_is_reported_and_ocr_needs_tesseract(tmp_path, store, monkeypatch):
    import shutil

    from retrieval.ingest.documents.options import DocumentOptions

    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(InvalidInputError, match="tesseract"):
        store.index_paths([write_pdfs(tmp_path / "docs")], documents=DocumentOptions(ocr=True))


def test_hyphenation_and_running_lines_rules():
    from retrieval.ingest.documents.pdf import _dehyphenate, drop_running_lines

    assert _dehyphenate("the docu-\nment and the X-\nRay, a well-\nknown 3-\n4") == "the document and the X-\nRay, a wellknown 3-\n4"
    pages = [["Report 2024", f"Body text {w}", f"- {n} -"] for n, w in enumerate("abcdefghi", 1)]
    for n in (0, 4, 8):  # chapter titles atop three pages of nine: sparse, kept
        pages[n].insert(1, f"Chapter {n // 4 + 1}")
    assert drop_running_lines(pages) == 18
    assert [line for p in pages for line in p if line][:4] == ["Chapter 1", "Body text a", "Body text b", "Body text c"]
    assert sum(line.startswith("Chapter") for p in pages for line in p) == 3
    two = [["Letterhead", "text a"], ["Letterhead", "text b"]]
    assert drop_running_lines(two) == 2 and drop_running_lines([["only page", "x"]]) == 0


def test_a_damaged_page_is_reported_and_the_others_kept(tmp_path):
    from retrieval.ingest.documents.convert import parse
    from retrieval.ingest.documents.options import DocumentOptions

    data = make_pdf(PAGES)
    # point page 2's object at a missing object number: PDFium cannot load that page
    broken = data.replace(b"/Kids [4 0 R 6 0 R 8 0 R] /Count 3", b"/Kids [4 0 R 99 0 R 8 0 R] /Count 3")
    assert broken != data
    got = parse(".pdf", broken, DocumentOptions())
    assert "Rivers carry sediment" in got["text"] and "dunes migrate" in got["text"]
