"""Which passage of the retrieved chunks answers: units scored on evidence that transfers across corpora.

Every unit (sentence, list item, table row) of the retrieved chunks gets the features below; a
conditional logit (weights fitted by benchmarks/fit_answers.py, loaded from lm/rag/params.json)
turns them into p(unit holds the answer | question). The passage is then the shortest run of at
most `max_units` neighbouring units around the best one, within `max_words` words, whose summed
probability reaches the fitted `tau` (or the most probable such run when none does): a question
the best sentence alone answers gets that sentence, one whose evidence spreads over a sentence
and the next gets both. None of the features names a word, an answer type or a corpus.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np

from lm.rag import evidence as E
from lm.rag.spans import Unit, is_keyed, units, words
from retrieval.types import Hit

UNIT_FEATURES: tuple[str, ...] = (
    "rank",  # 1 / (1 + the chunk's hybrid rank)
    "fused",  # the chunk's hybrid score, in [0, 1]
    "dense",  # the chunk's dense cosine (0 when only BM25 found it)
    "cov",  # IDF-weighted question-term coverage of the unit
    "cov_head",  # ... of the unit and its heading path
    "chunk_cov",  # ... of the whole chunk and its heading path
    "bm25",  # normalised BM25 of the unit (collection IDF, k1, b, average length)
    "bm25_head",  # ... of the unit with its heading path
    "cos",  # embedder cosine of the unit and the question (the best-covered units only)
    "cos_heading",  # embedder cosine of the heading path and the question (0 without one)
    "nb_cov",  # the better coverage of the units before and after it
    "position",  # the unit's place in the chunk, 0 first .. 1 last
    "first",  # 1 for a chunk's first unit
    "keyed",  # a list item or table row
    "log_words",  # log(1 + words)
)


class UnitTable(NamedTuple):
    question: E.Question
    hits: list[Hit]
    units: list[list[Unit]]  # per hit
    rows: list[tuple[int, int]]  # row -> (hit, unit in the hit)
    X: np.ndarray  # (n, len(UNIT_FEATURES))
    n_words: list[int]  # per row
    missing_idf: float
    q_vec: np.ndarray | None  # (d,) the question's unit embedding


def _heading_terms(h: Hit, stats: E.TermStats) -> list[str]:
    return stats.tokenize(h.heading.replace(">", " ")) if h.heading else []


def unit_table(question: str, hits: list[Hit], stats: E.TermStats, embed: Callable[[list[str]], np.ndarray] | None,
               max_embed: int) -> UnitTable:
    """The features of every unit of `hits`; only the `max_embed` units with the best lexical evidence
    are embedded (MiniLM costs ~5-30 ms a text on this CPU; the others get the lowest cosine seen)."""
    q = E.question(question, stats)
    rows: list[list[float]] = []
    index: list[tuple[int, int]] = []
    per_hit: list[list[Unit]] = []
    n_words: list[int] = []
    found: set[str] = set()
    texts: list[str] = []
    for h_i, h in enumerate(hits):
        us = units(h.text)
        per_hit.append(us)
        head = _heading_terms(h, stats)
        toks = [stats.tokenize(u.text) for u in us]
        chunk = set(stats.tokenize(h.text)) | set(head)
        found |= chunk
        covs = [E.coverage(q, set(t)) for t in toks]
        c_cov = E.coverage(q, chunk)
        for u_i, (u, t) in enumerate(zip(us, toks)):
            nb = max(covs[u_i - 1] if u_i > 0 else 0.0, covs[u_i + 1] if u_i + 1 < len(us) else 0.0)
            nw = len(words(u.text))
            rows.append([1.0 / (1 + h_i), float(h.score), float(h.scores.get("dense", 0.0)), covs[u_i],
                         E.coverage(q, set(t) | set(head)), c_cov, E.bm25(q, t, stats), E.bm25(q, t + head, stats),
                         0.0, 0.0, nb, u_i / max(1, len(us) - 1), float(u_i == 0), float(is_keyed(u.text)),
                         math.log1p(nw)])
            index.append((h_i, u_i))
            n_words.append(nw)
            texts.append(u.text)
    X = np.array(rows, dtype=float).reshape(len(rows), len(UNIT_FEATURES))  # (n, f)
    q_vec = None
    if embed is not None and len(rows):
        q_vec = _cosines(question, [hits[h].heading for h, _u in index], texts, X, embed, max_embed)
    return UnitTable(q, hits, per_hit, index, X, n_words, E.missing_idf(q, found, stats), q_vec)


def _cosines(question: str, row_heads: list[str], texts: list[str], X: np.ndarray,
             embed: Callable[[list[str]], np.ndarray], max_embed: int) -> np.ndarray:
    """Fills the cos and cos_heading columns in place; returns the question's embedding."""
    ci, hi = UNIT_FEATURES.index("cos"), UNIT_FEATURES.index("cos_heading")
    lex = X[:, UNIT_FEATURES.index("cov_head")] + X[:, UNIT_FEATURES.index("bm25_head")]
    top = np.argsort(-lex, kind="stable")[:max_embed]
    heads = [h for h in dict.fromkeys(row_heads) if h]
    V = embed([question] + [texts[i] for i in top] + heads)  # (1 + m + k, d) unit rows
    cos = V[1:] @ V[0]  # (m + k,)
    X[:, ci] = float(cos[:len(top)].min())
    X[top, ci] = cos[:len(top)]
    head_cos = dict(zip(heads, cos[len(top):].tolist()))
    X[:, hi] = [head_cos.get(h, 0.0) for h in row_heads]
    return V[0]


def probabilities(X: np.ndarray, w: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """(z, p): the linear scores and their softmax over the question's units."""
    z = X @ np.asarray(w, dtype=float)  # (n,)
    if not len(z):
        return z, z
    e = np.exp(z - z.max())
    return z, e / e.sum()


class Passage(NamedTuple):
    hit: int
    first: int  # first unit (index in the hit's units)
    last: int  # last unit, inclusive
    mass: float  # summed unit probability
    best_row: int  # the most probable unit's row in the table


def windows(index: list[tuple[int, int]], n_words: list[int], best: int, max_units: int, max_words: int) -> list[tuple[int, int]]:
    """(first_row, last_row) of every run of consecutive units of one chunk that holds row `best`."""
    h = index[best][0]
    out = []
    for a in range(best - max_units + 1, best + 1):
        for b in range(best, a + max_units):
            if a < 0 or b >= len(index) or index[a][0] != h or index[b][0] != h:
                continue
            if sum(n_words[a:b + 1]) <= max_words or a == b:
                out.append((a, b))
    return sorted(out, key=lambda ab: (ab[1] - ab[0], ab[0]))


def choose(index: list[tuple[int, int]], n_words: list[int], p: np.ndarray, tau: float, max_units: int,
           max_words: int) -> tuple[int, int, float]:
    """(first_row, last_row, mass): the shortest window around the best unit whose mass reaches tau,
    else the window of largest mass."""
    best = int(np.argmax(p))
    ws = windows(index, n_words, best, max_units, max_words)
    masses = [float(p[a:b + 1].sum()) for a, b in ws]
    for (a, b), m in zip(ws, masses):
        if m >= tau:
            return a, b, m
    k = int(np.argmax(masses))
    return ws[k][0], ws[k][1], masses[k]
