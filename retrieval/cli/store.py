"""`knnrag index | search | stats | delete | collections`: the document store on the command line.

Other packages extend `index` and `stats` through retrieval/cli/extend.py (lm adds `index --knn`
and the kNN half of `stats`), never by replacing these handlers.

Cheap to import: the store (faiss, numpy) loads inside the handlers, and a search never imports
torch (queries are embedded by the numpy BERT fast path).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from retrieval.cli import watch
from retrieval.cli.extend import accept_hooks, merged, run_hooks
from retrieval.cli.filters import WHERE_HELP, combine
from retrieval.errors import InvalidInputError, NotFoundError
from retrieval.store.source_paths import shown

if TYPE_CHECKING:
    from retrieval.store.docstore import DocStore
    from retrieval.store.search import SearchRequest
    from retrieval.types import Hit


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("index", help="index files and folders (incremental: only changed files are re-embedded)",
                       description="Index files and folders recursively into a store collection. Re-running re-embeds only "
                                   "changed files and removes the chunks of deleted ones.")
    p.add_argument("paths", nargs="+", metavar="PATH", help="files or folders (.gitignore files are honoured)")
    _store_args(p)
    p.add_argument("--exclude", action="append", default=[], metavar="GLOB", help="gitignore-style pattern to leave out (repeatable)")
    p.add_argument("--tag", action="append", default=[], metavar="TAG",
                   help="tag every chunk of these files (repeatable; filter with --filter tags=TAG)")
    p.add_argument("--embedder",
                   help="embedding model for a NEW collection: sentence-transformers id or path "
                        "(default: bundled all-MiniLM-L6-v2); must match for an existing one")
    p.add_argument("--index-factory", metavar="STR",
                   help="FAISS index_factory string, e.g. 'Flat', 'HNSW32,Flat', 'IVF1024,Flat' "
                        "(default: auto = Flat below 50k vectors, HNSW32 above)")
    p.add_argument("--force", action="store_true", help="re-chunk and re-embed every file, changed or not")
    p.add_argument("--near-dup", type=float, default=0.9, metavar="T", help="near-duplicate MinHash Jaccard threshold (default 0.9; 0 disables)")
    p.add_argument("--max-file-mb", type=float, default=20.0, help="skip files larger than this (default 20 MB)")
    p.add_argument("--ray", default=None, metavar="ADDRESS", help="embed on Ray actors: `local` or a cluster's HOST:PORT (needs knnrag[ray])")
    p.add_argument("--workers", type=int, default=1, help="with --ray: embedder actors (default 1)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    p.add_argument("--ocr", action="store_true", help="OCR PDF pages that have no text layer (scans) with tesseract (apt-get install tesseract-ocr)")
    p.add_argument("--ocr-lang", default="eng", metavar="LANG", help="tesseract language(s) for --ocr, e.g. eng+deu (default eng)")
    p.add_argument("--parse-timeout", type=float, metavar="S", help="skip a PDF/office file parsing longer (default 60 s; 600 s with --ocr)")
    p.add_argument("--parse-memory-mb", type=int, default=1024, metavar="MB", help="memory limit of the PDF/office parser process (default 1024)")
    p.set_defaults(func=cmd_index)
    accept_hooks(p)

    s = sub.add_parser("search", help="search a store (hybrid dense + BM25 by default)",
                       description="Search a collection. Give a QUERY, or --queries FILE for a batch (BEIR queries.jsonl "
                                   "or one query per line) that prints one JSON line per query.")
    s.add_argument("query", nargs="?", help="what to search for")
    _store_args(s)
    s.add_argument("-k", type=int, default=10, help="number of results (default 10, at most 10000)")
    s.add_argument("--mode", choices=("dense", "bm25", "hybrid"), default="hybrid",
                   help="dense: embedding cosine; bm25: keyword (Lucene BM25); hybrid: both fused (default)")
    s.add_argument("--filter", action="append", default=[], metavar="KEY=VALUE",
                   help="source=GLOB, kind=markdown, tags=T, doc_id=ID or any metadata key; repeatable (all must match)")
    s.add_argument("--where", metavar="JSON", help=WHERE_HELP)
    s.add_argument("--mmr", action="store_true", help="diversify results with maximal marginal relevance")
    s.add_argument("--mmr-lambda", type=float, default=0.5, help="MMR trade-off: 1 = relevance only, 0 = diversity only")
    s.add_argument("--min-score", type=float, help="drop hits scoring below this; scale of --mode: dense cosine in [-1, 1], bm25 raw BM25 (>= 0), "
                        "hybrid fused score in [0, 1] (1 = best candidate in both modes)")
    s.add_argument("--queries", metavar="FILE", help="batch: BEIR queries.jsonl ({_id, text}) or one query per line")
    s.add_argument("--embedder", help="embedding model (must be the one that built the collection; default: that one)")
    s.add_argument("--alpha", type=float, help="hybrid: dense weight in [0, 1] (default: the collection's fusion, see stats)")
    s.add_argument("--fusion", choices=("convex", "rrf"), help="hybrid: fusion method (default: the collection's fusion)")
    s.add_argument("--norm", choices=("tmm", "minmax", "zscore", "max", "none"),
                   help="hybrid: per-mode score normalisation before convex fusion (default: the collection's fusion)")
    s.add_argument("--doc-agg", choices=("max", "none"), help="one hit per doc_id (best chunk), or every chunk")
    s.set_defaults(func=cmd_search)

    st = sub.add_parser("stats", help="what a store holds: collections, chunks, sources, embedder, index type, size")
    _store_args(st, collection_default=None)
    st.set_defaults(func=cmd_stats)
    accept_hooks(st)

    cal = sub.add_parser("calibrate", help="tune a collection's hybrid fusion on pseudo-queries from its own text",
                         description="Make pseudo-queries from the collection (titles, headings, sentences with words held "
                                     "out), rank them with each candidate fusion, and keep the best in the collection's "
                                     "manifest if it beats the default. `stats` shows the fusion in force.")
    _store_args(cal)
    cal.add_argument("--queries-n", type=int, default=300, metavar="N", help="pseudo-queries to sample (default 300)")
    cal.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    cal.add_argument("--apply", action="store_true",
                     help="put the winner in force (off by default: on SciFact and CACM it lost to the default fusion)")
    cal.set_defaults(func=cmd_calibrate)

    d = sub.add_parser("delete", help="delete chunks by source path (file, folder or glob) or by chunk id")
    _store_args(d)
    d.add_argument("--source", nargs="+", default=[], metavar="PATH", help="source paths as indexed, folders or globs")
    d.add_argument("--id", nargs="+", default=[], metavar="ID", help="chunk ids (as printed by search)")
    d.set_defaults(func=cmd_delete)
    accept_hooks(d)

    c = sub.add_parser("collections", help="list the collections of a store")
    c.add_argument("--store", required=True, metavar="DIR", help="store directory")
    c.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    c.set_defaults(func=cmd_collections)
    watch.register(sub)


def _store_args(p: argparse.ArgumentParser, collection_default: str | None = "default") -> None:
    p.add_argument("--store", required=True, metavar="DIR", help="store directory (created by index when missing)")
    p.add_argument("--collection", default=collection_default, metavar="NAME",
                   help="collection inside the store" + (f" (default {collection_default})" if collection_default else " (default: all)"))
    p.add_argument("--json", action="store_true", help="print one JSON document on stdout (JSON lines for a batch) and nothing else")


def _emit(obj: object) -> None:
    from retrieval.cli.output import emit_json

    emit_json(obj)


def _open(args: argparse.Namespace, *, write: bool, embedder: object = None) -> DocStore:
    from retrieval.store.docstore import DocStore

    return DocStore.open(Path(args.store), embedder=embedder, create=write, read_only=not write)


# --------------------------------------------------------------------------- index
def cmd_index(args: argparse.Namespace) -> int:
    show = not args.json and not args.no_progress and sys.stderr.isatty()
    if args.max_file_mb <= 0:
        raise InvalidInputError(f"--max-file-mb must be positive, got {args.max_file_mb}", "use e.g. --max-file-mb 20")
    if not 0 <= args.near_dup <= 1:
        raise InvalidInputError(f"--near-dup must be in [0, 1], got {args.near_dup}", "0 disables, 0.9 is the default")
    embedder = args.embedder
    if args.ray:
        from retrieval.store.ray_embed import ray_embedder

        embedder = ray_embedder(args.store, args.collection, args.embedder, address=args.ray, workers=args.workers)
    from retrieval.ingest.documents.options import DocumentOptions

    documents = DocumentOptions(ocr=args.ocr, ocr_lang=args.ocr_lang, seconds=args.parse_timeout, memory_mb=args.parse_memory_mb)
    documents.check()
    with _open(args, write=True, embedder=embedder) as store:
        rep = store.index_paths(args.paths, collection=args.collection, exclude=args.exclude, tags=args.tag,
                                show_progress=show, index_factory=args.index_factory, force=args.force,
                                near_dup_threshold=args.near_dup or None, max_file_bytes=int(args.max_file_mb * 1e6),
                                documents=documents)
    d = rep.to_dict()
    refused = _explicit_skips(args.paths, d["skipped"])
    if not args.json:
        _print_index_report(args.collection, d)
    _finish(args, d)
    for s in refused:
        sys.stderr.write(f"error: {s['source']} was not indexed: {s['reason']}\n")
    return 1 if refused else 0


def _explicit_skips(paths: list[str], skipped: list[dict]) -> list[dict]:
    """The skipped files that were named on the command line: the user asked for exactly those, so
    the run fails (exit 1), while files skipped inside a walked folder are only reported."""
    named = {os.path.realpath(p) for p in paths if os.path.isfile(p)}
    return [s for s in skipped if os.path.realpath(str(s["source"])) in named]


def _print_index_report(collection: str, d: dict) -> None:
    out = sys.stdout
    out.write(f"{collection}: {d['files_seen']} files seen, {d['added']} added, {d['updated']} updated, "
              f"{d['removed']} removed, {d['unchanged']} unchanged; {d['chunks_added']} chunks added, "
              f"{d['chunks_removed']} removed in {d['seconds']:.1f}s\n")
    dropped = {k: v for k, v in d["dropped"].items() if v}
    if dropped:
        out.write("dropped chunks: " + ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in dropped.items()) + "\n")
    for s in d["skipped"]:
        out.write(f"skipped {s['source']}: {s['reason']}\n")
    for c in d.get("converted", []):
        facts = ", ".join(f"{k.replace('_', ' ')} {len(v) if isinstance(v, list) else v}" for k, v in c.items()
                          if k not in ("source", "kind") and v)
        out.write(f"converted {c['source']}" + (f": {facts}" if facts else "") + "\n")
    for e in d["emptied"]:
        what = e["source"] + (f" record {e['doc_id']}" if e.get("doc_id") is not None else "")
        out.write(f"not searchable, every chunk dropped: {what} ({e['reason']})\n")


def _finish(args: argparse.Namespace, obj: dict) -> None:
    """Run the command's hooks (retrieval/cli/extend.py) once its store is closed: with --json print
    its one JSON object with their contributions, else their lines after its own text."""
    extra = run_hooks(args)
    if args.json:
        _emit(merged(obj, extra))
        return
    for c in extra:
        sys.stdout.write("".join(line + "\n" for line in c.lines))


# --------------------------------------------------------------------------- search
def _filters(items: list[str], where: str | None = None) -> dict | None:
    return combine(items, where)


def _read_queries(path: str) -> list[tuple[str, str]]:
    p = Path(path)
    if not p.is_file():
        raise InvalidInputError(f"queries file not found: {path}", "pass a BEIR queries.jsonl or a text file with one query per line")
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise InvalidInputError(f"cannot read queries file {path}: {e}", "it must be UTF-8 text") from e
    out = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        if line.lstrip().startswith("{"):
            try:
                rec = json.loads(line)
                qid, text = str(rec.get("_id", rec.get("id", n))), rec.get("text", rec.get("query", ""))
            except (ValueError, AttributeError) as e:
                raise InvalidInputError(f"{path}:{n}: not a JSON object: {e}",
                                        'BEIR queries.jsonl lines look like {"_id": "1", "text": "..."}') from e
            if not isinstance(text, str) or not text.strip():
                raise InvalidInputError(f"{path}:{n}: query {qid!r} has no text", "every query needs a non-empty 'text'")
            out.append((qid, text))
        else:
            out.append((str(n), line.strip()))
    if not out:
        raise InvalidInputError(f"no queries in {path}", "one query per line, or BEIR queries.jsonl")
    return out


def _request(args: argparse.Namespace, store: DocStore) -> SearchRequest:
    """The CLI's search settings as one SearchRequest; fusion flags override the collection's fusion."""
    from retrieval.store.search import SearchRequest

    if args.min_score is not None and not math.isfinite(args.min_score):
        raise InvalidInputError(f"--min-score must be a finite number, got {args.min_score}",
                                "dense: a cosine in [-1, 1]; bm25: a BM25 score >= 0; hybrid: a fused score in [0, 1]")
    req = SearchRequest(k=args.k, mode=args.mode, filters=_filters(args.filter, args.where), collection=args.collection, mmr=args.mmr,
                        mmr_lambda=args.mmr_lambda, min_score=args.min_score)
    over = {k: v for k, v in (("alpha", args.alpha), ("method", args.fusion), ("norm", args.norm), ("doc_agg", args.doc_agg))
            if v is not None}
    if over:
        req = req.with_(fusion=store.fusion_for(store.collection(args.collection)).with_(**over))
    return req


def cmd_search(args: argparse.Namespace) -> int:
    if (args.query is not None) == bool(args.queries):
        raise InvalidInputError("give either a QUERY or --queries FILE", "e.g. knnrag search 'install' --store DIR")
    with _open(args, write=False, embedder=args.embedder) as store:
        req = _request(args, store)
        if args.queries:
            queries = _read_queries(args.queries)
            batch = 256
            for i in range(0, len(queries), batch):
                part = queries[i : i + batch]
                results = store.search_batch([q for _, q in part], req)
                for (qid, q), hits in zip(part, results):
                    rec = {"query_id": qid, "hits": [h.to_dict() for h in hits]}
                    if args.json:
                        _emit(rec)
                    else:
                        sys.stdout.write(f"== {qid}: {q}\n")
                        _print_hits(hits)
            return 0
        hits = store.search(args.query, req)
        if args.json:
            _emit({"query": args.query, "collection": args.collection, "mode": args.mode, "k": args.k, "hits": [h.to_dict() for h in hits]})
        else:
            if not hits:
                sys.stdout.write("no results\n")
            _print_hits(hits)
    return 0


def _print_hits(hits: list[Hit]) -> None:
    from retrieval.ingest.documents.units import where as place

    for n, h in enumerate(hits, 1):
        where = place(shown(h.source), h.metadata, h.start_line, h.end_line)
        extra = " ".join(f"{m}={v:.3f}" for m, v in h.scores.items())
        sys.stdout.write(f"{n}. [{h.score:.3f}] {where}" + (f"  ({h.heading})" if h.heading else "")
                         + (f"  doc_id={h.doc_id}" if h.doc_id else "") + f"  id={h.id}  {extra}\n")
        snippet = " ".join(h.text.split())
        sys.stdout.write("   " + (snippet[:300] + ("..." if len(snippet) > 300 else "")) + "\n")


# --------------------------------------------------------------------------- stats / delete / collections
def cmd_stats(args: argparse.Namespace) -> int:
    with _open(args, write=False) as store:
        st = store.stats(args.collection)
    if not args.json:
        _print_stats(args.store, [st] if args.collection else st["collections"])
    _finish(args, st)
    return 0


def _print_stats(store: str, cols: list[dict]) -> None:
    if not cols:
        sys.stdout.write(f"{store}: no collections yet\n")
    for c in cols:
        sys.stdout.write(
            f"{c['name']}: {c['chunks']} chunks from {c['sources']} sources, embedder {c['embedder']} (dim {c['dim']}), "
            f"index {c['index_type']} ({c['vectors']} vectors), {c['bm25_terms']} BM25 terms, "
            f"generation {c['generation']}, {c['disk_bytes'] / 1e6:.1f} MB\n")
        f = c.get("fusion")
        if f:
            how = f"rrf k={f['rrf_k']}" if f["method"] == "rrf" else f"convex {f['norm']} alpha={f['alpha']}"
            sys.stdout.write(f"  hybrid fusion: {how} ({f['source']})\n")


def cmd_calibrate(args: argparse.Namespace) -> int:
    from retrieval.store.calibrate import CalibrationConfig
    from retrieval.store.docstore import DocStore

    with DocStore.open(Path(args.store), create=False) as store:
        entry = store.calibrate_fusion(args.collection, CalibrationConfig(n_queries=args.queries_n, seed=args.seed,
                                                                                apply=args.apply))
        if args.json:
            _emit(entry)
        else:
            b = entry["best"]
            sys.stdout.write(f"{args.collection}: {entry['pseudo_queries']} pseudo-queries {entry['kinds']}; best "
                             f"{b['method']} {b['norm']} alpha={b['alpha']} MRR@10 {entry['pseudo_mrr10']:.4f} vs default "
                             f"{entry['default_mrr10']:.4f}: {'applied' if entry['applied'] else 'recorded, default fusion kept'}\n")
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    if not args.source and not args.id:
        raise InvalidInputError("nothing to delete", "pass --source PATH... or --id ID...")
    from retrieval.store.docstore import DocStore

    with DocStore.open(Path(args.store), create=False) as store:
        res = store.delete(sources=args.source, ids=args.id, collection=args.collection)
        if res["removed_chunks"] == 0 and res["removed_sources"] == 0:
            what = ", ".join(args.source + args.id)
            raise NotFoundError(f"nothing matched {what} in collection {args.collection!r}",
                                "source paths are as indexed (see `knnrag search ... --json`); ids as printed by search")
    if not args.json:
        sys.stdout.write(f"removed {res['removed_chunks']} chunks ({res['removed_sources']} sources)\n")
    _finish(args, res)  # hooks: lm tombstones the collection's kNN datastore in the same command
    return 0


def cmd_collections(args: argparse.Namespace) -> int:
    with _open(args, write=False) as store:
        cols = store.list_collections()
        if args.json:
            _emit({"store": str(args.store), "collections": cols})
        else:
            for c in cols:
                sys.stdout.write(f"{c['name']}\t{c['chunks']} chunks\t{c['sources']} sources\t{c['embedder']}\t{c['index_type']}\n")
            if not cols:
                sys.stdout.write("no collections\n")
    return 0
