"""Jupyter notebooks (.ipynb) to text with nbformat, in process (JSON: no parser to sandbox).

Markdown cells keep their headings; code cells are code blocks; an output is kept only when it
is short text (a printed value); every other output (images, HTML, long logs) is left out and
listed in the index report's `skipped` ("cell 4: image/png output left out"), never the reason a
cell is dropped.
"""
from __future__ import annotations

from typing import Any

from retrieval.ingest.blocks import markdown_blocks
from retrieval.ingest.documents.layout import Layout, Unreadable

# a short text output (a printed value, a small frame) helps search; a log or a dump drowns the cell
MAX_OUTPUT_CHARS = 500
MAX_OUTPUT_LINES = 10


def _output_text(out: Any) -> tuple[str | None, str]:
    """(text kept, or None, and what the output was)."""
    kind = out.get("output_type", "")
    if kind == "stream":
        text = "".join(out.get("text", "")) if isinstance(out.get("text"), list) else str(out.get("text", ""))
        what = f"stream {out.get('name', '')}".strip()
    elif kind in ("execute_result", "display_data"):
        data = out.get("data", {}) or {}
        rich = sorted(k for k in data if k != "text/plain")
        what = ", ".join(rich) or "text/plain"
        plain = data.get("text/plain")
        if rich or plain is None:  # an image or HTML: its text/plain is a placeholder like <Figure ...>
            return None, what
        text = "".join(plain) if isinstance(plain, list) else str(plain)
    elif kind == "error":
        return None, f"error {out.get('ename', '')}".strip()
    else:
        return None, kind or "unknown output"
    if len(text) > MAX_OUTPUT_CHARS or text.count("\n") >= MAX_OUTPUT_LINES:
        return None, f"{what} ({len(text)} characters)"
    return text, what


def _markdown(layout: Layout, text: str) -> None:
    for b in markdown_blocks(text):
        if b.kind == "heading":
            layout.heading(b.title or text[b.start:b.end], b.level)
        else:
            layout.add(text[b.start:b.end], "fence" if b.kind == "fence" else "para")


def convert(data: bytes, options: dict) -> dict[str, Any]:
    import nbformat

    try:
        nb = nbformat.reads(data.decode("utf-8"), as_version=4)
    except Exception as exc:
        raise Unreadable(f"not a readable notebook ({type(exc).__name__}: {str(exc)[:200]})") from None
    layout = Layout("cell")
    dropped: list[dict] = []
    for n, cell in enumerate(nb.cells, 1):
        source = "".join(cell.source) if isinstance(cell.source, list) else str(cell.get("source", ""))
        layout.start_unit(n)
        if cell.cell_type == "markdown":
            _markdown(layout, source)
        elif cell.cell_type == "code":
            layout.add(source, "fence")
            for out in cell.get("outputs", []):
                text, what = _output_text(out)
                if text is None:
                    dropped.append({"cell": n, "output": what})
                else:
                    layout.add(text, "fence")
        else:
            layout.add(source)
    if dropped:  # each listed in the index report's skipped, and counted
        layout.notes["outputs_left_out"] = len(dropped)
        layout.skips += [f"cell {d['cell']}: {d['output']} output left out (only short text outputs are indexed)" for d in dropped]
    title = None
    for b in layout.blocks:
        if b[2] == "heading":
            title = b[4]
            break
    return layout.result(title)
