"""Would `index ROOT` have read this file? The walker's ignore rules, asked for one path at a time.

The watcher hears about single files; indexing a file named explicitly skips the .gitignore files of
the folders above it, so it asks here first: the same skipped folder and file names, the same
--exclude globs (matched against the path below ROOT and the path as given) and the same .gitignore
files, deepest deciding first, read once per folder and forgotten with `forget()`.
"""
from __future__ import annotations

import os
import posixpath
from collections.abc import Sequence

import pathspec

from retrieval.ingest.sources import ALWAYS_SKIP_DIRS, ALWAYS_SKIP_FILES, _Ignores

IGNORE_FILES = frozenset({".gitignore"})  # files whose change changes what the walker reads


class IgnoreRules:
    """The ignore rules of one walked root (`root` as the user gave it)."""

    def __init__(self, root: str, exclude: Sequence[str] = ()) -> None:
        self.root = posixpath.normpath(root.replace(os.sep, "/"))
        self.dir = os.path.abspath(root)
        self.ignores = _Ignores(list(exclude))
        self.match_source = not self.ignores.root_matches(self.root)
        self._specs: dict[str, pathspec.GitIgnoreSpec | None] = {}

    def forget(self) -> None:
        self._specs.clear()

    def _spec(self, rel_dir: str) -> pathspec.GitIgnoreSpec | None:
        if rel_dir not in self._specs:
            path = os.path.join(self.dir, rel_dir) if rel_dir else self.dir
            try:
                fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
            except OSError:
                return None  # the folder went away: its files are gone too
            try:
                self._specs[rel_dir] = _Ignores.load(fd)
            finally:
                os.close(fd)
        return self._specs[rel_dir]

    def rel(self, path: str) -> str | None:
        """`path` (absolute) below the root as a relative posix path; "" for the root; None outside."""
        rel = os.path.relpath(os.path.abspath(path), self.dir)
        if rel == ".":
            return ""
        if rel == ".." or rel.startswith(".." + os.sep):
            return None
        return rel.replace(os.sep, "/")

    def source(self, rel: str) -> str:
        """The source name `index ROOT` stores for the file at `rel`."""
        return self.root if not rel else (rel if self.root == "." else posixpath.join(self.root, rel))

    def ignored(self, rel: str) -> bool:
        """True when the walk from the root would pass over the file at `rel` (a file, not a folder)."""
        if not rel:
            return False  # the root itself, named by the user
        parts = rel.split("/")
        if any(p in ALWAYS_SKIP_DIRS for p in parts[:-1]) or parts[-1] in ALWAYS_SKIP_FILES:
            return True
        stack: list[tuple[str, pathspec.GitIgnoreSpec]] = []
        for depth in range(len(parts)):
            here = "/".join(parts[:depth])
            spec = self._spec(here)
            if spec is not None:
                stack.append((here, spec))
            child = "/".join(parts[: depth + 1])
            is_dir = depth < len(parts) - 1
            shown = self.source(child) if self.match_source else None
            if self.ignores.ignored(child, shown, is_dir, stack):
                return True
        return False
