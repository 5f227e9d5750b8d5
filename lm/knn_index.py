"""`knnrag index PATHS --store S --knn`: the collection's kNN-LM token datastore, from the same chunks.

Plugin-style, so retrieval never imports lm: this registrar (called from lm.cli.register, after
the store commands are registered) adds `--knn` / `--knn-model` to the existing `index`
sub-parser and hooks into `index` and `stats` through retrieval's extension point
(retrieval/cli/extend.py): after the store's own work, each adds its kNN half to the output.

The datastore lives at STORE/.knn/<collection>/ (a dot folder, so the store never lists it as a
collection). Each chunk is one datastore document whose source is `chunk:<chunk id>`, so every
neighbour's provenance resolves through the collection to a file, line range and characters.
After each `index`, chunks that are new get their entries appended, and chunks that are gone
(deleted files, the old chunks of changed files) are tombstoned: masked inside the kNN search.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from retrieval.cli.extend import Contribution, add_hook

if TYPE_CHECKING:
    from retrieval.store.docstore import DocStore

from lm.datastore.live import PREFIX, _dead_docs, _other_incarnation, owner_record, stale_docs


def datastore_dir(store: str | Path, collection: str) -> Path:
    return Path(store).expanduser() / ".knn" / collection


def register(sub: argparse._SubParsersAction) -> None:
    index = sub.choices.get("index")
    if index is not None:
        index.add_argument("--knn", action="store_true",
                           help="also build/update the collection's kNN-LM token datastore from the same chunks (STORE/.knn/COLLECTION)")
        index.add_argument("--knn-model", default=None, metavar="MODEL",
                           help="LM for --knn (default: the datastore's own, else bundled SmolLM2)")
        add_hook(index, _after_index)
    delete = sub.choices.get("delete")
    if delete is not None:
        add_hook(delete, _after_delete)
    stats = sub.choices.get("stats")
    if stats is not None:
        add_hook(stats, _stats)


def chunk_texts(store: DocStore, collection: str) -> dict[str, str]:
    """chunk id -> chunk text of every live chunk of the collection."""
    return store.live_chunks(collection).texts


def prune(store: Any, collection: str, out: Path | None = None) -> dict:
    """Tombstone the entries of every chunk that is gone or changed; no LM needed. The write half of
    `delete` and `add_texts` for a collection with a datastore (additions wait for `index --knn`)."""
    import numpy as np

    from lm.datastore.token_store import TokenStore
    from retrieval.store.durable import WriterLock

    out = out or datastore_dir(store.path, collection)
    if not (out / "manifest.json").is_file():
        return {"datastore": None, "entries_tombstoned": 0, "chunks_tombstoned": 0}
    with WriterLock(out.parent.parent):
        ds = TokenStore.open(out)
        gone = stale_docs(ds, store.live_chunks(collection))
        n = ds.tombstone_docs(np.asarray(gone, dtype=np.int64)) if gone else 0
    return {"datastore": str(out), "entries_tombstoned": n, "chunks_tombstoned": len(gone)}


def collection_datastore(store: str | Path, collection: str) -> Path:
    """The datastore a collection keeps (`index --knn`), or a clear error naming the command that builds it."""
    from retrieval.errors import NotFoundError

    out = datastore_dir(store, collection)
    if not (out / "manifest.json").is_file():
        raise NotFoundError(f"collection {collection!r} of the store {store} has no kNN-LM datastore",
                            f"build it with `knnrag index PATH --store {store} --collection {collection} --knn`")
    return out


def sync(store: Any, collection: str, lm: Any, out: Path, lm_spec: str | None = None) -> dict:
    """Append the entries of chunks the datastore lacks; tombstone those of chunks that are gone."""
    from retrieval.store.durable import WriterLock

    with WriterLock(out.parent.parent):
        return _sync(store, collection, lm, out, lm_spec)


def _sync(store: Any, collection: str, lm: Any, out: Path, lm_spec: str | None) -> dict:
    import numpy as np

    from lm.datastore.token_store import TokenStore

    live = store.live_chunks(collection)
    ds = TokenStore.open(out) if (out / "manifest.json").is_file() else None
    report = {"datastore": str(out), "chunks_added": 0, "chunks_kept": 0, "chunks_tombstoned": 0,
              "entries_added": 0, "entries_tombstoned": 0, "rebuilt": False}
    if ds is not None and _other_incarnation(ds, live.uid):
        _discard(out)  # a dropped collection's datastore: none of it belongs to this one
        ds, report["rebuilt"] = None, True
    gone = set(stale_docs(ds, live)) if ds is not None else set()
    dead = _dead_docs(ds) if ds is not None else set()
    docs = ds.docs() if ds is not None else []
    kept = {d["source"][len(PREFIX):] for d in docs if d["doc"] not in dead and d["doc"] not in gone}
    new = {cid: t for cid, t in live.texts.items() if cid not in kept and t.strip()}
    # a re-indexed file's unchanged chunks come back under new ids: keep their entries, renamed
    # (the build would drop them as exact duplicates of the old documents anyway)
    by_text = {d.get("text"): d for d in docs if d["doc"] in gone}
    renames = {}
    for cid, t in list(new.items()):
        d = by_text.pop(t, None)
        if d is not None:
            renames[d["source"]] = PREFIX + cid
            gone.discard(d["doc"])
            del new[cid]
    report["chunks_kept"] = len(renames)
    if renames:
        _rename_sources(ds, renames)
    if ds is not None and gone:
        report["entries_tombstoned"] = ds.tombstone_docs(np.asarray(sorted(gone), dtype=np.int64))
        report["chunks_tombstoned"] = len(gone)
    if new:
        _append(lm, out, new, report, lm_spec)
    if (out / "manifest.json").is_file():
        ds = TokenStore.open(out)
        owner = owner_record(store, collection, live.uid)
        if ds.manifest.get("collection") != owner:
            ds.commit(fields={"collection": owner})
    return report


def _discard(out: Path) -> None:
    import shutil
    import uuid

    trash = out.parent / f".discard-{out.name}-{uuid.uuid4().hex[:8]}"
    os.rename(out, trash)
    shutil.rmtree(trash, ignore_errors=True)


def _append(lm: Any, out: Path, new: dict[str, str], report: dict, lm_spec: str | None) -> None:
    from lm.datastore.build import BuildConfig, build_datastore
    from lm.datastore.token_store import TokenStore
    from retrieval.errors import InvalidInputError

    with tempfile.TemporaryDirectory(prefix="knnrag-chunks-") as tmp:
        files = []
        for i, (cid, text) in enumerate(sorted(new.items())):
            f = Path(tmp) / f"{i:08d}.txt"
            f.write_text(text, encoding="utf-8")
            files.append((f, cid))
        try:
            rep = build_datastore(lm, [str(f) for f, _ in files], out, BuildConfig(), progress=False, lm_spec=lm_spec)
        except InvalidInputError:  # every new chunk repeats stored text (exact duplicates): nothing to add
            rep = None
        if (out / "manifest.json").is_file():
            _rename_sources(TokenStore.open(out), {str(f): PREFIX + cid for f, cid in files})
    if rep is not None:
        report["chunks_added"] = rep.documents
        report["entries_added"] = rep.entries_added


def _rename_sources(ds: Any, names: dict[str, str]) -> None:
    """Rewrite documents' sources (temporary file -> `chunk:<id>`, old chunk id -> new) and commit."""
    from retrieval.store.durable import write_bytes_synced

    for i, d in enumerate(ds.manifest["docs"]):
        f = ds.path / d["file"]
        recs = [json.loads(line) for line in f.read_text(encoding="utf-8").splitlines() if line]
        if not any(r["source"] in names for r in recs):
            continue
        for r in recs:
            r["source"] = names.get(r["source"], r["source"])
        data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in recs).encode("utf-8")
        name = ds._name("docs", "jsonl").replace(".jsonl", f"-r{i}.jsonl")
        write_bytes_synced(ds.path / name, data)
        d["file"], d["bytes"] = name, len(data)
    ds.commit()


def _after_index(args: argparse.Namespace) -> Contribution | None:
    """`index --knn`: sync the collection's datastore with the chunks the store now holds."""
    if not getattr(args, "knn", False):
        return None
    from lm.datastore.token_store import TokenStore
    from lm.models import load_lm
    from retrieval.store.docstore import DocStore

    out = datastore_dir(args.store, args.collection)
    spec = args.knn_model
    if spec is None and (out / "manifest.json").is_file():
        spec = TokenStore.open(out).manifest.get("lm_spec")
    with DocStore.open(Path(args.store), create=False, read_only=True) as store:
        rep = sync(store, args.collection, load_lm(spec), out, lm_spec=spec)
    return Contribution("knn", rep, [f"knn datastore {out}: +{rep['entries_added']} entries from {rep['chunks_added']} chunks, "
                                     f"{rep['entries_tombstoned']} entries of {rep['chunks_tombstoned']} removed chunks masked"])


def _after_delete(args: argparse.Namespace) -> Contribution | None:
    """`delete` on a collection with a kNN datastore: its entries are tombstoned in the same command."""
    out = datastore_dir(args.store, args.collection)
    if not (out / "manifest.json").is_file():
        return None
    from retrieval.store.docstore import DocStore

    with DocStore.open(Path(args.store), create=False, read_only=True) as store:
        rep = prune(store, args.collection, out)
    return Contribution("knn", rep, [f"knn datastore {out}: {rep['entries_tombstoned']} entries of "
                                     f"{rep['chunks_tombstoned']} removed chunks masked"])


def knn_stats(store: str | Path, collection: str) -> dict | None:
    from lm.datastore.token_store import TokenStore

    out = datastore_dir(store, collection)
    if not (out / "manifest.json").is_file():
        return None
    ds = TokenStore.open(out)
    return {"path": str(out), "entries": ds.count, "live_entries": ds.count - len(ds.dead), "tombstoned": len(ds.dead),
            "chunks": ds.manifest.get("doc_count", 0), "lm_id": ds.manifest["lm_id"]}


def _stats(args: argparse.Namespace) -> Contribution:
    """`stats`: the kNN-LM datastore of the collection (of each collection that has one)."""
    cols = [args.collection] if args.collection else sorted(p.name for p in (Path(args.store) / ".knn").glob("*") if p.is_dir())
    knn = {c: s for c in cols if (s := knn_stats(args.store, c)) is not None}
    return Contribution("knn", knn, [f"{c} (kNN-LM): {s['live_entries']} live entries of {s['entries']} ({s['tombstoned']} "
                                     f"tombstoned) from {s['chunks']} chunks, LM {s['lm_id']}" for c, s in knn.items()])
