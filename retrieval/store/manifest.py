"""Self-describing JSON manifests of the document store and its collections."""
from __future__ import annotations

import dataclasses
import math
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from retrieval.errors import CorruptStoreError, KnnragError, MismatchError

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
    if not isinstance(version, int) or isinstance(version, bool) or not 1 <= version <= FORMAT_VERSION:
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
        # one identity per incarnation: a collection dropped and re-created under the same name gets a
        # new uid, so nothing keyed by the old one's chunk ids (a kNN datastore) can attach to the new
        "uid": uuid.uuid4().hex,
        "source_paths": "canonical",  # files are stored by resolved absolute path (retrieval/store/source_paths.py)
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


# --------------------------------------------------------------------------- validation
_FIX = "the collection manifest was edited or damaged; restore it from a backup, or delete the collection and re-index"


def _bad(path: Path, what: str) -> CorruptStoreError:
    return CorruptStoreError(f"{path}: {what}", _FIX)


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: object) -> bool:
    return (_is_int(v) or isinstance(v, float)) and math.isfinite(v)  # type: ignore[arg-type]


def typed_config(cls: type, d: object, path: Path, what: str, minimum: dict[str, float] | None = None) -> Any:
    """Build a config dataclass from a manifest section, refusing wrong types (a dataclass would
    take "x" for an int and fail much later) and values under `minimum`; unknown keys are ignored."""
    if d is None:
        d = {}
    if not isinstance(d, dict):
        raise _bad(path, f'"{what}" must be an object, found {type(d).__name__}')
    known = {}
    for f in dataclasses.fields(cls):
        if f.name not in d:
            continue
        v, want = d[f.name], type(f.default)
        ok = _is_int(v) if want is int else _is_number(v) if want is float else isinstance(v, want)
        if not ok or (minimum and f.name in minimum and v < minimum[f.name]):
            raise _bad(path, f'"{what}.{f.name}" has the invalid value {v!r}')
        known[f.name] = v
    try:
        return cls(**known)
    except (TypeError, ValueError, KnnragError) as e:
        raise _bad(path, f'"{what}" is invalid: {getattr(e, "message", e)}') from e


def check_collection(obj: dict, path: Path) -> dict:
    """The embedder section, checked: model_id (str), dim (1..65536), max_tokens, spec."""
    emb = obj.get("embedder")
    if not isinstance(emb, dict):
        raise _bad(path, f'"embedder" must be an object with model_id and dim, found {emb!r}'[:300])
    if not isinstance(emb.get("model_id"), str) or not emb["model_id"]:
        raise _bad(path, '"embedder.model_id" must be a non-empty string')
    if not _is_int(emb.get("dim")) or not 1 <= emb["dim"] <= 65536:
        raise _bad(path, f'"embedder.dim" must be an integer in 1..65536, found {emb.get("dim")!r}')
    if "max_tokens" in emb and not (_is_int(emb["max_tokens"]) and emb["max_tokens"] >= 1):
        raise _bad(path, f'"embedder.max_tokens" must be a positive integer, found {emb["max_tokens"]!r}')
    if emb.get("spec") is not None and not isinstance(emb["spec"], str):
        raise _bad(path, '"embedder.spec" must be a string or null')
    if obj.get("metric", "inner_product") != "inner_product":
        raise _bad(path, f'"metric" {obj.get("metric")!r} is not supported (only inner_product)')
    return emb
