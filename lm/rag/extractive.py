"""The extractive answer: the passage that answers, copied exactly, its phrase when confident, abstention.

`read` runs the fitted model (lm/rag/params.json) over the retrieved chunks and needs no LM:
units and their features (lm.rag.passages) -> p(answerable) (lm.rag.abstain) -> the passage ->
the phrase inside it (lm.rag.reader). `excerpt` and `passage_span` locate what was copied in the
source file, so citations reproduce it character for character.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np

from lm.rag import abstain, passages, reader
from lm.rag.evidence import TermStats
from lm.rag.params import Params
from lm.rag.records import AnswerSpan, Excerpt
from lm.rag.spans import Span
from retrieval.types import Hit


class Reading(NamedTuple):
    table: passages.UnitTable
    p_answerable: float
    span: AnswerSpan | None  # None when no unit was found
    hit: int  # the passage's hit
    mass: float  # the passage's probability mass
    phrase: Excerpt | None
    phrase_confidence: float | None


def excerpt(hit: Hit, span: Span) -> Excerpt:
    """Where `span` (offsets in the chunk text) lies in the source file."""
    base_char = hit.start_char or 0  # None: a record without positions (JSONL); offsets are then the chunk's
    first = (hit.start_line or 1) + hit.text.count("\n", 0, span.start)
    last = first + hit.text.count("\n", span.start, span.end)
    return Excerpt(hit.text[span.start:span.end], span.start, span.end, base_char + span.start, base_char + span.end,
                   first, last)


def passage_span(t: passages.UnitTable, a: int, b: int) -> AnswerSpan:
    h_i, first = t.rows[a]
    last = t.rows[b][1]
    hit = t.hits[h_i]
    us = t.units[h_i]
    ex = excerpt(hit, Span(us[first].start, us[last].end, hit.text[us[first].start:us[last].end]))
    head = next((u.header for u in us[first:last + 1] if u.header is not None), None)
    return AnswerSpan(ex.text, hit.id, hit.source, ex.start_line, ex.end_line, ex.start_char, ex.end_char,
                      ex.chunk_start, ex.chunk_end, hit.heading or "", last - first + 1,
                      excerpt(hit, head) if head is not None else None)


def best_phrase(t: passages.UnitTable, a: int, b: int, p: np.ndarray, params: Params,
                tokenize: Callable[[str], list[str]]) -> tuple[Excerpt | None, float | None]:
    """The most probable phrase of the passage's most probable unit, and its confidence
    p(phrase | unit) * p(unit); None below the fitted threshold."""
    row = a + int(np.argmax(p[a:b + 1]))
    h_i, u_i = t.rows[row]
    unit = t.units[h_i][u_i]
    cands = reader.candidates(unit.span, set(t.question.terms), tokenize, reader.wh_word(t.question.text))
    if not cands:
        return None, None
    pp = reader.scores(cands, params.phrase_weights)
    k = int(np.argmax(pp))
    conf = float(pp[k] * p[row])
    if conf < params.phrase_threshold:
        return None, conf
    return excerpt(t.hits[h_i], cands[k].span), conf


def read(question: str, hits: list[Hit], stats: TermStats, embed: Callable[[list[str]], np.ndarray] | None,
         params: Params) -> Reading:
    t = passages.unit_table(question, hits, stats, embed, params.max_embed)
    z, p = passages.probabilities(t.X, params.unit_weights)
    pa = abstain.p_answerable(abstain.features(t, z), params.abstain_weights)
    if not len(z):
        return Reading(t, pa, None, -1, 0.0, None, None)
    a, b, mass = passages.choose(t.rows, t.n_words, p, params.tau, params.max_units, params.max_words)
    phrase, conf = best_phrase(t, a, b, p, params, stats.tokenize)
    return Reading(t, pa, passage_span(t, a, b), t.rows[a][0], mass, phrase, conf)
