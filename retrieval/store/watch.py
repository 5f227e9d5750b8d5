"""Collections that follow their files: file-system events become one incremental index call per burst.

watchfiles (Rust `notify`: inotify, FSEvents, ReadDirectoryChangesW) reports changed paths; a burst
ends after `step_ms` without a new event (or `max_batch_ms` after it began), so one save is one
batch and a `git checkout` of 1,000 files is one batch too: one `DocStore.index_paths` call, one
generation. That call re-embeds only files whose content changed, and paths that no longer exist
leave the collection (`missing_ok`). Files are judged by the same ignore rules as `index ROOT`
(retrieval/ingest/ignored.py); a changed .gitignore or a new folder re-walks the root instead.
A write refused because another writer holds the store is kept and retried.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any, NamedTuple

from retrieval.errors import InvalidInputError, KnnragError, StoreWriteError
from retrieval.ingest.ignored import IGNORE_FILES, IgnoreRules

log = logging.getLogger("knnrag.watch")

# A burst ends after this long without a new event. One editor save is 1-3 events within a few ms;
# 1,000 files written by one process arrived with gaps well under 10 ms (0.24 s for all of them on
# this 2-core box), so 100 ms splits neither, and leaves most of the 2 s budget to indexing.
STEP_MS = 100
MAX_BATCH_MS = 10_000  # a burst still growing after this is indexed anyway (the rest is the next batch)
RETRY_S = 1.0  # the store was busy (another writer): try the kept batch again after this


@dataclass(frozen=True)
class WatchConfig:
    """How a watcher batches and indexes (validated once)."""

    collection: str = "default"
    exclude: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    step_ms: int = STEP_MS
    max_batch_ms: int = MAX_BATCH_MS
    max_file_bytes: int = 20_000_000
    confine_to: tuple[str, ...] | None = None  # the MCP server's allowed roots
    force_polling: bool = False  # poll instead of OS events (network file systems, some containers)

    def __post_init__(self) -> None:
        if not (isinstance(self.step_ms, int) and 1 <= self.step_ms <= 60_000):
            raise InvalidInputError(f"debounce must be 1-60000 ms, got {self.step_ms!r}", "e.g. --debounce-ms 100")
        if not (isinstance(self.max_batch_ms, int) and self.max_batch_ms >= self.step_ms):
            raise InvalidInputError(f"max batch time {self.max_batch_ms!r} ms is below the debounce {self.step_ms} ms",
                                    "raise --max-batch-ms")
        object.__setattr__(self, "exclude", tuple(self.exclude))
        object.__setattr__(self, "tags", tuple(self.tags))


class Batch(NamedTuple):
    paths: list[str]  # sources to (re)index, or to drop when they no longer exist
    resync: list[str]  # roots to walk whole
    ignored: int  # changed files the ignore rules leave out


class BatchReport(NamedTuple):
    """What one batch did: `report` is the IndexReport's dict (None when nothing was indexed)."""

    paths: int
    resync: list[str]
    ignored: int
    report: dict | None
    error: str | None
    seconds: float

    def line(self) -> str:
        if self.error:
            return f"watch: batch of {self.paths} files failed: {self.error}"
        r = self.report or {}
        what = f"re-walked {', '.join(self.resync)}" + (f" and {self.paths} changed paths" if self.paths else "") \
            if self.resync else f"{self.paths} changed paths"
        return (f"watch: {what}: {r.get('added', 0)} added, {r.get('updated', 0)} updated, "
                f"{r.get('removed', 0)} removed, {r.get('unchanged', 0)} unchanged, {len(r.get('skipped', []))} skipped, "
                f"{self.ignored} ignored; {r.get('chunks_added', 0)} chunks added, {r.get('chunks_removed', 0)} removed "
                f"in {self.seconds:.2f}s")

    def to_dict(self) -> dict:
        return {"paths": self.paths, "resync": self.resync, "ignored": self.ignored, "report": self.report,
                "error": self.error, "seconds": round(self.seconds, 3)}


Guard = Callable[[str], AbstractContextManager]


class WatchStopped(KnnragError):
    """Raised from the index run's progress callback once the watcher is told to stop: the batch
    is left uncommitted (the next start's catch-up indexes it)."""


class Follower:
    """Keeps one collection in step with some folders and files. Thread-safe: events may be added
    while a batch is being indexed (they wait for the next one)."""

    def __init__(self, store: Any, roots: Sequence[str], config: WatchConfig | None = None, *, guard: Guard | None = None) -> None:
        self.store = store
        self.config = config or WatchConfig()
        if isinstance(roots, (str, os.PathLike)) or not roots:
            raise InvalidInputError("nothing to watch", "give one or more folders or files, e.g. `knnrag watch docs/`")
        missing = [os.fspath(r) for r in roots if not os.path.exists(os.fspath(r))]
        if missing:
            raise InvalidInputError(f"path not found: {missing[0]!r}", f"check the spelling; relative paths start at {os.getcwd()}")
        self.roots = [os.fspath(r) for r in roots]
        self.rules = [IgnoreRules(r, self.config.exclude) for r in self.roots]
        self.guard = guard or (lambda _what: nullcontext())
        self._lock = threading.Lock()
        self._pending: set[str] = set()  # absolute paths that changed
        self._resync: set[int] = set()  # roots (by index) to walk whole
        self.stop = threading.Event()  # set: the running batch is abandoned at its next file

    def _progress(self, _done: int, _total: int, _stage: str) -> None:
        if self.stop.is_set():
            raise WatchStopped("the watcher is stopping", "the next start catches up")

    # ------------------------------------------------------------------ events
    def add(self, changes: Iterable[tuple[Any, str]]) -> int:
        """Note watchfiles changes ((Change, path) pairs); returns how many are pending."""
        with self._lock:
            for change, path in changes:
                if getattr(change, "name", change) == "added" and os.path.isdir(path):  # a folder, or a link to one
                    hit = self._root_of(path)
                    if hit is not None:
                        self._resync.add(hit[0])  # a new folder: its files may predate the folder's watch
                        continue
                self._pending.add(os.path.abspath(path))
            return len(self._pending) + len(self._resync)

    def _root_of(self, path: str) -> tuple[int, str] | None:
        for i, rules in enumerate(self.rules):
            rel = rules.rel(path)
            if rel is not None:
                return i, rel
        return None

    def plan(self, paths: Iterable[str], resync: Iterable[int]) -> Batch:
        """The index call for these changed paths (reads the file system: run it off the event loop)."""
        again = set(resync)
        out: list[str] = []
        ignored = 0
        for path in sorted(paths):
            hit = self._root_of(path)
            if hit is None:
                continue
            i, rel = hit
            rules = self.rules[i]
            if os.path.basename(path) in IGNORE_FILES:
                again.add(i)
            elif not os.path.exists(path):
                out.append(rules.source(rel))  # deleted (or a broken link now): leaves the collection
            elif os.path.isdir(path):
                continue  # a folder's own attributes: its files report their changes themselves
            elif rules.ignored(rel):
                ignored += 1
            else:
                out.append(rules.source(rel))
        for i in again:
            self.rules[i].forget()
        walked = [self.roots[i] for i in sorted(again)]
        return Batch([p for p in out if not any(_under(p, self.rules[i].root) for i in again)], walked, ignored)

    # ------------------------------------------------------------------ indexing
    def catch_up(self) -> BatchReport:
        """Index the roots whole (what changed while nobody watched), then follow events."""
        with self._lock:
            self._resync.update(range(len(self.roots)))
        return self.flush(force=True) or BatchReport(0, [], 0, None, None, 0.0)

    def flush(self, force: bool = False) -> BatchReport | None:
        """Index what is pending as one batch; None when nothing was pending or the store was busy."""
        with self._lock:
            paths, resync = self._pending, self._resync
            self._pending, self._resync = set(), set()
        if not paths and not resync and not force:
            return None
        t0 = time.perf_counter()
        batch = self.plan(paths, resync)
        if not batch.paths and not batch.resync:
            return BatchReport(len(paths), [], batch.ignored, None, None, time.perf_counter() - t0)
        try:
            with self.guard(f"watch: {len(batch.paths) + len(batch.resync)} changed paths into {self.config.collection!r}"):
                rep = self.store.index_paths(batch.resync + batch.paths, collection=self.config.collection,
                                             exclude=self.config.exclude, tags=self.config.tags, missing_ok=True,
                                             max_file_bytes=self.config.max_file_bytes, confine_to=self.config.confine_to,
                                             progress=self._progress)
        except WatchStopped:
            return None
        except StoreWriteError as e:
            log.warning("watch: the store is busy (%s); retrying in %.0f s", e.message, RETRY_S)
            with self._lock:  # keep the batch for the next try
                self._pending |= paths
                self._resync |= resync
            return None
        except KnnragError as e:
            return BatchReport(len(paths), batch.resync, batch.ignored, None, str(e), time.perf_counter() - t0)
        return BatchReport(len(paths) or len(batch.paths), batch.resync, batch.ignored, rep.to_dict(), None,
                           time.perf_counter() - t0)

    # ------------------------------------------------------------------ the loop
    def watch_args(self) -> dict:
        """Keyword arguments for watchfiles.watch / awatch."""
        from watchfiles import DefaultFilter

        from retrieval.ingest.sources import ALWAYS_SKIP_DIRS

        return {"watch_filter": DefaultFilter(ignore_dirs=sorted(ALWAYS_SKIP_DIRS)), "step": self.config.step_ms,
                "debounce": self.config.max_batch_ms, "rust_timeout": int(RETRY_S * 1000), "yield_on_timeout": True,
                "force_polling": self.config.force_polling or None}

    def run(self, stop: threading.Event, on_batch: Callable[[BatchReport], None] | None = None,
            ready: threading.Event | None = None, catch_up: bool = True) -> None:
        """Follow the roots until `stop` is set (or Ctrl-C): one flush per burst of events. The OS
        watch is in place before the catch-up walk, so nothing changed meanwhile is missed; `ready`
        is set after the catch-up. Once `stop` is set a running batch ends at its next file, uncommitted."""
        import watchfiles

        self.stop = stop

        emit = on_batch or (lambda b: log.info("%s", b.line()))
        first = True
        for changes in watchfiles.watch(*self.roots, stop_event=stop, raise_interrupt=False, **self.watch_args()):
            if first:
                first = False
                if catch_up:
                    emit(self.catch_up())
                if ready is not None:
                    ready.set()
            self.add(changes)
            done = self.flush()
            if done is not None:
                emit(done)
        if ready is not None:
            ready.set()


def _under(source: str, root: str) -> bool:
    return root in (".", "") or source == root or source.startswith(root.rstrip("/") + "/")
