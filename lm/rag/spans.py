"""Candidate answers cut from retrieved chunks, each with exact character offsets into its chunk.

Pure text functions (no model): sentences, and the short phrases inside them that an extractive
answer can be. Every candidate satisfies chunk_text[start:end] == text, so a citation made from it
reproduces the answer byte for byte.
"""
from __future__ import annotations

import re
from collections.abc import Iterator
from typing import NamedTuple

# a sentence ends at . ! ? followed by space + capital/digit/quote, or at a blank line / list item
_SENT_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+(?=[A-Z0-9\"'(\[])|\n\s*\n|\n(?=\s*(?:[-*+]|\d+\.)\s)")
_WORD = re.compile(r"\d[\d,.]*\d%?|[\w][\w'\-.%]*[\w%]|[\w]", re.UNICODE)
_CLAUSE = re.compile(r"[,;:()\"]|\s(?:and|or|but|which|who|that|where|when|while|because|although)\s")


class Span(NamedTuple):
    start: int  # char offset in the chunk text, inclusive
    end: int  # exclusive
    text: str


def sentences(text: str, min_chars: int = 12) -> list[Span]:
    """Sentences of `text` with offsets; very short fragments merge into the next one."""
    out: list[Span] = []
    pos = 0
    pending = None
    bounds = [m.start() for m in _SENT_END.finditer(text)] + [len(text)]
    for b in bounds:
        seg = text[pos:b]
        lead = len(seg) - len(seg.lstrip())
        s, e = pos + lead, pos + len(seg.rstrip())
        pos = b
        if e <= s:
            continue
        if text.startswith("#", s) and "\n" not in text[s:e]:  # a markdown heading is no answer
            continue
        if pending is not None:
            s = pending
            pending = None
        if e - s < min_chars and b < len(text):
            pending = s
            continue
        out.append(Span(s, e, text[s:e]))
    if pending is not None:
        e = len(text.rstrip())
        if out:
            out[-1] = Span(out[-1].start, e, text[out[-1].start:e])
        elif e > pending:
            out.append(Span(pending, e, text[pending:e]))
    return out


def words(text: str, base: int = 0) -> list[Span]:
    """Word tokens with offsets (numbers like 1,230 and 3.5 stay whole)."""
    return [Span(base + m.start(), base + m.end(), m.group()) for m in _WORD.finditer(text)]


def phrases(text: str, sent: Span, max_words: int = 8) -> Iterator[Span]:
    """Every contiguous run of 1..max_words words of the sentence that does not cross a clause
    boundary (comma, bracket, quote, relative pronoun): SQuAD-style answers are such runs."""
    ws = words(sent.text, sent.start)
    cuts = {m.start() + sent.start for m in _CLAUSE.finditer(sent.text)}
    for i in range(len(ws)):
        for j in range(i, min(len(ws), i + max_words)):
            if j > i and any(ws[j - 1].end <= c < ws[j].start for c in cuts):
                break
            yield Span(ws[i].start, ws[j].end, text[ws[i].start:ws[j].end])


_STOP = frozenset(
    "a an the of to in on at by for from with as is are was were be been being and or but not no it its this that these "
    "those there their they them he she his her what which who whom whose when where why how does do did has have had "
    "can could would should will may might than then so such into about over under between during after before also "
    "any each some most more many much one ones s".split())
_YEARISH = re.compile(r"^(1[0-9]{3}|20[0-9]{2}|[0-9]{1,2}(st|nd|rd|th)|[0-9]+s)$")
_NUMISH = re.compile(r"^[0-9][0-9,.]*%?$|^(one|two|three|four|five|six|seven|eight|nine|ten|hundred|thousand|million|billion)$", re.I)
_MONTHS = frozenset("january february march april may june july august september october november december".split())


def content_terms(text: str) -> list[str]:
    """Lower-cased words minus stop words, crudely stemmed (plural s), for overlap features."""
    out = []
    for w in _WORD.findall(text.lower()):
        if w in _STOP or len(w) < 2:
            continue
        out.append(w[:-1] if len(w) > 4 and w.endswith("s") and not w.endswith("ss") else w)
    return out


def answer_type(question: str) -> str:
    """Coarse expected answer type from the wh-phrase: explain, number, date, person, place or thing."""
    q = question.lower()
    if re.search(r"^(how (do|can|should|to|would)|why)\b", q):
        return "explain"  # a procedure or a reason: the whole sentence is the answer
    if re.search(r"\b(what|which) (year|century|decade|date|month|day|time|period)\b|^when\b|\bwhen (did|was|is|were|does)\b", q):
        return "date"
    if re.search(r"\bhow (many|much|long|far|high|tall|large|big|wide|deep|old|fast|often)\b|\b(what|which) (percentage|percent|number|amount)\b", q):
        return "number"
    if re.search(r"^who\b|\bwho (is|was|were|did|had)\b|\bwhom\b|\bwhose\b", q):
        return "person"
    if re.search(r"^where\b|\bwhere (is|was|does|did|do)\b|\bwhat (city|country|river|lake|sea|region|state|town|place)\b", q):
        return "place"
    return "thing"


class PhraseFeatures(NamedTuple):
    in_question: float  # share of the phrase's content words that the question already has
    type_match: float  # 1 when the phrase looks like the expected answer type
    proximity: float  # 1 / (1 + words between the phrase and the nearest question word in its sentence)
    n_words: int
    stop_edge: float  # the phrase starts or ends with a stop word
    capitalised: float  # share of capitalised words (names, places)
    content: int  # content words in the phrase


def _type_score(kind: str, toks: list[str]) -> float:
    low = [t.lower().strip(".,") for t in toks]
    if kind == "date":
        return float(any(_YEARISH.match(t) or t in _MONTHS or t in ("century", "bc", "ad") for t in low))
    if kind == "number":
        return float(any(_NUMISH.match(t) for t in low))
    if kind in ("person", "place"):
        return float(bool(toks) and all(t[:1].isupper() or t.lower() in ("of", "de", "van", "von", "the") for t in toks)
                     and toks[0][:1].isupper())
    return 0.0


def phrase_features(question: str, sent: Span, phrase: Span, q_terms: set[str], kind: str) -> PhraseFeatures:
    toks = [w.text for w in words(phrase.text)]
    terms = content_terms(phrase.text)
    in_q = sum(t in q_terms for t in terms) / len(terms) if terms else 1.0
    sw = words(sent.text, sent.start)
    hits = [i for i, w in enumerate(sw) if (content_terms(w.text) or [""])[0] in q_terms]
    first = next((i for i, w in enumerate(sw) if w.start >= phrase.start), 0)
    last = max((i for i, w in enumerate(sw) if w.end <= phrase.end), default=first)
    gaps = [first - h for h in hits if h < first] + [h - last for h in hits if h > last]
    prox = 1.0 / (1.0 + min(gaps)) if gaps else 0.0
    edge = float(toks[0].lower() in _STOP and toks[0].lower() not in ("the",) or toks[-1].lower() in _STOP)
    # a sentence's first word is capitalised anyway: it is no evidence of a name
    caps = sum(w.text[:1].isupper() and w.start != sent.start for w in words(phrase.text, phrase.start)) / len(toks)
    return PhraseFeatures(in_q, _type_score(kind, toks), prox, len(toks), edge, caps, len(terms))


def trim(text: str, span: Span, q_terms: set[str]) -> Span:
    """Drop leading/trailing words that are stop words or repeat the question ("The largest city
    on the Rhine is Cologne" -> "Cologne"): SQuAD-style answers are the new information only."""
    ws = words(span.text, span.start)

    def weak(w: Span) -> bool:
        t = content_terms(w.text)
        return not t or t[0] in q_terms

    i, j = 0, len(ws)
    while i < j and weak(ws[i]):
        i += 1
    while j > i and weak(ws[j - 1]):
        j -= 1
    if i >= j:
        return span
    return Span(ws[i].start, ws[j - 1].end, text[ws[i].start:ws[j - 1].end])


def snap(text: str, sent: Span, guess: str, max_words: int = 12) -> Span | None:
    """The run of the sentence's words that best matches free text `guess` (token F1), so a
    generated answer becomes a copied span with offsets; None when nothing overlaps."""
    g = [w.lower() for w in _WORD.findall(guess)]
    if not g:
        return None
    ws = words(sent.text, sent.start)
    gset = set(g)
    best, best_f = None, 0.0
    for i in range(len(ws)):
        if ws[i].text.lower() not in gset:
            continue
        common = 0
        for j in range(i, min(len(ws), i + max_words)):
            common += ws[j].text.lower() in gset
            n = j - i + 1
            f = 2 * common / (n + len(g))
            if f > best_f:
                best, best_f = Span(ws[i].start, ws[j].end, text[ws[i].start:ws[j].end]), f
    return best
