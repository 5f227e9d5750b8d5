"""A collection that tunes its own hybrid fusion on pseudo-queries made from its own text.

Nothing is hand-labelled: a pseudo-query is a piece of a chunk and its answer is the chunk's
document. Three kinds, whichever the collection has:
- title: a record's or page's title (the context line of its chunks) for its document;
- heading: a section heading for the chunk under it;
- cloze: a sentence of a chunk with 40% of its words held out (inverse cloze). A verbatim
  sentence always favours BM25, which finds it by its rarest words; real queries paraphrase.

Each candidate fusion ranks every pseudo-query; the best mean reciprocal rank (of the answer's
document in the top 10) wins, if it beats the default by `min_gain`.

It does not transfer, so it is off unless asked for (`apply=True`, `knnrag calibrate --apply`).
Measured (benchmarks/bench_transfer.py --only-calibrate): both SciFact and CACM pick tmm alpha
0.3 on their pseudo-queries (MRR@10 0.988 vs 0.966 and 0.931 vs 0.921), which loses on the real
test queries: SciFact nDCG@10 0.7071 vs the default's 0.7360, CACM 0.5384 vs 0.5860. Pieces of
a document find it by its words, so the pseudo-queries reward BM25 more than real ones do.
"""
from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, NamedTuple

import numpy as np

from retrieval.errors import InvalidInputError
from retrieval.index.fusion import FusionConfig
from retrieval.types import Hit

_SENT = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9])")
_WORD = re.compile(r"\w{2,}")


@dataclass(frozen=True)
class CalibrationConfig:
    n_queries: int = 300  # pseudo-queries sampled from the collection
    seed: int = 0
    min_gain: float = 0.005  # MRR@10 the winner must add over the default to be kept
    apply: bool = False  # put the winner in force (measured not to transfer: see the module doc)
    regrow: float = 2.0  # re-calibrate on index_paths once the collection holds this many times more chunks

    def __post_init__(self) -> None:
        if self.n_queries < 10:
            raise InvalidInputError(f"n_queries must be >= 10, got {self.n_queries}", "use e.g. 300")
        if self.regrow <= 1.0:
            raise InvalidInputError(f"regrow must be > 1, got {self.regrow}", "use e.g. 2.0")


class PseudoQuery(NamedTuple):
    text: str
    target: str  # doc_id of the answer, or "#<chunk id>" for a chunk without one
    kind: str  # title | heading | cloze


def candidates(default: FusionConfig) -> list[FusionConfig]:
    """The fusions a collection may pick from (the default first)."""
    out = [default]
    for norm in ("tmm", "zscore", "minmax"):
        for alpha in (0.3, 0.4, 0.5, 0.6, 0.7):
            cfg = default.with_(method="convex", norm=norm, alpha=alpha)
            if cfg not in out:
                out.append(cfg)
    rrf = default.with_(method="rrf", alpha=0.5)
    return out + ([rrf] if rrf not in out else [])


def _cloze(text: str, rng: np.random.Generator) -> str | None:
    sents = [s for s in _SENT.split(text) if len(_WORD.findall(s)) >= 6]
    if not sents:
        return None
    words = _WORD.findall(sents[int(rng.integers(len(sents)))])
    keep = np.sort(rng.choice(len(words), size=max(3, int(round(0.6 * len(words)))), replace=False))
    return " ".join(words[i] for i in keep)


def pseudo_queries(rows: Sequence[tuple], n: int, seed: int = 0) -> list[PseudoQuery]:
    """Up to n pseudo-queries from chunk rows (id, doc_id, heading, text, index_text)."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(rows))
    out: list[PseudoQuery] = []
    titled: set[str] = set()
    for j in order:
        if len(out) >= n:
            break
        cid, doc_id, heading, text, index_text = rows[int(j)]
        target = str(doc_id) if doc_id is not None else f"#{cid}"
        first, _, rest = (index_text or "").partition("\n")
        made: PseudoQuery | None = None
        if rest and len(_WORD.findall(first)) >= 3 and target not in titled and rng.random() < 0.5:
            titled.add(target)
            made = PseudoQuery(first.split(" > ")[0], target, "title")
        elif heading and len(_WORD.findall(heading.split(" > ")[-1])) >= 2 and rng.random() < 0.5:
            made = PseudoQuery(heading.split(" > ")[-1], target, "heading")
        else:
            q = _cloze(text or "", rng)
            made = PseudoQuery(q, target, "cloze") if q else None
        if made is not None:
            out.append(made)
    return out


def mrr_at_10(queries: Sequence[PseudoQuery], hits: Sequence[Sequence[Hit]]) -> float:
    total = 0.0
    for q, hs in zip(queries, hits):
        keys = list(dict.fromkeys(h.doc_id if h.doc_id is not None else f"#{h.id}" for h in hs))[:10]
        total += 1.0 / (keys.index(q.target) + 1) if q.target in keys else 0.0
    return total / max(len(queries), 1)


def record(best: FusionConfig, default: FusionConfig, scores: dict[FusionConfig, float], queries: list[PseudoQuery],
           chunks: int, cfg: CalibrationConfig) -> dict:
    """The manifest entry: what was chosen, on what evidence, and whether it is in force."""
    kinds: dict[str, int] = {}
    for q in queries:
        kinds[q.kind] = kinds.get(q.kind, 0) + 1
    kept = cfg.apply and best != default and scores[best] >= scores[default] + cfg.min_gain
    return {"source": "calibrated" if kept else "default", "config": asdict(best) if kept else None, "applied": kept,
            "best": asdict(best), "pseudo_mrr10": round(scores[best], 4), "default_mrr10": round(scores[default], 4),
            "pseudo_queries": len(queries), "kinds": kinds, "at_chunks": chunks, "seed": cfg.seed, "regrow": cfg.regrow}


def run(store: Any, coll: Any, cfg: CalibrationConfig) -> dict:
    """Sample pseudo-queries, rank them with every candidate fusion (queries embedded once), and
    return the manifest entry. `store` is the DocStore, `coll` its Collection."""
    from retrieval.store.search import SearchRequest

    rng = np.random.default_rng(cfg.seed)
    with coll.reading() as (conn, _):
        all_ids = [r[0] for r in conn.execute("SELECT id FROM chunks")]
        pick = sorted(int(i) for i in rng.choice(all_ids, size=min(len(all_ids), 3 * cfg.n_queries), replace=False)) if all_ids else []
        rows = [tuple(r) for b in range(0, len(pick), 900) for r in conn.execute(
            f"SELECT id, doc_id, heading, text, index_text FROM chunks WHERE id IN ({','.join('?' * len(pick[b:b + 900]))})",
            pick[b : b + 900])]
    queries = pseudo_queries(rows, cfg.n_queries, cfg.seed)
    if len(queries) < 10:
        raise InvalidInputError(f"collection {coll.name!r} has too little text to calibrate on ({len(queries)} pseudo-queries)",
                                "index more documents first; searches keep the default fusion")
    emb = store.embedder_for(coll)
    xq = np.asarray(emb.embed([q.text for q in queries]), np.float32)  # (n, D)
    default = store.fusion
    scores: dict[FusionConfig, float] = {}
    for fu in candidates(default):
        req = SearchRequest(k=10, mode="hybrid", collection=coll.name, fusion=fu)
        scores[fu] = mrr_at_10(queries, store._run([q.text for q in queries], req, single=False, xq=xq))
    best = max(scores, key=lambda f: (scores[f], f == default))
    return record(best, default, scores, queries, len(all_ids), cfg)
