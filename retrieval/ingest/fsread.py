"""Reading one file for indexing safely: regular files only, never blocking, never outside the roots.

Why descriptors: a path checked and then opened by name can be swapped for a symlink in between
(the MCP server's escape check ran once, then a file outside the allowed root became searchable in
3 of 60 attempts). So we open first and judge the open descriptor: fstat says what it is, and for
a confined read its (device, inode) must be the file that its real path, inside the roots, names.
"""
from __future__ import annotations

import errno
import os
import stat
from collections.abc import Sequence

from retrieval.types import Skip


def too_large(size: int, limit: int) -> str:
    return f"file is {size / 1e6:.1f} MB, over the {limit / 1e6:g} MB limit; split it or raise --max-file-mb"


def read_error(exc: OSError) -> str:
    if exc.errno in (errno.ELOOP, errno.ENOTDIR):  # O_NOFOLLOW met a link where the listing showed none
        return SWAPPED
    if isinstance(exc, PermissionError):
        return "permission denied; make the file readable (chmod +r) or exclude it"
    return f"cannot read file: {exc.strerror or exc}"


_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_O_NONBLOCK = getattr(os, "O_NONBLOCK", 0)  # a FIFO opened without it blocks until a writer appears
_O_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
SWAPPED = "was replaced by a symbolic link while being indexed, so it was not read; re-run the index"


def open_nonblocking(name: str, dir_fd: int | None, *, follow: bool, directory: bool = False) -> int:
    """Open without blocking (FIFOs) and, unless `follow`, refusing a symlink in the last component:
    the walker decided from the listing that `name` was no link, so a link there now is a swap."""
    flags = os.O_RDONLY | _O_NONBLOCK | (0 if follow else _O_NOFOLLOW) | (_O_DIRECTORY if directory else 0)
    return os.open(name, flags, dir_fd=dir_fd)


def _not_regular(mode: int) -> str:
    what = ("named pipe (FIFO)" if stat.S_ISFIFO(mode) else "socket" if stat.S_ISSOCK(mode)
            else "device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "folder" if stat.S_ISDIR(mode) else "special file")
    return f"not a regular file ({what}); only regular files are indexed"


def _inside(real: str, roots: Sequence[str]) -> bool:
    return any(real == r or real.startswith(r.rstrip("/") + "/") for r in roots)


def escapes(fd: int, path: str, confine: Sequence[str]) -> str | None:
    """Why the opened `fd` must not be read under `confine`, or None. The open came first, so a
    link retargeted afterwards cannot fool us: the descriptor must be the very file that the real
    path, inside the roots, names now."""
    real = os.path.realpath(path)
    if not _inside(real, confine):
        return "symbolic link pointing outside the allowed roots; not read"
    try:
        st = os.stat(real)
    except OSError:
        return SWAPPED
    fst = os.fstat(fd)
    return None if (st.st_dev, st.st_ino) == (fst.st_dev, fst.st_ino) else SWAPPED


def _read_fd(fd: int) -> bytes:
    parts = []
    for block in iter(lambda: os.read(fd, 1 << 20), b""):
        parts.append(block)
    return b"".join(parts)


def read_regular(name: str, source: str, *, dir_fd: int | None, follow: bool, full_path: str, max_bytes: int | None,
                  confine: Sequence[str] | None) -> bytes | Skip:
    """The bytes of a regular file, or a Skip saying why not (never blocks, never leaves `confine`)."""
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=follow)
        if stat.S_ISLNK(st.st_mode):
            return Skip(source, SWAPPED)
        if not stat.S_ISREG(st.st_mode):
            return Skip(source, _not_regular(st.st_mode))  # never opened: opening a device can have effects
        fd = open_nonblocking(name, dir_fd, follow=follow)
    except FileNotFoundError:
        return Skip(source, "broken symbolic link or file vanished during the walk")
    except OSError as exc:
        return Skip(source, read_error(exc))
    try:
        fst = os.fstat(fd)
        if not stat.S_ISREG(fst.st_mode):  # swapped between the stat and the open
            return Skip(source, _not_regular(fst.st_mode))
        reason = escapes(fd, full_path, confine) if follow and confine is not None else None
        if reason:
            return Skip(source, reason)
        if max_bytes is not None and fst.st_size > max_bytes:
            return Skip(source, too_large(fst.st_size, max_bytes))
        return _read_fd(fd)
    except OSError as exc:
        return Skip(source, read_error(exc))
    finally:
        os.close(fd)
