"""Which entries of a collection's kNN datastore are still true: the datastore's documents are the
collection's chunks (`chunk:<id>`), and a chunk deleted, replaced or re-chunked since (through any
interface, even one that did not update the datastore) must never come back from a kNN search,
`explain`, `perplexity` or a citation. Readers mask such entries in memory (`mask_stale`,
`refresh_mask`); writers tombstone them (lm.knn_index.prune / sync). Matched by chunk id AND text,
and by the collection's uid, so a re-used id or a re-created collection never inherits old text.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

PREFIX = "chunk:"  # a datastore document's source when it is a collection's chunk


def _text_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def owner_record(store: Any, collection: str, uid: str) -> dict:
    """What a collection's datastore records of its collection ("collection" in its manifest)."""
    return {"store": str(Path(store.path).resolve()), "name": collection, "uid": uid}


def _other_incarnation(ds: Any, uid: str) -> bool:
    """Built for a collection of the same name that was dropped since (or for another store)."""
    rec = ds.manifest.get("collection") or {}
    return bool(rec.get("uid")) and bool(uid) and rec["uid"] != uid


def _dead_docs(ds: Any) -> set[int]:
    import numpy as np

    if not len(ds.dead):
        return set()
    return set(np.unique(ds.provenance(ds.dead)[:, 0]).tolist())


def stale_docs(ds: Any, live: Any) -> list[int]:
    """Documents of the datastore whose chunk is not live with the same text: deleted, replaced
    (add_texts with the same id), re-chunked, or of a dropped incarnation of the collection.
    `live`: retrieval's LiveChunks. Compared by id AND text, so a re-used id never keeps old text."""
    dead = _dead_docs(ds)
    if _other_incarnation(ds, live.uid):
        return [d["doc"] for d in ds.docs() if d["doc"] not in dead]
    want = {cid: _text_hash(t) for cid, t in live.texts.items()}
    out = []
    for d in ds.docs():
        cid = d["source"][len(PREFIX):] if d["source"].startswith(PREFIX) else None
        if d["doc"] not in dead and (cid is None or want.get(cid) != _text_hash(d.get("text") or "")):
            out.append(d["doc"])
    return out


def mask_stale(ds: Any) -> int:
    """Mask (in memory, for this process's searches) the entries of chunks the datastore's collection
    no longer holds with the same text: a delete made through any interface, even one that did not
    update the datastore (the Python API, LangChain), never comes back from kNN search, `explain`,
    `perplexity` or citations. Returns the number of documents masked; 0 for other datastores."""
    rec = ds.manifest.get("collection") or {}
    legacy = ds.path.parent.name == ".knn" and (ds.path.parent.parent / "store.json").is_file()
    if not rec and not legacy:
        return 0
    store_path = Path(rec["store"]) if rec.get("store") else ds.path.parent.parent
    name = rec.get("name") or ds.path.name
    from retrieval.errors import KnnragError
    from retrieval.store.docstore import DocStore

    try:
        with DocStore.open(store_path, create=False, read_only=True) as store:
            live = store.live_chunks(name)
    except KnnragError:  # the collection (or its store) is gone: none of the datastore's chunks is live
        from retrieval.store.docstore import LiveChunks

        live = LiveChunks(uid="\0gone", generation=-1, texts={})
    import numpy as np

    gone = stale_docs(ds, live)
    ds.mask_docs(np.asarray(gone, dtype=np.int64))
    return len(gone)


def locate(ds: Any, neighbours: list[dict]) -> list[dict]:
    """Point each neighbour of a collection's datastore (`chunk:<id>`) at the file and line of its
    stored token: `source` becomes `path:line`, with `chunk` (the id) and `uri` added. Neighbours of
    other datastores, or of chunks gone since, are left as they are."""
    import numpy as np

    ids = sorted({n["source"][len(PREFIX):] for n in neighbours if str(n.get("source", "")).startswith(PREFIX)})
    rec = ds.manifest.get("collection") or {}
    if not ids or not (rec or ds.path.parent.name == ".knn"):
        return neighbours
    from retrieval.errors import KnnragError
    from retrieval.store.docstore import DocStore
    from retrieval.store.source_paths import shown

    try:
        with DocStore.open(Path(rec.get("store") or ds.path.parent.parent), create=False, read_only=True) as store:
            hits = {h.id: h for h in store.get(ids, collection=rec.get("name") or ds.path.name)}
    except KnnragError:
        return neighbours
    for n in neighbours:
        h = hits.get(str(n.get("source", ""))[len(PREFIX):])
        if h is None or not h.source:
            continue
        char = int(ds.provenance(np.asarray([n["entry"]]))[0][2]) if "entry" in n else 0
        line = (h.start_line or 1) + h.text[: max(char, 0)].count("\n")
        n.update(chunk=h.id, uri=h.uri, source=f"{shown(h.source)}:{line}")
    return neighbours


def _owner_stamp(ds: Any) -> tuple:
    """Changes whenever the datastore's manifest or its collection commits (a new gen-N folder)."""
    rec = ds.manifest.get("collection") or {}
    coll = (Path(rec["store"]) if rec.get("store") else ds.path.parent.parent) / (rec.get("name") or ds.path.name)
    try:
        gens = tuple(sorted(p.name for p in coll.iterdir() if p.name.startswith("gen-")))
    except OSError:
        gens = ()
    try:
        m = (ds.path / "manifest.json").stat().st_mtime_ns
    except OSError:
        m = 0
    return m, gens


def refresh_mask(ds: Any) -> bool:
    """Keep a long-lived reader's view current: re-read tombstones committed elsewhere and re-mask
    the chunks its collection deleted since. Costs two small stats when nothing changed."""
    stamp = _owner_stamp(ds)
    if getattr(ds, "_mask_stamp", None) == stamp:
        return False
    ds.refresh_tombstones()
    mask_stale(ds)
    ds._mask_stamp = stamp
    return True
