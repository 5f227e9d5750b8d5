"""`knnrag watch` (a collection that follows its files) and `knnrag sources` (what a collection holds).

Cheap to import: watchfiles and the store load inside the handlers.
"""
from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path

from retrieval.errors import InvalidInputError


def register(sub: argparse._SubParsersAction) -> None:
    w = sub.add_parser("watch", help="keep a collection in step with files and folders as they change",
                       description="Index PATHs, then follow them: each burst of changes (one save, or a `git checkout` "
                                   "of many files) is re-indexed as one incremental batch; a deleted file leaves the "
                                   "collection. Same ignore rules as `index`. Ctrl-C or SIGTERM stops it (a batch it "
                                   "interrupts is left uncommitted). Logs go to stderr.")
    w.add_argument("paths", nargs="+", metavar="PATH", help="files or folders (.gitignore files are honoured)")
    w.add_argument("--store", required=True, metavar="DIR", help="store directory (created when missing)")
    w.add_argument("--collection", default="default", metavar="NAME", help="collection (default `default`)")
    w.add_argument("--exclude", action="append", default=[], metavar="GLOB", help="gitignore-style pattern to leave out (repeatable)")
    w.add_argument("--tag", action="append", default=[], metavar="TAG", help="tag every chunk of these files (repeatable)")
    w.add_argument("--embedder", help="embedding model for a NEW collection (default: bundled all-MiniLM-L6-v2)")
    w.add_argument("--debounce-ms", type=int, default=None, metavar="MS",
                   help="a burst of changes ends after this long without a new one (default 100)")
    w.add_argument("--max-batch-ms", type=int, default=None, metavar="MS",
                   help="a burst still going after this is indexed anyway (default 10000)")
    w.add_argument("--max-file-mb", type=float, default=20.0, help="skip files larger than this (default 20 MB)")
    w.add_argument("--poll", action="store_true", help="poll the files instead of OS events (network file systems)")
    w.add_argument("--no-catch-up", action="store_true", help="do not index the paths whole at start, only what changes")
    w.add_argument("--json", action="store_true", help="one JSON object per batch on stdout")
    w.set_defaults(func=cmd_watch)

    s = sub.add_parser("sources", help="list the files a collection holds: chunks, kind, pages, when indexed",
                       description="List the indexed sources of a collection by path, a page at a time.")
    s.add_argument("--store", required=True, metavar="DIR", help="store directory")
    s.add_argument("--collection", default="default", metavar="NAME", help="collection (default `default`)")
    s.add_argument("--source", metavar="GLOB", help="only paths matching this glob or folder, e.g. 'docs/*.md'")
    s.add_argument("--limit", type=int, default=100, help="sources per page (default 100, at most 1000)")
    s.add_argument("--offset", type=int, default=0, help="skip this many sources (the next_offset of the previous page)")
    s.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    s.set_defaults(func=cmd_sources)


def _stopper(stop: threading.Event) -> None:
    """Ctrl-C / SIGTERM end the loop at the running batch's next file; a second one raises at once
    (the store keeps its last committed generation either way)."""
    def handle(signum: int, _frame: object) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        sys.stderr.write(f"watch: {signal.Signals(signum).name}: stopping (a running batch is left uncommitted "
                         "and the next start catches up)\n")

    signal.signal(signal.SIGINT, handle)
    signal.signal(signal.SIGTERM, handle)


def cmd_watch(args: argparse.Namespace) -> int:
    from retrieval.cli.output import emit_json
    from retrieval.store.docstore import DocStore
    from retrieval.store.watch import MAX_BATCH_MS, STEP_MS, BatchReport, Follower, WatchConfig

    if args.max_file_mb <= 0:
        raise InvalidInputError(f"--max-file-mb must be positive, got {args.max_file_mb}", "use e.g. --max-file-mb 20")
    cfg = WatchConfig(collection=args.collection, exclude=tuple(args.exclude), tags=tuple(args.tag),
                      step_ms=STEP_MS if args.debounce_ms is None else args.debounce_ms,
                      max_batch_ms=MAX_BATCH_MS if args.max_batch_ms is None else args.max_batch_ms,
                      max_file_bytes=int(args.max_file_mb * 1e6), force_polling=args.poll)

    def report(b: BatchReport) -> None:
        if args.json:
            emit_json(b.to_dict())
            return
        sys.stderr.write(b.line() + "\n")
        for s in (b.report or {}).get("skipped", [])[:20]:
            sys.stderr.write(f"  skipped {s['source']}: {s['reason']}\n")
        sys.stderr.flush()

    stop = threading.Event()
    with DocStore.open(Path(args.store), embedder=args.embedder, create=True) as store:
        follower = Follower(store, args.paths, cfg)
        if (Path(args.store) / args.collection / "manifest.json").exists():
            store.embedder_for(store.collection(args.collection))  # another model than the collection's: refused now
        _stopper(stop)
        sys.stderr.write(f"watch: following {', '.join(args.paths)} into {args.store} collection {args.collection!r} "
                         "(Ctrl-C to stop)\n")
        follower.run(stop, on_batch=report, catch_up=not args.no_catch_up)
    sys.stderr.write("watch: stopped\n")
    return 0


def cmd_sources(args: argparse.Namespace) -> int:
    from retrieval.cli.output import emit_json
    from retrieval.store.docstore import DocStore

    with DocStore.open(Path(args.store), create=False, read_only=True) as store:
        page = store.list_sources(args.collection, limit=args.limit, offset=args.offset, source=args.source)
    if args.json:
        emit_json(page)
        return 0
    out = sys.stdout
    rows = page["sources"]
    if not rows:
        out.write("no sources" + (" on this page" if page["total"] else "") + "\n")
    from retrieval.store.source_paths import shown

    for r in rows:
        pages = "-" if r["pages"] is None else str(r["pages"])
        out.write(f"{r['chunks']:>6} chunks  {str(r['kind'] or '-'):<9} {pages:>5} pages  {r['indexed_at'] or '-':<20}  "
                  f"{shown(r['source'])}\n")
    if rows:
        end = page["offset"] + len(rows)
        nxt = f"; next page: --offset {page['next_offset']}" if page["next_offset"] is not None else ""
        out.write(f"sources {page['offset'] + 1}-{end} of {page['total']}{nxt}\n")
    return 0
