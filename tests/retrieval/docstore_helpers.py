"""Shared corpus builders and records for the DocStore tests (test_docstore*.py, test_search_*.py)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from retrieval.embed.hash_embedder import HashEmbedder
from retrieval.store.docstore import DocStore

HIT_FIELDS = {"id", "score", "scores", "text", "source", "start_char", "end_char", "start_line", "end_line",
              "heading", "metadata", "doc_id", "collection"}


WORDS = ("alpha beta gamma delta epsilon zeta theta iota kappa lambda omicron sigma tau upsilon omega "
         "river mountain forest desert ocean valley island canyon glacier meadow").split()


class CountingEmbedder(HashEmbedder):
    """HashEmbedder that counts how many texts it embedded (to prove incremental re-embedding)."""

    def __init__(self, dim: int = 64) -> None:
        super().__init__(dim)
        self.embedded = 0

    def embed(self, texts, *, batch_size=64, progress=None):
        self.embedded += len(texts)
        return super().embed(texts, batch_size=batch_size, progress=progress)


def text_of(rng: np.random.Generator, n: int = 30) -> str:
    return " ".join(rng.choice(WORDS, size=n))


def make_corpus(root: Path, n_files: int = 12, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    (root / "sub").mkdir(parents=True, exist_ok=True)
    for i in range(n_files):
        d = root / ("sub" if i % 3 == 0 else ".")
        (d / f"doc{i}.md").write_text(f"# Doc {i}\n\n{text_of(rng)}.\n\n## Part two\n\n{text_of(rng)} number{i}.\n", encoding="utf-8")
    return root


def tagged_store(tmp_path, n=300):
    rng = np.random.default_rng(1)
    s = DocStore.open(tmp_path / "s", embedder="hash-64")
    texts = [text_of(rng, 12) for _ in range(n)]
    metas = [{"source": f"dir{i % 4}/f{i}.md", "kind": "markdown" if i % 2 else "text", "tags": ["rare"] if i % 50 == 7 else []}
             for i in range(n)]
    s.add_texts(texts, metas)
    return s, texts, metas
