"""Tombstones: a deleted document's entries never come back from kNN search or `explain` (issue 12).

The mask is applied inside the FAISS search (IDSelector), so k live neighbours still come back.
"""
from __future__ import annotations

import numpy as np
import pytest

from lm.datastore.token_store import TokenStore
from retrieval.errors import InvalidInputError
from tests.support.tiny_lm import CORPUS, make_tiny_lm

DIM = 16
PLANTED = ("Volcanic islands form where magma rises through the crust. Basalt cools into columns, and "
           "new land appears in the sea within months. ") * 2


def _two_doc_store(path, factory="Flat"):
    rng = np.random.default_rng(0)
    keys = rng.normal(size=(400, DIM)).astype(np.float16)  # (n, d)
    vals = rng.integers(0, 50, size=400).astype(np.int32)
    doc = (np.arange(400) >= 200).astype(np.int64)  # entries 200.. come from doc 1
    prov = np.stack([doc, np.arange(400), np.arange(400)], axis=1).astype(np.int64)
    st = TokenStore.create(path, lm_id="tiny@abc", tokenizer_hash="t1", key_layer="model.layers.1.mlp", dim=DIM,
                           index_factory=factory)
    st.stage_docs([{"doc": 0, "source": "keep.txt", "hash": "a", "text": "x" * 500},
                   {"doc": 1, "source": "gone.txt", "hash": "b", "text": "y" * 500}])
    st.stage_shard(keys[:300], vals[:300], prov[:300])
    st.stage_shard(keys[300:], vals[300:], prov[300:])
    st.commit()
    return st, keys


@pytest.mark.parametrize("factory,rerank", [("Flat", 0), ("IVF8,Flat", 0), ("IVF8,Flat", 2)])
def test_tombstoned_entries_are_masked_inside_the_search(tmp_path, factory, rerank):
    st, keys = _two_doc_store(tmp_path / "ds", factory)
    if factory != "Flat":
        st.build_index()
    xq = keys[[210, 250, 350, 5]].astype(np.float32)  # three queries sit exactly on doc-1 entries
    D, I = st.search(xq, 10, nprobe=8, rerank=rerank)
    assert I[0, 0] == 210 and I[2, 0] == 350
    assert st.tombstone_sources(["gone.txt"]) == 200
    st = TokenStore.open(tmp_path / "ds")  # the mask is committed, and survives re-opening
    assert len(st.dead) == 200 and st.tombstone_sources(["gone.txt"]) == 0
    D, I = st.search(xq, 10, nprobe=8, rerank=rerank)
    assert (I >= 0).all() and (I < 200).all()  # k live neighbours, none from the deleted document
    with pytest.raises(InvalidInputError, match="live entries"):
        st.search(xq, 201)


def test_deleted_file_never_comes_back_from_explain(tmp_path):
    from lm.datastore.build import BuildConfig, build_datastore
    from lm.knnlm import KNNLM, KNNConfig
    from lm.models import load_lm

    lm = load_lm(str(make_tiny_lm(tmp_path / "lm", "llama")))
    (tmp_path / "keep.txt").write_text(CORPUS)
    (tmp_path / "planted.txt").write_text(PLANTED)
    out = tmp_path / "ds"
    build_datastore(lm, [str(tmp_path / "keep.txt"), str(tmp_path / "planted.txt")], out, BuildConfig(window=64), progress=False)
    knn = KNNLM.load(lm, out, KNNConfig(k=16))
    ctx = "Volcanic islands form where magma rises through the"
    before = {n["source"] for n in knn.next_tokens(ctx, top=16)["neighbours"]}
    assert any(s.endswith("planted.txt") for s in before)  # provenance points at the planted file
    assert TokenStore.open(out).tombstone_sources([str(tmp_path / "planted.txt")]) > 0
    knn = KNNLM.load(lm, out, KNNConfig(k=16))
    res = knn.next_tokens(ctx, top=16)
    assert len(res["neighbours"]) == 16
    assert not any(n["source"].endswith("planted.txt") or "Volcanic" in n["snippet"] for n in res["neighbours"])
