"""Evidence for an extractive answer: the retrieved chunks' sentences, scored against the question.

Why these signals: the dense cosine of a whole chunk does not tell an answer from a topical
near-miss (the issue's "Recipes" heading passed 0.25), but a question whose rare words are absent
from every retrieved sentence is not answered there. So each sentence gets the question's
IDF-weighted term coverage (IDF from the collection's own BM25 statistics, so it is calibrated to
the user's corpus), its MiniLM cosine to the question, and its chunk's retrieval scores.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np

from lm.rag.spans import Span, sentences
from retrieval.types import Hit

QUESTION_WORDS = frozenset("what which who whom whose when where why how is are was were do does did can could would "
                           "should will the a an of".split())


class TermStats(NamedTuple):
    """The collection's analyser (stemmed BM25 tokens) and document frequencies."""

    tokenize: Callable[[str], list[str]]
    df: Callable[[str], int]
    n_docs: int

    def idf(self, term: str) -> float:
        return math.log(1.0 + (self.n_docs + 1) / (self.df(term) + 0.5))


def term_stats(store: Any, collection: str) -> TermStats:
    """IDF from the collection's committed BM25 generation (no extra index)."""
    coll = store.collection(collection)
    tok = coll.tokenizer()
    with coll.reading() as (_conn, snap):
        bm = snap.bm25
    if bm is None or bm.num_docs == 0:
        return TermStats(tok, lambda t: 0, 1)
    vocab, indptr = bm.vocab, np.asarray(bm.indptr)

    def df(term: str) -> int:
        t = vocab.get(term)
        return 0 if t is None or t + 1 >= len(indptr) else int(indptr[t + 1] - indptr[t])

    return TermStats(tok, df, bm.num_docs)


class Sentence(NamedTuple):
    hit: int  # index into the hits
    span: Span  # offsets into the hit's chunk text
    coverage: float  # IDF-weighted share of question terms in the sentence or its chunk's heading
    chunk_coverage: float  # ... in the whole chunk (and its heading)
    cosine: float  # MiniLM (the collection's embedder) cosine to the question
    score: float  # the ranking score


class Evidence(NamedTuple):
    question: str
    hits: list[Hit]
    sentences: list[Sentence]  # best first
    q_terms: list[str]  # the question's analysed terms
    missing_idf: float  # largest IDF (normalised by log N) of a question term absent from all hits
    q_weight: dict[str, float] = {}  # question term -> its IDF over the question's largest (phrase features)
    tokenize: Callable[[str], list[str]] | None = None  # the collection's analyser (stems words like q_terms)
    q_vec: np.ndarray | None = None  # (d,) the question's unit embedding

    def word_weight(self) -> Callable[[str], float]:
        """A word's weight as a question word: its term's q_weight, 0 when it is not in the question.
        A compound ("Rhine-Ruhr") counts only when all its parts are in the question."""
        tok, cache = self.tokenize, {}

        def weight(word: str) -> float:
            if word not in cache:
                terms = tok(word) if tok else [word.lower()]
                cache[word] = min((self.q_weight.get(t, 0.0) for t in terms), default=0.0)
            return cache[word]

        return weight


def _coverage(q_terms: Sequence[str], weights: Sequence[float], have: set[str]) -> float:
    tot = sum(weights)
    return sum(w for t, w in zip(q_terms, weights) if t in have) / tot if tot > 0 else 0.0


def gather(question: str, hits: list[Hit], embed: Callable[[list[str]], np.ndarray], stats: TermStats,
           max_embed: int = 16) -> Evidence:
    """Split the hits into sentences and rank them: coverage first, the embedder on the best few.

    Only the `max_embed` sentences with the best coverage are embedded (on this CPU MiniLM costs
    ~10-60 ms per sentence under load, and the answer is nearly always among them).
    """
    # wh-words and auxiliaries ("how", "does") are in no answer: BM25 keeps them, coverage must not
    plain = " ".join(w for w in question.split() if w.lower().strip("?,.!:;\"'") not in QUESTION_WORDS)
    q_terms = list(dict.fromkeys(stats.tokenize(plain)))
    w = [stats.idf(t) for t in q_terms]
    q_weight = {t: x / max(w) for t, x in zip(q_terms, w)} if w else {}
    cands = []
    all_terms: set[str] = set()
    for h_i, h in enumerate(hits):
        text = h.text
        chunk_terms = set(stats.tokenize(text))
        # a heading names what every sentence under it is about: "**Default** - ``10``" under
        # "max_concurrent_requests" answers "the default max_concurrent_requests?" (no heading: no change)
        head_terms = set(stats.tokenize(h.heading)) if h.heading else set()
        all_terms |= chunk_terms | head_terms  # a term only in the heading is found, not missing
        c_cov = _coverage(q_terms, w, chunk_terms | head_terms)
        for s in sentences(text):
            cands.append((h_i, s, _coverage(q_terms, w, set(stats.tokenize(s.text)) | head_terms), c_cov))
    missing = [wt for t, wt in zip(q_terms, w) if t not in all_terms]
    norm = math.log(1.0 + (stats.n_docs + 1) / 0.5)
    missing_idf = max(missing) / norm if missing else 0.0
    if not cands:
        return Evidence(question, hits, [], q_terms, missing_idf, q_weight, stats.tokenize)
    rank = sorted(range(len(cands)), key=lambda i: (-cands[i][2], cands[i][0]))[:max_embed]
    X = embed([question] + [cands[i][1].text for i in rank])  # (1 + m, d) unit rows
    cos = X[1:] @ X[0]  # (m,)
    out = []
    for i, c in zip(rank, cos):
        h_i, s, cov, c_cov = cands[i]
        score = float(c) + cov + 0.25 * c_cov - 0.02 * h_i
        out.append(Sentence(h_i, s, cov, c_cov, float(c), score))
    out.sort(key=lambda s: -s.score)
    return Evidence(question, hits, out, q_terms, missing_idf, q_weight, stats.tokenize, X[0])
