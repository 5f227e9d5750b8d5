"""Ingest safety: swap races (file or folder replaced by a symlink mid-walk), FIFOs and confinement.

The swaps are made deterministic by hooking the walker between listing a folder and opening its
entries (`_list_dir`), which is exactly the window the MCP server's one-time symlink check leaves.
"""
from __future__ import annotations

import os
import threading

import pytest

from retrieval.ingest import sources as sources_mod
from retrieval.ingest.fsread import SWAPPED
from retrieval.ingest.sources import iter_sources
from retrieval.types import Skip, SourceDocument

pytestmark = pytest.mark.skipif(os.name != "posix", reason="symlinks, FIFOs and O_NOFOLLOW")

SECRET = "TOP SECRET outside the root"


def collect(*args, **kw):
    items = list(iter_sources(*args, **kw))
    return [i for i in items if isinstance(i, SourceDocument)], [i for i in items if isinstance(i, Skip)]


@pytest.fixture
def tree(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "sub").mkdir(parents=True)
    outside.mkdir()
    (outside / "secret.md").write_text(SECRET)
    (root / "a.md").write_text("inside a")
    (root / "sub" / "b.md").write_text("inside b")
    return root, outside


def swap_after_listing(monkeypatch, action):
    """Run `action` once, right after the walker listed the root folder (before any open)."""
    real, done = sources_mod._list_dir, []

    def listed(fd):
        entries = real(fd)
        if not done:
            done.append(True)
            action()
        return entries

    monkeypatch.setattr(sources_mod, "_list_dir", listed)


def to_link(path, target, *, is_dir=False):
    if is_dir:
        for f in path.iterdir():
            f.unlink()
        path.rmdir()
    else:
        path.unlink()
    path.symlink_to(target, target_is_directory=is_dir)


@pytest.mark.parametrize("confine", [False, True])
def test_file_swapped_for_symlink_after_listing_is_not_read(tree, monkeypatch, confine):
    root, outside = tree
    swap_after_listing(monkeypatch, lambda: to_link(root / "a.md", outside / "secret.md"))
    docs, skips = collect([root], confine_to=[root] if confine else None)
    assert all(SECRET not in d.text for d in docs)
    assert [d.source.rsplit("/", 1)[1] for d in docs] == ["b.md"]
    assert [(s.source.rsplit("/", 1)[1], s.reason) for s in skips] == [("a.md", SWAPPED)]


@pytest.mark.parametrize("confine", [False, True])
def test_folder_swapped_for_symlink_after_listing_is_not_entered(tree, monkeypatch, confine):
    root, outside = tree
    swap_after_listing(monkeypatch, lambda: to_link(root / "sub", outside, is_dir=True))
    docs, skips = collect([root], confine_to=[root] if confine else None)
    assert all(SECRET not in d.text for d in docs)
    assert [d.source.rsplit("/", 1)[1] for d in docs] == ["a.md"]
    assert [s.source.rsplit("/", 1)[1] for s in skips] == ["sub"] and skips[0].reason == SWAPPED


def test_confined_walk_refuses_links_that_leave_the_roots(tree):
    """Swapped before the walk lists the folder (after the caller's check): the link is seen, and
    with confine_to it is not followed. Without it (the CLI) links are followed, as documented."""
    root, outside = tree
    (root / "link.md").symlink_to(outside / "secret.md")
    (root / "dirlink").symlink_to(outside, target_is_directory=True)
    (root / "inner.md").symlink_to(root / "sub" / "b.md")
    docs, skips = collect([root], confine_to=[root])
    assert all(SECRET not in d.text for d in docs)
    assert sorted(d.source.rsplit("/", 1)[1] for d in docs) == ["a.md", "b.md", "inner.md"]
    assert sorted(s.source.rsplit("/", 1)[1] for s in skips) == ["dirlink", "link.md"]
    assert all("outside the allowed roots" in s.reason for s in skips)
    docs, skips = collect([root])
    assert sum(SECRET in d.text for d in docs) == 2 and skips == []


def test_link_retargeted_between_listing_and_open_is_refused(tree, monkeypatch):
    root, outside = tree
    (root / "link.md").symlink_to(root / "sub" / "b.md")

    def retarget():
        (root / "link.md").unlink()
        (root / "link.md").symlink_to(outside / "secret.md")

    swap_after_listing(monkeypatch, retarget)
    docs, skips = collect([root], confine_to=[root])
    assert all(SECRET not in d.text for d in docs)
    assert [s.source.rsplit("/", 1)[1] for s in skips] == ["link.md"] and "outside the allowed roots" in skips[0].reason


def test_named_file_outside_the_roots_is_refused(tree):
    root, outside = tree
    (root / "named.md").symlink_to(outside / "secret.md")
    docs, skips = collect([root / "named.md"], confine_to=[root])
    assert docs == [] and "outside the allowed roots" in skips[0].reason
    docs, _ = collect([root / "named.md"])  # CLI: the user named it
    assert docs[0].text == SECRET


def run_bounded(fn, seconds=20):
    out: list = []
    worker = threading.Thread(target=lambda: out.append(fn()), daemon=True)
    worker.start()
    worker.join(seconds)
    assert not worker.is_alive(), "blocked: a FIFO was opened for reading"
    return out[0]


def test_fifo_named_directly_is_skipped_without_blocking(tmp_path):
    fifo = tmp_path / "pipe.md"
    os.mkfifo(fifo)
    docs, skips = run_bounded(lambda: collect([fifo]))
    assert docs == [] and skips == [Skip(str(fifo), "not a regular file (named pipe (FIFO)); only regular files are indexed")]


def test_fifo_gitignore_and_fifo_swapped_in_after_listing_do_not_block(tree, monkeypatch):
    root, _ = tree
    os.mkfifo(root / "sub" / ".gitignore")

    def to_fifo():
        (root / "a.md").unlink()
        os.mkfifo(root / "a.md")

    swap_after_listing(monkeypatch, to_fifo)
    docs, skips = run_bounded(lambda: collect([root]))
    assert [d.source.rsplit("/", 1)[1] for d in docs] == ["b.md"]
    assert [s.source.rsplit("/", 1)[1] for s in skips] == ["a.md"] and "named pipe" in skips[0].reason


def test_cli_index_of_a_fifo_returns_with_the_reason(tmp_path):
    """`knnrag index PIPE` hung forever (the open blocked waiting for a writer), holding the lock."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    os.mkfifo(tmp_path / "pipe.md")
    root = Path(__file__).resolve().parents[2]
    cmd = [sys.executable, "-c", "import sys; from retrieval.cli.root import main; sys.exit(main())",
           "index", str(tmp_path / "pipe.md"), "--store", str(tmp_path / "store"), "--embedder", "hash-64", "--json"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(root)})
    assert r.returncode == 0, r.stderr[-2000:]
    skipped = json.loads(r.stdout)["skipped"]
    assert [s["reason"] for s in skipped] == ["not a regular file (named pipe (FIFO)); only regular files are indexed"]
