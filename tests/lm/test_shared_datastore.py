"""`knnrag index --knn`: one collection, both halves; chunk provenance; deletes masked (issue 12)."""
from __future__ import annotations

import argparse
import json

import pytest

from tests.support.tiny_lm import CORPUS, make_tiny_lm

PLANTED = ("Volcanic islands form where magma rises through the crust. Basalt cools into columns, and "
           "new land appears in the sea within months. ") * 2


def _cli(argv):
    """The real sub-parsers (store's, then lm's registrar), without the installed entry points."""
    from lm.cli import register as lm_register
    from retrieval.cli.store import register as store_register

    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="command", required=True)
    store_register(sub)
    lm_register(sub)
    args = p.parse_args(argv)
    return args.func(args)


@pytest.fixture(scope="module")
def lm_dir(tmp_path_factory):
    return make_tiny_lm(tmp_path_factory.mktemp("lm"), "llama")


def _neighbour_sources(store_dir, lm_dir, ctx):
    from lm.knn_index import PREFIX, datastore_dir
    from lm.knnlm import KNNLM, KNNConfig
    from retrieval.store.docstore import DocStore

    knn = KNNLM.load(str(lm_dir), datastore_dir(store_dir, "default"), KNNConfig(k=8))
    res = knn.next_tokens(ctx, top=8)
    ids = [n["source"][len(PREFIX):] for n in res["neighbours"]]
    assert all(n["source"].startswith(PREFIX) for n in res["neighbours"])
    with DocStore.open(store_dir, read_only=True) as s:
        hits = {h.id: h for h in s.get(sorted(set(ids)))}
    return [hits[i].source if i in hits else f"deleted:{i}" for i in ids], res


def test_index_knn_builds_tracks_and_masks(tmp_path, lm_dir, capsys):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "keep.md").write_text(CORPUS)
    (docs / "planted.md").write_text(PLANTED)
    store = tmp_path / "store"
    base = ["--store", str(store), "--embedder", "hash-64", "--knn", "--knn-model", str(lm_dir), "--json"]
    assert _cli(["index", str(docs), *base]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["added"] == 2 and rep["knn"]["entries_added"] > 100 and rep["knn"]["chunks_tombstoned"] == 0

    assert _cli(["stats", "--store", str(store), "--collection", "default", "--json"]) == 0
    st = json.loads(capsys.readouterr().out)
    assert st["chunks"] >= 2 and st["knn"]["default"]["live_entries"] == rep["knn"]["entries_added"]

    ctx = "Volcanic islands form where magma rises through the"
    sources, _ = _neighbour_sources(store, lm_dir, ctx)
    assert sources[0].endswith("planted.md")  # provenance: neighbour -> chunk id -> the planted file

    (docs / "planted.md").unlink()
    (docs / "keep.md").write_text(CORPUS + "\n\nA new closing paragraph about lighthouses and tides.\n")
    assert _cli(["index", str(docs), *base]) == 0
    rep2 = json.loads(capsys.readouterr().out)["knn"]
    assert rep2["entries_tombstoned"] > 0 and rep2["entries_added"] > 0
    sources, res = _neighbour_sources(store, lm_dir, ctx)
    assert len(sources) == 8 and not any("planted" in s or s.startswith("deleted:") for s in sources)
    assert not any("Volcanic" in n["snippet"] for n in res["neighbours"])

    assert _cli(["stats", "--store", str(store), "--collection", "default"]) == 0
    assert "(kNN-LM):" in capsys.readouterr().out
