"""Pages, slides and cells of a converted document: which ones a chunk covers, and how to cite it."""
from __future__ import annotations

from bisect import bisect_right
from collections.abc import Mapping, Sequence
from typing import Any


def unit_metadata(unit: str | None, starts: Sequence[tuple[int, int]], a: int, b: int) -> dict[str, int]:
    """{"page_start", "page_end", "page"} (or slide / cell) of the text span [a, b); `starts` holds
    (offset where the unit starts, its number) in text order."""
    if not unit or not starts:
        return {}
    offsets = [s for s, _ in starts]
    first = starts[max(0, bisect_right(offsets, a) - 1)][1]
    last = starts[max(0, bisect_right(offsets, max(a, b - 1)) - 1)][1]
    out = {unit: first, f"{unit}_start": first, f"{unit}_end": last}
    return out


def where(source: str, metadata: Mapping[str, Any] | None, start_line: int | None = None, end_line: int | None = None) -> str:
    """How a hit or citation names its place: "paper.pdf p. 3", "deck.pptx slide 2", "nb.ipynb
    cell 4", "book.xlsx sheet 2", else "file.md:10-20" (lines)."""
    md = metadata or {}
    for unit, one, many in (("page", "p.", "pp."), ("slide", "slide", "slides"), ("cell", "cell", "cells"), ("sheet", "sheet", "sheets")):
        first, last = md.get(f"{unit}_start"), md.get(f"{unit}_end")
        if isinstance(first, int):
            return f"{source} {one} {first}" if last in (None, first) else f"{source} {many} {first}-{last}"
    if start_line is None:
        return source
    return f"{source}:{start_line}-{end_line}"
