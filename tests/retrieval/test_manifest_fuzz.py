"""Every field of the store's JSON manifests (store.json, a collection's manifest.json and its
generation's gen.json), mutated one at a time: the store either still works or raises a
KnnragError (error + hint, exit 2). Any other exception is a traceback a user would see."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from retrieval.cli.verify import verify_store
from retrieval.errors import KnnragError
from retrieval.store.docstore import DocStore

MUTATIONS = [
    ("deleted", None), ("string", "x"), ("empty string", ""), ("negative", -1), ("zero", 0), ("huge", 10**30),
    ("float", 2.5), ("nan", float("nan")), ("bool", True), ("null", None), ("list", [1]), ("object", {"a": 1}),
]


def leaves(obj, prefix=()):
    """Paths of every field (nested objects too, and the objects themselves)."""
    for key, value in obj.items():
        yield (*prefix, key)
        if isinstance(value, dict):
            yield from leaves(value, (*prefix, key))


def mutate(obj, path, how, value):
    target = obj
    for key in path[:-1]:
        target = target[key]
    if how == "deleted":
        del target[path[-1]]
    else:
        target[path[-1]] = value


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz")
    corpus = root / "corpus"
    corpus.mkdir()
    (corpus / "a.md").write_text("# Alpha\n\nrivers and mountains and forests\n\n## Beta\n\noceans and parsers\n")
    with DocStore.open(root / "store", embedder="hash-64") as s:
        s.index_paths([corpus])
    return root


def exercise(store_dir: Path, corpus: Path) -> None:
    """What a user does with a store: open it, search every mode, stats, verify, write."""
    with DocStore.open(store_dir, embedder="hash-64") as s:
        for mode in ("bm25", "dense", "hybrid"):
            s.search("rivers", k=2, mode=mode)
        s.stats()
        s.stats("default")
        s.verify()
        verify_store(store_dir)
        (corpus / "b.md").write_text("# Gamma\n\nnew words about caches\n")
        s.index_paths([corpus])
        s.delete(sources=[str(corpus / "b.md")])


def cases():
    probe = {"store.json": {"format": 1, "format_version": 1, "created": 1},
             "manifest.json": {"format": 1, "format_version": 1, "name": 1, "created": 1, "metric": 1, "files": 1,
                               "embedder": {"model_id": 1, "spec": 1, "dim": 1, "max_tokens": 1},
                               "chunker": {"max_tokens": 1, "overlap_tokens": 1, "min_chunk_chars": 1, "max_prefix_tokens": 1},
                               "index": {"factory": 1, "hnsw_threshold": 1, "hnsw_m": 1, "ef_construction": 1, "ef_search": 1,
                                         "nprobe": 1, "exact_fallback_max": 1, "rebuild_tombstone_fraction": 1},
                               "bm25": {"k1": 1, "b": 1, "method": 1, "stemmer": 1, "stopwords": 1}},
             "gen.json": {"generation": 1, "factory": 1, "chunks": 1, "vectors": 1, "tombstones": 1, "created": 1, "files": 1}}
    n = 0
    for file, fields in probe.items():
        for path in leaves(fields):
            for i, (how, value) in enumerate(MUTATIONS):
                # the fast lane mutates each field once, each mutation in turn; the full lane all 12 ways
                marks = () if i == n % len(MUTATIONS) else (pytest.mark.slow,)
                yield pytest.param(file, path, how, value, id=f"{file}:{'.'.join(path)}:{how}", marks=marks)
            n += 1


def manifest_path(store_dir: Path, file: str) -> Path:
    if file == "store.json":
        return store_dir / "store.json"
    if file == "manifest.json":
        return store_dir / "default" / "manifest.json"
    (gdir,) = [p for p in (store_dir / "default").iterdir() if p.name.startswith("gen-")]
    return gdir / "gen.json"


@pytest.mark.parametrize("file, path, how, value", list(cases()))
def test_every_manifest_field_mutated(base, tmp_path, file, path, how, value):
    store_dir = tmp_path / "store"
    shutil.copytree(base / "store", store_dir)
    corpus = tmp_path / "corpus"
    shutil.copytree(base / "corpus", corpus)
    mpath = manifest_path(store_dir, file)
    obj = json.loads(mpath.read_text())
    mutate(obj, path, how, value)
    mpath.write_text(json.dumps(obj))
    try:
        exercise(store_dir, corpus)
    except KnnragError as e:
        assert e.message and e.hint, f"{type(e).__name__} without a message and a hint: {e!r}"
