"""Word, PowerPoint and notebooks end to end: headings, slides and cells in the hits, outputs left
out but listed, re-index and delete; without the extra, a clear skip."""
from __future__ import annotations

import json

import pytest

from retrieval.store.docstore import DocStore

docx = pytest.importorskip("docx")
pptx = pytest.importorskip("pptx")
nbformat = pytest.importorskip("nbformat")

PNG = ("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==" * 400)


def make_docx(path):
    d = docx.Document()
    d.core_properties.title = "Pump Manual"
    d.sections[0].header.paragraphs[0].text = "Hydro Corp confidential"
    d.add_heading("Installation", level=1)
    d.add_paragraph("Mount the centrifugal pump on a level concrete base before priming.")
    d.add_heading("Maintenance", level=1)
    d.add_paragraph("Replace the impeller seal every two thousand operating hours.")
    t = d.add_table(rows=2, cols=2)
    t.cell(0, 0).text, t.cell(0, 1).text = "Part", "Interval"
    t.cell(1, 0).text, t.cell(1, 1).text = "Bearing grease", "500 hours"
    d.add_section()
    d.save(path)


def make_pptx(path):
    deck = pptx.Presentation()
    for title, body, notes in [("Quarterly results", "Revenue grew in the northern region.", "Mention the weather."),
                               ("Hiring plan", "We will hire three geologists next spring.", "Budget approved in March.")]:
        slide = deck.slides.add_slide(deck.slide_layouts[1])
        slide.shapes.title.text = title
        slide.placeholders[1].text_frame.text = body
        slide.notes_slide.notes_text_frame.text = notes
    deck.save(path)


def make_notebook(path):
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_markdown_cell("# Tidal analysis\n\nWe fit harmonic constituents to the harbour gauge record."),
        nbformat.v4.new_code_cell("import numpy as np\namplitudes = fit_constituents(gauge)\nprint(amplitudes['M2'])",
                                  outputs=[nbformat.v4.new_output("stream", name="stdout", text="1.27\n"),
                                           nbformat.v4.new_output("display_data", data={"image/png": PNG, "text/plain": "<Figure>"})]),
        nbformat.v4.new_markdown_cell("The semidiurnal M2 constituent dominates the spring-neap cycle."),
    ]
    path.write_text(nbformat.writes(nb), encoding="utf-8")


@pytest.fixture()
def built(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    make_docx(docs / "manual.docx")
    make_pptx(docs / "deck.pptx")
    make_notebook(docs / "tides.ipynb")
    s = DocStore.open(tmp_path / "store", embedder="hash-64")
    rep = s.index_paths([docs])
    yield s, docs, rep
    s.close()


def _one(store, query, suffix, mode="bm25"):
    return [h for h in store.search(query, k=10, mode=mode) if h.source.endswith(suffix)][0]


def test_docx_headings_tables_and_header_once(built):
    s, _, rep = built
    assert rep.added == 3 and [k["source"].rsplit("/", 1)[-1] for k in rep.skipped] == ["tides.ipynb"]  # its image output
    hit = _one(s, "impeller seal operating hours", "manual.docx")
    assert hit.metadata["kind"] == "docx" and hit.heading.endswith("Maintenance")
    assert "Bearing grease | 500 hours" in _one(s, "bearing grease interval", "manual.docx").text
    texts = " ".join(h.text for h in s.search("Hydro Corp confidential", k=20, mode="bm25") if h.source.endswith("manual.docx"))
    assert texts.count("Hydro Corp confidential") == 1  # two sections share the header: indexed once


def test_pptx_one_section_per_slide_with_notes(built):
    s, _, _ = built
    hit = _one(s, "geologists hire spring", "deck.pptx")
    assert hit.metadata["slide"] == 2 and hit.heading == "Hiring plan" and "Budget approved" in hit.text
    assert hit.text.count("Hiring plan") == 1
    assert _one(s, "revenue northern region", "deck.pptx").metadata["slide"] == 1


def test_notebook_cells_indexed_and_image_output_drops_nothing(built):
    s, _, rep = built
    code = _one(s, "amplitudes fit constituents", "tides.ipynb")
    assert code.metadata["kind"] == "notebook" and code.metadata["cell"] in (1, 2)
    assert "1.27" in code.text and "iVBOR" not in code.text  # the short printed value stays, the image does not
    last = _one(s, "semidiurnal spring-neap", "tides.ipynb")
    assert last.metadata.get("cell_end", last.metadata["cell"]) == 3 and "Tidal analysis" in last.heading
    assert not rep.emptied and rep.dropped["low_quality"] == 0
    conv = [c for c in rep.converted if c["source"].endswith("tides.ipynb")][0]
    assert conv["outputs_left_out"] == 1
    assert [k["reason"] for k in rep.skipped if k["source"].endswith("tides.ipynb")] == [
        "cell 2: image/png output left out (only short text outputs are indexed)"]


def test_reindex_and_delete(built):
    s, docs, _ = built
    again = s.index_paths([docs])
    assert again.unchanged == 3 and again.chunks_added == 0
    (docs / "deck.pptx").unlink()
    make_docx(docs / "manual.docx")  # same content, new zip timestamps: re-parsed, same text
    rep = s.index_paths([docs])
    assert rep.removed == 1
    assert not any(h.source.endswith("deck.pptx") for h in s.search("geologists hire spring", k=20, mode="bm25"))


def test_cli_prints_slide_and_cell(built, capsys):
    from retrieval.cli.root import main

    s, _, _ = built
    assert main(["search", "geologists hire spring", "--store", str(s.path), "-k", "1", "--mode", "bm25"]) == 0
    assert "deck.pptx slide 2" in capsys.readouterr().out
    assert main(["search", "geologists", "--store", str(s.path), "-k", "1", "--mode", "bm25", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["hits"][0]["metadata"]["slide"] == 2


def test_without_the_extra_files_are_skipped_with_the_fix(tmp_path, monkeypatch):
    from retrieval.ingest.documents import convert

    docs = tmp_path / "docs"
    docs.mkdir()
    make_pptx(docs / "deck.pptx")
    (docs / "a.md").write_text("# A\n\nSome words about lakes and ponds.\n")
    real = convert.importlib.util.find_spec
    monkeypatch.setattr(convert.importlib.util, "find_spec", lambda name, *a: None if name == "pptx" else real(name, *a))
    with DocStore.open(tmp_path / "store", embedder="hash-64") as s:
        rep = s.index_paths([docs])
    assert rep.added == 1 and "install knnrag[documents]" in rep.skipped[0]["reason"] and "python-pptx" in rep.skipped[0]["reason"]


def test_xlsx_sheets_as_sections_of_rows(tmp_path):
    openpyxl = pytest.importorskip("openpyxl")
    book = openpyxl.Workbook()
    book.active.title = "Stations"
    book.active.append(["Station", "Depth (m)", "Salinity"])
    book.active.append(["North buoy", 42, 34.5])
    costs = book.create_sheet("Costs")
    for n in range(45):
        costs.append([f"item {n}", n * 10])
    costs.append(["Research vessel charter", 125000])
    docs = tmp_path / "docs"
    docs.mkdir()
    book.save(docs / "survey.xlsx")
    with DocStore.open(tmp_path / "store", embedder="hash-64") as s:
        rep = s.index_paths([docs])
        assert rep.added == 1 and not rep.skipped
        hit = _one(s, "north buoy salinity", "survey.xlsx")
        assert hit.metadata["sheet"] == 1 and hit.heading == "Stations" and "North buoy | 42 | 34.5" in hit.text
        hit = _one(s, "research vessel charter", "survey.xlsx")
        assert hit.metadata["sheet"] == 2 and hit.heading == "Costs" and "Research vessel charter | 125000" in hit.text


def test_a_notebook_indexed_as_json_before_is_read_again(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    make_notebook(docs / "tides.ipynb")
    with DocStore.open(tmp_path / "store", embedder="hash-64") as s:
        s.index_paths([docs])
        with s.collection("default").writer() as conn:  # what an older version recorded: the notebook as code
            conn.execute("UPDATE sources SET kind = 'code'")
            conn.commit()
        rep = s.index_paths([docs])
        assert rep.updated == 1 and rep.unchanged == 0
        assert s.index_paths([docs]).unchanged == 1
