"""Abstention: "not in the sources", decided from evidence that transfers between corpora.

No single cosine threshold: a logistic model over features that mean the same thing in any
collection (IDF-weighted coverage and BM25 of the best units with the collection's own IDF, the
embedder cosine, the best unit's passage score, the most informative question term found nowhere
in the hits). Fitted by benchmarks/fit_answers.py on answerable questions against questions about
other libraries and topics asked of stores that share their vocabulary; the weights and the
threshold are in lm/rag/params.json. The model never needs the LM, so an abstention never loads it.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from lm.rag.passages import UNIT_FEATURES, UnitTable

ABSTAIN_FEATURES: tuple[str, ...] = (
    "z_best",  # the best unit's passage score (its linear score under the fitted unit weights)
    "cov_head_max",  # the best IDF-weighted coverage of a unit with its heading
    "chunk_cov_max",  # ... of a whole chunk
    "bm25_head_max",  # the best normalised BM25 of a unit with its heading
    "cos_max",  # the best unit cosine
    "dense_top",  # the dense cosine of the best chunk
    "missing_idf",  # normalised IDF of the rarest question term absent from every hit
)


def features(table: UnitTable, z: np.ndarray) -> list[float]:
    X = table.X
    if not len(z):
        return [0.0] * (len(ABSTAIN_FEATURES) - 1) + [table.missing_idf]

    def col(name: str) -> np.ndarray:
        return X[:, UNIT_FEATURES.index(name)]

    return [float(z.max()), float(col("cov_head").max()), float(col("chunk_cov").max()), float(col("bm25_head").max()),
            float(col("cos").max()), float(col("dense").max()), table.missing_idf]


def p_answerable(f: Sequence[float], coef: Sequence[float]) -> float:
    z = coef[0] + sum(c * x for c, x in zip(coef[1:], f))
    return 1.0 / (1.0 + math.exp(-max(-50.0, min(50.0, z))))
