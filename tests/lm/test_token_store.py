"""Token datastore: self-describing folder, exact/IVF search, append, atomic commits, clear errors."""
from __future__ import annotations

import json

import numpy as np
import pytest

from lm.datastore.token_store import TokenStore
from retrieval.errors import CorruptStoreError, InvalidInputError, MismatchError, NotFoundError

DIM = 16


def _data(n, seed=0):
    rng = np.random.default_rng(seed)
    keys = rng.normal(size=(n, DIM)).astype(np.float16)  # (n, d)
    vals = rng.integers(0, 50, size=n).astype(np.int32)
    prov = np.stack([np.zeros(n), np.arange(n), np.arange(n) * 3], axis=1).astype(np.int64)
    return keys, vals, prov


def _store(path, chunks, factory="Flat"):
    st = TokenStore.create(path, lm_id="tiny@abc", tokenizer_hash="t1", key_layer="model.layers.1.mlp", dim=DIM,
                           index_factory=factory)
    st.stage_docs([{"doc": 0, "source": "a.txt", "hash": "h", "text": "x" * 10_000}])
    for keys, vals, prov in chunks:
        st.stage_shard(keys, vals, prov)
        st.commit()
    return st


def _brute(xb, xq, k):
    d = ((xq[:, None, :] - xb[None].astype(np.float32)) ** 2).sum(-1)  # (q, n)
    return np.sort(d, 1)[:, :k], np.argsort(d, 1, kind="stable")[:, :k]


def test_roundtrip_and_flat_search_is_exact(tmp_path):
    keys, vals, prov = _data(300)
    _store(tmp_path / "ds", [(keys[:100], vals[:100], prov[:100]), (keys[100:], vals[100:], prov[100:])])
    st = TokenStore.open(tmp_path / "ds", lm_id="tiny@abc", tokenizer_hash="t1")
    assert st.count == 300 and st.info()["shards"] == 2
    m = json.loads((tmp_path / "ds" / "manifest.json").read_text())
    assert {"format_version", "lm_id", "tokenizer_hash", "key_layer", "dim", "dtype", "count", "metric", "index_factory"} <= m.keys()
    assert isinstance(st._keys[0], np.memmap) and st._keys[0].dtype == np.float16
    np.testing.assert_array_equal(st.keys(np.array([5, 150, 299])), keys[[5, 150, 299]])
    np.testing.assert_array_equal(st.values, vals)
    np.testing.assert_array_equal(st.provenance(np.array([120])), prov[[120]])
    xq = np.random.default_rng(1).normal(size=(7, DIM)).astype(np.float32)
    D, I = st.search(xq, 5)
    Db, Ib = _brute(keys, xq, 5)
    np.testing.assert_array_equal(I, Ib)
    np.testing.assert_allclose(D, Db, rtol=1e-4)
    assert st.snippet(120)[0] == "a.txt"


def test_ivf_neighbours_agree_with_flat(tmp_path):
    keys, vals, prov = _data(2000)
    st = _store(tmp_path / "ds", [(keys, vals, prov)], factory="IVF16,Flat")
    st.build_index()
    xq = keys[:50].astype(np.float32) + 0.01
    D, I = st.search(xq, 10, nprobe=16)  # all lists probed: identical to exact search
    De, Ie = st.search(xq, 10, exact=True)
    np.testing.assert_array_equal(I, Ie)
    D4, I4 = st.search(xq, 10, nprobe=4)  # a quarter of the lists: most neighbours still found
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(I4, Ie)])
    assert recall >= 0.6


def test_faiss_refine_equals_the_numpy_rerank_and_skips_tombstones(tmp_path, monkeypatch):
    """The fast re-rank (FAISS IndexRefine over fp16 codes) returns what the numpy re-rank of the same
    candidates returns, the too-big-for-RAM fallback included, and never a tombstoned entry."""
    from lm.datastore import token_index

    keys, vals, prov = _data(3000)
    st = _store(tmp_path / "ds", [(keys[:1800], vals[:1800], prov[:1800]), (keys[1800:], vals[1800:], prov[1800:])],
                factory="IVF8,PQ4x4")  # two shards: the codes are laid out in id order
    st.build_index()
    xq = np.random.default_rng(5).normal(size=(40, DIM)).astype(np.float32)
    fast = st.search(xq, 10, nprobe=4, rerank=3)
    assert st._refine is not None and st._refine[1].ntotal == st.count
    monkeypatch.setattr(token_index, "DENSE_MAX_BYTES", 0)  # the mmap gather + numpy path
    slow = st.search(xq, 10, nprobe=4, rerank=3)
    np.testing.assert_array_equal(fast.I, slow.I)
    np.testing.assert_allclose(fast.D, slow.D, rtol=1e-5)
    monkeypatch.setattr(token_index, "DENSE_MAX_BYTES", 2 << 30)
    dead = np.unique(fast.I[:, :3])
    monkeypatch.setattr(type(st), "dead", property(lambda self: dead))
    again = st.search(xq, 10, nprobe=4, rerank=3)
    assert not np.isin(again.I, dead).any()
    tiny = st.search(xq[:2], 5, nprobe=1, rerank=600)  # more candidates asked than one list holds
    assert ((tiny.I >= 0) | np.isinf(tiny.D)).all()


def test_ivfpq_rerank_gives_exact_distances(tmp_path):
    keys, vals, prov = _data(3000)
    st = _store(tmp_path / "ds", [(keys, vals, prov)], factory="IVF8,PQ4x4")
    st.build_index()
    xq = keys[:20].astype(np.float32)
    De, Ie = st.search(xq, 5, exact=True)
    Dr, Ir = st.search(xq, 5, nprobe=8, rerank=8)
    np.testing.assert_array_equal(Ir[:, 0], Ie[:, 0])  # the query itself is found and ranked first
    # re-ranked distances are exact distances of the returned ids
    exact = ((st.keys(Ir).astype(np.float32) - xq[:, None]) ** 2).sum(-1)
    np.testing.assert_allclose(Dr, exact, rtol=1e-5)
    assert np.mean([len(set(a) & set(b)) / 5 for a, b in zip(Ir, Ie)]) >= 0.8


@pytest.mark.parametrize("factory", ["Flat", "IVF16,Flat"])
def test_append_then_search_equals_one_shot(tmp_path, factory):
    keys, vals, prov = _data(1200)
    a = _store(tmp_path / "a", [(keys[:800], vals[:800], prov[:800])], factory)
    a.build_index()  # trained on the first corpus only
    a.stage_shard(keys[800:], vals[800:], prov[800:])
    a.commit()
    entry = a.build_index()  # append: add to the trained index, no retraining
    assert entry["ntotal"] == 1200
    one = _store(tmp_path / "b", [(keys, vals, prov)], factory)
    one.build_index()
    xq = np.random.default_rng(3).normal(size=(20, DIM)).astype(np.float32)
    a2 = TokenStore.open(tmp_path / "a")
    Da, Ia = a2.search(xq, 8, nprobe=16)
    Db, Ib = one.search(xq, 8, nprobe=16)
    np.testing.assert_array_equal(Ia, Ib)
    np.testing.assert_allclose(Da, Db, rtol=1e-5)
    np.testing.assert_array_equal(a2.values, one.values)


def test_uncommitted_shards_are_invisible_and_collected(tmp_path):
    keys, vals, prov = _data(100)
    st = _store(tmp_path / "ds", [(keys[:50], vals[:50], prov[:50])])
    st.stage_shard(keys[50:], vals[50:], prov[50:])  # crash before commit
    assert TokenStore.open(tmp_path / "ds").count == 50
    st2 = TokenStore.open(tmp_path / "ds")
    st2.commit()  # the next writer removes the orphans
    names = {f.name for f in (tmp_path / "ds").iterdir()}
    assert len([n for n in names if n.startswith("keys-")]) == 1


def test_k_larger_than_datastore(tmp_path):
    keys, vals, prov = _data(10)
    st = _store(tmp_path / "ds", [(keys, vals, prov)])
    with pytest.raises(InvalidInputError, match="larger than the datastore"):
        st.search(keys[:1].astype(np.float32), 11)


def test_other_model_or_tokenizer_is_refused(tmp_path):
    keys, vals, prov = _data(10)
    _store(tmp_path / "ds", [(keys, vals, prov)])
    with pytest.raises(MismatchError, match="tiny@abc"):
        TokenStore.open(tmp_path / "ds", lm_id="other@123")
    with pytest.raises(MismatchError, match="tokenizer"):
        TokenStore.open(tmp_path / "ds", lm_id="tiny@abc", tokenizer_hash="t2")


def test_missing_datastore(tmp_path):
    with pytest.raises(NotFoundError):
        TokenStore.open(tmp_path / "nope")


@pytest.mark.parametrize("damage", ["truncate_keys", "garbage_values", "manifest", "pickle", "index", "missing"])
def test_corrupt_files_are_reported_with_a_fix(tmp_path, damage):
    keys, vals, prov = _data(500)
    st = _store(tmp_path / "ds", [(keys, vals, prov)], factory="IVF4,Flat")
    st.build_index()
    d = tmp_path / "ds"
    m = json.loads((d / "manifest.json").read_text())
    sh = m["shards"][0]
    if damage == "truncate_keys":
        data = (d / sh["keys"]).read_bytes()
        (d / sh["keys"]).write_bytes(data[: len(data) // 2])
    elif damage == "garbage_values":
        n = (d / sh["values"]).stat().st_size
        (d / sh["values"]).write_bytes(b"\x00" * n)
    elif damage == "manifest":
        (d / "manifest.json").write_text("{not json")
    elif damage == "pickle":
        arr = np.empty(500, dtype=object)
        with open(d / sh["values"], "wb") as f:
            np.save(f, arr, allow_pickle=True)
        m["shards"][0]["values_bytes"] = (d / sh["values"]).stat().st_size
        (d / "manifest.json").write_text(json.dumps(m))
    elif damage == "index":
        f = d / m["index"]["file"]
        f.write_bytes(b"\x00" * f.stat().st_size)
    elif damage == "missing":
        (d / sh["prov"]).unlink()
    with pytest.raises(CorruptStoreError) as e:
        s = TokenStore.open(d)
        s.search(keys[:1].astype(np.float32), 3)
    assert "knnrag datastore build" in e.value.hint, e.value.hint


def test_auto_factory_is_fast_scan_pq_when_large():
    from lm.datastore.token_index import resolve_factory

    assert resolve_factory("auto", 5_000, 576) == "Flat"
    assert resolve_factory("auto", 1_000_000, 576) == "IVF4096,PQ288x4fs"
    assert resolve_factory("auto", 1_000_000, 66) == "Flat"  # no PQ split: stay exact
    assert resolve_factory("IVF8,Flat", 1_000_000, 576) == "IVF8,Flat"


def test_fast_scan_pq_finds_neighbours_and_appends(tmp_path):
    keys, vals, prov = _data(3000)
    st = _store(tmp_path / "ds", [(keys[:2000], vals[:2000], prov[:2000])], factory=f"IVF8,PQ{DIM // 2}x4fs")
    st.build_index()
    st.stage_shard(keys[2000:], vals[2000:], prov[2000:])
    st.commit()
    assert st.build_index()["ntotal"] == 3000  # appended without retraining
    st = TokenStore.open(tmp_path / "ds")
    xq = keys[::150].astype(np.float32)  # (20, d) stored keys: each must find itself
    D, I = st.search(xq, 10, nprobe=8)
    De, Ie = st.search(xq, 10, exact=True)
    np.testing.assert_array_equal(I[:, 0], Ie[:, 0])
    assert np.mean([len(set(a) & set(b)) / 10 for a, b in zip(I, Ie)]) >= 0.4  # 4-bit codes of random 16-d data
    Dr, Ir = st.search(xq, 10, nprobe=8, rerank=4)  # exact re-rank of 40 candidates recovers most of the rest
    assert np.mean([len(set(a) & set(b)) / 10 for a, b in zip(Ir, Ie)]) >= 0.8


def test_ivf_training_sample_has_enough_keys_per_list(tmp_path):
    """A fixed training sample would starve many lists (1M entries: 4096 lists, 24 keys each from 100k)."""
    from lm.datastore.token_index import TRAIN_PER_LIST

    keys, vals, prov = _data(3000)
    st = _store(tmp_path / "ds", [(keys, vals, prov)], factory="IVF32,Flat")
    assert st.build_index(train_size=200)["trained_on"] == 32 * TRAIN_PER_LIST  # raised to the per-list floor
    st = _store(tmp_path / "ds2", [(keys, vals, prov)], factory="IVF4,Flat")
    assert st.build_index(train_size=2500)["trained_on"] == 2500  # a larger sample is kept
    st.stage_shard(keys[:10], vals[:10], prov[:10])
    st.commit()
    assert st.build_index(train_size=10)["trained_on"] == 2500  # an append does not retrain
    st = _store(tmp_path / "ds3", [(keys[:500], vals[:500], prov[:500])], factory="IVF32,Flat")
    assert st.build_index(train_size=100)["trained_on"] == 500  # never more than the store holds
