"""PowerPoint (.pptx) to text with python-pptx, run inside the sandboxed worker.

One section per slide: its title as the heading (or "Slide N"), then the text of its shapes in
their order (groups opened, tables as rows), then its speaker notes.
"""
from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any

from retrieval.ingest.documents.layout import Layout, Unreadable, table_rows


def _texts(shapes: Any, skip: int | None) -> Iterator[str]:
    for shape in shapes:
        if skip is not None and shape.shape_id == skip:  # the title, already the heading
            continue
        if getattr(shape, "shape_type", None) == 6 and hasattr(shape, "shapes"):  # MSO_SHAPE_TYPE.GROUP
            yield from _texts(shape.shapes, skip)
        elif getattr(shape, "has_table", False):
            yield table_rows([[cell.text for cell in row.cells] for row in shape.table.rows])
        elif getattr(shape, "has_text_frame", False):
            yield shape.text_frame.text


def convert(data: bytes, options: dict) -> dict[str, Any]:
    import pptx

    try:
        deck = pptx.Presentation(io.BytesIO(data))
    except Exception as exc:
        raise Unreadable(f"damaged or not a PowerPoint file ({type(exc).__name__}: {exc})"[:300]) from None
    layout = Layout("slide")
    for n, slide in enumerate(deck.slides, 1):
        layout.start_unit(n)
        title_shape = slide.shapes.title
        heading = " ".join((title_shape.text_frame.text if title_shape is not None and title_shape.has_text_frame else "").split())
        layout.heading(heading or f"Slide {n}", 1)
        for text in _texts(slide.shapes, title_shape.shape_id if title_shape is not None else None):
            layout.add(text)
        if slide.has_notes_slide and slide.notes_slide.notes_text_frame is not None:
            notes = slide.notes_slide.notes_text_frame.text
            if notes.strip():
                layout.add("Notes: " + notes.strip())
    return layout.result((deck.core_properties.title or "").strip() or None)
