"""The test fake: deterministic bag-of-hashed-words vectors, chosen by the spec 'hash-<dim>'."""
from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Sequence

import numpy as np

from retrieval.errors import InvalidInputError

Progress = Callable[[int, int], None]  # (done, total)

_WORD = re.compile(r"\w+|[^\w\s]", re.UNICODE)
# The fake's dimension range. Above 4096 a store gains nothing but memory: hash-99999999 made every
# listing of the store allocate 400 MB per collection and fail (issue 30 case 7).
MIN_DIM, MAX_DIM = 8, 4096


class HashEmbedder:
    """Deterministic bag-of-hashed-words vectors: cheap, torch-free, and similar texts stay similar."""

    special_tokens = 0

    def __init__(self, dim: int = 64, max_tokens: int = 256) -> None:
        if not MIN_DIM <= dim <= MAX_DIM:
            raise InvalidInputError(f"hash embedder dimension {dim} is outside {MIN_DIM}..{MAX_DIM}", "use e.g. hash-64")
        self.dim = dim
        self.max_tokens = max_tokens
        self.model_id = f"hash-{dim}@v1"

    def token_spans(self, text: str) -> list[tuple[int, int]]:
        return [m.span() for m in _WORD.finditer(text)]

    def _vec(self, text: str) -> np.ndarray:
        v = np.zeros(self.dim, dtype=np.float32)  # (D,)
        for m in _WORD.finditer(text.lower()):
            d = hashlib.blake2b(m.group().encode(), digest_size=8).digest()
            v[int.from_bytes(d[:4], "little") % self.dim] += 1.0 if d[4] & 1 else -1.0
        n = np.linalg.norm(v)
        if n == 0:
            v[0] = 1.0
            return v
        return v / n

    def embed(self, texts: Sequence[str], *, batch_size: int = 64, progress: Progress | None = None) -> np.ndarray:
        out = np.stack([self._vec(t) for t in texts]) if texts else np.zeros((0, self.dim), np.float32)  # (N, D)
        if progress:
            progress(len(texts), len(texts))
        return out

    def embed_query(self, text: str) -> np.ndarray:
        return self._vec(text)  # (D,)


