"""Extractive answers: the best short phrase of the best retrieved sentences, copied with offsets.

A 135M LM cannot be trusted to write free text (issue 12: 1 of 5 right, invented commands), so
by default the answer is a span of a retrieved chunk: chunk_text[start:end] == answer, and the
citation is that span's exact file, lines and characters. The phrase scorer is a linear model
over pure text features (spans.PhraseFeatures) whose weights were chosen on the even-numbered
paragraphs of squad2-rhine and checked on the odd ones (benchmarks/bench_answers.py --tune).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from lm.rag.evidence import Evidence, Sentence
from lm.rag.spans import Span, answer_type, content_terms, phrase_features, phrases, trim


@dataclass(frozen=True)
class PhraseWeights:
    sentence: float = 2.0  # weight of the sentence's own rank score
    in_question: float = 1.0  # penalty: the phrase repeats the question
    type_match: float = 1.0
    proximity: float = 0.5
    length: float = 0.1  # penalty per word away from `ideal_words`
    ideal_words: float = 2.0
    stop_edge: float = 0.5
    capitalised: float = 0.3
    sentences: int = 2  # phrases are taken from this many best sentences


class Extract(NamedTuple):
    sentence: Sentence
    span: Span  # the answer: offsets into the chunk text of hits[sentence.hit]
    score: float
    type_match: float


def phrase_score(f, w: PhraseWeights) -> float:
    if f.content == 0:
        return -5.0
    return (-w.in_question * f.in_question + w.type_match * f.type_match + w.proximity * f.proximity
            - w.length * abs(f.n_words - w.ideal_words) - w.stop_edge * f.stop_edge + w.capitalised * f.capitalised)


def best_span(ev: Evidence, weights: PhraseWeights = PhraseWeights(), max_words: int = 8) -> Extract | None:
    """Highest-scoring phrase over the best sentences; None when there is no sentence."""
    if not ev.sentences:
        return None
    q_terms = set(content_terms(ev.question))
    kind = answer_type(ev.question)
    if kind == "explain":  # "How do I ...?" is answered by a sentence, not a phrase
        s = ev.sentences[0]
        return Extract(s, s.span, s.score, 0.0)
    best: Extract | None = None
    for s in ev.sentences[: weights.sentences]:
        text = ev.hits[s.hit].get("text") or ""
        for p in phrases(text, s.span, max_words):
            f = phrase_features(ev.question, s.span, p, q_terms, kind)
            sc = weights.sentence * s.score + phrase_score(f, weights)
            if best is None or sc > best.score:
                best = Extract(s, p, sc, f.type_match)
    if best is None:
        s = ev.sentences[0]
        return Extract(s, s.span, s.score, 0.0)
    text = ev.hits[best.sentence.hit].get("text") or ""
    return best._replace(span=trim(text, best.span, q_terms))


class Located(NamedTuple):
    """Where an answer span lies in its source file (the chunk's own offsets + the span's)."""

    start_char: int  # in the source document text
    end_char: int
    start_line: int  # 1-based, inclusive
    end_line: int
    chunk_start: int  # in the chunk text: chunk_text[chunk_start:chunk_end] == the answer
    chunk_end: int


def locate(hit: dict, span: Span) -> Located:
    text = hit.get("text") or ""
    base_char = int(hit.get("start_char") or 0)
    base_line = int(hit.get("start_line") or 1)
    first = base_line + text.count("\n", 0, span.start)
    last = first + text.count("\n", span.start, span.end)
    return Located(base_char + span.start, base_char + span.end, first, last, span.start, span.end)
