"""Feature rows of questions with known answers: what benchmarks/fit_answers.py fits the answer model on.

A row is one question asked of one store: its units' features exactly as `ask` computes them
(lm.rag.passages), which units and runs of units hold the gold answer, the phrase candidates of
the units worth reading, and the retrieved files. The rows are committed
(benchmarks/data/answer_rows.jsonl.gz) so the fit is reproduced without models or stores.
"""
from __future__ import annotations

import collections
import re
import string
from collections.abc import Callable
from typing import Any

import numpy as np

from lm.rag import passages, reader
from lm.rag.evidence import TermStats
from retrieval.types import Hit

PHRASE_UNITS = 6  # phrase rows for the 6 best-covered units (+ the gold ones): the fitted top unit is among them for 395 of 399 questions
_PUNCT = set(string.punctuation)


def norm(s: str) -> str:
    """SQuAD's answer normalisation: lower case, no punctuation, no articles, single spaces."""
    s = "".join(ch for ch in s.lower() if ch not in _PUNCT)
    return " ".join(re.sub(r"\b(a|an|the)\b", " ", s).split())


def holds(text: str, golds: list[str]) -> bool:
    """Whether the normalised text contains a normalised gold answer as whole words."""
    t = f" {norm(text)} "
    return any(norm(g) and f" {norm(g)} " in t for g in golds)


def f1(pred: str, golds: list[str]) -> float:
    best = 0.0
    for g in golds:
        p, t = norm(pred).split(), norm(g).split()
        common = sum((collections.Counter(p) & collections.Counter(t)).values())
        if common:
            pr, rc = common / len(p), common / len(t)
            best = max(best, 2 * pr * rc / (pr + rc))
    return best


def _span_text(t: passages.UnitTable, a: int, b: int) -> str | None:
    if b >= len(t.rows) or t.rows[a][0] != t.rows[b][0]:
        return None
    h, (u0, u1) = t.rows[a][0], (t.rows[a][1], t.rows[b][1])
    us = t.units[h]
    return t.hits[h].text[us[u0].start:us[u1].end]


def phrase_rows(t: passages.UnitTable, rows: list[int], golds: list[str], tokenize: Callable[[str], list[str]]) -> list[dict]:
    out = []
    wh = reader.wh_word(t.question.text)
    for r in rows:
        h, u = t.rows[r]
        cands = reader.candidates(t.units[h][u].span, set(t.question.terms), tokenize, wh)
        if not cands:
            continue
        y = [holds(c.span.text, golds) and len(norm(c.span.text).split()) <= max(len(norm(g).split()) for g in golds) + 2
             for c in cands] if golds else [False] * len(cands)
        out.append({"row": r, "F": np.round(np.array([c.features for c in cands]), 4).tolist(), "y": y,
                    "text": [c.span.text for c in cands]})
    return out


def question_row(q: dict[str, Any], hits: list[Hit], stats: TermStats, embed: Callable[[list[str]], np.ndarray],
                 max_embed: int) -> dict[str, Any]:
    """`q`: {"question", "answers" (empty for off-topic), "corpus", "store", "kind", "file"}."""
    t = passages.unit_table(q["question"], hits, stats, embed, max_embed)
    golds = list(q.get("answers") or [])
    g = [[bool(golds) and (s := _span_text(t, r, r + k)) is not None and holds(s, golds) for r in range(len(t.rows))]
         for k in range(3)]  # g[k][r]: units r..r+k (one chunk) hold the gold
    lex = t.X[:, passages.UNIT_FEATURES.index("cov_head")] + t.X[:, passages.UNIT_FEATURES.index("bm25_head")]
    keep = list(np.argsort(-lex, kind="stable")[:PHRASE_UNITS]) + [r for r in range(len(t.rows)) if g[0][r]]
    return {"question": q["question"], "answers": golds, "corpus": q["corpus"], "store": q["store"], "kind": q["kind"],
            "file": q.get("file"), "X": np.round(t.X, 4).tolist(), "index": [list(x) for x in t.rows],
            "n_words": t.n_words, "gold": g, "missing_idf": round(t.missing_idf, 4),
            "sources": [h.source for h in hits], "doc_ids": [h.doc_id for h in hits],
            "phrases": phrase_rows(t, sorted(set(int(r) for r in keep)), golds, stats.tokenize)}
