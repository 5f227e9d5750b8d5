"""Which paths a remote caller may make the server read: only those under --allow-root.

A tool call is untrusted input. We refuse `..` outright (even when it would land inside a
root: the caller should say what it means), resolve symlinks before the containment check,
and list the symlinks inside a folder whose targets leave the roots so they are excluded
from the walk instead of silently followed.
"""
from __future__ import annotations

import os
import re
import stat
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

from retrieval.errors import InvalidInputError, NotFoundError

MAX_WALK_ENTRIES = 200_000


def _inside(path: Path, roots: Sequence[Path]) -> bool:
    return any(path == r or r in path.parents for r in roots)


def resolve_allowed(raw: str, roots: Sequence[Path]) -> Path:
    """The real path of `raw` if it lies under one of `roots`, else InvalidInputError.

    Relative paths are taken relative to the first root (a client does not know our cwd), or,
    when nothing is there, relative to the working folder if that lands inside a root.
    """
    if not roots:
        raise InvalidInputError(
            "indexing is disabled: this server was started without --allow-root",
            "restart it with `knnrag serve ... --allow-root FOLDER` to let clients index files under FOLDER",
        )
    if not isinstance(raw, str) or not raw.strip():
        raise InvalidInputError("empty path", "pass a file or folder under an allowed root")
    if "\x00" in raw:
        raise InvalidInputError("path contains a NUL byte", "pass a plain file or folder path")
    p = Path(os.path.expanduser(raw.strip()))
    if ".." in p.parts:
        raise InvalidInputError(
            f"path {raw[:200]!r} contains '..', which is refused",
            "pass the path without '..' components, under an allowed root: " + ", ".join(map(str, roots)),
        )
    if not p.is_absolute():
        # under the first root; else, where it names a path inside a root from the server's working
        # folder (a client that launched `knnrag serve --allow-root docs` and passes "docs")
        here = Path(os.path.abspath(p))
        p = here if not os.path.lexists(roots[0] / p) and _inside(Path(os.path.realpath(here)), roots) else roots[0] / p
    real = Path(os.path.realpath(p))
    if not _inside(real, roots):
        what = "is a symlink that points" if p.is_symlink() or real != Path(os.path.abspath(p)) else "is"
        raise InvalidInputError(
            f"path {raw[:200]!r} {what} outside the allowed roots",
            "only files under these folders may be indexed: " + ", ".join(map(str, roots)),
        )
    try:
        mode = os.stat(real).st_mode  # stat never blocks, even on a FIFO (opening one does)
    except OSError:
        raise NotFoundError(f"path {raw[:200]!r} does not exist",
                            "check the path; relative paths start at " + str(roots[0])) from None
    if not (stat.S_ISDIR(mode) or stat.S_ISREG(mode)):
        raise InvalidInputError(f"path {raw[:200]!r} is not a regular file or folder (a FIFO, socket or device)",
                                "pass files or folders only")
    return real


class TreeScan(NamedTuple):
    """What the walker would meet under a folder, found before indexing starts."""

    links: list[str]  # symlinks whose targets leave the roots (relative to the folder)
    special: list[str]  # FIFOs, sockets, devices: opening a FIFO blocks until a writer comes
    files: int  # regular files seen: the scanning stage's total for progress


def scan_tree(folder: Path, roots: Sequence[Path]) -> TreeScan:
    """Walk `folder` the way the indexer does (into symlinked folders that stay inside the roots,
    each real folder once), listing the links that point outside, the non-regular files, and
    counting the regular files."""
    out = TreeScan([], [], 0)
    if not folder.is_dir():
        return out
    seen: set[tuple[int, int]] = set()
    count = 0
    files = 0

    def visit(directory: str, rel: str) -> None:
        nonlocal count, files
        try:
            st = os.stat(directory)
        except OSError:
            return
        if (st.st_dev, st.st_ino) in seen:
            return
        seen.add((st.st_dev, st.st_ino))
        try:
            entries = sorted(os.scandir(directory), key=lambda e: e.name)
        except OSError:
            return
        for entry in entries:
            count += 1
            if count > MAX_WALK_ENTRIES:
                raise InvalidInputError(
                    f"{folder} holds more than {MAX_WALK_ENTRIES} entries",
                    "index a smaller folder, or use the `knnrag index` CLI for very large trees")
            child = f"{rel}/{entry.name}" if rel else entry.name
            if entry.is_symlink() and not _inside(Path(os.path.realpath(entry.path)), roots):
                out.links.append(child)
                continue
            try:
                mode = entry.stat().st_mode  # follows an inside link: what the walker would open
            except OSError:
                continue
            if stat.S_ISDIR(mode):
                visit(entry.path, child)
            elif stat.S_ISREG(mode):
                files += 1
            else:
                out.special.append(child)

    visit(str(folder), "")
    return out._replace(files=files)


def escaping_symlinks(folder: Path, roots: Sequence[Path]) -> list[str]:
    """Paths (relative to `folder`, as the indexer walks them) of symlinks whose targets leave `roots`."""
    return scan_tree(folder, roots).links


def exclude_pattern(rel: str) -> str:
    """A gitignore pattern matching exactly `rel` under the walked root (glob characters escaped)."""
    escaped = re.sub(r"([\\\[\]*?])", r"\\\1", rel)
    if escaped.endswith(" "):
        escaped = escaped[:-1] + "\\ "
    return "/" + escaped  # anchored: never matches a same-named path deeper down
