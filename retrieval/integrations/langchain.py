"""A langchain_core VectorStore over a DocStore collection, so LangChain chains and retrievers
use the same store, filters, hybrid ranking and atomic commits as the CLI and MCP server.

    from retrieval.integrations.langchain import KnnragVectorStore
    vs = KnnragVectorStore.open("my-store", collection="notes")
    vs.add_texts(["..."], metadatas=[{"source": "a.md"}])
    retriever = vs.as_retriever(search_kwargs={"k": 5, "filter": {"kind": "markdown"}})
"""
from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings
from langchain_core.vectorstores import VectorStore

from retrieval.errors import InvalidInputError
from retrieval.store.docstore import DocStore
from retrieval.types import Hit

_WORD = re.compile(r"\w+|[^\w\s]")


class EmbedderEmbeddings(Embeddings):
    """A knnrag Embedder seen as LangChain Embeddings."""

    def __init__(self, embedder: Any) -> None:
        self.embedder = embedder

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return np.asarray(self.embedder.embed(texts), np.float32).tolist()

    def embed_query(self, text: str) -> list[float]:
        return np.asarray(self.embedder.embed_query(text), np.float32).tolist()


class LangChainEmbedder:
    """Any LangChain Embeddings as a knnrag Embedder (vectors L2-normalised, identity recorded)."""

    special_tokens = 0

    def __init__(self, embeddings: Embeddings, name: str | None = None, max_tokens: int = 512) -> None:
        self.embeddings = embeddings
        model = getattr(embeddings, "model", None) or getattr(embeddings, "model_name", None) or ""
        label = name or f"langchain:{type(embeddings).__name__}{':' + str(model) if model else ''}"
        probe = self._norm(np.asarray([embeddings.embed_query("dimension probe")], np.float32))
        self.dim = int(probe.shape[1])
        self.max_tokens = max_tokens
        self.model_id = f"{label}@{hashlib.sha256(probe.tobytes()).hexdigest()[:16]}"

    @staticmethod
    def _norm(x: np.ndarray) -> np.ndarray:
        n = np.linalg.norm(x, axis=1, keepdims=True)  # (N, 1)
        return x / np.where(n == 0, 1.0, n)

    def token_spans(self, text: str) -> list[tuple[int, int]]:
        return [m.span() for m in _WORD.finditer(text)]

    def embed(self, texts: Sequence[str], *, batch_size: int = 64, progress: Callable | None = None) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        return self._norm(np.asarray(self.embeddings.embed_documents(list(texts)), np.float32))  # (N, D)

    def embed_query(self, text: str) -> np.ndarray:
        return self._norm(np.asarray([self.embeddings.embed_query(text)], np.float32))[0]  # (D,)


def _doc(h: Hit) -> Document:
    md = dict(h.metadata)
    md.update({"source": h.source, "start_char": h.start_char, "end_char": h.end_char, "start_line": h.start_line,
               "end_line": h.end_line, "heading": h.heading, "doc_id": h.doc_id, "collection": h.collection})
    return Document(page_content=h.text, metadata=md, id=h.id)


class KnnragVectorStore(VectorStore):
    """LangChain VectorStore over one DocStore collection. `mode` picks dense, bm25 or hybrid
    (default) ranking for similarity_search; `filter` takes DocStore filters (source glob, kind,
    tags, doc_id, or any metadata key, with chroma-style $eq/$ne/$in/$nin/$gt/$gte/$lt/$lte and
    $and/$or: retrieval/store/filters.py)."""

    def __init__(self, store: DocStore, *, collection: str = "default", mode: str = "hybrid") -> None:
        if mode not in ("dense", "bm25", "hybrid"):
            raise InvalidInputError(f"unknown search mode {mode!r}", "use dense, bm25 or hybrid")
        self.store = store
        self.collection = collection
        self.mode = mode

    @classmethod
    def open(cls, path: str, *, embedding: Embeddings | Any | None = None, collection: str = "default",
             mode: str = "hybrid", read_only: bool = False) -> KnnragVectorStore:
        emb = LangChainEmbedder(embedding) if isinstance(embedding, Embeddings) and not isinstance(embedding, EmbedderEmbeddings) else (
            embedding.embedder if isinstance(embedding, EmbedderEmbeddings) else embedding)
        return cls(DocStore.open(path, embedder=emb, read_only=read_only), collection=collection, mode=mode)

    @property
    def embeddings(self) -> Embeddings | None:
        try:
            c = self.store.collection(self.collection)
        except Exception:
            return None
        emb = self.store.embedder_for(c)
        return emb.embeddings if isinstance(emb, LangChainEmbedder) else EmbedderEmbeddings(emb)

    # ------------------------------------------------------------------ writes
    def add_texts(self, texts: Iterable[str], metadatas: list[dict] | None = None, *, ids: list[str] | None = None,
                  **kwargs: Any) -> list[str]:
        return self.store.add_texts(list(texts), metadatas, ids, collection=self.collection)

    def delete(self, ids: list[str] | None = None, **kwargs: Any) -> bool | None:
        if not ids:
            raise InvalidInputError("pass the ids to delete", "ids come from add_texts / Document.id")
        res = self.store.delete(ids=list(ids), collection=self.collection)
        return res["removed_chunks"] > 0

    def get_by_ids(self, ids: Sequence[str], /) -> list[Document]:
        return [_doc(h) for h in self.store.get(list(ids), collection=self.collection)]

    # ------------------------------------------------------------------ reads
    def similarity_search_with_score(self, query: str, k: int = 4, filter: dict | None = None,
                                     **kwargs: Any) -> list[tuple[Document, float]]:
        hits = self.store.search(query, k=k, mode=kwargs.get("mode", self.mode), filters=filter, collection=self.collection,
                                 min_score=kwargs.get("score_threshold"))
        return [(_doc(h), h.score) for h in hits]

    def similarity_search(self, query: str, k: int = 4, filter: dict | None = None, **kwargs: Any) -> list[Document]:
        return [d for d, _ in self.similarity_search_with_score(query, k, filter, **kwargs)]

    def similarity_search_by_vector(self, embedding: list[float], k: int = 4, filter: dict | None = None,
                                    **kwargs: Any) -> list[Document]:
        return [_doc(h) for h in self.store.search_by_vector(embedding, k=k, filters=filter, collection=self.collection)]

    def max_marginal_relevance_search(self, query: str, k: int = 4, fetch_k: int = 20, lambda_mult: float = 0.5,
                                      filter: dict | None = None, **kwargs: Any) -> list[Document]:
        fusion = self.store.fusion_for(self.store.collection(self.collection)).with_(depth=max(fetch_k, k))
        hits = self.store.search(query, k=k, mode=kwargs.get("mode", self.mode), filters=filter, collection=self.collection,
                                 mmr=True, mmr_lambda=lambda_mult, fusion=fusion)
        return [_doc(h) for h in hits]

    def max_marginal_relevance_search_by_vector(self, embedding: list[float], k: int = 4, fetch_k: int = 20,
                                                lambda_mult: float = 0.5, filter: dict | None = None,
                                                **kwargs: Any) -> list[Document]:
        hits = self.store.search_by_vector(embedding, k=k, filters=filter, collection=self.collection, mmr=True,
                                           mmr_lambda=lambda_mult)
        return [_doc(h) for h in hits]

    def _select_relevance_score_fn(self) -> Callable[[float], float]:
        """Scores to [0, 1]: cosine (dense) -> (1+s)/2, BM25 -> s/(1+s), hybrid is already in [0, 1]."""
        if self.mode == "dense":
            return lambda s: max(0.0, min(1.0, (1.0 + s) / 2.0))
        if self.mode == "bm25":
            return lambda s: s / (1.0 + s) if s > 0 else 0.0
        return lambda s: max(0.0, min(1.0, s))

    @classmethod
    def from_texts(cls, texts: list[str], embedding: Embeddings, metadatas: list[dict] | None = None, *,
                   ids: list[str] | None = None, store_path: str | None = None, collection: str = "default",
                   mode: str = "hybrid", **kwargs: Any) -> KnnragVectorStore:
        """Create (or extend) a store at `store_path` (required) holding `texts`."""
        if not store_path:
            raise InvalidInputError("from_texts needs store_path=DIR", "pass the directory the store lives in")
        vs = cls.open(store_path, embedding=embedding, collection=collection, mode=mode)
        vs.add_texts(texts, metadatas, ids=ids)
        return vs
