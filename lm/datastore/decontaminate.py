"""Decontamination: find the n-grams a corpus shares with evaluation text, and the targets to drop.

Pure array functions on token ids; the build (and a distributed build) calls them per document.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from retrieval.errors import InvalidInputError

_P = np.uint64(1099511628211)  # FNV prime: n-gram rolling-hash base


def ngram_hashes(ids: np.ndarray, n: int) -> np.ndarray:
    """Unique uint64 rolling hashes of every n-gram of token ids: (m,)."""
    return np.unique(ngram_positions(ids, n))  # (m,)


def ngram_positions(ids: np.ndarray, n: int) -> np.ndarray:
    """Rolling hash of the n-gram starting at every position: (L - n + 1,), same hash as ngram_hashes."""
    ids = np.asarray(ids, dtype=np.uint64)
    if ids.size < n:
        return np.zeros(0, dtype=np.uint64)
    pw = _P ** np.arange(n - 1, -1, -1, dtype=np.uint64)  # (n,)
    with np.errstate(over="ignore"):
        return (np.lib.stride_tricks.sliding_window_view(ids, n) * pw).sum(axis=1, dtype=np.uint64)  # (L-n+1,)


def contaminated(ids: np.ndarray, ev: np.ndarray, n: int, margin: int) -> tuple[np.ndarray, np.ndarray]:
    """(starts of n-grams shared with the eval text, per-position mask of targets to drop): a target is
    dropped when it lies inside a shared n-gram or within `margin` tokens after one, since its key
    would then hold the leaked text as its most recent context."""
    L = int(np.asarray(ids).size)
    if not ev.size or L < n:
        return np.zeros(0, dtype=np.int64), np.zeros(L, dtype=bool)
    starts = np.nonzero(np.isin(ngram_positions(ids, n), ev))[0]  # (h,)
    edge = np.zeros(L + 1, dtype=np.int64)  # (L+1,) +1 where a dropped run opens, -1 where it closes
    np.add.at(edge, np.minimum(starts + 1, L), 1)
    np.add.at(edge, np.minimum(starts + n + margin, L), -1)
    return starts, np.cumsum(edge)[:L] > 0  # (h,), (L,)


def eval_ngrams(tok, files: Sequence[str], n: int) -> np.ndarray:
    """Unique n-gram hashes of the evaluation files (what the datastore must not contain)."""
    parts = []
    for f in files:
        p = Path(f)
        if not p.is_file():
            raise InvalidInputError(f"decontamination file not found: {f}", "pass the evaluation text file(s)")
        ids = tok(p.read_text(encoding="utf-8", errors="replace"), add_special_tokens=False)["input_ids"]
        parts.append(ngram_hashes(np.asarray(ids), n))
    return np.unique(np.concatenate(parts)) if parts else np.zeros(0, dtype=np.uint64)
