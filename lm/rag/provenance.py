"""Citations from provenance: the chunks whose token contexts the kNN neighbours came from.

While the answer is generated with the collection's datastore (lm.generate.ProvenanceLog), each
emitted token keeps the neighbours that voted for it and each one's share of the token's mixed
probability, lambda * w_i / p_mix. Every datastore entry belongs to one chunk (its document's
source is `chunk:<id>`, lm.knn_index), so a token's mass splits over chunks; averaged over the
tokens of an answer sentence it says which share of the sentence's probability came from which
chunk. The top chunk is the sentence's citation when its weight reaches MIN_WEIGHT; otherwise,
and without a datastore, the word-overlap match of lm.rag.citations is the fallback, labelled
"overlap". Both are computed for every sentence so the two can be compared (`agree`).

MIN_WEIGHT is a floor, not a tuned value: 5% of a sentence's probability mass from one chunk.
With lambda 0.25 a token the LM and the neighbours agree on gets a share near 0.25, so a
sentence copied from a chunk lands well above it, and one the LM wrote alone stays near 0.
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lm.rag.citations import overlap_best, sentence_spans
from lm.rag.records import ChunkRef

MIN_WEIGHT = 0.05
SECOND_RATIO = 0.5  # a second chunk is cited too when it has at least half the top chunk's weight


@dataclass
class SpanCitation:
    """One answer sentence and where it came from."""

    start: int  # characters in the answer text
    end: int
    text: str
    basis: str  # provenance | overlap | none
    chunks: list[ChunkRef] = field(default_factory=list)  # the cited chunks, best first
    provenance_chunk: str | None = None  # top chunk by provenance, even under MIN_WEIGHT
    provenance_weight: float = 0.0
    overlap_chunk: str | None = None  # the numbered source with most of the sentence's words
    overlap_score: float = 0.0
    agree: bool | None = None  # provenance top == overlap top, where both exist (provenance over MIN_WEIGHT)
    tokens: int = 0
    knn_tokens: int = 0  # tokens with at least one neighbour voting for them


def entry_chunks(store: Any, entries: np.ndarray) -> list[str | None]:
    """The chunk id of each datastore entry (None for documents that are not collection chunks)."""
    from lm.datastore.live import PREFIX

    if entries.size == 0:
        return []
    docs = (store.docs if hasattr(store, "docs") else store.store.docs)()  # a ShardedStore keeps docs local
    out: list[str | None] = []
    for d in store.provenance(np.asarray(entries, dtype=np.int64))[:, 0].tolist():
        src = str(docs[int(d)]["source"])
        out.append(src[len(PREFIX):] if src.startswith(PREFIX) else None)
    return out


def token_offsets(tokenizer: Any, ids: np.ndarray) -> list[tuple[int, int]]:
    """(start, end) characters of each token in tokenizer.decode(ids) (decoded prefix by prefix)."""
    out, prev = [], 0
    for t in range(len(ids)):
        cur = max(prev, len(tokenizer.decode(ids[: t + 1].tolist(), skip_special_tokens=True)))
        out.append((prev, cur))
        prev = cur
    return out


def token_chunk_weights(log: Any, store: Any) -> list[dict[str, float]]:
    """Per emitted token: chunk id -> that chunk's share of the token's mixed probability."""
    shares = log.token_shares(log.emitted)
    flat = np.concatenate([e for e, _ in shares]) if shares else np.zeros(0, dtype=np.int64)
    chunk_of = dict(zip(np.unique(flat).tolist(), entry_chunks(store, np.unique(flat))))
    out = []
    for entries, share in shares:
        w: dict[str, float] = defaultdict(float)
        for e, s in zip(entries.tolist(), share.tolist()):
            if (c := chunk_of.get(e)) is not None:
                w[c] += float(s)
        out.append(dict(w))
    return out


def _cited(weights: dict[str, float]) -> list[tuple[str, float]]:
    ranked = sorted(weights.items(), key=lambda kv: -kv[1])
    if not ranked or ranked[0][1] < MIN_WEIGHT:
        return []
    return [(c, w) for c, w in ranked[:2] if w >= max(MIN_WEIGHT, SECOND_RATIO * ranked[0][1])]


def attribute_spans(text: str, offsets: Sequence[tuple[int, int]], weights: Sequence[dict[str, float]] | None,
                    sources: Sequence[tuple[str, str]]) -> list[SpanCitation]:
    """SpanCitations of each sentence of `text`. offsets: each token's characters in `text`
    (tokens outside it are ignored); weights: per token chunk weights (None = no datastore);
    sources: the numbered sources' (chunk id, text), for the overlap match."""
    out = []
    for a, b in sentence_spans(text):
        toks = [t for t, (s, e) in enumerate(offsets) if e > s and a <= (s + e) // 2 < b] if weights is not None else []
        w: dict[str, float] = defaultdict(float)
        for t in toks:
            for c, x in weights[t].items():  # type: ignore[index]
                w[c] += x / len(toks)
        top = max(w.items(), key=lambda kv: kv[1]) if w else (None, 0.0)
        ov = overlap_best(text[a:b], [s for _, s in sources])
        sp = SpanCitation(a, b, text[a:b], "none", provenance_chunk=top[0], provenance_weight=round(top[1], 4),
                          overlap_chunk=None if ov is None else sources[ov[0]][0],
                          overlap_score=0.0 if ov is None else round(ov[1], 4), tokens=len(toks),
                          knn_tokens=sum(1 for t in toks if weights and weights[t]))  # type: ignore[index]
        cited = _cited(w)
        if cited and sp.overlap_chunk is not None:
            sp.agree = cited[0][0] == sp.overlap_chunk
        if cited:
            sp.basis, sp.chunks = "provenance", [ChunkRef(c, round(x, 4)) for c, x in cited]
        elif sp.overlap_chunk is not None:
            sp.basis, sp.chunks = "overlap", [ChunkRef(sp.overlap_chunk, sp.overlap_score)]
        out.append(sp)
    return out


def agreement(spans: Sequence[SpanCitation]) -> float | None:
    """Share of the sentences with both a provenance and an overlap top chunk where they are the same."""
    both = [s.agree for s in spans if s.agree is not None]
    return round(sum(both) / len(both), 4) if both else None


def spans_for(raw: str, text: str, log: Any, ds: Any, tokenizer: Any, sources: Sequence[tuple[str, str]]) -> list[SpanCitation]:
    """SpanCitations of the answer `text` (= `raw`, the decoded generation, cut and stripped);
    without a ProvenanceLog (no datastore) only the overlap match is there."""
    if log is None or ds is None or not len(log.emitted):
        return attribute_spans(text, [], None, sources)
    lead = len(raw) - len(raw.lstrip())
    offsets = [(s - lead, e - lead) for s, e in token_offsets(tokenizer, log.emitted)]
    return attribute_spans(text, offsets, token_chunk_weights(log, ds), sources)


def outside_chunks(spans: Sequence[SpanCitation], numbered: Sequence[str]) -> list[str]:
    """The top provenance chunks that are not numbered sources (to look up in the store)."""
    return list(dict.fromkeys(sp.chunks[0].chunk_id for sp in spans
                              if sp.chunks and sp.chunks[0].chunk_id not in numbered))


def markers(spans: Sequence[SpanCitation], numbered: Sequence[str], known: set[str]
            ) -> tuple[list[tuple[int, int, int]], list[str], dict[int, str]]:
    """[n] marks (start, end, n) from each sentence's top cited chunk; the cited chunks that were
    not numbered sources (they get the next numbers, in order); and each n's basis (provenance
    when any sentence cites it by provenance, else overlap). A chunk neither numbered nor in
    `known` (gone from the store) hands the sentence to the overlap fallback."""
    extra: list[str] = []
    marks: list[tuple[int, int, int]] = []
    basis: dict[int, str] = {}
    for sp in spans:
        if sp.chunks and sp.chunks[0].chunk_id not in numbered and sp.chunks[0].chunk_id not in known:
            sp.basis, sp.chunks = ("overlap", [ChunkRef(sp.overlap_chunk, sp.overlap_score)]) \
                if sp.overlap_chunk is not None else ("none", [])
        if not sp.chunks:
            continue
        c = sp.chunks[0].chunk_id
        if c not in numbered and c not in extra:
            extra.append(c)
        n = numbered.index(c) + 1 if c in numbered else len(numbered) + extra.index(c) + 1
        marks.append((sp.start, sp.end, n))
        basis[n] = "provenance" if basis.get(n) == "provenance" else sp.basis
    return marks, extra, basis


def apply_markers(text: str, spans: Sequence[SpanCitation], marks: Sequence[tuple[int, int, int]]) -> str:
    """The text with the [n] marks inserted; the spans' characters move to match it."""
    from lm.rag.citations import add_markers

    out = add_markers(text, marks)
    added = {(a, b): len(f" [{n}]") for a, b, n in marks}
    shift = 0
    for sp in spans:
        mine = added.get((sp.start, sp.end), 0)
        sp.start, sp.end = sp.start + shift, sp.end + shift + mine
        sp.text = out[sp.start:sp.end]
        shift += mine
    return out
