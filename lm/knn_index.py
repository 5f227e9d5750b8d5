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
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from retrieval.cli.extend import Contribution, add_hook

if TYPE_CHECKING:
    from retrieval.store.docstore import DocStore

PREFIX = "chunk:"


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
    stats = sub.choices.get("stats")
    if stats is not None:
        add_hook(stats, _stats)


def chunk_texts(store: DocStore, collection: str) -> dict[str, str]:
    """chunk id -> chunk text of every live chunk of the collection."""
    return store.chunk_texts(collection).texts


def sync(store: Any, collection: str, lm: Any, out: Path, lm_spec: str | None = None) -> dict:
    """Append the entries of chunks the datastore lacks; tombstone those of chunks that are gone."""
    import numpy as np

    from lm.datastore.build import BuildConfig, build_datastore
    from lm.datastore.token_store import TokenStore
    from retrieval.errors import InvalidInputError

    live = chunk_texts(store, collection)
    have: dict[str, int] = {}
    ds = TokenStore.open(out) if (out / "manifest.json").is_file() else None
    if ds is not None:
        dead_docs = set()
        if len(ds.dead):
            dead_docs = set(np.unique(ds.provenance(ds.dead)[:, 0]).tolist())
        have = {d["source"][len(PREFIX):]: d["doc"] for d in ds.docs() if d["doc"] not in dead_docs}
    gone_ids = {cid for cid in have if cid not in live}
    new = {cid: t for cid, t in live.items() if cid not in have and t.strip()}
    # a re-indexed file's unchanged chunks come back under new ids: keep their entries, renamed
    # (the build would drop them as exact duplicates of the old documents anyway)
    by_text = {d["text"]: d["source"] for d in (ds.docs() if ds is not None else []) if d["source"][len(PREFIX):] in gone_ids}
    renames = {}
    for cid, t in list(new.items()):
        if t in by_text:
            old = by_text.pop(t)
            renames[old] = PREFIX + cid
            gone_ids.discard(old[len(PREFIX):])
            del new[cid]
    gone = [have[cid] for cid in gone_ids]
    report = {"datastore": str(out), "chunks_added": 0, "chunks_kept": len(renames), "chunks_tombstoned": 0,
              "entries_added": 0, "entries_tombstoned": 0}
    if renames:
        _rename_sources(ds, renames)
    if ds is not None and gone:
        report["entries_tombstoned"] = ds.tombstone_docs(np.asarray(gone, dtype=np.int64))
        report["chunks_tombstoned"] = len(gone)
    if new:
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
            _rename_sources(TokenStore.open(out), {str(f): PREFIX + cid for f, cid in files})
        if rep is not None:
            report["chunks_added"] = rep.documents
            report["entries_added"] = rep.entries_added
    return report


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
