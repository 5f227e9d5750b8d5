"""Candidate answers cut from retrieved chunks, each with exact character offsets into its chunk.

Pure text functions (no model): sentences, and the short phrases inside them that an extractive
answer can be. Every candidate satisfies chunk_text[start:end] == text, so a citation made from it
reproduces the answer byte for byte.
"""
from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import NamedTuple

# a sentence ends at . ! ? followed by space + capital/digit/quote, at a blank line, before a list item,
# and before each markdown table row (a row is one record: "| `--tag T` | tag every chunk ... |")
_ROW = r"\s*(?:\||[-*+]\s|\d+\.\s)"  # a table row or a list item (bulleted or numbered)
_SENT_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+(?=[A-Z0-9\"'(\[])|\n\s*\n|\n(?=" + _ROW + ")")
_KEYED = re.compile("^" + _ROW)
_RULE_ROW = re.compile(r"^\|?[\s|:\-]+\|?$")  # a table's |---|---| line
_WORD = re.compile(r"\d[\d,.]*\d%?|[\w][\w'\-.%/]*[\w%]|[\w]", re.UNICODE)
_CLAUSE = re.compile(r"[,;:()\"`]|\s(?:and|or|but|which|who|that|where|when|while|because|although)\s")
# a reStructuredText / setext title: one line, then a line of one repeated punctuation mark
_TITLE = re.compile(r"^(?:\s*([=\-~^\"'`#*+])\1{2,}\s*\n)?[^\n]+\n\s*([=\-~^\"'`#*+])\2{2,}\s*$")  # optional overline
_CODE = re.compile(r"``([^`\n]+?)``|(?<!`)`([^`\n]+?)`(?!`)")  # inline code (rst ``x``, markdown `x`)


class Span(NamedTuple):
    start: int  # char offset in the chunk text, inclusive
    end: int  # exclusive
    text: str


def sentences(text: str, min_chars: int = 12) -> list[Span]:
    """Sentences of `text` with offsets; very short fragments merge into the next one."""
    out: list[Span] = []
    pos = pending_end = 0
    pending = None
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
                out.pop()  # the row above a table's rule is its header ("| flag | meaning |"): no answer
            continue
        if (text.startswith("#", s) and "\n" not in text[s:e]) or _TITLE.match(text[s:e]):
            continue  # a heading is no answer
        if pending is not None and _KEYED.match(text[s:e]):
            out.append(Span(pending, pending_end, text[pending:pending_end]))  # "Codes:" stays out of the first item
            pending = None
        if pending is not None:
            s = pending
            pending = None
        if e - s < min_chars and b < len(text):
            pending, pending_end = s, e
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
    if re.search(r"\bhow (many|much|long|far|high|tall|large|big|wide|deep|old|fast|often)\b|\b(what|which) (percentage|percent|number|amount)\b"
                 r"|\bwhat (is|was|are|were) the (height|length|depth|width|area|population|size|temperature|elevation|distance|"
                 r"speed|rate|cost|price|weight|volume|capacity|average|total|number|amount|percentage)\b", q):
        return "number"
    if re.search(r"^who\b|\bwho (is|was|were|did|had)\b|\bwhom\b|\bwhose\b", q):
        return "person"
    if re.search(r"^where\b|\bwhere (is|was|does|did|do)\b|\b(what|which)( other| \w+)? (city|country|river|lake|sea|"
                 r"ocean|region|state|town|village|place|island|continent|mountain|valley|province|port|location|area)\b", q):
        return "place"
    return "thing"


_PREP = frozenset("in at on from by into near to of during since until through across along via".split())
_LINK = frozenset("is are was were called named known as became becomes means".split())
_KINDS = ("date", "number", "person", "place", "thing")
_SHAPES = ("year", "number", "name", "capital", "lower")
# The names of phrase_vector's entries, in order (the weights in lm.rag.extract are keyed by them).
# None is lexicalised (no word identities): shape x wh-type, length, position and the IDF-weighted
# distance to the question's words in the sentence, as in SQuAD's sliding-window / logistic baselines.
FEATURES: tuple[str, ...] = (
    ("in_question", "edge_question", "len1", "len2", "len3", "len4", "len5plus", "prev_prep", "prev_by_person",
     "prev_prep_where", "prev_link", "prev_question", "next_question", "near_left", "near_right", "window",
     "clause_start", "clause_end", "proximity", "capitalised")
    + tuple(f"{s}_{k}" for k in _KINDS for s in _SHAPES))


class SentenceWords(NamedTuple):
    """A sentence's words with what the phrase features need, computed once per sentence."""

    words: list[Span]  # offsets into the chunk text
    stop: list[bool]  # a stop word: never the first or last word of an answer
    q_weight: list[float]  # the question term's weight (its normalised IDF) when the word is one, else 0
    cut_before: list[bool]  # a clause boundary (comma, bracket, relative pronoun) lies before word i
    q_total: float  # the summed weight of the question's terms
    code: list[tuple[Span, list[int]]]  # each inline code span with the indices of the words inside it


def code_spans(sent: Span) -> list[Span]:
    """The insides of a sentence's inline code (``10``, `~/.aws/config`), offsets into the chunk text:
    in technical docs a value, path or command is one answer however many words the word pattern
    would cut it into."""
    out = []
    for m in _CODE.finditer(sent.text):
        g = 1 if m.group(1) is not None else 2
        inner = m.group(g)
        lead = len(inner) - len(inner.lstrip())
        start, end = sent.start + m.start(g) + lead, sent.start + m.start(g) + len(inner.rstrip())
        if end > start:
            out.append(Span(start, end, sent.text[start - sent.start:end - sent.start]))
    return out


def sentence_words(sent: Span, q_weight: Callable[[str], float], q_total: float) -> SentenceWords:
    """`q_weight(word)`: how much the word says about the question (0 when it is not in it)."""
    ws = words(sent.text, sent.start)
    cuts = [m.start() + sent.start for m in _CLAUSE.finditer(sent.text)]
    stop = [w.text.lower() in _STOP or (len(w.text) < 2 and not w.text.isdigit()) for w in ws]
    qw = [0.0 if st else q_weight(w.text) for w, st in zip(ws, stop)]
    cut = [i == 0 or any(ws[i - 1].end <= c < w.start for c in cuts) for i, w in enumerate(ws)]
    code = [(c, [k for k, w in enumerate(ws) if w.start >= c.start and w.end <= c.end]) for c in code_spans(sent)]
    return SentenceWords(ws, stop, qw, cut, max(q_total, 1e-9), code)


def candidates(sw: SentenceWords, max_words: int = 8) -> Iterator[tuple[int, int]]:
    """(first, last) word indices of every run of 1..max_words words inside one clause whose first
    and last words are neither stop words nor words of the question: SQuAD-style answers are the
    new information ("The largest city on the Rhine is Cologne" -> "Cologne")."""
    n = len(sw.words)
    for i in range(n):
        if sw.stop[i] or sw.q_weight[i] > 0:
            continue
        for j in range(i, min(n, i + max_words)):
            if j > i and sw.cut_before[j]:
                break
            if not sw.stop[j] and sw.q_weight[j] == 0:
                yield i, j


def _shape(toks: list[Span], sent_start: int) -> str:
    low = [t.text.lower().strip(".,") for t in toks]
    if any(_YEARISH.match(t) or t in _MONTHS for t in low):
        return "year"
    if any(_NUMISH.match(t) for t in low):
        return "number"
    caps = [t.text[:1].isupper() and t.start != sent_start for t in toks]
    if caps[0] and all(c or t in ("of", "de", "van", "von", "the", "and") for c, t in zip(caps, low)):
        return "name"  # a sentence's first word is capitalised anyway: it is no evidence of a name
    return "capital" if any(caps) else "lower"


def phrase_vector(sw: SentenceWords, i: int, j: int, sent_start: int, kind: str) -> list[float]:
    """The features of words i..j of the sentence, in FEATURES order."""
    n, total, qw = j - i + 1, len(sw.words), sw.q_weight
    content = [k for k in range(i, j + 1) if not sw.stop[k]]
    in_q = sum(qw[k] for k in content) / max(1, len(content))  # inline code like `-v` may hold no content word
    prev = sw.words[i - 1].text.lower() if i > 0 else ""
    left = max((qw[k] / (i - k) for k in range(i) if qw[k] > 0), default=0.0)
    right = max((qw[k] / (k - j) for k in range(j + 1, total) if qw[k] > 0), default=0.0)
    window = sum(qw[k] for k in range(max(0, i - 5), min(total, j + 6)) if k < i or k > j) / sw.q_total
    shape = _shape(sw.words[i:j + 1], sent_start)
    gaps = [i - k for k in range(i) if qw[k] > 0] + [k - j for k in range(j + 1, total) if qw[k] > 0]
    caps = sum(w.text[:1].isupper() and w.start != sent_start for w in sw.words[i:j + 1]) / n
    vec = [in_q, max(qw[i], qw[j]), float(n == 1), float(n == 2), float(n == 3), float(n == 4), float(n >= 5),
           float(prev in _PREP), float(prev == "by" and kind == "person"), float(prev in _PREP and kind in ("place", "date")),
           float(prev in _LINK), float(i > 0 and qw[i - 1] > 0), float(j + 1 < total and qw[j + 1] > 0),
           left, right, min(window, 1.0), float(sw.cut_before[i]), float(j + 1 == total or sw.cut_before[j + 1]),
           1.0 / min(gaps) if gaps else 0.0, caps]
    vec += [float(s == shape and k == kind) for k in _KINDS for s in _SHAPES]
    return vec


def is_stop(word: str) -> bool:
    return word.lower() in _STOP


DEFAULT_CUES = frozenset(("default", "defaults"))
_LITERALS = frozenset("true false none null yes off auto enabled disabled".split())
_LINKED = re.compile(r"^[*_`'\")\]]*\s*(?::|-|=|is\b|to\b|was\b|are\b)", re.I)  # "Default: X", "default is X"
_SELF_DEFAULT = frozenset("this is the a an".split())  # "* true - This is the default value"
# the nouns of "which X" questions that ask for a name the docs define (a flag, a variable, a code)
_ASKS_KEY = re.compile(r"^\s*(which|what)\s+(\w+\s+){0,2}?(option|flag|setting|key|command|code|variable|parameter|argument|"
                       r"field|header|property|attribute|switch|env|method|function|endpoint|subcommand)s?\b", re.I)


def asks_key(question: str) -> bool:
    """"Which option tags every chunk?", "What return code means failure?": the name of a thing the docs
    define, which a table row or list item states first and then describes. Other "what X" questions
    ("What port ...?", "What year ...?") ask for a value inside the description, not its key."""
    return bool(_ASKS_KEY.match(question)) and not asks_default(question)


def row_key(sw: SentenceWords, sent: Span) -> set[int]:
    """The first word of a table row's or list item's leading inline code ("| `--tag T` | tag every
    chunk ... |", "* ``255`` -- Command failed."): docs define a name by stating it first, so when the
    row's words are the question's, its key is the answer."""
    if not _KEYED.match(sent.text):
        return set()
    codes = sw.code
    if not codes or not codes[0][1] or re.sub(r"^\s*\d+\.", "", sent.text[:codes[0][0].start - sent.start]).strip(" |*+-`\t"):
        return set()  # the row does not start with its code
    return {codes[0][1][0]}


def asks_default(question: str) -> bool:
    """"What is the default X?" / "X defaults to what?": documentation states such a value next to the
    word default ("**Default** - ``10``", "(default 0.25)", "by default, it is set to ``legacy``")."""
    return any(w in DEFAULT_CUES for w in re.findall(r"[a-z]+", question.lower()))


def default_values(sw: SentenceWords, sent: Span, reach: int = 8) -> set[int]:
    """Indices of the words that start a default value stated in the sentence: the first value-like
    word (inline code, a number, true/false/auto..., or a capitalised word when a link such as ":" or
    "is" follows "default") within `reach` words after "default"; and in a list item that calls itself
    the default ("* true - This is the default value", "* ``ignore`` - (Default) ...") the item's own
    leading value. Why so narrow: in prose "default" is also a noun ("when a company defaults, Moody's
    ..."), and a capitalised word after it is then no value."""
    code = {k for _c, inside in sw.code for k in inside}
    words = [w.text.lower() for w in sw.words]
    # "defaults" states a value only as a verb ("defaults to auto"); "the old defaults were" names none
    cues = [k for k, w in enumerate(words) if w == "default" or (w == "defaults" and words[k + 1:k + 2] == ["to"])]
    lead_value = bool(words) and (0 in code or words[0] in _LITERALS or bool(_NUMISH.match(words[0])))
    if cues and _KEYED.match(sent.text) and lead_value and set(words[1:cues[0]]) <= _SELF_DEFAULT:
        return {0}  # the item names its value, then calls it the default: what follows describes it

    def value_like(k: int, linked: bool) -> bool:
        t = sw.words[k].text
        if k in code:
            return True
        if sw.stop[k]:
            return False  # "by default on Linux": "on" is no value
        return (bool(_NUMISH.match(t) or _YEARISH.match(t)) or t.lower() in _LITERALS
                or (linked and t[:1].isupper() and sw.words[k].start != sent.start))

    out = set()
    for c in cues:
        linked = bool(_LINKED.match(sent.text[sw.words[c].end - sent.start:]))
        after = next((k for k in range(c + 1, min(len(sw.words), c + 1 + reach)) if value_like(k, linked)), None)
        if after is not None:
            out.add(after)
    return out


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
