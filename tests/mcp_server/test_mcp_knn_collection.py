"""MCP `index_paths knn: true`: the collection's own token datastore, `ask` answering from it with
provenance citations, and `delete` masking a deleted file's entries (the fixtures and helpers are
test_mcp_tools's: one server state per module, hash-64 embedder, tiny random LM)."""
from __future__ import annotations

import numpy as np
import pytest

from tests.mcp_server import test_mcp_tools as base
from tests.support.mcp import text_of

env, lm_dir = base.env, base.lm_dir  # the same module-scoped fixtures
call = base.call

pytestmark = pytest.mark.anyio


async def test_index_paths_with_knn_keeps_the_collection_datastore_and_delete_masks_it(env, lm_dir):
    """knn: true builds the collection's token datastore from its chunks; a deleted file's entries are
    tombstoned at once, so kNN search can never return its text."""
    from lm.datastore.token_store import TokenStore
    from lm.knn_index import datastore_dir

    res = await call(env, "index_paths", {"paths": [str(env["root"])], "collection": "knnc", "knn": True})
    assert not res.is_error, text_of(res)
    rep = res.structured_content["knn"]
    assert rep["entries_added"] > 0 and rep["chunks_added"] >= 3
    ds = TokenStore.open(datastore_dir(env["state"].store().path, "knnc"))
    assert ds.count == rep["entries_added"] and len(ds.dead) == 0
    ask = {"question": "Run the server behind a reverse proxy?", "collection": "knnc", "mode": "generate"}
    ans = (await call(env, "ask", ask)).structured_content
    assert ans["used_knn"] is True and ans["spans"], ans  # the collection's own datastore, without --datastore
    assert any(sp["basis"] == "provenance" for sp in ans["spans"])
    assert all(c["basis"] in (None, "lm", "provenance", "overlap") for c in ans["citations"])
    gone = str(env["root"] / "deploy.md")
    res = await call(env, "delete", {"sources": [gone], "collection": "knnc"})
    assert not res.is_error, text_of(res)
    ans = (await call(env, "ask", ask)).structured_content  # reopened after the delete: no neighbour from it
    assert not any(str(ch.get("source")).endswith("deploy.md") for sp in ans["spans"] for ch in sp["chunks"])
    assert len(env["state"].ask_knnlm("knnc").store.dead) > 0  # the tombstones are seen
    ds = TokenStore.open(datastore_dir(env["state"].store().path, "knnc"))
    dead_docs = {int(d) for d in ds.provenance(ds.dead)[:, 0]}
    assert dead_docs and all(ds.docs()[d]["source"].startswith("chunk:") for d in dead_docs)
    dead = {int(i) for i in ds.dead}
    # the deleted entries' own keys as queries: unmasked, each would find itself first
    nb = ds.search(ds.keys(np.asarray(sorted(dead))[:8]).astype(np.float32), min(4, ds.count - len(dead)))
    assert not set(nb.I.ravel().tolist()) & dead
