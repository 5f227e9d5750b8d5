"""Extractive answers: the best short phrase of the best retrieved sentences, copied with offsets.

A 135M LM cannot be trusted to write free text (issue 12: 1 of 5 right, invented commands), so
by default the answer is a span of a retrieved chunk: chunk_text[start:end] == answer, and the
citation is that span's exact file, lines and characters.

How a phrase is chosen (each step measured on squad2-rhine's odd paragraphs after fitting on the
even ones with benchmarks/fit_phrases.py: held-out token F1 0.417 linear, 0.449 re-ranked):
1. candidates: every run of words inside one clause of the `SENTENCES` best sentences that does
   not start or end with a stop word or a question word (spans.candidates), and each inline code
   span whole (documentation: `~/.aws/config` is one answer);
2. a linear score over dependency-free features (spans.FEATURES: answer shape x wh-type, length,
   IDF-weighted distance to the question's words, clause edges) plus the sentence's rank score;
   the weights are a conditional logit fitted by `python benchmarks/fit_phrases.py`;
3. the `RERANK` best are re-scored with MiniLM: the question's cosine to the sentence with the
   candidate masked. Masking the answer leaves what the question already says, so the cosine rises
   most for the span that is the question's missing piece.
Documentation adds what SQuAD prose cannot fit (bench_doc_answers.py measures it): a "default"
question prefers the value stated next to "default", a "which option / flag / code" question the
key of a table row or list item, from the `CUE_SENTENCES` best sentences, with `CUE_BONUS` scaled by
how much of the question the sentence, the text before it and its heading hold.
"""
from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np

from lm.rag.evidence import Evidence, Sentence
from lm.rag.spans import (
    DEFAULT_CUES,
    FEATURES,
    SentenceWords,
    Span,
    answer_type,
    asks_default,
    asks_key,
    candidates,
    default_values,
    is_stop,
    phrase_vector,
    row_key,
    sentence_words,
)
from retrieval.types import Hit

SENTENCES = 2  # phrases come from this many best sentences
RERANK = 10  # candidates re-scored by the masked-sentence cosine
MASK = "something"  # what stands in for the candidate in the masked sentence
# Conditional-logit weights over [sentence_rel, sentence_top] + spans.FEATURES, and the weight of the
# masked cosine. Fitted by `python benchmarks/fit_phrases.py` (L2 = 1, target: the candidates with the
# best token F1) on the 141 answerable non-why questions of the even-numbered squad2-rhine paragraphs; the
# masked weight is the best of a grid (-20..20) on the same questions. Reported on the odd ones.
SENTENCE_WEIGHTS: tuple[float, float] = (1.7, 0.7)
PHRASE_WEIGHTS: dict[str, float] = {
    'in_question': 1.04, 'edge_question': 0.0, 'len1': 0.09, 'len2': 0.69, 'len3': 0.58, 'len4': -0.41,
    'len5plus': -0.95, 'prev_prep': 0.37, 'prev_by_person': 0.92, 'prev_prep_where': 0.2, 'prev_link': 0.65,
    'prev_question': -1.7, 'next_question': 0.12, 'near_left': 1.09, 'near_right': -0.49, 'window': 1.67,
    'clause_start': 0.16, 'clause_end': 1.25, 'proximity': 2.23, 'capitalised': 1.25, 'year_date': 2.13,
    'number_date': 0.95, 'name_date': -0.86, 'capital_date': -1.29, 'lower_date': -0.93, 'year_number': -0.02,
    'number_number': 1.72, 'name_number': -0.95, 'capital_number': -0.72, 'lower_number': -0.03,
    'year_person': -0.03, 'number_person': 0.0, 'name_person': 0.52, 'capital_person': -0.26, 'lower_person': -0.23,
    'year_place': -0.08, 'number_place': -0.42, 'name_place': 0.7, 'capital_place': 0.9, 'lower_place': -1.09,
    'year_thing': -0.42, 'number_thing': -0.04, 'name_thing': 0.09, 'capital_thing': -0.16, 'lower_thing': 0.53}
MASK_WEIGHT = 5.0
# Not fitted (squad2-rhine has no stated defaults, tables or list keys): a value stated next to the word
# "default" answers "what is the default X?", and a table row's or list item's key answers "which option
# ...?", so such a phrase outranks the other phrases of the best sentences (one question's linear scores
# span ~10; sentence choice is part of them). Scaled by the sentence's topicality, so of two stated
# defaults the one about more of the question wins; below MIN_TOPICALITY a cue counts for nothing.
CUE_BONUS = 10.0
MIN_TOPICALITY = 0.34  # share of the question's other terms (IDF-weighted): "the default compression level of the server?"
# must not take a default from the "Server flags" table (server: 1 term of 3)
CONTEXT_CHARS = 250  # a stated default's subject may be in the text just before it (the sentence before, a list's lead-in)
CUE_SENTENCES = 6  # a "default" or "which X" question also takes cue phrases from this many best sentences ("**Default** - ``10``"
# under its option's heading has the question's terms but little for MiniLM to match)
_TYPED = {"date": ("year",), "number": ("number", "year"), "person": ("name",), "place": ("name",)}


class Extract(NamedTuple):
    sentence: Sentence
    span: Span  # the answer: offsets into the chunk text of hits[sentence.hit]
    score: float
    type_match: float  # 1 when the span has the shape the wh-word asks for (a year for "when")


class Candidate(NamedTuple):
    sentence: Sentence
    span: Span
    features: list[float]  # [sentence_rel, sentence_top] + spans.FEATURES
    cue: float = 0.0  # > 0 when the phrase starts the default value the question asks for (default_values) or the key
    # of a table row / list item for a "which X" question (row_key): the sentence's topicality, which scales the bonus


def _code_candidates(sw: SentenceWords, seen: set[tuple[int, int]], question: str) -> list[tuple[Span, int, int]]:
    """Inline code spans as whole candidates (with the words inside them for the features), unless a
    word candidate already has the same offsets, the code holds no word but stop words (`a`, `to`), or
    the question names the code itself (its words may be the question's: `~/.aws/config` answers
    "where is the AWS config file?")."""
    out = []
    q = question.lower()
    for c, inside in sw.code:
        if not inside or all(is_stop(sw.words[k].text) for k in inside) or (c.start, c.end) in seen:
            continue
        if re.search(r"(?<![\w-])" + re.escape(c.text.lower()) + r"(?![\w-])", q):
            continue
        out.append((c, inside[0], inside[-1]))
    return out


def _topicality(ev: Evidence, s: Sentence) -> float:
    """The IDF-weighted share of the question's terms besides "default" that the sentence, the text just
    before it or its chunk's heading holds: a default stated about something else ("the config file, which defaults to ...")
    answers nothing, and of two stated defaults the one about more of the question wins."""
    tok = ev.tokenize or (lambda t: t.lower().split())
    hit = ev.hits[s.hit]
    before = hit.text[max(0, s.span.start - CONTEXT_CHARS):s.span.start]  # "X controls ... The default is True."
    have = set(tok(before + " " + s.span.text + " " + (hit.heading or "")))
    cues = set(tok(" ".join(DEFAULT_CUES)))
    w = {t: ev.q_weight.get(t, 1.0) for t in ev.q_terms if t not in cues}
    return sum(x for t, x in w.items() if t in have) / sum(w.values()) if w else 0.0


def candidate_table(ev: Evidence, n_sentences: int = SENTENCES, max_words: int = 8) -> list[Candidate]:
    """Every candidate phrase of the best sentences with its features (shared with the fitting, which
    sees no cue: the squad2-rhine paragraphs state no defaults and have no tables)."""
    kind = answer_type(ev.question)
    cue, key = asks_default(ev.question), asks_key(ev.question)
    weight = ev.word_weight()
    total = sum(ev.q_weight.values())
    top = ev.sentences[0].score if ev.sentences else 0.0
    out = []
    for rank, s in enumerate(ev.sentences[:max(n_sentences, CUE_SENTENCES if cue or key else 0)]):
        text = ev.hits[s.hit].text
        sw = sentence_words(s.span, weight, total)
        head = [s.score - top, float(rank == 0)]
        found = [(Span(sw.words[i].start, sw.words[j].end, text[sw.words[i].start:sw.words[j].end]), i, j)
                 for i, j in candidates(sw, max_words)]
        seen = {(span.start, span.end) for span, _i, _j in found}
        topical = _topicality(ev, s) if cue or key else 0.0
        values = (default_values(sw, s.span) if cue else row_key(sw, s.span)) if topical >= MIN_TOPICALITY else set()
        in_code = {k: c for c, inside in sw.code for k in inside}
        for span, i, j in found + _code_candidates(sw, seen, ev.question):
            whole = i not in in_code or (span.start, span.end) == (in_code[i].start, in_code[i].end)
            hit_cue = topical if i in values and whole else 0.0  # a value in code is the whole code, not a cut of it
            if rank < n_sentences or hit_cue:  # past the best sentences only stated defaults and row keys
                out.append(Candidate(s, span, head + phrase_vector(sw, i, j, s.span.start, kind), hit_cue))
    return out


def linear_scores(cands: Sequence[Candidate], weights: Sequence[float] | None = None) -> np.ndarray:
    """The fitted part of the score (benchmarks/fit_phrases.py fits these weights)."""
    w = np.asarray(weights if weights is not None else [*SENTENCE_WEIGHTS, *(PHRASE_WEIGHTS[f] for f in FEATURES)])
    return np.array([c.features for c in cands]).reshape(len(cands), len(w)) @ w  # (n,)


def cue_bonus(cands: Sequence[Candidate]) -> np.ndarray:
    """The unfitted documentation rules' part of the score (see CUE_BONUS)."""
    return np.array([CUE_BONUS * c.cue for c in cands], dtype=float)  # (n,)


def masked_cosines(ev: Evidence, cands: Sequence[Candidate], embed: Callable[[list[str]], np.ndarray]) -> np.ndarray:
    """cos(question, the candidate's sentence with the candidate replaced by MASK), per candidate."""
    texts = [c.sentence.span.text[:c.span.start - c.sentence.span.start] + MASK + c.sentence.span.text[c.span.end - c.sentence.span.start:]
             for c in cands]
    q = ev.q_vec if ev.q_vec is not None else embed([ev.question])[0]  # (d,)
    return embed(texts) @ q  # (n,)


def best_span(ev: Evidence, embed: Callable[[list[str]], np.ndarray] | None = None, max_words: int = 8) -> Extract | None:
    """The best phrase over the best sentences (re-ranked by the masked cosine when `embed` is
    given); None when there is no sentence."""
    if not ev.sentences:
        return None
    if answer_type(ev.question) == "explain":  # "How do I ...?" is answered by a sentence, not a phrase
        s = ev.sentences[0]
        return Extract(s, s.span, s.score, 0.0)
    cands = candidate_table(ev, SENTENCES, max_words)
    if not cands:
        s = ev.sentences[0]
        return Extract(s, s.span, s.score, 0.0)
    base = linear_scores(cands) + cue_bonus(cands)  # (n,)
    scores = base
    if embed is not None and RERANK > 0 and len(cands) > 1:
        top = np.argsort(-base)[:RERANK]
        scores = np.full(len(cands), -np.inf)
        scores[top] = base[top] + MASK_WEIGHT * masked_cosines(ev, [cands[t] for t in top], embed)
    c = cands[int(np.argmax(scores))]
    kind = answer_type(ev.question)
    match = float(any(c.features[2 + FEATURES.index(f"{shape}_{kind}")] for shape in _TYPED.get(kind, ())))
    return Extract(c.sentence, c.span, float(np.max(scores)), match)


class Located(NamedTuple):
    """Where an answer span lies in its source file (the chunk's own offsets + the span's)."""

    start_char: int  # in the source document text
    end_char: int
    start_line: int  # 1-based, inclusive
    end_line: int
    chunk_start: int  # in the chunk text: chunk_text[chunk_start:chunk_end] == the answer
    chunk_end: int


def locate(hit: Hit, span: Span) -> Located:
    text = hit.text
    base_char = hit.start_char or 0  # None: a record without positions (JSONL); offsets are then the chunk's
    base_line = hit.start_line or 1
    first = base_line + text.count("\n", 0, span.start)
    last = first + text.count("\n", span.start, span.end)
    return Located(base_char + span.start, base_char + span.end, first, last, span.start, span.end)

