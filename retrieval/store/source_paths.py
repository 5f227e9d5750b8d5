"""One spelling per file: sources indexed from disk are stored as canonical absolute paths.

Why: the CLI used to store paths as typed and the MCP server stored them absolute, so `index inc` and
`index $PWD/inc` kept two copies of one file (search returned both versions, `ask` cited text the
file no longer had), and a delete in one spelling missed the other. Now the indexed root is
resolved once (`realpath`: symlinks in the root and `..` gone) and the walked relative path joined
to it; every interface that takes a path or a glob (delete, the `source` filter) also accepts the
spelling a user sees: relative to the current folder, with `~`, through a symlinked folder.
Sources that are not files (add_texts metadata, JSONL records' own names) are kept as given.
"""
from __future__ import annotations

import logging
import os
import posixpath
from collections.abc import Iterable
from typing import Any

_GLOB = "*?["


def canonical_root(path: str) -> str:
    """The stored spelling of an indexed file or folder (forward slashes); the path as given when it
    does not exist, so the error that follows names what the user typed."""
    p = os.path.expanduser(os.fspath(path))
    if not os.path.exists(p) and not os.path.islink(p):
        parent, name = os.path.split(os.path.abspath(p))
        if name and os.path.isdir(parent):  # a file deleted since (watch): its folder still names it
            return os.path.join(os.path.realpath(parent), name).replace(os.sep, "/")
        return path
    return os.path.realpath(p).replace(os.sep, "/")


def spellings(pattern: str) -> list[str]:
    """The pattern as given, plus the stored spellings it may mean: absolute from the current folder,
    with the folder part resolved through symlinks. A glob keeps its wildcard part unresolved."""
    raw = os.fspath(pattern)
    p = os.path.expanduser(raw).replace(os.sep, "/").rstrip("/") or "/"
    cut = min((i for i in (p.find(c) for c in _GLOB) if i >= 0), default=-1)
    head, tail = (p, "") if cut < 0 else (p[: p.rfind("/", 0, cut) + 1], p[p.rfind("/", 0, cut) + 1 :])
    absolute = posixpath.normpath(posixpath.join(os.getcwd().replace(os.sep, "/"), head or "."))
    out = [raw, posixpath.join(absolute, tail) if tail else absolute]
    folder, name = (absolute, "") if tail else posixpath.split(absolute)
    real = os.path.realpath(folder).replace(os.sep, "/")
    out.append(posixpath.join(real, tail) if tail else posixpath.join(real, name) if name else real)
    return list(dict.fromkeys(out))


def shown(source: str) -> str:
    """How a terminal shows a stored source: relative to the current folder when under it."""
    if not source.startswith("/"):
        return source
    here = os.getcwd().replace(os.sep, "/").rstrip("/") + "/"
    return source[len(here):] if source.startswith(here) else source


def expand(patterns: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(s for p in patterns for s in spellings(str(p))))


def adopt_legacy_sources(coll: Any, conn: Any) -> int:
    """Rewrite the relative source paths older versions stored (as typed) to canonical ones, once per
    collection, so re-indexing the same files in any spelling updates them instead of adding copies.
    A relative path is read from the current folder, as the CLI always did; one that names no file
    here is left alone (it goes when its folder is re-indexed from where it was typed)."""
    from retrieval.store.durable import atomic_write_json

    if coll.manifest.get("source_paths") == "canonical" or coll.read_only:
        return 0
    moved = 0
    conn.execute("BEGIN IMMEDIATE")
    try:
        for (src,) in conn.execute("SELECT source FROM sources").fetchall():
            new = canonical_root(src) if not posixpath.isabs(src) and os.path.isfile(src) else src
            if new != src and conn.execute("SELECT 1 FROM sources WHERE source=?", (new,)).fetchone() is None:
                conn.execute("UPDATE sources SET source=? WHERE source=?", (new, src))
                conn.execute("UPDATE chunks SET source=? WHERE source=?", (new, src))
                moved += 1
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    coll.manifest["source_paths"] = "canonical"
    atomic_write_json(coll.dir / "manifest.json", coll.manifest)
    if moved:
        logging.getLogger(__name__).info("collection %s: %d relative source paths made canonical", coll.name, moved)
    return moved
