"""HTML as visible text with a character map back to the raw markup.

The chunker cuts and embeds the visible text (tags, comments, <head>, <script>, <style> dropped,
entities unescaped) but cites the raw file: every visible character knows the raw span it came
from, so a chunk's raw slice holds exactly its text plus the markup in between.
"""
from __future__ import annotations

import html
import re
from bisect import bisect_right
from dataclasses import dataclass
from html.parser import HTMLParser

from retrieval.ingest.blocks import Block, text_blocks
from retrieval.ingest.preprocess import normalize_whitespace

_BLOCK_TAGS = frozenset(
    "address article aside blockquote body br caption dd details dialog div dl dt fieldset figcaption figure footer form "
    "h1 h2 h3 h4 h5 h6 header hr html li main nav ol p pre section summary table tbody td tfoot th thead title tr ul".split()
)
_SKIP_TAGS = frozenset("script style noscript template svg math iframe object canvas head".split())
_HEAD_TAGS = frozenset("title meta link style script base noscript template head html".split())
_VOID = frozenset("area base br col embed hr img input link meta param source track wbr".split())
_CHARREF = re.compile(r"&(#[0-9]+;?|#[xX][0-9a-fA-F]+;?|[^\t\n\f <&#;]{1,32};?)")


@dataclass(frozen=True)
class Segment:
    vstart: int
    vend: int
    rstart: int
    rend: int
    cstart: tuple[int, ...] | None  # raw start of each view char (None: view char i is raw char i)
    cend: tuple[int, ...] | None


class _Visible(HTMLParser):
    """Collects visible text nodes with their raw spans; headings and block tags as boundaries."""

    def __init__(self, raw: str) -> None:
        super().__init__(convert_charrefs=True)
        self.raw = raw
        self.line_starts = [0] + [m.end() for m in re.finditer("\n", raw)]
        self.events: list[tuple[int, str, object]] = []  # (raw pos, kind, payload)

    def _pos(self) -> int:
        line, col = self.getpos()
        return self.line_starts[line - 1] + col

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.events.append((self._pos(), "start", tag))
        if tag in _VOID:
            self.events.append((self._pos(), "end", tag))

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.events.append((self._pos(), "start", tag))
        self.events.append((self._pos(), "end", tag))

    def handle_endtag(self, tag: str) -> None:
        self.events.append((self._pos(), "end", tag))

    def handle_data(self, data: str) -> None:
        self.events.append((self._pos(), "data", data))

    def handle_comment(self, data: str) -> None:
        self.events.append((self._pos(), "other", None))

    handle_pi = unknown_decl = handle_comment

    def handle_decl(self, decl: str) -> None:
        self.handle_comment(decl)


def _segment_map(raw: str, rstart: int) -> tuple[str, tuple[int, ...] | None, tuple[int, ...] | None]:
    """Unescape `raw` piecewise so every view character knows the raw span it came from."""
    if "&" not in raw:
        return raw, None, None
    out: list[str] = []
    cs: list[int] = []
    ce: list[int] = []
    pos = 0
    for m in _CHARREF.finditer(raw):
        g = m.group()
        rep = html.unescape(g)
        keep = 0  # characters unescape left as they were ("&ampxyz" -> "&xyz", "&\r" -> "&\r")
        while keep < min(len(rep), len(g)) and rep[-1 - keep] == g[-1 - keep]:
            keep += 1
        ent_end = m.end() - keep
        out.extend(raw[pos : m.start()])
        cs.extend(range(rstart + pos, rstart + m.start()))
        ce.extend(range(rstart + pos + 1, rstart + m.start() + 1))
        n_rep = len(rep) - keep
        out.extend(rep[:n_rep])
        cs.extend([rstart + m.start()] * n_rep)
        ce.extend([rstart + ent_end] * n_rep)
        pos = ent_end
    out.extend(raw[pos:])
    cs.extend(range(rstart + pos, rstart + len(raw)))
    ce.extend(range(rstart + pos + 1, rstart + len(raw) + 1))
    return "".join(out), tuple(cs), tuple(ce)


@dataclass
class HtmlView:
    text: str  # visible text, blocks separated by blank lines
    segments: list[Segment]
    blocks: list[Block]
    title: str | None

    def raw_start(self, v: int) -> int:
        """Raw offset of view character v (v must lie inside a text segment)."""
        seg = self.segments[max(0, bisect_right(self._vstarts, v) - 1)]
        i = min(v, seg.vend - 1) - seg.vstart
        return seg.rstart + i if seg.cstart is None else seg.cstart[i]

    def raw_end(self, v: int) -> int:
        """Raw offset just after view character v-1."""
        seg = self.segments[max(0, bisect_right(self._vstarts, v - 1) - 1)]
        i = min(v - 1, seg.vend - 1) - seg.vstart
        return seg.rstart + i + 1 if seg.cend is None else seg.cend[i]

    def __post_init__(self) -> None:
        self._vstarts = [s.vstart for s in self.segments]


def _blocks(view: str, headings: list[tuple[int, int, int, str]]) -> list[Block]:
    """The view's text blocks, each inside a heading tagged with it (heading blocks merged)."""
    blocks: list[Block] = []
    hi = 0  # headings and blocks both run in view order: one merge-like pass
    for b in text_blocks(view):
        while hi < len(headings) and max(headings[hi][1], headings[hi][0] + 1) <= b.start:
            hi += 1
        h = headings[hi] if hi < len(headings) and headings[hi][0] <= b.start else None
        if h is None:
            blocks.append(b)
        elif blocks and blocks[-1].kind == "heading" and blocks[-1].title == h[3] and blocks[-1].start >= h[0]:
            blocks[-1] = Block(blocks[-1].start, b.end, "heading", h[2], h[3])
        else:
            blocks.append(Block(b.start, b.end, "heading", h[2], h[3]))
    return blocks


class _Walk:
    """One pass over the parser's events: visible text segments, headings and the <title>."""

    def __init__(self, raw: str, events: list[tuple[int, str, object]]) -> None:
        self.raw, self.events = raw, events
        self.parts: list[str] = []
        self.segments: list[Segment] = []
        self.headings: list[tuple[int, int, int, str]] = []  # (vstart, vend, level, title)
        self.title_parts: list[str] = []
        self.heading_parts: list[str] = []
        self.skip: list[str] = []
        self.in_title = False
        self.heading: tuple[int, int] | None = None  # (level, vstart)
        self.vlen = 0
        self.pending_break = False

    def start(self, tag: str) -> None:
        if tag == "body" or ("head" in self.skip and tag not in _HEAD_TAGS):
            self.skip = [t for t in self.skip if t != "head"]  # <head> ends at <body> or at the first body tag
        if tag in _SKIP_TAGS and tag not in _VOID:
            self.skip.append(tag)
        self.in_title = self.in_title or tag == "title"
        if tag in _BLOCK_TAGS:
            self.pending_break = True
        if len(tag) == 2 and tag[0] == "h" and tag[1] in "123456" and not self.skip:
            self.heading = (int(tag[1]), self.vlen)
            self.heading_parts = []

    def end(self, tag: str) -> None:
        if tag in self.skip:
            del self.skip[len(self.skip) - 1 - self.skip[::-1].index(tag) :]
        if tag == "title":
            self.in_title = False
        if tag in _BLOCK_TAGS:
            self.pending_break = True
        if self.heading is not None and tag == f"h{self.heading[0]}":
            text = normalize_whitespace("".join(self.heading_parts))
            if text:
                self.headings.append((self.heading[1], self.vlen, self.heading[0], text))
            self.heading = None

    def data(self, n: int, pos: int, payload: str) -> None:
        rend = self.events[n + 1][0] if n + 1 < len(self.events) else len(self.raw)
        if self.in_title:
            self.title_parts.append(payload)
        if self.skip or self.in_title:
            return
        text, cs, ce = _segment_map(self.raw[pos:rend], pos)
        if text != payload:  # unexpected parser behaviour: map the whole node coarsely
            text = payload
            cs = tuple([pos] * len(text))
            ce = tuple([rend] * len(text))
        if not text:
            return
        if self.pending_break and self.vlen:
            self.parts.append("\n\n")
            self.vlen += 2
        self.pending_break = False
        self.parts.append(text)
        if self.heading is not None:
            self.heading_parts.append(text)
        self.segments.append(Segment(self.vlen, self.vlen + len(text), pos, rend, cs, ce))
        self.vlen += len(text)


def html_view(raw: str) -> HtmlView:
    """Visible text of an HTML page with a map back to raw offsets, its headings and <title>."""
    parser = _Visible(raw)
    try:
        parser.feed(raw)
        parser.close()
    except Exception:  # html.parser is lenient; anything it still rejects leaves what it parsed
        pass
    w = _Walk(raw, parser.events)
    for n, (pos, kind, payload) in enumerate(parser.events):
        if kind == "start":
            w.start(str(payload))
        elif kind == "end":
            w.end(str(payload))
        elif kind == "data":
            w.data(n, pos, str(payload))
    view = "".join(w.parts)
    title = normalize_whitespace("".join(w.title_parts)) or None
    return HtmlView(view, w.segments, _blocks(view, w.headings), title)


def html_title(raw: str) -> str | None:
    return html_view(raw).title
