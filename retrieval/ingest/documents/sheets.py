"""Excel (.xlsx) to text with openpyxl, run inside the sandboxed worker.

One section per sheet, its name as the heading; rows as lines of cells joined by " | " (the
values Excel last computed, not formulas), in blocks of ROWS_PER_BLOCK so the chunker packs
whole rows; empty rows and columns left out.
"""
from __future__ import annotations

import io
from typing import Any

from retrieval.ingest.documents.layout import Layout, Unreadable, table_rows

ROWS_PER_BLOCK = 20  # a chunk boundary never splits a row; 20 rows of a few cells fit MiniLM's 254 tokens


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def convert(data: bytes, options: dict) -> dict[str, Any]:
    import openpyxl

    try:
        book = openpyxl.load_workbook(io.BytesIO(data), read_only=True, data_only=True)
    except Exception as exc:
        raise Unreadable(f"damaged or not an Excel workbook ({type(exc).__name__}: {exc})"[:300]) from None
    layout = Layout("sheet")
    for n, sheet in enumerate(book.worksheets, 1):
        layout.start_unit(n)
        layout.heading(str(sheet.title) or f"Sheet {n}", 1)
        rows: list[list[str]] = []
        for values in sheet.iter_rows(values_only=True):
            cells = [_cell(v) for v in values]
            if any(c.strip() for c in cells):
                rows.append(cells)
            if len(rows) == ROWS_PER_BLOCK:
                layout.add(table_rows(rows))
                rows = []
        layout.add(table_rows(rows))
    title = (book.properties.title or "").strip() or None if book.properties is not None else None
    book.close()
    return layout.result(title)
