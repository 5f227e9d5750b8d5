"""Self-describing JSON manifests of the document store and its collections."""
from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

from retrieval.errors import CorruptStoreError, MismatchError

STORE_FORMAT = "knnrag-store"
COLLECTION_FORMAT = "knnrag-collection"
FORMAT_VERSION = 1


# --------------------------------------------------------------------------- manifests
def check_format(obj: dict, expected: str, path: Path) -> None:
    if obj.get("format") != expected:
        raise CorruptStoreError(
            f"{path} is not a {expected} manifest (format={obj.get('format')!r})",
            "point --store at a directory created by `knnrag index`",
        )
    version = obj.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise MismatchError(
            f"{path} has format version {version}, this knnrag reads up to {FORMAT_VERSION}",
            "upgrade knnrag, or re-index the sources into a new store",
        )


def new_store_manifest() -> dict:
    return {"format": STORE_FORMAT, "format_version": FORMAT_VERSION, "created": _now()}


def new_collection_manifest(name: str, embedder: dict, chunker: dict, index: dict, bm25: dict) -> dict:
    return {
        "format": COLLECTION_FORMAT,
        "format_version": FORMAT_VERSION,
        "name": name,
        "created": _now(),
        "embedder": embedder,  # {"model_id", "spec", "dim", "max_tokens"}
        "metric": "inner_product",  # on L2-normalised vectors, i.e. cosine similarity
        "chunker": chunker,
        "index": index,  # {"factory": "auto" | faiss index_factory string, "hnsw_threshold", ...}
        "bm25": bm25,
        "files": {"db": "chunks.sqlite", "generations": "gen-<N>/ (index.faiss, bm25/, gen.json)"},
    }


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def iter_generation_dirs(coll_dir: Path) -> Iterator[tuple[int, Path]]:
    for p in coll_dir.iterdir():
        if p.is_dir() and p.name.startswith("gen-"):
            try:
                yield int(p.name[4:]), p
            except ValueError:
                continue
