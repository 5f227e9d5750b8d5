"""Token-aware, structure-aware chunking with exact offsets.

The document's view text (the text itself; the visible text for HTML) is tokenised once with the
embedder's own tokenizer, after mapping every whitespace character to a plain space (same length,
so token offsets are view offsets). Counting word pieces in any span is then two bisections.
Because tokenizers split on whitespace, the count over a span equals the count of the
whitespace-normalised span, which is what gets embedded. Chunks near the budget are re-tokenised
as they will be embedded (prefix included) and split further if a tokenizer disagrees, so no
chunk's index_text ever exceeds `max_tokens` word pieces.

Packing: the document is cut into sections at headings; within a section, structural blocks
(paragraphs, fenced code, top-level functions) are packed greedily up to the budget; a block
over the budget is split at sentences (prose) or blank lines (code), then lines, then token
windows. Consecutive chunks of one section overlap by about `overlap_tokens`, snapped to a
sentence or line start when one is near.
"""
from __future__ import annotations

import re
import unicodedata
from bisect import bisect_left
from collections.abc import Callable
from dataclasses import dataclass, replace

from retrieval.errors import InvalidInputError
from retrieval.ingest import code_chunks
from retrieval.ingest.blocks import Block, code_blocks, markdown_blocks, rst_blocks, text_blocks, without_spans
from retrieval.ingest.documents.units import unit_metadata
from retrieval.ingest.html import html_view
from retrieval.ingest.preprocess import blank_whitespace, normalize_whitespace
from retrieval.ingest.token_count import _TOKENIZE_PIECE, _token_starts, tokenizer_is_exact  # noqa: F401 (re-exported)
from retrieval.types import Chunk, SourceDocument

TokenSpans = Callable[[str], "list[tuple[int, int]]"]

_SENTENCE = re.compile(r"[.!?\u2026\u3002\uff01\uff1f][\"'\u201d\u2019)\]]*\s+")
_NEWLINE = re.compile(r"\n")
_BLANK = re.compile(r"\n[ \t\r\f\v]*\n")
_SNAP = re.compile(r"[.!?\u3002][\"'\u201d\u2019)\]]*\s+|\n\s*")


@dataclass(frozen=True)
class ChunkerConfig:
    """Chunk size is in the embedder's word pieces: MiniLM reads 256 including [CLS]/[SEP]."""

    max_tokens: int = 254
    overlap_tokens: int = 32
    min_chunk_chars: int = 20  # a section shorter than this (e.g. a lone heading) joins the next one
    max_prefix_tokens: int = 48  # cap on the title/heading context line

    def __post_init__(self) -> None:
        if self.max_tokens < 16:
            raise InvalidInputError(f"chunk size {self.max_tokens} tokens is too small", "use at least 16 (MiniLM: 254)")
        if not 0 <= self.overlap_tokens <= self.max_tokens // 2:
            raise InvalidInputError(
                f"overlap {self.overlap_tokens} tokens must be between 0 and half the chunk size ({self.max_tokens // 2})",
                "use e.g. --overlap 32",
            )
        if self.min_chunk_chars < 0 or self.max_prefix_tokens < 0:
            raise InvalidInputError("min_chunk_chars and max_prefix_tokens must not be negative", "use the defaults")


class _View:
    """The text the chunker cuts (view offsets) and the map back to the document's text."""

    def __init__(self, doc: SourceDocument) -> None:
        self.doc = doc
        self.html = None
        if doc.kind == "html":
            self.html = html_view(doc.text)
            self.text = self.html.text
            self.blocks = self.html.blocks
        elif doc.blocks is not None:  # a converted document (PDF, DOCX, PPTX, notebook) brings its own
            self.text = doc.text
            self.blocks = [Block(*b) for b in doc.blocks]
        else:
            self.text = doc.text
            self.blocks = _blocks(doc.kind, doc.text)
        self.ws = blank_whitespace(self.text)  # same length; whitespace -> " "

    def raw_span(self, a: int, b: int) -> tuple[int, int]:
        if self.html is None:
            return a, b
        return self.html.raw_start(a), self.html.raw_end(b)


def _blocks(kind: str, text: str) -> list[Block]:
    if kind == "markdown":
        return markdown_blocks(text)
    if kind == "rst":
        return rst_blocks(text)
    if kind == "code":
        return code_blocks(text)
    return text_blocks(text)


def _wordish(ch: str) -> bool:
    return ch.isalnum() or ch == "_" or unicodedata.category(ch)[0] == "M"


class _Chunker:
    def __init__(self, doc: SourceDocument, token_spans: TokenSpans, config: ChunkerConfig) -> None:
        self.doc, self.token_spans, self.cfg = doc, token_spans, config
        self.view = _View(doc)
        self.newlines = [m.start() for m in _NEWLINE.finditer(doc.text)]
        html_title = self.view.html.title if self.view.html is not None else None
        self.title = normalize_whitespace(doc.title or html_title or "")
        self._prefix_cache: dict[tuple[str, ...], tuple[str, int]] = {}
        self.chunks: list[Chunk] = []
        self.midword: set[int] = set()
        self.exact = tokenizer_is_exact(token_spans)
        self.attrs = sorted(b.attrs for b in self.view.blocks if b.attrs)  # heading anchors, not embedded
        if self.exact and self.title and len(self.view.ws) <= _TOKENIZE_PIECE:
            # one tokenizer call for title and text (counts are additive for exact tokenizers)
            shift = len(self.title) + 1
            both = sorted(s for s, _ in token_spans(f"{self.title} {self.view.ws}"))
            cut = bisect_left(both, shift)
            self.starts = [s - shift for s in both[cut:]]
            if cut <= min(config.max_prefix_tokens, config.max_tokens // 4):
                self._prefix_cache[(self.title,)] = (self.title, cut)
        else:
            self.starts = _token_starts(self.view.ws, token_spans)

    # -- token arithmetic ------------------------------------------------------------------
    def count(self, a: int, b: int) -> int:
        """Word pieces starting in [a, b)."""
        return bisect_left(self.starts, b) - bisect_left(self.starts, a)

    def trim(self, a: int, b: int) -> tuple[int, int]:
        seg = self.view.ws[a:b]
        stripped = seg.lstrip(" ")
        a += len(seg) - len(stripped)
        return a, a + len(stripped.rstrip(" "))

    def prefix(self, parts: tuple[str, ...]) -> tuple[str, int]:
        """Context line for `parts` (title, headings) and its token count, capped."""
        if parts not in self._prefix_cache:
            cap = min(self.cfg.max_prefix_tokens, self.cfg.max_tokens // 4)
            keep = [p for n, p in enumerate(parts) if p and (n == 0 or p != parts[n - 1])]
            text = normalize_whitespace(" > ".join(keep))
            n = len(self.token_spans(text)) if text else 0
            while n > cap and len(keep) > 2:  # keep the title (or top heading) and the most specific one
                keep = keep[:1] + keep[2:]
                text = normalize_whitespace(" > ".join(keep))
                n = len(self.token_spans(text))
            keep_tokens = cap
            while n > cap:  # one heading alone is too long: cut it at a word piece
                spans = self.token_spans(text)
                keep_tokens = min(keep_tokens, len(spans)) - 1
                text = text[: spans[keep_tokens - 1][1]].rstrip() if keep_tokens > 0 else ""
                n = len(self.token_spans(text)) if text else 0
            self._prefix_cache[parts] = (text, n)
        return self._prefix_cache[parts]

    # -- splitting ---------------------------------------------------------------------------
    def _split_at(self, a: int, b: int, pattern: re.Pattern[str]) -> list[tuple[int, int]] | None:
        cuts = [m.end() for m in pattern.finditer(self.view.text, a, b) if a < m.end() < b]
        if not cuts:
            return None
        pieces = [self.trim(s, e) for s, e in zip([a] + cuts, cuts + [b])]
        return [p for p in pieces if p[0] < p[1]]

    def cut_ok(self, p: int) -> bool:
        """A cut at p does not split a word (so both sides tokenise as they do in the whole)."""
        ws = self.view.ws
        return p <= 0 or p >= len(ws) or not (_wordish(ws[p - 1]) and _wordish(ws[p]))

    def word_token(self, k: int, lo: int) -> int:
        """Index of the last token start at or before token k (and above lo) that starts a word."""
        j = k
        while j > lo and not self.cut_ok(self.starts[j]):
            j -= 1
        if j > lo or self.cut_ok(self.starts[j]):
            return j
        self.midword.add(self.starts[k])  # one giant word: cut inside it and verify the count
        return k

    def _windows(self, a: int, b: int, budget: int) -> list[tuple[int, int]]:
        i0, i1 = bisect_left(self.starts, a), bisect_left(self.starts, b)
        out = []
        k = i0
        while k < i1:
            nxt = self.word_token(k + budget, k) if k + budget < i1 else i1
            s = a if k == i0 else self.starts[k]
            e = self.starts[nxt] if nxt < i1 else b
            out.append(self.trim(s, e))
            k = nxt
        return [p for p in out if p[0] < p[1]] or [(a, b)]

    def fit(self, a: int, b: int, kind: str, budget: int) -> list[tuple[int, int]]:
        """Split [a, b) along ever finer structure until every piece fits the budget."""
        if self.count(a, b) <= budget:
            return [(a, b)]
        patterns = [_BLANK, _NEWLINE] if kind in ("code", "fence") else [_SENTENCE, _NEWLINE]
        for pattern in patterns:
            pieces = self._split_at(a, b, pattern)
            if pieces and len(pieces) > 1:
                out: list[tuple[int, int]] = []
                for s, e in pieces:
                    out.extend(self.fit(s, e, kind, budget))
                return out
        return self._windows(a, b, budget)

    # -- packing -----------------------------------------------------------------------------
    def overlap_start(self, cs: int, ce: int) -> int | None:
        ov = self.cfg.overlap_tokens
        i_cs, i_end = bisect_left(self.starts, cs), bisect_left(self.starts, ce)
        k = max(i_end - ov, i_cs + (i_end - i_cs + 1) // 2)  # never more than half the previous chunk
        if ov == 0 or k >= i_end:
            return None
        k = self.word_token(k, i_cs)
        if k <= i_cs:
            return None
        start = self.starts[k]
        m = _SNAP.search(self.view.text, start, ce)
        if m and m.end() < ce and self.count(m.end(), ce) >= max(1, ov // 3):
            start = m.end()
        return start

    def pack(self, units: list[tuple[int, int, str]], heading: tuple[str, ...], own_heading_at: int | None) -> None:
        """Greedy packing of a section's units into chunks, overlapping when the section runs on."""
        full_prefix = self.prefix((self.title,) + heading)
        budget = self.cfg.max_tokens - full_prefix[1] - (1 if full_prefix[0] else 0)
        code = self.doc.kind == "code"
        unit_starts = [u[0] for u in units] if code else []
        i = 0
        cs: int | None = None
        while i < len(units):
            if cs is None or self.count(cs, units[i][1]) > budget:
                cs = units[i][0]
            ce = None
            while i < len(units) and self.count(cs, units[i][1]) <= budget:
                ce = units[i][1]
                i += 1
            if ce is None:  # cannot happen: units fit the budget on their own
                ce = units[i][1]
                i += 1
            label = self.label(units, unit_starts, cs, ce) if code else ""
            parts = heading[:-1] if own_heading_at == cs else heading
            self.emit(cs, ce, heading, parts, label)
            cs = self.overlap_start(cs, ce) if i < len(units) else None

    @staticmethod
    def label(units: list[tuple[int, int, str]], unit_starts: list[int], cs: int, ce: int) -> str:
        """Code chunks are named by the unit they start in, else the first named unit inside them."""
        at = bisect_left(unit_starts, cs + 1) - 1
        if at >= 0 and units[at][2] and cs < units[at][1]:
            return units[at][2]
        for u in units[max(at, 0) :]:
            if u[0] >= ce:
                break
            if u[2] and cs <= u[0]:
                return u[2]
        return ""

    def emit(self, a: int, b: int, heading: tuple[str, ...], parts: tuple[str, ...], label: str) -> None:
        a, b = self.trim(a, b)
        body = normalize_whitespace(without_spans(self.view.text, a, b, self.attrs))
        if not body:
            return
        prefix, ptoks = self.prefix((self.title,) + parts)
        index_text = f"{prefix}\n{body}" if prefix else body
        estimate = self.count(a, b) + ptoks + (1 if prefix else 0)
        slack = 1 if self.exact else max(4, self.cfg.max_tokens // 10)
        verify = estimate > self.cfg.max_tokens - slack or a in self.midword or b in self.midword
        if verify and len(self.token_spans(index_text)) > self.cfg.max_tokens:
            i0, i1 = bisect_left(self.starts, a), bisect_left(self.starts, b)
            if i1 - i0 >= 2:  # the tokenizer disagrees with our count: halve and check again
                mid = self.starts[(i0 + i1) // 2]
                self.midword.add(mid)  # may split a word: make both halves check themselves
                self.emit(a, mid, heading, parts, label)
                self.emit(mid, b, heading, parts, label)
                return
            index_text = body  # a single word piece with its prefix: drop the prefix
        rs, re_ = self.view.raw_span(a, b)
        doc = self.doc
        self.chunks.append(
            Chunk(
                source=doc.source,
                text=doc.text[rs:re_],
                start_char=rs,
                end_char=re_,
                start_line=1 + bisect_left(self.newlines, rs) + doc.line_offset,
                end_line=1 + bisect_left(self.newlines, max(rs, re_ - 1)) + doc.line_offset,
                heading=label if doc.kind == "code" else " > ".join(h for h in heading if h),
                kind=doc.kind,
                index_text=index_text,
                doc_id=doc.doc_id,
                metadata={**doc.metadata, **unit_metadata(doc.unit, doc.units, rs, re_)},
            )
        )

    def run(self) -> list[Chunk]:
        sections: list[tuple[tuple[str, ...], list[Block]]] = []
        stack: list[tuple[int, str]] = []
        current: list[Block] = []
        path: tuple[str, ...] = ()
        for block in self.view.blocks:
            if block.kind == "heading":
                if current:
                    sections.append((path, current))
                while stack and stack[-1][0] >= block.level:
                    stack.pop()
                stack.append((block.level, block.title))
                path = tuple(t for _, t in stack)
                current = [block]
            else:
                current.append(block)
        if current:
            sections.append((path, current))
        carry: list[Block] = []
        for n, (heading, blocks) in enumerate(sections):
            blocks = carry + blocks
            size = sum(len(self.view.text[b.start : b.end].strip()) for b in blocks)
            only_headings = all(b.kind == "heading" for b in blocks)
            if n + 1 < len(sections) and (only_headings or size < self.cfg.min_chunk_chars):
                carry = blocks  # a lone heading or a scrap joins the next section
                continue
            carry = []
            prefix = self.prefix((self.title,) + heading)
            budget = self.cfg.max_tokens - prefix[1] - (1 if prefix[0] else 0)
            units = [(s, e, b.title if b.kind == "code" else "") for b in blocks for s, e in self.fit(b.start, b.end, b.kind, budget)]
            own = blocks[0].start if blocks[0].kind == "heading" and heading and blocks[0].title == heading[-1] else None
            self.pack(units, heading, own)
        return self.chunks


def chunk_document(doc: SourceDocument, token_spans: TokenSpans, config: ChunkerConfig | None = None) -> list[Chunk]:
    """Cut `doc` into chunks whose index_text fits `config.max_tokens` word pieces of `token_spans`.

    `token_spans(text)` returns the character spans of text's word pieces without special tokens
    (Embedder.token_spans). Every chunk satisfies doc.text[start_char:end_char] == chunk.text and
    its 1-based inclusive lines (plus doc.line_offset) contain it; lines are counted by "\\n".
    """
    config = config or ChunkerConfig()
    if not doc.text.strip():
        return []
    if code_chunks.supported(doc):  # by syntax; a file that does not parse falls back to lines, saying why
        starts = _token_starts(blank_whitespace(doc.text), token_spans)
        got = code_chunks.syntax_chunks(doc, token_spans, starts, config.max_tokens, config.max_prefix_tokens,
                                        tokenizer_is_exact(token_spans))
        if got.chunks is not None:
            return got.chunks
        doc = replace(doc, metadata={**doc.metadata, "chunking": "lines", "fallback": got.reason})
    return _Chunker(doc, token_spans, config).run()
