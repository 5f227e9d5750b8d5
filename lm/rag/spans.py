"""The pieces an answer is cut from, each with exact character offsets into its chunk.

Pure text functions (no model). A *unit* is what a passage is built of: a sentence, a list item,
or a table row (which keeps its table's header row, since "| `--tag T` | tag every chunk |" means
nothing without "| option | meaning |"). A *phrase* is a run of words inside one clause of a unit.
Every span satisfies chunk_text[start:end] == text, so a citation made from it reproduces the
answer byte for byte. The regular expressions below only segment text (sentence ends, list and
table markup, titles, inline code); no rule here chooses an answer.
"""
from __future__ import annotations

import re
from typing import NamedTuple

# a sentence ends at . ! ? followed by space + capital/digit/quote, at a blank line, before a list item,
# and before each markdown table row (a row is one record: "| `--tag T` | tag every chunk ... |")
_ROW = r"\s*(?:\||[-*+]\s|\d+\.\s)"  # a table row or a list item (bulleted or numbered)
_SENT_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+(?=[A-Z0-9\"'(\[])|\n\s*\n|\n(?=" + _ROW + ")")
_KEYED = re.compile("^" + _ROW)
_RULE_ROW = re.compile(r"^\|?[\s|:\-]+\|?$")  # a table's |---|---| line
_WORD = re.compile(r"\d[\d,.]*\d%?|[\w][\w'\-.%/]*[\w%]|[\w]", re.UNICODE)
_CLAUSE = re.compile(r"[,;:()\"]|\s(?:and|or|but|which|who|that|where|when|while|because|although)\s")
# a reStructuredText / setext title: one line, then a line of one repeated punctuation mark
_TITLE = re.compile(r"^(?:\s*([=\-~^\"'`#*+])\1{2,}\s*\n)?[^\n]+\n\s*([=\-~^\"'`#*+])\2{2,}\s*$")  # optional overline
_CODE = re.compile(r"``([^`\n]+?)``|(?<!`)`([^`\n]+?)`(?!`)")  # inline code (rst ``x``, markdown `x`)


class Span(NamedTuple):
    start: int  # char offset in the chunk text, inclusive
    end: int  # exclusive
    text: str


class Unit(NamedTuple):
    """A sentence, list item or table row; `header` is a table row's header row (None otherwise)."""

    start: int
    end: int
    text: str
    header: Span | None = None

    @property
    def span(self) -> Span:
        return Span(self.start, self.end, self.text)


def units(text: str, min_chars: int = 12) -> list[Unit]:
    """The units of `text` with offsets; fragments shorter than `min_chars` merge into the next one."""
    out: list[Unit] = []
    pos = pending_end = 0
    pending = None
    header: Span | None = None
    bounds = [m.start() for m in _SENT_END.finditer(text)] + [len(text)]
    for b in bounds:
        seg = text[pos:b]
        lead = len(seg) - len(seg.lstrip())
        s, e = pos + lead, pos + len(seg.rstrip())
        pos = b
        if e <= s:
            continue
        if _RULE_ROW.match(text[s:e]):
            if out and out[-1].text.startswith("|") and not text[out[-1].end:s].strip():
                last = out.pop()  # the row above a table's rule is its header: context, not an answer
                header = last.span
            continue
        if not text.startswith("|", s):
            header = None
        if (text.startswith("#", s) and "\n" not in text[s:e]) or _TITLE.match(text[s:e]):
            continue  # a heading is no answer (the heading path carries it)
        if pending is not None and _KEYED.match(text[s:e]):
            out.append(Unit(pending, pending_end, text[pending:pending_end]))  # "Codes:" stays out of the first item
            pending = None
        if pending is not None:
            s, pending = pending, None
        if e - s < min_chars and b < len(text):
            pending, pending_end = s, e
            continue
        out.append(Unit(s, e, text[s:e], header if text.startswith("|", s) else None))
    if pending is not None:
        e = len(text.rstrip())
        if out:
            out[-1] = out[-1]._replace(end=e, text=text[out[-1].start:e])
        elif e > pending:
            out.append(Unit(pending, e, text[pending:e]))
    return out


def sentences(text: str, min_chars: int = 12) -> list[Span]:
    """The units' spans (provenance and citations split answers the same way)."""
    return [u.span for u in units(text, min_chars)]


def words(text: str, base: int = 0) -> list[Span]:
    """Word tokens with offsets (numbers like 1,230 and 3.5 stay whole)."""
    return [Span(base + m.start(), base + m.end(), m.group()) for m in _WORD.finditer(text)]


def clause_cuts(text: str, base: int = 0) -> list[int]:
    """Offsets of clause boundaries (comma, bracket, quote, relative pronoun): a phrase never crosses one."""
    return [base + m.start() for m in _CLAUSE.finditer(text)]


def code_spans(unit: Span) -> list[Span]:
    """The insides of a unit's inline code (``10``, `~/.aws/config`), offsets into the chunk text:
    in technical docs a value, path or command is one answer however many words it holds."""
    out = []
    for m in _CODE.finditer(unit.text):
        g = 1 if m.group(1) is not None else 2
        inner = m.group(g)
        lead = len(inner) - len(inner.lstrip())
        start, end = unit.start + m.start(g) + lead, unit.start + m.start(g) + len(inner.rstrip())
        if end > start:
            out.append(Span(start, end, unit.text[start - unit.start:end - unit.start]))
    return out


def is_keyed(text: str) -> bool:
    """A list item or table row (the unit-kind feature)."""
    return bool(_KEYED.match(text))
