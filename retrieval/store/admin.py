"""Collection administration and chunk neighbourhoods, as free functions over DocStore's public API.

Used by the MCP tools (create_collection, drop_collection, chunk_context) and usable from Python:

    from retrieval.store import admin
    admin.create_collection(store, "notes", embedder="hash-64")
    before, hit, after = admin.chunk_context(store, "12", before=1, after=1, collection="notes")
    admin.drop_collection(store, "notes")

Every write takes the store's WriterLock, like DocStore's own writes, so it is safe against a
concurrent index run in another process.
"""
from __future__ import annotations

import logging
import os
import re
import shutil
import uuid
from dataclasses import asdict
from pathlib import Path
from typing import Any

from retrieval.errors import InvalidInputError, KnnragError, NotFoundError, StoreWriteError
from retrieval.store import chunk_db
from retrieval.store.collection import create
from retrieval.store.durable import WriterLock, atomic_write_json, checkpoint, fsync_dir, read_json, write_error
from retrieval.store.manifest import new_collection_manifest
from retrieval.store.search import Hit, make_hit

log = logging.getLogger(__name__)

MAX_NEIGHBOURS = 20
MAX_EMBED_DIM = 4096  # the widest sentence embedders in use (e5-mistral-7b) give 4096 dimensions
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")  # the rule DocStore applies to collection names


def _exists(store: Any, name: str) -> bool:
    return (store.path / name / "manifest.json").exists()


def create_collection(store: Any, name: str, *, embedder: str | None = None, index_factory: str = "auto") -> dict:
    """Create an empty collection embedded with `embedder` (a load_embedder spec; None = MiniLM).

    Mirrors what DocStore does when a first write names a new collection, so a collection made
    here and one made by `index_paths` have the same manifest.
    """
    from retrieval.embed.embedder import content_budget, load_embedder
    from retrieval.index.bm25_index import BM25Config
    from retrieval.index.vector_index import IndexConfig, validate_factory
    from retrieval.ingest.chunking import ChunkerConfig
    if not isinstance(name, str) or not NAME.match(name):
        raise InvalidInputError(f"invalid collection name {name!r}",
                                "use letters, digits, '-' and '_' (at most 64), e.g. 'docs'")
    if store.read_only:
        raise InvalidInputError(f"the store {store.path} is read-only", "open it writable to create collections")
    if _exists(store, name):
        raise InvalidInputError(f"collection {name!r} already exists", "pick another name, or drop it first")
    emb = load_embedder(embedder)
    if not 1 <= int(emb.dim) <= MAX_EMBED_DIM:
        raise InvalidInputError(f"embedder {embedder!r} gives {emb.dim}-dimensional vectors, over the limit of "
                                f"{MAX_EMBED_DIM}", "use a smaller embedding model")
    validate_factory(index_factory, emb.dim)
    manifest = new_collection_manifest(
        name, {"model_id": emb.model_id, "spec": embedder, "dim": int(emb.dim), "max_tokens": int(emb.max_tokens)},
        asdict(ChunkerConfig(max_tokens=content_budget(emb))), IndexConfig(factory=index_factory).to_dict(),
        BM25Config().to_dict())
    with WriterLock(store.path):
        if _exists(store, name):  # created by another writer meanwhile
            raise InvalidInputError(f"collection {name!r} already exists", "pick another name, or drop it first")
        create(store.path, name, manifest)
    return {"name": name, "embedder": emb.model_id, "dim": int(emb.dim)}


TRASH = ".dropped-"  # STORE/.dropped-<name>-<hex>/: a drop in progress (drop.json, collection/, sidecars/)


def sidecar_dirs(store_path: Path, name: str) -> list[Path]:
    """Derived data other layers keep per collection, by convention at STORE/.<kind>/<name>/ (lm's kNN
    datastore is STORE/.knn/<name>): it goes with the collection when the collection is dropped."""
    out = []
    for d in sorted(store_path.iterdir()):
        if d.name.startswith(".") and not d.name.startswith((TRASH, ".tmp-", ".probe-")) and d.is_dir() and (d / name).is_dir():
            out.append(d / name)
    return out


def drop_collection(store: Any, name: str) -> dict:
    """Delete a collection, its sidecars (lm's kNN datastore) and everything in them; returns what it held.

    One recoverable step: under the writer lock a trash folder records the drop (drop.json), then the
    collection is renamed into it (the commit point: readers no longer see it), then each sidecar;
    then the trash is removed. A crash before the commit point leaves the collection as it was (the
    next open removes the empty trash); after it, the next open finishes the drop (`recover_drops`).
    Open handles are released with `store.close()`; the caller keeps its own readers off the store
    while this runs (the MCP server holds its exclusive gate).
    """
    info = store.collection(name).info()  # NotFoundError names the collections there are
    if store.read_only:
        raise InvalidInputError(f"the store {store.path} is read-only", "open it writable to drop collections")
    trash = store.path / f"{TRASH}{name}-{uuid.uuid4().hex[:8]}"
    with WriterLock(store.path):
        if not _exists(store, name):
            raise NotFoundError(f"collection {name!r} was dropped meanwhile", "call list_collections")
        uid = str(store.collection(name).manifest.get("uid") or "")
        store.close()
        sidecars = sidecar_dirs(store.path, name)
        try:
            trash.mkdir()
            atomic_write_json(trash / "drop.json", {"name": name, "uid": uid,
                                                    "sidecars": [str(p.relative_to(store.path)) for p in sidecars]})
            checkpoint("drop_recorded")
            os.rename(store.path / name, trash / "collection")
            fsync_dir(store.path)
            checkpoint("drop_committed")
            _move_sidecars(store.path, trash, sidecars)
        except OSError as e:
            raise write_error(store.path, e) from e
        shutil.rmtree(trash, ignore_errors=True)
    return {"name": name, "chunks": int(info["chunks"]), "sources": int(info["sources"]), "sidecars": len(sidecars)}


def _move_sidecars(store_path: Path, trash: Path, sidecars: list[Path]) -> None:
    (trash / "sidecars").mkdir(exist_ok=True)
    for i, p in enumerate(sidecars):
        if p.is_dir():
            os.rename(p, trash / "sidecars" / str(i))
            fsync_dir(p.parent)


def recover_drops(store: Any) -> list[str]:
    """Finish (or roll back) drops a crash interrupted; returns the names whose drop was finished.

    A trash with the collection in it was committed: its sidecars still in place go too (unless a
    collection of that name exists again, which then owns them). A trash without it never committed:
    it is removed and the collection stays. A bare `.dropped-*` folder from before drop.json is
    the collection itself: removed."""
    trashes = [d for d in store.path.iterdir() if d.name.startswith(TRASH) and d.is_dir()]
    if not trashes:
        return []
    try:
        lock = WriterLock(store.path).__enter__()
    except StoreWriteError:  # another writer is busy: leave the trash to it or to the next open
        return []
    try:
        return _recover(store, trashes)
    finally:
        lock.__exit__(None, None, None)


def _recover(store: Any, trashes: list[Path]) -> list[str]:
    done = []
    for t in trashes:
        if not t.exists():  # another process recovered it meanwhile
            continue
        try:
            rec = read_json(t / "drop.json", "drop record") if (t / "drop.json").is_file() else {}
        except KnnragError:
            rec = {}
        name = str(rec.get("name") or t.name[len(TRASH):].rsplit("-", 1)[0])
        legacy = (t / "manifest.json").is_file()  # the collection folder itself, renamed by an older drop
        committed = legacy or (t / "collection").is_dir()
        if committed and not _exists(store, name):
            side = sidecar_dirs(store.path, name)  # the name has no collection now: whatever is kept under it is the dropped one's
            try:
                _move_sidecars(store.path, t, side)
            except OSError as e:
                log.warning("could not finish the interrupted drop in %s: %s", t, e)
                continue
        if committed:
            done.append(name)
        shutil.rmtree(t, ignore_errors=True)
        log.info("removed %s (a drop of %r that a crash interrupted: %s)", t.name, name, "finished" if committed else "rolled back")
    return done


def chunk_context(store: Any, chunk_id: str, *, before: int = 1, after: int = 1,
                  collection: str = "default") -> tuple[list[Hit], Hit, list[Hit]]:
    """The chunk `chunk_id` with up to `before` / `after` neighbours from the same document, in
    reading order (line, then character offset). Chunks added with add_texts and no source have
    no neighbours: they are unrelated texts."""
    for what, n in (("before", before), ("after", after)):
        if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= MAX_NEIGHBOURS:
            raise InvalidInputError(f"{what}={n!r} must be an integer from 0 to {MAX_NEIGHBOURS}",
                                    "ask for fewer neighbours, or call again from the last one")
    coll = store.collection(collection)
    with coll.reading() as (conn, _snap):
        rid = chunk_db.resolve_ids(conn, [str(chunk_id)]).get(str(chunk_id))
        if rid is None:
            raise NotFoundError(f"no chunk {chunk_id!r} in collection {collection!r}",
                                "use an id from a search hit of this collection")
        row = chunk_db.fetch_rows(conn, [rid])[rid]
        source, doc_id = row[3], row[10]
        if not source:
            return [], make_hit(row, 0.0, {}, collection), []
        sql = "SELECT id FROM chunks WHERE source = ? AND doc_id IS ? ORDER BY start_line, start_char, id"
        order = [r[0] for r in conn.execute(sql, (source, doc_id))]
        at = order.index(rid)
        ids = order[max(0, at - before): at + after + 1]
        rows = chunk_db.fetch_rows(conn, ids)
        hits = [make_hit(rows[i], 0.0, {}, collection) for i in ids]
    pos = ids.index(rid)
    return hits[:pos], hits[pos], hits[pos + 1:]
