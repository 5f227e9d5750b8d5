"""Pure functions that turn per-mode scores into one ranking: normalisation, convex fusion,
reciprocal-rank fusion, doc-level aggregation (max over chunks) and MMR.

Every candidate carries *both* scores (the store computes the missing one exactly), so fusion
never has to guess a score for a candidate one mode did not retrieve.

Fused scores lie in [0, 1] for every method and normalisation (`fuse`), so `--min-score` has one
scale in hybrid mode: 1 is a candidate that is the best of this query's candidates in both modes.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from retrieval.errors import InvalidInputError

NORMS = ("tmm", "minmax", "zscore", "max", "none")
# Lowest score each mode can give: cosine of unit vectors, Lucene BM25 (no negative idf).
FLOOR = {"dense": -1.0, "bm25": 0.0}
METHODS = ("convex", "rrf")


@dataclass(frozen=True)
class FusionConfig:
    """Hybrid ranking knobs, chosen across SciFact train and CACM (benchmarks/bench_transfer.py):
    the setting whose worst distance to each dataset's own best is smallest. With the BM25
    defaults, min-max alpha 0.5 is within 0.0012 nDCG@10 of each dataset's best (tmm 0.7: 0.0051
    below CACM's best). The old z-score 0.55 (SciFact train only) was 0.011 below CACM's best,
    rrf k=60 0.032 below. Fused scores are in [0, 1] for every setting (`fuse`)."""

    method: str = "convex"  # convex: alpha*dense + (1-alpha)*bm25 on normalised scores; rrf: sum 1/(rrf_k+rank)
    alpha: float = 0.5  # dense weight in convex fusion
    norm: str = "minmax"  # how each mode's candidate scores are scaled before fusion (see NORMS)
    rrf_k: int = 60
    depth: int = 100  # candidates taken from each mode (at least 3*k)
    doc_agg: str = "max"  # "max": chunks sharing a doc_id become one hit (max per mode); "none"

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise InvalidInputError(f"unknown fusion method {self.method!r}", f"use one of {', '.join(METHODS)}")
        if self.norm not in NORMS:
            raise InvalidInputError(f"unknown score normalisation {self.norm!r}", f"use one of {', '.join(NORMS)}")
        if not 0.0 <= self.alpha <= 1.0:
            raise InvalidInputError(f"fusion alpha must be in [0, 1], got {self.alpha}", "alpha is the dense weight")
        if self.doc_agg not in ("max", "none"):
            raise InvalidInputError(f"unknown doc aggregation {self.doc_agg!r}", "use 'max' or 'none'")
        if self.depth < 1 or self.rrf_k < 1:
            raise InvalidInputError("fusion depth and rrf_k must be >= 1", "use the defaults")

    def with_(self, **kw) -> FusionConfig:
        return replace(self, **kw)


def normalize(s: np.ndarray, method: str, floor: float = 0.0) -> np.ndarray:
    """Scale one mode's candidate scores so modes are comparable. (n,) -> (n,)

    tmm ("theoretical min-max", Bruch et al. 2023): (s - floor) / (max - floor), with the mode's
    lowest possible score as floor, so a query whose candidates are all weak in one mode is not
    stretched to the full [0, 1] the way min-max stretches it."""
    s = np.asarray(s, dtype=np.float64)
    if s.size == 0 or method == "none":
        return s
    if method == "tmm":
        hi = s.max()
        return np.clip((s - floor) / (hi - floor), 0.0, 1.0) if hi > floor else np.zeros_like(s)
    if method == "minmax":
        lo, hi = s.min(), s.max()
        return (s - lo) / (hi - lo) if hi > lo else np.ones_like(s) * (1.0 if hi > 0 else 0.0)
    if method == "zscore":
        sd = s.std()
        return (s - s.mean()) / sd if sd > 0 else np.zeros_like(s)
    if method == "max":
        hi = np.abs(s).max()
        return s / hi if hi > 0 else s
    raise InvalidInputError(f"unknown score normalisation {method!r}", f"use one of {', '.join(NORMS)}")


def ranks(s: np.ndarray) -> np.ndarray:
    """1-based rank of every entry under descending score (ties keep input order)."""
    order = np.argsort(-np.asarray(s), kind="stable")
    r = np.empty(len(order), dtype=np.int64)
    r[order] = np.arange(1, len(order) + 1)
    return r


def convex(dense: np.ndarray, bm25: np.ndarray, alpha: float, norm: str) -> np.ndarray:
    """alpha * dense + (1 - alpha) * bm25 on normalised scores (unbounded for zscore/none)."""
    return alpha * normalize(dense, norm, FLOOR["dense"]) + (1.0 - alpha) * normalize(bm25, norm, FLOOR["bm25"])  # (n,)


def rrf(dense: np.ndarray, bm25: np.ndarray, k: int = 60, alpha: float = 0.5) -> np.ndarray:
    """Weighted reciprocal-rank fusion, scaled so rank 1 in both modes scores 1 (alpha=0.5 is
    plain RRF times (k+1)/2: the same ranking)."""
    return (k + 1) * (alpha / (k + ranks(dense)) + (1.0 - alpha) / (k + ranks(bm25)))  # (n,)


def _to_unit(x: np.ndarray, norm: str, alpha: float) -> np.ndarray:
    """Map a convex fusion of z-scores (or raw scores) into (0, 1) without changing its order:
    the normal CDF of the fused z-score scaled to unit variance (0.5 = an average candidate)."""
    if norm in ("tmm", "minmax"):
        return np.clip(x, 0.0, 1.0)
    if norm == "zscore":
        from math import erf, sqrt

        sd = sqrt(alpha * alpha + (1.0 - alpha) ** 2)
        return 0.5 * (1.0 + np.vectorize(erf)(x / (sd * sqrt(2.0)))) if len(x) else x
    if norm == "max":  # each term is in [-1, 1]
        return np.clip((x + 1.0) / 2.0, 0.0, 1.0)
    return x / (1.0 + np.abs(x)) * 0.5 + 0.5  # "none": raw cosine + raw BM25, squashed


def fuse(dense: np.ndarray, bm25: np.ndarray, cfg: FusionConfig) -> np.ndarray:
    """Hybrid score of each candidate, in [0, 1]. (n,), (n,) -> (n,)"""
    if len(dense) == 0:
        return np.zeros(0)
    if cfg.method == "rrf":
        return rrf(dense, bm25, cfg.rrf_k, cfg.alpha)
    return _to_unit(convex(dense, bm25, cfg.alpha, cfg.norm), cfg.norm, cfg.alpha)


def aggregate_max(keys: list, *scores: np.ndarray, by: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """Group candidates sharing a key: per group, the index of the member with the best `by` score
    and the max of each score array over the members. Returns (representatives (g,), [ (g,) ...])."""
    uniq: dict = {}
    group = np.empty(len(keys), dtype=np.int64)
    for i, key in enumerate(keys):
        group[i] = uniq.setdefault(key, len(uniq))
    g = len(uniq)
    rep = np.full(g, -1, dtype=np.int64)
    best = np.full(g, -np.inf)
    for i in range(len(keys)):
        if by[i] > best[group[i]]:
            best[group[i]], rep[group[i]] = by[i], i
    maxes = []
    for s in scores:
        m = np.full(g, -np.inf)
        np.maximum.at(m, group, np.asarray(s, dtype=np.float64))
        maxes.append(m)
    return rep, maxes


def mmr(xq: np.ndarray | None, xc: np.ndarray, relevance: np.ndarray, k: int, lambda_: float = 0.5) -> np.ndarray:
    """Maximal marginal relevance: pick k of n candidates trading relevance against redundancy.

    xq (D,) query (unused beyond shape: relevance already encodes it), xc (n, D) L2-normalised
    candidate vectors, relevance (n,) any scale (min-max scaled here). Returns picked indices (k,).
    """
    if not 0.0 <= lambda_ <= 1.0:
        raise InvalidInputError(f"mmr_lambda must be in [0, 1], got {lambda_}", "1 = pure relevance, 0 = pure diversity")
    n = len(relevance)
    k = min(k, n)
    if k <= 0:
        return np.zeros(0, dtype=np.int64)
    rel = normalize(relevance, "minmax")  # (n,)
    sim = xc @ xc.T  # (n, n)
    picked = [int(np.argmax(rel))]
    max_sim = sim[picked[0]].copy()  # (n,)
    chosen = np.zeros(n, dtype=bool)
    chosen[picked[0]] = True
    while len(picked) < k:
        score = lambda_ * rel - (1.0 - lambda_) * max_sim  # (n,)
        score[chosen] = -np.inf
        j = int(np.argmax(score))
        picked.append(j)
        chosen[j] = True
        max_sim = np.maximum(max_sim, sim[j])
    return np.asarray(picked, dtype=np.int64)
