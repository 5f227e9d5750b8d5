"""Structure of a document: the blocks the chunker may cut between (HTML: see html_view.py).

A block is a span of the document's *view* text (the document text itself, except for HTML where
the view is the visible text) that should stay together when it fits: a paragraph, a heading, a
fenced code block, a top-level function. Headings carry their level and title so the chunker can
build heading paths. Everything here is regex/line based and linear in the document length.
"""
from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Block:
    start: int  # view offsets, [start, end)
    end: int
    kind: str  # heading | para | fence | code
    level: int = 0  # heading level (1 = top)
    title: str = ""  # heading text, or a code unit's label ("def chunk_document")
    attrs: tuple[int, int] | None = None  # view span of a heading's `{ #anchor }` attribute list, left out of what is embedded


_LINE = re.compile(r"[^\n]*\n|[^\n]+")
_BLANK_SPLIT = re.compile(r"\n[ \t\r\f\v]*\n")
_ATX = re.compile(r"^ {0,3}(#{1,6})(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*$")
# attr_list / kramdown heading attributes, e.g. "## Path parameters { #path-parameters }" (MkDocs, FastAPI docs)
_ATTRS = re.compile(r"[ \t]*\{:?[ \t]*[#.][^{}\n]*\}[ \t]*$")
_SETEXT = re.compile(r"^ {0,3}(=+|-+)[ \t]*$")
_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_RST_ADORN = re.compile(r"^([!-/:-@\[-`{-~])\1*[ \t]*$")
_CODE_DEF = re.compile(
    r"^(?:export\s+)?(?:default\s+)?(?:pub(?:\([^)]*\))?\s+)?(?:public\s+|private\s+|protected\s+)?(?:async\s+)?(?:static\s+)?"
    r"(def|class|function|func|fn|struct|enum|interface|impl|trait|module|object|record|type|const|let|var|macro_rules!)\b[ \t]*"
    r"(?:\([^)]*\)\s*)?([A-Za-z_$][\w$.]*)?"
)
_CLOSERS = ("}", ")", "]", "end", "fi", "done", "esac", "#endif")


def _lines(text: str) -> list[tuple[int, int]]:
    """(start, end) of every line, end excluding the newline (and a CR before it)."""
    out = []
    for m in _LINE.finditer(text):
        s, e = m.start(), m.end()
        if text.endswith("\n", s, e):
            e -= 1
            if e > s and text[e - 1] == "\r":
                e -= 1
        out.append((s, e))
    return out


def text_blocks(text: str, start: int = 0, end: int | None = None, kind: str = "para") -> list[Block]:
    """Paragraphs: spans separated by blank lines, trimmed of surrounding whitespace."""
    end = len(text) if end is None else end
    out = []
    pos = start
    for m in _BLANK_SPLIT.finditer(text, start, end):
        out.append((pos, m.start()))
        pos = m.end()
    out.append((pos, end))
    blocks = []
    for s, e in out:
        seg = text[s:e]
        stripped = seg.strip()
        if stripped:
            lead = len(seg) - len(seg.lstrip())
            blocks.append(Block(s + lead, s + lead + len(stripped), kind))
    return blocks


def _heading_attrs(title: str, at: int) -> tuple[str, tuple[int, int] | None]:
    """(title without a trailing `{ #id .class }` list, the list's span) for a title starting at `at`."""
    m = _ATTRS.search(title)
    if m is None:
        return title.strip(), None
    return title[: m.start()].strip(), (at + m.start(), at + m.end())


def without_spans(text: str, a: int, b: int, spans: list[tuple[int, int]]) -> str:
    """text[a:b] minus the sorted, disjoint `spans` lying inside it (heading anchors, not embedded)."""
    out, pos = [], a
    for s, e in spans:
        if s >= b:
            break
        if s >= pos:
            out.append(text[pos:s])
            pos = min(e, b)
    return "".join(out) + text[pos:b]


def markdown_blocks(text: str) -> list[Block]:
    """ATX and setext headings, fenced code kept whole, paragraphs, YAML front matter as one block."""
    lines = _lines(text)
    blocks: list[Block] = []
    para: list[tuple[int, int]] = []
    fence: tuple[str, int, int] | None = None  # (char, length, start)

    def flush() -> None:
        if para:
            blocks.extend(text_blocks(text, para[0][0], para[-1][1]))
            para.clear()

    first = 0
    if lines and text[lines[0][0] : lines[0][1]].strip() == "---":
        for idx in range(1, len(lines)):
            if text[lines[idx][0] : lines[idx][1]].strip() in ("---", "..."):
                blocks.append(Block(0, lines[idx][1], "para"))
                first = idx + 1
                break
    for s, e in lines[first:]:
        line = text[s:e]
        if fence is not None:
            stripped = line.strip()
            if stripped and stripped == fence[0] * len(stripped) and len(stripped) >= fence[1]:
                blocks.append(Block(fence[2], e, "fence"))
                fence = None
            continue
        m = _FENCE.match(line)
        if m:
            flush()
            fence = (m.group(1)[0], len(m.group(1)), s + len(line) - len(line.lstrip()))
            continue
        m = _ATX.match(line)
        if m:
            flush()
            title, attrs = _heading_attrs(m.group(2) or "", s + (m.start(2) if m.group(2) else 0))
            blocks.append(Block(s + len(line) - len(line.lstrip()), s + len(line.rstrip()), "heading", len(m.group(1)), title, attrs))
            continue
        if _SETEXT.match(line) and len(para) == 1 and text[para[0][0] : para[0][1]].strip():
            ps = para[0][0]
            title = text[ps : para[0][1]]
            para.clear()
            level = 1 if line.strip()[0] == "=" else 2
            clean, attrs = _heading_attrs(title.rstrip("\r\n"), ps)
            blocks.append(Block(ps + len(title) - len(title.lstrip()), s + len(line.rstrip()), "heading", level, clean, attrs))
            continue
        if not line.strip():
            flush()
            continue
        para.append((s, e))
    flush()
    if fence is not None:  # unclosed fence: runs to the end of the document
        blocks.extend(text_blocks(text, fence[2], len(text), "fence"))
    blocks.sort(key=lambda b: b.start)
    return blocks


def rst_blocks(text: str) -> list[Block]:
    """Section titles (text line underlined, optionally overlined, by one repeated punctuation
    character); levels follow the order in which adornment styles first appear, as in docutils."""
    lines = _lines(text)
    raw = [text[s:e] for s, e in lines]
    styles: dict[tuple[str, bool], int] = {}
    blocks: list[Block] = []
    body_start: int | None = None
    i = consumed = 0  # consumed: first line not yet part of a heading (an underline is no overline)

    def is_adorn(k: int, title_len: int) -> bool:
        if not 0 <= k < len(raw):
            return False
        s = raw[k].rstrip()
        return bool(_RST_ADORN.match(s)) and len(s) >= min(max(title_len, 1), 3)

    def flush(upto: int) -> None:
        nonlocal body_start
        if body_start is not None:
            blocks.extend(text_blocks(text, body_start, upto))
            body_start = None

    while i < len(raw):
        line = raw[i]
        title = line.strip()
        blank_before = i == 0 or i == consumed or not raw[i - 1].strip()
        if title and not line[:1].isspace() and not _RST_ADORN.match(line.rstrip()) and is_adorn(i + 1, len(title)):
            over = i - 1 >= consumed and is_adorn(i - 1, len(title)) and raw[i - 1].rstrip()[0] == raw[i + 1].rstrip()[0]
            if blank_before or over:
                start_line = i - 1 if over else i
                flush(lines[start_line][0])
                style = (raw[i + 1].rstrip()[0], over)
                level = styles.setdefault(style, len(styles) + 1)
                blocks.append(Block(lines[start_line][0], lines[i + 1][0] + len(raw[i + 1].rstrip()), "heading", level, title))
                i += 2
                consumed = i
                continue
        if body_start is None and title:
            body_start = lines[i][0]
        i += 1
    flush(len(text))
    return blocks


_STRONG_DEFS = frozenset("def class function func fn struct enum interface impl trait module object record macro_rules!".split())


def _code_label(line: str) -> tuple[str, bool]:
    """("def name", strong) for a definition line; strong definitions may start a unit without a blank line."""
    m = _CODE_DEF.match(line)
    if not m:
        return "", False
    kw, name = m.group(1), m.group(2)
    if kw not in _STRONG_DEFS and not name:
        return "", False
    return (f"{kw} {name}" if name else kw), kw in _STRONG_DEFS


def code_blocks(text: str) -> list[Block]:
    """Top-level units: a new unit starts at an unindented line after a blank line, or at an
    unindented def/class/function line, together with the comments and decorators right above it.
    Closing braces and `end`s stay with the unit they close."""
    lines = _lines(text)
    starts: list[int] = []
    prev_blank = True
    attach: int | None = None  # first line of the run of unindented comments/decorators just above
    for idx, (s, e) in enumerate(lines):
        line = text[s:e]
        if not line.strip():
            prev_blank, attach = True, None
            continue
        top = not line[:1].isspace()
        body = line.lstrip()
        if top and not body.startswith(_CLOSERS):
            if prev_blank:
                starts.append(idx)
            elif _code_label(line)[1]:
                first = attach if attach is not None else idx
                if not starts or starts[-1] < first:
                    starts.append(first)
        is_note = top and body.startswith(("#", "//", "/*", "@", "--", ";;")) and not body.startswith(("#include", "#define"))
        attach = (idx if attach is None else attach) if is_note else None
        prev_blank = False
    if lines and (not starts or starts[0] != 0):
        starts.insert(0, 0)
    blocks = []
    for n, first in enumerate(starts):
        last = starts[n + 1] if n + 1 < len(starts) else len(lines)
        s, e = lines[first][0], lines[last - 1][1]
        seg = text[s:e]
        stripped = seg.strip()
        if not stripped:
            continue
        label = ""
        for k in range(first, last):
            line = text[lines[k][0] : lines[k][1]]
            if line.strip() and not line[:1].isspace():
                label = _code_label(line)[0]
                if label:
                    break
        lead = len(seg) - len(seg.lstrip())
        blocks.append(Block(s + lead, s + lead + len(stripped), "code", 0, label))
    return blocks
