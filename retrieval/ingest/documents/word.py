"""Word (.docx) to text with python-docx, run inside the sandboxed worker.

Body paragraphs and tables in document order; paragraphs styled "Heading N" / "Title" become
headings; a table becomes one block of rows; the text of headers and footers comes once, first,
however many sections repeat it.
"""
from __future__ import annotations

import io
import re
from typing import Any

from retrieval.ingest.documents.layout import Layout, Unreadable, table_rows

_HEADING = re.compile(r"^heading\s*(\d)$", re.IGNORECASE)


def _level(paragraph: Any) -> int:
    """Heading level from the paragraph style (0: body text)."""
    try:
        name = (paragraph.style.name or "") if paragraph.style is not None else ""
    except Exception:  # a style id missing from styles.xml
        return 0
    if name.lower() == "title":
        return 1
    m = _HEADING.match(name.strip())
    return int(m.group(1)) + 1 if m else 0  # Title is level 1, Heading 1 level 2...


def _rows(table: Any) -> list[list[str]]:
    return [[cell.text for cell in row.cells] for row in table.rows]


def _headers_footers(doc: Any) -> list[str]:
    seen: list[str] = []
    for section in doc.sections:
        for part in (section.header, section.first_page_header, section.footer, section.first_page_footer):
            try:
                if part is None or part.is_linked_to_previous and seen:
                    continue
                text = "\n".join(p.text for p in part.paragraphs if p.text.strip())
            except Exception:  # an absent or damaged header part
                continue
            if text.strip() and text not in seen:
                seen.append(text)
    return seen


def convert(data: bytes, options: dict) -> dict[str, Any]:
    import docx
    from docx.table import Table
    from docx.text.paragraph import Paragraph

    try:
        doc = docx.Document(io.BytesIO(data))
    except Exception as exc:
        raise Unreadable(f"damaged or not a Word document ({type(exc).__name__}: {exc})"[:300]) from None
    layout = Layout("")
    for text in _headers_footers(doc):
        layout.add(text)
    para: list[str] = []
    for child in doc.element.body.iterchildren():
        tag = child.tag.rsplit("}", 1)[-1]
        if tag == "p":
            p = Paragraph(child, doc)
            level = _level(p)
            if level and p.text.strip():
                layout.add("\n".join(para))
                para = []
                layout.heading(p.text, level)
            elif p.text.strip():
                para.append(p.text.strip())
            else:
                layout.add("\n".join(para))
                para = []
        elif tag == "tbl":
            layout.add("\n".join(para))
            para = []
            layout.add(table_rows(_rows(Table(child, doc))))
    layout.add("\n".join(para))
    title = (doc.core_properties.title or "").strip() or None
    return layout.result(title)
