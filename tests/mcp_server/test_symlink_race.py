"""The symlink swap race through the MCP `index_paths` tool: the server checks the tree once, then a
file is swapped for a link to a secret outside the allowed root before the walker reads it. The
server passes its roots down (`confine_to`), so the secret is never indexed, whatever the swap.
"""
from __future__ import annotations

import pytest
from mcp import Client

from mcp_server.server import ServerConfig, ServerState, build_server
from retrieval.ingest import sources as sources_mod

pytestmark = pytest.mark.anyio
SECRET = "zebracorn secret outside the allowed root"


def _swap_when_listed(monkeypatch, root, outside):
    """Swap root/a.md (plain file when listed) for a link to the secret, then retarget an inner link."""
    real, done = sources_mod._list_dir, []

    def listed(fd):
        entries = real(fd)
        if not done:
            done.append(True)
            (root / "a.md").unlink()
            (root / "a.md").symlink_to(outside / "secret.md")
            (root / "inner.md").unlink()
            (root / "inner.md").symlink_to(outside / "secret.md")
        return entries

    monkeypatch.setattr(sources_mod, "_list_dir", listed)


async def test_a_file_swapped_for_a_link_after_the_check_is_never_indexed(tmp_path, monkeypatch):
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (outside / "secret.md").write_text(f"# Secret\n\n{SECRET}\n")
    (root / "a.md").write_text("# A\n\nplain inside text\n")
    (root / "b.md").write_text("# B\n\nmore inside text\n")
    (root / "inner.md").symlink_to(root / "b.md")  # a link inside the root passes the server's check
    _swap_when_listed(monkeypatch, root, outside)
    cfg = ServerConfig(store=tmp_path / "store", embedder="hash-64", allow_roots=(root,))
    state = ServerState(cfg)
    try:
        async with Client(build_server(cfg, state=state)) as c:
            res = await c.call_tool("index_paths", {"paths": [str(root)]})
            assert not res.is_error, res.content
            hits = await c.call_tool("search", {"query": "zebracorn secret", "k": 100, "mode": "dense"})
        # dense search with the fake embedder returns every stored chunk: the whole collection
        texts = [h["text"] for h in hits.structured_content["hits"]]
        assert any("more inside text" in t for t in texts)
        assert all(SECRET not in t for t in texts), texts
        skipped = {s["source"].rsplit("/", 1)[1] for s in res.structured_content["skipped"]}
        assert {"a.md", "inner.md"} <= skipped, res.structured_content
    finally:
        state.close()
