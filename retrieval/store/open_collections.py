"""The store's open collections: least recently used first, at most `cap` open at once.

Each open collection holds about 10 file descriptors once searched (SQLite db, WAL and shm, the
FAISS and BM25 maps: measured with /proc/self/fd on a hash-64 store), and a server that touched
60 collections ran out of them ("Too many open files", issue 30 case 10). Past the cap the least
recently used one is closed: at once when nothing else holds it, else when its last user lets go
(CPython frees the Collection, and its SQLite connection and maps with it, on the last reference).
A closed collection reopens on its next use.
"""
from __future__ import annotations

import errno
import resource
import sys
from collections import OrderedDict
from typing import Any

from retrieval.errors import KnnragError

FDS_PER_COLLECTION = 10


def default_cap() -> int:
    """A quarter of the process's soft open-file limit, in collections (1024 files -> 25)."""
    try:
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    except (OSError, ValueError):
        soft = 1024
    if soft == resource.RLIM_INFINITY or soft <= 0:
        soft = 65536
    return max(2, min(256, soft // (4 * FDS_PER_COLLECTION)))


class OpenCollections(OrderedDict):
    """name -> Collection; `get` and assignment mark a name as just used. Callers hold the store's lock."""

    def __init__(self, cap: int | None = None) -> None:
        super().__init__()
        self.cap = cap or default_cap()

    def get(self, name: str, default: Any = None) -> Any:  # type: ignore[override]
        c = super().get(name, default)
        if name in self:
            self.move_to_end(name)
        return c

    def __setitem__(self, name: str, c: Any) -> None:
        super().__setitem__(name, c)
        self.move_to_end(name)
        while len(self) > self.cap:
            _name, old = self.popitem(last=False)
            if sys.getrefcount(old) <= 2:  # `old` and getrefcount's argument: nobody is reading it
                old.close()
            del old

    def close_all(self) -> None:
        for c in self.values():
            c.close()
        self.clear()


def out_of_files(e: BaseException, what: str) -> KnnragError | None:
    """The error to raise when `e` is the process running out of file descriptors (EMFILE, ENFILE):
    nothing is wrong with the collection, so the hint must not say to delete or restore it."""
    chain = [e, e.__cause__, e.__context__]  # read_json and friends wrap the OSError in their own error
    if not any(isinstance(x, OSError) and x.errno in (errno.EMFILE, errno.ENFILE) for x in chain) and \
            "Too many open files" not in str(e):  # FAISS and SQLite report it only in words
        return None
    return KnnragError(f"too many open files in this process while opening {what}",
                       "the collection is intact: raise the open-file limit (e.g. `ulimit -n 4096` before starting), "
                       "or close other programs' files; the store keeps at most "
                       f"{default_cap()} collections open at once under the current limit")
