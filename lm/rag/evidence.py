"""Lexical evidence calibrated to the user's own collection: its analyser, IDF and BM25 constants.

Why from the collection: a word that is rare in *this* corpus says more about a question than one
that is everywhere in it, whatever corpus the weights were fitted on. The analyser (tokens,
stop-word list from retrieval/index/stopwords.py, stemmer) is the one the collection's BM25 was
built with, so question words such as "what" and "how" are dropped exactly as search drops them.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

import numpy as np


class TermStats(NamedTuple):
    """The collection's analyser (stemmed BM25 tokens), document frequencies and BM25 constants."""

    tokenize: Callable[[str], list[str]]
    df: Callable[[str], int]
    n_docs: int
    # placeholders only: term_stats always fills these from the collection's own BM25 index and config
    avgdl: float = 100.0
    k1: float = 1.2
    b: float = 0.75

    def idf(self, term: str) -> float:
        return math.log(1.0 + (self.n_docs + 1) / (self.df(term) + 0.5))

    def max_idf(self) -> float:
        """The IDF of a term no document holds: normalises IDFs to [0, 1] for any collection size."""
        return math.log(1.0 + (self.n_docs + 1) / 0.5)  # BM25 idf of a term in no document (df = 0, the +0.5 smoothing)


def term_stats(store: Any, collection: str) -> TermStats:
    """From the collection's committed BM25 generation (no extra index)."""
    coll = store.collection(collection)
    tok = coll.tokenizer()
    with coll.reading() as (_conn, snap):
        bm = snap.bm25
    if bm is None or bm.num_docs == 0:
        return TermStats(tok, lambda t: 0, 1)
    vocab, indptr = bm.vocab, np.asarray(bm.indptr)
    avgdl = float(np.asarray(bm.doc_tfs).sum()) / max(1, bm.num_docs)

    def df(term: str) -> int:
        t = vocab.get(term)
        return 0 if t is None or t + 1 >= len(indptr) else int(indptr[t + 1] - indptr[t])

    return TermStats(tok, df, bm.num_docs, max(avgdl, 1.0), float(bm.config.k1), float(bm.config.b))


class Question(NamedTuple):
    text: str
    terms: list[str]  # the analysed question terms, once each
    idf: np.ndarray  # (t,) their IDF in the collection

    @property
    def total(self) -> float:
        return float(self.idf.sum())


def question(text: str, stats: TermStats) -> Question:
    terms = list(dict.fromkeys(stats.tokenize(text)))
    return Question(text, terms, np.array([stats.idf(t) for t in terms], dtype=float))


def coverage(q: Question, have: set[str] | frozenset[str]) -> float:
    """The IDF-weighted share of the question's terms found in `have`."""
    if not q.terms or q.total <= 0:
        return 0.0
    return float(sum(w for t, w in zip(q.terms, q.idf) if t in have)) / q.total


def bm25(q: Question, tokens: Iterable[str], stats: TermStats) -> float:
    """Lucene BM25 of a piece of text against the question with the collection's IDF, k1, b and average
    length, over its best possible value (every term present, a long run of it): in [0, 1)."""
    if not q.terms or q.total <= 0:
        return 0.0
    tokens = list(tokens)
    tf: dict[str, int] = {}
    for t in tokens:
        tf[t] = tf.get(t, 0) + 1
    norm = stats.k1 * (1 - stats.b + stats.b * len(tokens) / stats.avgdl)
    s = sum(w * tf[t] * (stats.k1 + 1) / (tf[t] + norm) for t, w in zip(q.terms, q.idf) if t in tf)
    return float(s) / (q.total * (stats.k1 + 1))


def missing_idf(q: Question, found: set[str], stats: TermStats) -> float:
    """The largest normalised IDF of a question term found nowhere in the retrieved chunks: a question
    whose rarest word is absent from every source is usually about something else."""
    miss = [w for t, w in zip(q.terms, q.idf) if t not in found]
    return max(miss) / stats.max_idf() if miss else 0.0
