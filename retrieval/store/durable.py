"""Durable file writes and the writer lock, shared by the document store and the token datastore.

Why: a store must survive kill -9 at any instant. Every file we publish is written to a temporary
name, fsync'ed, renamed over its final name and the directory fsync'ed, so a reader sees the old
file or the new one, never half of one. The writer lock (fcntl.flock) keeps two processes from
building generations on top of each other; the kernel drops it when the holder dies.
"""
from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

from retrieval.errors import CorruptStoreError, StoreWriteError

log = logging.getLogger(__name__)

_CRASH_ENV = "KNNRAG_TEST_PAUSE_AT"  # test hook: "<step>[@<n>]" => the writer stops there (see checkpoint)


# --------------------------------------------------------------------------- durable writes
def fsync_dir(path: str | os.PathLike) -> None:
    """Make a rename or unlink inside `path` durable."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_file(path: str | os.PathLike) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(path: Path) -> None:
    """fsync every file below `path`, then every directory bottom-up (a finished generation)."""
    for root, _dirs, files in os.walk(path, topdown=False):
        for f in files:
            fsync_file(os.path.join(root, f))
        fsync_dir(root)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write temp + fsync + os.replace + fsync(dir): readers see the old or the new file, whole."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{threading.get_ident()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise write_error(path, e) from e
    fsync_dir(path.parent)


def write_npy(path: str | os.PathLike, arr: Any) -> None:
    """np.save (never pickled) to a fresh file, fsync'ed: for append-only shards under new names."""
    import numpy as np

    with open(path, "wb") as f:
        np.save(f, arr, allow_pickle=False)
        f.flush()
        os.fsync(f.fileno())


def write_bytes_synced(path: str | os.PathLike, data: bytes) -> None:
    """Write a fresh file and fsync it (the caller publishes it later by an atomic rename)."""
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode())


def read_json(path: str | os.PathLike, what: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            obj = json.load(f)
    except FileNotFoundError:
        raise
    except (OSError, ValueError) as e:
        raise CorruptStoreError(f"cannot read {what} {path}: {e}", "restore the store from a backup or re-index") from e
    if not isinstance(obj, dict):
        raise CorruptStoreError(f"{what} {path} is not a JSON object", "restore the store from a backup or re-index")
    return obj


def write_error(path: str | os.PathLike, e: OSError) -> StoreWriteError:
    """An OSError during a write, as a message a user can act on."""
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return StoreWriteError(
            f"the store at {path} is read-only ({e.strerror})",
            "searching still works; to write, use a writable copy of the store or fix its permissions",
        )
    if e.errno == errno.ENOSPC:
        return StoreWriteError(f"no space left on device while writing {path}", "free disk space and re-run; the last committed state is intact")
    return StoreWriteError(f"cannot write {path}: {e}", "check the path and permissions; the last committed state is intact")


def generation_write_error(gdir: Path, e: OSError | RuntimeError) -> StoreWriteError:
    """A failed generation write; FAISS reports a full disk as a RuntimeError naming ENOSPC's text."""
    if isinstance(e, OSError):
        return write_error(gdir, e)
    text = str(e).splitlines()[-1][:300] if str(e) else type(e).__name__
    if "No space left" in str(e) or "ENOSPC" in str(e):
        return StoreWriteError(f"no space left on device while writing {gdir}", "free disk space and re-run; the last committed state is intact")
    return StoreWriteError(f"cannot write {gdir}: {text}", "check free disk space and permissions; the last committed state is intact")


def db_write_error(db: Path, e: Exception) -> StoreWriteError:
    """A failed SQLite commit: SQLITE_FULL (sqlite3 names it in sqlite_errorname) is a full disk."""
    name = getattr(e, "sqlite_errorname", "")
    if name == "SQLITE_FULL" or getattr(e, "errno", None) == errno.ENOSPC:
        return StoreWriteError(f"no space left on device while committing to {db}: {e} ({name or 'ENOSPC'})",
                               "free disk space and re-run; the last committed state is intact")
    return StoreWriteError(f"cannot commit to {db}: {e}" + (f" ({name})" if name else ""),
                           "the last committed state is intact; check disk space and permissions")


# --------------------------------------------------------------------------- writer lock
class WriterLock:
    """Exclusive, non-blocking writer lock on STORE/write.lock (released by the kernel on death)."""

    _held_in_process: set[str] = set()
    _guard = threading.Lock()

    def __init__(self, store_dir: Path) -> None:
        self.path = Path(store_dir) / "write.lock"
        self._fd: int | None = None

    def __enter__(self) -> WriterLock:
        key = str(self.path.resolve())
        with WriterLock._guard:
            if key in WriterLock._held_in_process:
                raise StoreWriteError(
                    f"another writer in this process is already writing to {self.path.parent}",
                    "wait for the running index/delete to finish, then retry",
                )
            WriterLock._held_in_process.add(key)
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            WriterLock._held_in_process.discard(key)
            raise write_error(self.path.parent, e) from e
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = _read_holder(fd)
            os.close(fd)
            WriterLock._held_in_process.discard(key)
            raise StoreWriteError(
                f"another process{holder} is writing to the store {self.path.parent}",
                "wait for it to finish (searches keep working meanwhile), then retry",
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
        WriterLock._held_in_process.discard(str(self.path.resolve()))


def _read_holder(fd: int) -> str:
    try:
        pid = os.pread(fd, 32, 0).decode().strip()
        return f" (pid {pid})" if pid.isdigit() else ""
    except OSError:
        return ""


# --------------------------------------------------------------------------- crash-test hook
def checkpoint(step: str, _seen: dict[str, int] = {}) -> None:  # noqa: B006 - per-process counter
    """Named step of a commit. Tests set KNNRAG_TEST_PAUSE_AT=<step>[@<n>] to freeze the writer the
    n-th time (default 1st) it reaches that step (it announces itself on stderr and sleeps), then
    kill it with SIGKILL. Costs one dict lookup when the variable is unset."""
    wanted = os.environ.get(_CRASH_ENV)
    if not wanted:
        return
    name, _, nth = wanted.partition("@")
    if name != step:
        return
    _seen[step] = _seen.get(step, 0) + 1
    if _seen[step] != int(nth or 1):
        return
    import sys

    sys.stderr.write(f"KNNRAG-PAUSED-AT {step}\n")
    sys.stderr.flush()
    while True:  # pragma: no cover - killed by the test
        time.sleep(60)


def probe_writable(path: Path) -> StoreWriteError | None:
    """Can we create files in the store? (os.access lies for root and read-only mounts.)"""
    probe = path / f".probe-{os.getpid()}-{threading.get_ident()}"
    try:
        fd = os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        os.close(fd)
        os.unlink(probe)
        return None
    except OSError as e:
        return write_error(path, e)
