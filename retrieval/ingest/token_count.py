"""Counting word pieces for the chunk budget: token starts of long texts, and whether a tokenizer
counts the same over whitespace cuts (then chunks near the budget need no re-tokenising)."""
from __future__ import annotations

import re
import weakref
from bisect import bisect_left
from collections.abc import Callable

from retrieval.ingest.preprocess import blank_whitespace, normalize_whitespace

TokenSpans = Callable[[str], "list[tuple[int, int]]"]
_TOKENIZE_PIECE = 100_000  # chars per token_spans call for very long documents


def _token_starts(ws: str, token_spans: TokenSpans) -> list[int]:
    """Start offsets of all word pieces of the view, tokenising long texts in whitespace-cut pieces."""
    if len(ws) <= _TOKENIZE_PIECE:
        return sorted(s for s, _ in token_spans(ws))
    starts: list[int] = []
    pos = 0
    while pos < len(ws):
        end = len(ws) if len(ws) - pos <= _TOKENIZE_PIECE else ws.rfind(" ", pos, pos + _TOKENIZE_PIECE) + 1
        if end <= pos:  # no space in the window: cut anyway
            end = pos + _TOKENIZE_PIECE
        starts.extend(pos + s for s, _ in token_spans(ws[pos:end]))
        pos = end
    starts.sort()
    return starts



_PROBE = (
    "Hello, World!  Tokenization\tof CRLF\r\nlines: naïve café — 日本語のテキスト x\u00a0y e-mail 3.14159 don't\n\n"
    "## Heading > Sub\n* item one\n* item two (with [link](http://example.com/a_b?c=d)).\n\n    def f(x):\n        return x**2\n"
)
_EXACT_CACHE: weakref.WeakKeyDictionary[object, dict[str, bool]] = weakref.WeakKeyDictionary()


def tokenizer_is_exact(token_spans: TokenSpans) -> bool:
    """True when counting word pieces of the whole text between whitespace cuts gives the same
    numbers as tokenising each normalised piece (and a prefix line adds exactly its own tokens).

    BERT WordPiece (MiniLM) and the regex tokenizer of HashEmbedder pass; byte-level BPE and
    SentencePiece usually do not, and then every chunk near the budget is re-tokenised to check.
    Cached per embedder object, since probing costs a dozen small tokenizer calls.
    """
    owner = getattr(token_spans, "__self__", token_spans)
    name = getattr(token_spans, "__name__", "")
    try:
        cached = _EXACT_CACHE.get(owner)
    except TypeError:
        cached = None
    if cached is not None and name in cached:
        return cached[name]
    ws = blank_whitespace(_PROBE)
    starts = [s for s, _ in token_spans(ws)]
    cuts = [0] + [m.end() for m in re.finditer(r"\s+", ws)] + [len(ws)]
    exact = True
    for a, b in zip(cuts, cuts[2:]):  # every pair of consecutive words, and the whole
        want = bisect_left(starts, b) - bisect_left(starts, a)
        if len(token_spans(normalize_whitespace(_PROBE[a:b]))) != want:
            exact = False
            break
    head, body = "Guide > Install", normalize_whitespace(_PROBE)
    if exact and len(token_spans(f"{head}\n{body}")) != len(token_spans(head)) + len(starts):
        exact = False
    try:
        _EXACT_CACHE.setdefault(owner, {})[name] = exact
    except TypeError:
        pass
    return exact
