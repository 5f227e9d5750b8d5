"""`knnrag verify`: check a document store's artefacts against the checksums recorded at commit.

Exit 0 when every collection is intact, 2 when anything is damaged (the report names each file).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

DAMAGED = 2


def register(sub: argparse._SubParsersAction) -> None:
    v = sub.add_parser(
        "verify", help="check a store: SQLite integrity, rows vs FAISS vs BM25, and every file's sha256 (exit 2 on damage)",
        description="Read every artefact of the committed generation of each collection and compare it with the size "
                    "and sha256 recorded when it was written; also run SQLite's quick_check and compare the rows with "
                    "the FAISS and BM25 indexes. Nothing is written. Exit status 2 means damage was found.")
    v.add_argument("--store", required=True, metavar="DIR", help="store directory")
    v.add_argument("--collection", default=None, metavar="NAME", help="one collection (default: all)")
    v.add_argument("--json", action="store_true", help="print one JSON report on stdout")
    v.set_defaults(func=cmd_verify)


def verify_store(path: str | os.PathLike, collection: str | None = None) -> dict:
    """`knnrag verify`: every collection of a store (or one), read-only. Damage is reported, not raised."""
    from retrieval.errors import CorruptStoreError, KnnragError
    from retrieval.store.docstore import DocStore
    from retrieval.store.verify import check_collection

    store = DocStore.open(path, read_only=True, create=False)
    try:
        root = Path(path)
        names = [collection] if collection else sorted(d.name for d in root.iterdir() if (d / "manifest.json").is_file())
        reports = []
        for name in names:
            try:
                reports.append(check_collection(store.collection(name)))
            except CorruptStoreError as e:
                reports.append({"collection": name, "generation": None, "chunks": None, "checksums": "not checked",
                                "problems": [e.message], "ok": False})
            except KnnragError:
                raise  # not found, mismatch: the user's mistake, not damage
        return {"store": str(path), "collections": reports, "ok": all(r["ok"] for r in reports)}
    finally:
        store.close()


def cmd_verify(args) -> int:
    from retrieval.cli.output import emit_json

    report = verify_store(args.store, args.collection)
    if args.json:
        emit_json(report)
    else:
        for c in report["collections"]:
            state = "ok" if c["ok"] else "DAMAGED"
            sys.stdout.write(f"{c['collection']}: {state}; generation {c['generation']}, {c['chunks']} chunks, checksums {c['checksums']}\n")
            for p in c["problems"]:
                sys.stdout.write(f"  problem: {p}\n")
        if not report["collections"]:
            sys.stdout.write("the store has no collections\n")
        if not report["ok"]:
            sys.stderr.write("error: the store is damaged\nhint: restore it from a backup, or delete the damaged collection and re-index\n")
    return 0 if report["ok"] else DAMAGED
