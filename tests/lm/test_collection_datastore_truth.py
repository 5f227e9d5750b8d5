"""A collection and its kNN datastore tell one truth: dropped, deleted or replaced text never comes
back through the datastore, and a re-created collection never inherits the dropped one's entries
(issue 30, cases 1 and 2)."""
from __future__ import annotations

import json
import shutil

import pytest

from lm.datastore.live import mask_stale
from lm.datastore.token_store import TokenStore
from lm.knn_index import datastore_dir, prune, sync
from retrieval.store import admin
from retrieval.store.docstore import DocStore
from tests.support.tiny_lm import CORPUS, make_tiny_lm

pytestmark = pytest.mark.slow  # every test builds a token datastore with the tiny LM

PELICAN = "The harbour pelican PELICAN-4242 guards the lighthouse keys every winter night. " * 3
BANANA = "Bananas are yellow when ripe and green before; they grow in large hanging bunches. " * 3


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    from lm.models import load_lm

    return load_lm(str(make_tiny_lm(tmp_path_factory.mktemp("lm"), "llama")))


def _live_texts(out):
    ds = TokenStore.open(out)
    mask_stale(ds)
    dead = set()
    if len(ds.dead):
        dead = set(ds.provenance(ds.dead)[:, 0].tolist())
    return [d["text"] for d in ds.docs() if d["doc"] not in dead]


def test_recreated_collection_gets_its_own_entries(tmp_path, lm):
    store = DocStore.open(tmp_path / "s", embedder="hash-64")
    store.add_texts([PELICAN, CORPUS], collection="kx")
    out = datastore_dir(store.path, "kx")
    assert sync(store, "kx", lm, out)["chunks_added"] == 2
    res = admin.drop_collection(store, "kx")
    assert res["sidecars"] == 1 and not out.exists()  # the datastore goes with the collection
    store.add_texts([BANANA], collection="kx")  # chunk "1" again, other text
    rep = sync(store, "kx", lm, out)
    assert rep["chunks_added"] == 1
    assert not any("PELICAN" in t for t in _live_texts(out))


def test_leftover_datastore_of_a_dropped_collection_is_discarded(tmp_path, lm):
    """A datastore left behind (by an older drop that did not know it) never attaches to the new one."""
    store = DocStore.open(tmp_path / "s", embedder="hash-64")
    store.add_texts([PELICAN, CORPUS], collection="kx")
    out = datastore_dir(store.path, "kx")
    sync(store, "kx", lm, out)
    shutil.copytree(out, tmp_path / "kept")
    admin.drop_collection(store, "kx")
    shutil.copytree(tmp_path / "kept", out)
    store.add_texts([BANANA], collection="kx")
    assert not any("PELICAN" in t for t in _live_texts(out))  # masked for readers before any sync
    rep = sync(store, "kx", lm, out)
    assert rep["rebuilt"] and rep["chunks_added"] == 1
    assert _live_texts(out) == [BANANA]


def test_replaced_and_deleted_chunks_leave_the_datastore(tmp_path, lm):
    store = DocStore.open(tmp_path / "s", embedder="hash-64")
    store.add_texts([PELICAN, CORPUS], ids=["1", "keep"], collection="c")
    out = datastore_dir(store.path, "c")
    sync(store, "c", lm, out)
    store.add_texts([BANANA], ids=["1"], collection="c")  # same id, new text (the Python API: no sync)
    assert not any("PELICAN" in t for t in _live_texts(out))  # a reader masks it at once
    rep = sync(store, "c", lm, out)
    assert rep["chunks_tombstoned"] == 1 and rep["chunks_added"] == 1
    assert sorted(_live_texts(out)) == sorted([BANANA, CORPUS])
    store.delete(ids=["keep"], collection="c")
    assert prune(store, "c", out)["chunks_tombstoned"] == 1  # persisted, no LM needed
    ds = TokenStore.open(out)
    assert len(ds.dead) > 0 and _live_texts(out) == [BANANA]


def test_knnlm_never_returns_deleted_chunks(tmp_path, lm):
    from lm.knnlm import KNNLM, KNNConfig

    store = DocStore.open(tmp_path / "s", embedder="hash-64")
    store.add_texts([PELICAN, CORPUS], ids=["p", "c"], collection="c")
    out = datastore_dir(store.path, "c")
    sync(store, "c", lm, out)
    knn = KNNLM.load(lm, out, KNNConfig(k=8))
    ctx = "The harbour pelican PELICAN-4242 guards the"
    assert any("PELICAN" in n["snippet"] for n in knn.next_tokens(ctx, top=8)["neighbours"])
    store.delete(ids=["p"], collection="c")  # another writer deletes; the loaded model is told nothing
    knn.refresh()
    res = knn.next_tokens(ctx, top=8)
    assert res["neighbours"] and not any("PELICAN" in n["snippet"] for n in res["neighbours"])
    knn = KNNLM.load(lm, out, KNNConfig(k=8))  # a fresh load masks it too
    assert not any("PELICAN" in n["snippet"] for n in knn.next_tokens(ctx, top=8)["neighbours"])


def test_cli_delete_tombstones_the_datastore(tmp_path, lm, capsys):
    from retrieval.cli.root import main

    store = DocStore.open(tmp_path / "s", embedder="hash-64")
    store.add_texts([PELICAN, CORPUS], ids=["p", "c"], collection="c")
    out = datastore_dir(store.path, "c")
    sync(store, "c", lm, out)
    store.close()
    assert main(["delete", "--store", str(tmp_path / "s"), "--collection", "c", "--id", "p", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["removed_chunks"] == 1 and d["knn"]["chunks_tombstoned"] == 1
    assert len(TokenStore.open(out).dead) > 0


def test_explain_reaches_a_collections_datastore_and_shows_file_lines(tmp_path, lm, capsys, monkeypatch):
    from retrieval.cli.root import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "birds.md").write_text("# Birds\n\n" + PELICAN + "\n")
    (tmp_path / "docs" / "other.md").write_text("# Other\n\n" + CORPUS + "\n")
    store = DocStore.open(tmp_path / "s", embedder="hash-64")
    store.index_paths(["docs"], collection="c")
    sync(store, "c", lm, datastore_dir(store.path, "c"))
    store.close()
    model = lm.model.config._name_or_path
    args = ["explain", "The harbour pelican PELICAN-4242 guards the", "--store", "s", "--collection", "c", "--model", model, "--json"]
    assert main(args) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["neighbours"] and all(":" in n["source"] and not n["source"].startswith("chunk:") for n in d["neighbours"])
    assert any(n["source"].startswith("docs/birds.md:3") for n in d["neighbours"])
    assert main(["delete", "--store", "s", "--collection", "c", "--source", "docs/birds.md"]) == 0
    capsys.readouterr()
    assert main(args) == 0
    d = json.loads(capsys.readouterr().out)
    assert not any("birds" in n["source"] or "PELICAN" in n["snippet"] for n in d["neighbours"])
    assert main(["explain", "x", "--store", "s", "--collection", "nope", "--model", model]) != 0
    assert "has no kNN-LM datastore" in capsys.readouterr().err
