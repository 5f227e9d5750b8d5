"""Abstention: "not in the sources", decided from evidence that transfers between corpora.

No single cosine threshold: the decision is a logistic model over features that mean the same
thing in any collection (the question's IDF-weighted term coverage by the best sentence and its
chunk, with IDF from the user's own collection; the most informative question term found nowhere
in the hits; the MiniLM cosine of the best sentence; agreement of the dense and BM25 rankings on
the answer's chunk; whether the answer has the expected type). Fitted by
`benchmarks/bench_answers.py --fit-abstention` on half of squad2-rhine's paragraphs (answerable
questions against the same questions asked of stores of other text), checked on the other half
and on the project's own docs. The model never needs the LM, so an abstention never loads it.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

from lm.rag.evidence import Evidence


class AbstainFeatures(NamedTuple):
    coverage: float  # IDF-weighted share of question terms in the best sentence
    chunk_coverage: float  # ... in the best sentence's chunk
    cosine: float  # embedder cosine of the best sentence and the question
    dense: float  # dense cosine of the best sentence's chunk (0 when only BM25 found it)
    missing_idf: float  # normalised IDF of the rarest question term absent from every hit
    agree: float  # 1 when that chunk is first by dense or by BM25 among the hits, 0.5 when in both top 2
    type_match: float  # the answer phrase has the expected type (date, number, name)


# Fitted coefficients (intercept first, then AbstainFeatures order); see the module docstring.
# Fit: L2 logistic regression on the even-numbered squad2-rhine paragraphs' 142 answerable questions
# against 166 of the same questions asked of two other stores (this project's docs, CACM abstracts).
# Held out (odd paragraphs): 98.0% of answerable questions answered, 100% of off-topic ones refused.
COEF: tuple[float, ...] = (-3.197, 2.15, 2.447, 3.14, 2.771, -1.817, 0.781, -0.227)
THRESHOLD = 0.5  # answer when p(answerable) >= THRESHOLD (0.4-0.6 all keep >= 97% answered held out)


def features(ev: Evidence, hit_index: int, type_match: float) -> AbstainFeatures:
    if not ev.sentences:
        return AbstainFeatures(0.0, 0.0, 0.0, 0.0, ev.missing_idf, 0.0, 0.0)
    s = ev.sentences[0]
    h = ev.hits[hit_index]
    scores = h.scores  # a mode that did not find the chunk has no entry

    def rank(key: str) -> int:
        vals = sorted((x.scores.get(key, 0.0) for x in ev.hits), reverse=True)
        v = scores.get(key, 0.0)
        return vals.index(v) if v > 0 else len(vals)

    rd, rb = rank("dense"), rank("bm25")
    agree = 1.0 if min(rd, rb) == 0 and max(rd, rb) <= 1 else 0.5 if min(rd, rb) == 0 else 0.0
    return AbstainFeatures(s.coverage, s.chunk_coverage, s.cosine, scores.get("dense", 0.0),
                           ev.missing_idf, agree, type_match)


def p_answerable(f: AbstainFeatures, coef: Sequence[float] = COEF) -> float:
    z = coef[0] + sum(c * x for c, x in zip(coef[1:], f))
    return 1.0 / (1.0 + math.exp(-max(-50.0, min(50.0, z))))
