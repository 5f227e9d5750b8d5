"""What a reader holds of one committed generation (Snapshot) and what one commit changes (Changes)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from retrieval.index.bm25_index import BM25Index


@dataclass
class Snapshot:
    """Everything a reader needs from one committed generation (FAISS and BM25 memory-mapped)."""

    generation: int
    index: Any | None  # faiss.IndexIDMap2
    tombstones: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # (t,) sorted ids deleted from HNSW
    bm25: BM25Index | None = None
    factory: str = "Flat"
    cache: dict = field(default_factory=dict, repr=False, compare=False)  # derived read-side arrays of this generation


@dataclass
class Changes:
    """What one commit does to a collection."""

    remove_ids: np.ndarray  # (r,) chunk row ids to delete
    rows: list[dict]  # new chunk rows (chunk_db.insert_chunks fields)
    xb: np.ndarray  # (n, D) their vectors
    tokens: list[list[str]]  # their BM25 tokens
    upsert_sources: list[dict] = field(default_factory=list)
    delete_sources: list[str] = field(default_factory=list)

    def empty(self) -> bool:
        return not len(self.remove_ids) and not self.rows and not self.upsert_sources and not self.delete_sources
