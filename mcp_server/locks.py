"""The server's write lock (bounded waits, a named holder) and the gate that keeps readers off a
collection while it is dropped.

One writer at a time per store (DocStore's WriterLock enforces it across processes and
refuses at once); inside the server, writes queue here instead, but never without bound: a call
that cannot get the lock within `wait_s` gets an error naming who holds it and for how long.

Tool calls wait for it on the event loop (`held_async`), not in a worker thread: 42 `add_texts`
calls blocked in `acquire` once filled anyio's 40-thread pool, and a search waited 29.6 s for a
thread (issue 30 case 8). Only the holder hops to a thread. Background jobs wait in their own
thread (`held`), checking between slices whether they were cancelled meanwhile.
"""
from __future__ import annotations

import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass

import anyio

from retrieval.errors import StoreWriteError


@dataclass(frozen=True)
class Holder:
    what: str  # e.g. "index_paths job 3f2a (collection 'default')"
    since: float  # time.monotonic()


class WriteLock:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.holder: Holder | None = None

    @contextmanager
    def held(self, what: str, wait_s: float, check: Callable[[], None] | None = None) -> Iterator[None]:
        """Hold the lock in this thread; `check` runs between waits of 0.1 s and may raise to give up."""
        deadline = time.monotonic() + max(0.0, wait_s)
        while True:
            left = deadline - time.monotonic()
            if self._lock.acquire(timeout=max(0.0, min(left, 0.1) if check else left)):
                break
            if check:
                check()
            if time.monotonic() >= deadline:
                raise self._busy()
        try:
            self.holder = Holder(what, time.monotonic())
            yield
        finally:
            self.holder = None
            self._lock.release()

    @asynccontextmanager
    async def held_async(self, what: str, wait_s: float) -> AsyncIterator[None]:
        """Hold the lock for a block of async code, waiting on the event loop (no thread is taken).

        threading.Lock may be released by any thread, so the body can hop to a worker thread. The
        wait polls (2 ms growing to 50 ms): at most ~20 checks a second per waiting call."""
        deadline = time.monotonic() + max(0.0, wait_s)
        pause = 0.002
        while not self._lock.acquire(blocking=False):
            if time.monotonic() >= deadline:
                raise self._busy()
            await anyio.sleep(pause)
            pause = min(0.05, pause * 2)
        try:
            self.holder = Holder(what, time.monotonic())
            yield
        finally:
            self.holder = None
            self._lock.release()

    def _busy(self) -> StoreWriteError:
        h = self.holder
        busy = f"{h.what}, running for {time.monotonic() - h.since:.0f} s" if h else "another write"
        return StoreWriteError(f"the store is busy: {busy}", "retry when it is done (index_status shows running jobs)")

    def locked(self) -> bool:
        return self._lock.locked()


class Gate:
    """Many readers, or one exclusive holder (drop_collection closes every open collection handle)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._exclusive = False
        self._waiting = 0  # exclusive callers waiting: new readers queue behind them

    @contextmanager
    def shared(self) -> Iterator[None]:
        with self._cond:
            while self._exclusive or self._waiting:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if not self._readers:
                    self._cond.notify_all()

    @contextmanager
    def exclusive(self, wait_s: float) -> Iterator[None]:
        deadline = time.monotonic() + wait_s
        with self._cond:
            self._waiting += 1
            try:
                while self._exclusive or self._readers:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise StoreWriteError("the store is busy with searches or answers", "retry in a moment")
                    self._cond.wait(left)
            finally:
                self._waiting -= 1
                self._cond.notify_all()
            self._exclusive = True
        try:
            yield
        finally:
            with self._cond:
                self._exclusive = False
                self._cond.notify_all()
