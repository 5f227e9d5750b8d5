"""The plain dict every converter returns (JSON across the sandbox boundary), and its builder.

    {"text": str,                               # the extracted text chunk offsets refer to
     "blocks": [[start, end, kind, level, title], ...],   # kind: heading | para | fence
     "unit": "page" | "slide" | "cell",
     "units": [[start, number], ...],           # where each page/slide/cell starts in text
     "title": str | None,
     "skips": [reason, ...],                    # parts not indexed (a page with no text layer)
     "notes": {name: value}}                    # counts for the index report
"""
from __future__ import annotations

from typing import Any


class Unreadable(Exception):
    """A file a converter refuses, with the reason shown to the user (encrypted, damaged...)."""


class Layout:
    """Appends parts separated by blank lines, recording blocks and unit starts as it goes."""

    def __init__(self, unit: str) -> None:
        self.unit = unit
        self.parts: list[str] = []
        self.pos = 0
        self.blocks: list[list[Any]] = []
        self.units: list[list[int]] = []
        self.skips: list[str] = []
        self.notes: dict[str, Any] = {}

    def _sep(self) -> None:
        if self.pos and self.parts[-1] != "\n\n":
            self.parts.append("\n\n")
            self.pos += 2

    def start_unit(self, number: int) -> None:
        self._sep()
        self.units.append([self.pos, number])

    def add(self, text: str, kind: str = "para", level: int = 0, title: str = "") -> None:
        """One block; text is stripped of surrounding whitespace, an empty one adds nothing."""
        text = text.strip()
        if not text:
            return
        self._sep()
        self.parts.append(text)
        self.blocks.append([self.pos, self.pos + len(text), kind, level, title or (text if kind == "heading" else "")])
        self.pos += len(text)

    def heading(self, text: str, level: int) -> None:
        self.add(" ".join(text.split()), "heading", max(1, level))

    def marker(self, title: str, level: int) -> None:
        """A heading that is not in the text (a PDF bookmark whose title the page does not show):
        an empty block that starts a section here."""
        self._sep()
        self.blocks.append([self.pos, self.pos, "heading", max(1, level), " ".join(title.split())])

    def result(self, title: str | None = None) -> dict[str, Any]:
        return {"text": "".join(self.parts), "blocks": self.blocks, "unit": self.unit, "units": self.units,
                "title": title or None, "skips": self.skips, "notes": self.notes}


def table_rows(rows: list[list[str]]) -> str:
    """A table as one line per row, cells joined by " | " (empty trailing cells dropped)."""
    lines = []
    for row in rows:
        cells = [" ".join(c.split()) for c in row]
        while cells and not cells[-1]:
            cells.pop()
        if any(cells):
            lines.append(" | ".join(cells))
    return "\n".join(lines)
