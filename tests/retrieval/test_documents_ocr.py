"""A scanned page (an image, no text layer) is reported without --ocr and read with it."""
from __future__ import annotations

import io
import shutil

import pytest

from retrieval.ingest.documents.options import DocumentOptions
from retrieval.store.docstore import DocStore

pdfium = pytest.importorskip("pypdfium2")
PIL = pytest.importorskip("PIL")


def scanned_pdf(lines: list[str]) -> bytes:
    from PIL import Image, ImageDraw, ImageFont

    img = Image.new("L", (1700, 2200), 255)  # a letter page at 200 dpi
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default(size=48)
    for n, line in enumerate(lines):
        draw.text((150, 200 + 90 * n), line, fill=0, font=font)
    pdf = pdfium.PdfDocument.new()
    page = pdf.new_page(612, 792)
    image = pdfium.PdfImage.new(pdf)
    image.set_bitmap(pdfium.PdfBitmap.from_pil(img))
    image.set_matrix(pdfium.PdfMatrix().scale(612, 792))
    page.insert_obj(image)
    page.gen_content()
    buf = io.BytesIO()
    pdf.save(buf)
    return buf.getvalue()


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("tesseract") is None, reason="tesseract-ocr is not installed")
def test_scanned_page_is_reported_then_ocrd(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "scan.pdf").write_bytes(scanned_pdf(["Invoice number 4471", "Harbour crane rental", "Total due in thirty days"]))
    with DocStore.open(tmp_path / "store", embedder="hash-64") as s:
        rep = s.index_paths([docs])
        assert any("page 1: no text layer: scanned?" in k["reason"] for k in rep.skipped) and rep.added == 0
        rep = s.index_paths([docs], documents=DocumentOptions(ocr=True), force=True)
        assert rep.added == 1 and rep.converted[0]["ocr_pages"] == 1
        hit = s.search("harbour crane rental", k=1, mode="bm25")[0]
        assert hit.source.endswith("scan.pdf") and hit.metadata["page_start"] == 1 and "crane" in hit.text.lower()
