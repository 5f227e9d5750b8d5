"""The short phrase inside the answer passage, when the reader is confident of one.

Candidates are runs of 1..MAX_WORDS words inside one clause of a unit whose first and last words
are neither stop words (the project's one list) nor question terms, plus every inline code span
whole. Their features are lexical-free (length, shape, distance to the question's words, clause
and unit edges) and the question's wh-word crossed with the phrase's shape, so "when" can learn to
prefer numbers and "who" capitalised words from data; a conditional logit (weights in
lm/rag/params.json, fitted by benchmarks/fit_answers.py) scores them. The phrase is returned only
when p(phrase | unit) * p(unit) reaches the fitted threshold, else the answer is the passage alone.
"""
from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np

from lm.rag.spans import Span, clause_cuts, code_spans, words
from retrieval.index.stopwords import STOPWORDS_EN_PLUS

MAX_WORDS = 6  # the shortest gold of 99% of squad2-rhine questions and 83% of the docs/SciFact ones has <= 6 words
STOP = frozenset(STOPWORDS_EN_PLUS)
WH = ("who", "when", "where", "how", "what", "which", "other")
SHAPES = ("number", "capital", "code")
PHRASE_FEATURES: tuple[str, ...] = (
    ("len1", "len2", "len3", "len4", "len5plus", "in_code", "number", "capital", "near_left", "near_right",
     "window", "clause_start", "clause_end", "unit_start", "unit_end")
    + tuple(f"{w}_{s}" for w in WH for s in SHAPES))
_NUM = re.compile(r"^\d[\d,.]*%?$")


def wh_word(question: str) -> str:
    for w in re.findall(r"[a-z]+", question.lower()):
        if w in WH:
            return w
    return "other"


class Candidate(NamedTuple):
    span: Span  # offsets in the chunk text
    features: list[float]


def candidates(unit: Span, q_terms: set[str], tokenize: Callable[[str], list[str]], wh: str) -> list[Candidate]:
    """Every phrase candidate of the unit with its PHRASE_FEATURES."""
    ws = words(unit.text, unit.start)
    if not ws:
        return []
    cuts = clause_cuts(unit.text, unit.start)
    stop = [w.text.lower() in STOP for w in ws]
    inq = [(not st) and bool(set(tokenize(w.text)) & q_terms) for w, st in zip(ws, stop)]
    cut_before = [i == 0 or any(ws[i - 1].end <= c < w.start for c in cuts) for i, w in enumerate(ws)]
    qpos = [i for i, x in enumerate(inq) if x]
    codes = code_spans(unit)
    out: list[Candidate] = []
    seen: set[tuple[int, int]] = set()

    def add(i: int, j: int, span: Span, in_code: bool) -> None:
        if (span.start, span.end) in seen:
            return
        seen.add((span.start, span.end))
        out.append(Candidate(span, _features(ws, i, j, qpos, cut_before, in_code, wh, unit)))

    for i in range(len(ws)):
        if stop[i] or inq[i]:
            continue
        for j in range(i, min(len(ws), i + MAX_WORDS)):
            if j > i and cut_before[j]:
                break
            if not stop[j] and not inq[j]:
                add(i, j, Span(ws[i].start, ws[j].end, unit.text[ws[i].start - unit.start:ws[j].end - unit.start]), False)
    for c in codes:
        inside = [k for k, w in enumerate(ws) if w.start >= c.start and w.end <= c.end]
        if inside:
            add(inside[0], inside[-1], c, True)
    return out


def _features(ws: list[Span], i: int, j: int, qpos: list[int], cut_before: list[bool], in_code: bool, wh: str,
              unit: Span) -> list[float]:
    n = j - i + 1
    toks = ws[i:j + 1]
    number = float(any(_NUM.match(t.text) for t in toks))
    capital = sum(t.text[:1].isupper() and t.start != unit.start for t in toks) / n
    left = max((1.0 / (i - k) for k in qpos if k < i), default=0.0)
    right = max((1.0 / (k - j) for k in qpos if k > j), default=0.0)
    window = sum(1 for k in qpos if i - 5 <= k < i or j < k <= j + 5) / max(1, len(qpos))
    # capital: most of the phrase's words capitalised (a majority, not a tuned cut)
    shape = {"number": number, "capital": float(capital > 0.5), "code": float(in_code)}
    vec = [float(n == 1), float(n == 2), float(n == 3), float(n == 4), float(n >= 5), float(in_code), number, capital,
           left, right, window, float(cut_before[i]), float(j + 1 == len(ws) or cut_before[j + 1]), float(i == 0),
           float(j + 1 == len(ws))]
    vec += [shape[s] if w == wh else 0.0 for w in WH for s in SHAPES]
    return vec


def scores(cands: Sequence[Candidate], w: Sequence[float]) -> np.ndarray:
    """p(candidate | unit): the softmax of the fitted linear scores."""
    if not cands:
        return np.zeros(0)
    z = np.array([c.features for c in cands], dtype=float) @ np.asarray(w, dtype=float)  # (n,)
    e = np.exp(z - z.max())
    return e / e.sum()
