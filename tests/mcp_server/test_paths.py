"""Relative paths given to index_paths: under the first root, or from the server's working folder
when that names a path inside a root (mcp_probe.py passes ROOT both as --allow-root and as the path)."""
from __future__ import annotations

from pathlib import Path

import pytest

from mcp_server.paths import resolve_allowed
from retrieval.errors import InvalidInputError, NotFoundError


def test_relative_paths_resolve_under_the_root_then_from_the_working_folder(tmp_path, monkeypatch):
    root = tmp_path / "docs"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "a.md").write_text("# A\n")
    (tmp_path / "elsewhere.md").write_text("# outside\n")
    monkeypatch.chdir(tmp_path)
    roots = [root.resolve()]
    assert resolve_allowed("sub/a.md", roots) == (root / "sub" / "a.md").resolve()  # under the root first
    assert resolve_allowed("docs", roots) == root.resolve()  # the root itself, spelled from the cwd
    assert resolve_allowed("docs/sub", roots) == (root / "sub").resolve()
    with pytest.raises(InvalidInputError, match="outside the allowed roots"):
        resolve_allowed(str(Path("elsewhere.md").resolve()), roots)
    with pytest.raises(NotFoundError):
        resolve_allowed("elsewhere.md", roots)  # cwd-relative but outside the root: not found under the root
