"""FAISS datastores: the document store for RAG and the token datastore for kNN-LM.

Nothing heavy is imported here: `import retrieval` must stay cheap for a cold CLI.
"""
from retrieval.errors import (
    CorruptStoreError,
    InvalidInputError,
    KnnragError,
    MismatchError,
    ModelLoadError,
    NotFoundError,
    StoreWriteError,
)

__all__ = [
    "KnnragError",
    "InvalidInputError",
    "NotFoundError",
    "MismatchError",
    "CorruptStoreError",
    "StoreWriteError",
    "ModelLoadError",
]
