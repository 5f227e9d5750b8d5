"""PDF to text with PDFium (pypdfium2), run inside the sandboxed worker.

Why PDFium: it is the PDF engine of Chrome, written in C++, fuzzed continuously, and reads the
text layer ~20x faster than pure-Python pypdf and pdfminer.six (benchmarks/bench_documents.py).
Its text follows the content stream, which producers write in reading order; lines of a table
row share a baseline, so rows come out as lines. PDFium marks a hyphen it removed at a line end
with U+FFFE and joins the word itself.
"""
from __future__ import annotations

import io
import re
import subprocess
from typing import Any

from retrieval.ingest.documents.layout import Layout, Unreadable

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")
_HYPHEN = re.compile(r"([^\W\d_])-\n([^\W\d_])")
_DIGITS = re.compile(r"\d+")
_BREAK = re.compile(r"\r\n")
EDGE_LINES = 2  # lines at the top and the bottom of a page that may be a running header or footer
RUNNING_MIN_PAGES = 3  # a header/footer repeats (digits aside) on at least this many pages
RUNNING_DENSITY = 0.5  # ...and on half the pages of its span at least: odd/even page heads alternate
HEADING_SLACK = 12  # characters a heading line may hold besides its bookmark title: a number like "12.3.4 "


def _dehyphenate(text: str) -> str:
    """Join "docu-\\nment" (a lower-case letter after the break) as pdftotext does; keep "X-\\nRay"."""
    return _HYPHEN.sub(lambda m: m.group(1) + m.group(2) if m.group(2).islower() else m.group(0), text)


def _lines(raw: str) -> list[str]:
    text = raw.replace("\ufffe", "").replace("\r\n", "\n").replace("\r", "\n")
    return [" ".join(_CONTROL.sub(" ", line).split()) for line in text.split("\n")]


def _edge_keys(lines: list[str]) -> list[tuple[str, int, str]]:
    """(edge, index, key) of the first and last EDGE_LINES non-empty lines; key ignores digits and case."""
    idx = [i for i, line in enumerate(lines) if line]
    picked = [("top", i) for i in idx[:EDGE_LINES]] + [("bottom", i) for i in idx[-EDGE_LINES:]]
    return [(edge, i, _DIGITS.sub("#", lines[i]).lower()) for edge, i in picked if len(lines[i]) <= 200]


def drop_running_lines(pages: list[list[str]]) -> int:
    """Blank, in place, the header/footer lines that run over the pages: the same line (digits
    aside, so page numbers match) at the same edge of at least RUNNING_MIN_PAGES pages, on at least
    RUNNING_DENSITY of the pages between its first and last (a chapter's running head covers its
    pages; "Chapter 2" atop three chapters' first pages does not); returns how many were dropped."""
    need = min(RUNNING_MIN_PAGES, len(pages))
    if need < 2:
        return 0
    keys = [_edge_keys(lines) for lines in pages]
    seen: dict[tuple[str, str], list[int]] = {}
    for n, page_keys in enumerate(keys):
        for edge, _, key in page_keys:
            at = seen.setdefault((edge, key), [])
            if not at or at[-1] != n:
                at.append(n)
    running = {k for k, at in seen.items() if len(at) >= need and len(at) >= RUNNING_DENSITY * (at[-1] - at[0] + 1)}
    dropped = 0
    for lines, page_keys in zip(pages, keys):
        for edge, i, key in page_keys:
            if (edge, key) in running and lines[i]:
                lines[i] = ""
                dropped += 1
    return dropped


def _same_line(a: tuple[float, ...], b: tuple[float, ...]) -> str | None:
    """" " for a line break PDFium put between char boxes a and b (left, bottom, right, top) when
    b sits on a's line after all, raised or lowered and smaller (a superscript or subscript, which
    PDFium starts a new line for); None for a real new line. A space, not "": pdftotext joins some
    scripts to their base and not others (`Rn` but `p 0` in the same thesis), and gluing touching
    glyphs lost as many words against it as it won (benchmarks/bench_documents.py)."""
    ha, hb = a[3] - a[1], b[3] - b[1]
    if ha <= 0 or hb <= 0:
        return None
    overlap = min(a[3], b[3]) - max(a[1], b[1])
    gap = b[0] - a[2]
    h = min(ha, hb)
    if overlap < 0.3 * h or gap < -0.5 * h or gap > 3 * max(ha, hb) or 0.8 * max(ha, hb) < h:
        return None  # a new line, or two glyphs of one size (a script is smaller than its base)
    return " "


def page_text(textpage: Any) -> str:
    """The page's text with PDFium's line breaks inside one visual line (R^n, a_0) taken out, as
    pdftotext reads them."""
    text = textpage.get_text_range()
    if len(text) != textpage.count_chars():  # the char indices do not map onto the string: leave it
        return text
    out, pos = [], 0
    for m in _BREAK.finditer(text):
        i, j = m.start(), m.end()
        if i == 0 or j >= len(text):
            continue
        glue = _same_line(textpage.get_charbox(i - 1), textpage.get_charbox(j))
        if glue is not None:
            out += [text[pos:i], glue]
            pos = j
    return "".join(out) + text[pos:]


def _has_images(page: Any) -> bool:
    import pypdfium2.raw as raw

    return any(True for _ in page.get_objects(filter=[raw.FPDF_PAGEOBJ_IMAGE], max_depth=3))


def _ocr(page: Any, lang: str) -> str:
    image = page.render(scale=300 / 72).to_pil()
    png = io.BytesIO()
    image.save(png, format="PNG")
    done = subprocess.run(["tesseract", "stdin", "stdout", "-l", lang], input=png.getvalue(), capture_output=True, check=False)
    if done.returncode != 0:
        raise Unreadable(f"tesseract failed: {done.stderr.decode(errors='replace').strip()[:200]}")
    return done.stdout.decode("utf-8", errors="replace")


def _read_page(pdf: Any, i: int, layout: Layout, options: dict) -> list[str]:
    """The lines of page i; a damaged page is reported and read as empty, the rest of the file is kept."""
    import pypdfium2 as pdfium

    try:
        page = pdf[i]
        lines = _lines(page_text(page.get_textpage()))
    except pdfium.PdfiumError as exc:
        layout.skips.append(f"page {i + 1}: damaged, not read ({exc})")
        return []
    if not any(lines) and _has_images(page):
        if options.get("ocr"):
            lines = _lines(_ocr(page, str(options.get("ocr_lang") or "eng")))
            layout.notes["ocr_pages"] = layout.notes.get("ocr_pages", 0) + 1
        else:
            layout.skips.append(f"page {i + 1}: no text layer: scanned? (index with --ocr to read it)")
    return lines


def _open(data: bytes) -> Any:
    import pypdfium2 as pdfium

    try:
        return pdfium.PdfDocument(data)
    except pdfium.PdfiumError as exc:
        if getattr(exc, "err_code", None) == 4:
            raise Unreadable("password-protected PDF; remove the password (e.g. qpdf --decrypt) to index it") from None
        raise Unreadable(f"damaged or not a PDF ({exc})") from None


def _outline(pdf: Any) -> dict[int, list[tuple[str, int]]]:
    """Bookmarks by 0-based page: (title, level 1..)."""
    out: dict[int, list[tuple[str, int]]] = {}
    try:
        for item in pdf.get_toc(max_depth=6):
            dest = item.get_dest()
            index = dest.get_index() if dest is not None else None
            title = " ".join((item.get_title() or "").split())
            if index is not None and title:
                out.setdefault(index, []).append((title, item.level + 1))
    except Exception:  # a damaged outline leaves the text without headings, not the file unread
        return {}
    return out


def _place(layout: Layout, text: str, headings: list[tuple[str, int]]) -> None:
    """The page's text with its bookmarks as heading blocks where the page shows their titles."""
    pos = 0
    for title, level in headings:
        words = [re.escape(w) for w in title.split()]
        m = re.compile(r"\s*".join(words), re.IGNORECASE).search(text, pos) if words else None
        if m is None:
            layout.add(text[pos:])
            pos = len(text)
            layout.marker(title, level)
            continue
        start = text.rfind("\n", 0, m.start()) + 1  # the heading's whole line ("1.2 Title")
        end = text.find("\n", m.end())
        end = len(text) if end < 0 else end
        layout.add(text[pos:start])
        if end - start <= len(m.group()) + HEADING_SLACK:
            layout.add(text[start:end], "heading", level, title)
            pos = end
        else:  # the title runs on inside a sentence: the section starts at that line
            layout.marker(title, level)
            pos = start
    layout.add(text[pos:])


def convert(data: bytes, options: dict) -> dict[str, Any]:
    pdf = _open(data)
    layout = Layout("page")
    pages: list[list[str]] = []
    for i in range(len(pdf)):
        pages.append(_read_page(pdf, i, layout, options))
    layout.notes["pages"] = len(pages)
    if not options.get("keep_running_lines"):  # kept only to measure extraction against pdftotext
        layout.notes["running_lines_dropped"] = drop_running_lines(pages)
    outline = _outline(pdf)
    for i, lines in enumerate(pages):
        layout.start_unit(i + 1)
        _place(layout, _dehyphenate("\n".join(line for line in lines if line)), outline.get(i, []))
    meta = pdf.get_metadata_dict(skip_empty=True) if hasattr(pdf, "get_metadata_dict") else {}
    pdf.close()
    return layout.result(" ".join(str(meta.get("Title", "")).split()) or None)
