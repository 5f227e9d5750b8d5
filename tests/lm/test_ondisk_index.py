"""On-disk IVF-PQ (lm.datastore.ondisk): parts merged into one .ivfdata == one index of the same
training, == FAISS's own merge_ondisk; reopen, append without retraining, tombstones, damage, and
a writer killed mid-merge leaves the old datastore valid."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lm.datastore import ondisk
from lm.datastore.token_store import TokenStore
from lm.datastore.verify import verify_datastore
from retrieval.errors import CorruptStoreError, InvalidInputError

DIM = 16
FACTORY = "IVF16,PQ4x4"
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny indexes: OpenMP threads only spin on the shared CI cores (7 s against 0.7 s a build here)."""
    import faiss

    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)


def _data(n, seed=0):
    rng = np.random.default_rng(seed)
    keys = rng.normal(size=(n, DIM)).astype(np.float16)  # (n, d)
    vals = rng.integers(0, 50, size=n).astype(np.int32)
    doc = (np.arange(n) >= n // 2).astype(np.int64)  # second half: doc 1
    prov = np.stack([doc, np.arange(n), np.arange(n)], axis=1).astype(np.int64)
    return keys, vals, prov


def make(path, n=3000, part=800, storage="ondisk"):
    keys, vals, prov = _data(n)
    st = TokenStore.create(path, lm_id="tiny@abc", tokenizer_hash="t1", key_layer="model.layers.1.mlp", dim=DIM,
                           index_factory=FACTORY, index_storage=storage)
    st.stage_docs([{"doc": 0, "source": "keep.txt", "hash": "a", "text": "x" * 500},
                   {"doc": 1, "source": "gone.txt", "hash": "b", "text": "y" * 500}])
    for a in range(0, n, 700):  # datastore files of 700: parts of 800 straddle them
        st.stage_shard(keys[a:a + 700], vals[a:a + 700], prov[a:a + 700])
        st.commit()
    st.build_index(part_entries=part)
    return st, keys


def one_index(st, upto=None):
    """One in-RAM index from the same training, every entry added in one process."""
    import faiss

    index = faiss.deserialize_index(ondisk.empty_copy(st.path / st.manifest["index"]["file"]))
    index.add(st.keys(np.arange(upto or st.count)).astype(np.float32))
    faiss.extract_index_ivf(index).nprobe = 4
    return index


def queries(keys, n=25):
    return keys[:n].astype(np.float32) + np.random.default_rng(1).normal(scale=0.1, size=(n, DIM)).astype(np.float32)


def test_merged_parts_equal_one_index_and_faiss_merge_ondisk(tmp_path):
    import faiss
    from faiss.contrib.ondisk import merge_ondisk

    st, keys = make(tmp_path / "ds")
    m = st.manifest
    assert m["index_storage"] == "ondisk" and m["index"]["storage"] == "ondisk" and m["index"]["parts"] == 4
    assert m["index"]["train"] == {"keys": 3000, "seed": 0} and m["index"]["ntotal"] == 3000
    assert not [f for f in st.path.iterdir() if "-part-" in f.name]  # parts are gone after the commit
    st = TokenStore.open(tmp_path / "ds")  # reopen after commit
    xq = queries(keys)
    D, I = st.search(xq, 10, nprobe=4)
    assert isinstance(faiss.downcast_InvertedLists(st._trained_index().ivf.invlists), faiss.OnDiskInvertedLists)
    Do, Io = one_index(st).search(xq, 10)
    np.testing.assert_array_equal(I, Io)
    np.testing.assert_array_equal(D, Do)
    # FAISS's merge_ondisk over the same parts gives the same index
    trained = ondisk.empty_copy(st.path / m["index"]["file"])
    jobs = ondisk.plan_parts(st, 0, 800, False, "x")
    ondisk.add_parts_here(st.path)(trained, jobs)
    ref = faiss.deserialize_index(trained)
    merge_ondisk(ref, [str(st.path / j.name) for j in jobs], str(tmp_path / "ref.ivfdata"))
    faiss.extract_index_ivf(ref).nprobe = 4
    Dr, Ir = ref.search(xq, 10)
    np.testing.assert_array_equal(I, Ir)
    np.testing.assert_array_equal(D, Dr)


def test_plan_parts_cover_every_entry_once(tmp_path):
    st, _keys = make(tmp_path / "ds", n=3000, part=5000)
    fixed = ondisk.plan_parts(st, 100, 800, False, "t")
    assert [(j.lo, j.hi) for j in fixed] == [(100, 900), (900, 1700), (1700, 2500), (2500, 3000)]
    assert fixed[0].files == [(st.manifest["shards"][0]["keys"], 0, 700), (st.manifest["shards"][1]["keys"], 700, 700)]
    shards = ondisk.plan_parts(st, 0, 1000, True, "t")  # whole datastore files of 700, >= 1000 a part
    assert [(j.lo, j.hi) for j in shards] == [(0, 1400), (1400, 2800), (2800, 3000)]


def test_append_adds_a_part_without_retraining_and_a_tail_is_searched_meanwhile(tmp_path):
    st, _keys = make(tmp_path / "ds")
    first = dict(st.manifest["index"])
    extra, vals, prov = _data(500, seed=7)
    st.stage_shard(extra, vals, prov)
    st.commit()  # entries past the index's ntotal: an interrupted append
    st = TokenStore.open(tmp_path / "ds")
    xq = extra[:20].astype(np.float32)
    D, I = st.search(xq, 5, nprobe=4)
    Do, Io = one_index(st).search(xq, 5)
    np.testing.assert_array_equal(I, Io)
    assert (I[:, 0] >= 3000).all()  # the tail (in RAM) is found
    entry = st.build_index(part_entries=800)
    assert entry["ntotal"] == 3500 and entry["parts"] == 1 and entry["train"] == first["train"]
    assert not (st.path / first["ivfdata"]).exists()  # the old lists went at the commit
    D2, I2 = TokenStore.open(tmp_path / "ds").search(xq, 5, nprobe=4)
    np.testing.assert_array_equal(I2, Io)
    np.testing.assert_array_equal(D2, Do)


@pytest.mark.parametrize("rerank", [0, 3])
def test_tombstoned_entries_never_come_back(tmp_path, rerank):
    st, keys = make(tmp_path / "ds")
    xq = keys[[1600, 2000, 2900, 5]].astype(np.float32)  # three sit on doc-1 entries
    assert st.search(xq, 3, nprobe=16, rerank=rerank).I[0, 0] == 1600
    assert st.tombstone_sources(["gone.txt"]) == 1500
    st = TokenStore.open(tmp_path / "ds")
    D, I = st.search(xq, 20, nprobe=16, rerank=rerank)
    assert (I >= 0).all() and (I < 1500).all()  # 20 live neighbours each, none from the deleted document


def test_ondisk_refuses_fast_scan_and_non_ivf_factories():
    with pytest.raises(InvalidInputError, match="fast-scan"):
        ondisk.new_index("IVF16,PQ8x4fs", DIM)
    with pytest.raises(InvalidInputError, match="IVF"):
        ondisk.new_index("HNSW16", DIM)
    from lm.datastore.token_index import resolve_factory

    assert resolve_factory("auto", 1_000_000, 576, ondisk=True) == "IVF4096,PQ64"
    assert resolve_factory("auto", 1_000_000, 576) == "IVF4096,PQ288x4fs"


def test_missing_truncated_or_altered_ivfdata_is_an_error_with_a_hint(tmp_path):
    st, keys = make(tmp_path / "ds")
    data = st.path / st.manifest["index"]["ivfdata"]
    body = data.read_bytes()
    assert verify_datastore(st.path)["ok"] and st.manifest["index"]["ivfdata"] in st.manifest["checksums"]
    xq = keys[:3].astype(np.float32)
    data.write_bytes(body[:-100])
    with pytest.raises(CorruptStoreError, match="truncated") as e:
        TokenStore.open(st.path).search(xq, 3)
    assert "rebuild" in e.value.hint
    data.unlink()
    with pytest.raises(CorruptStoreError, match="missing"):
        TokenStore.open(st.path).search(xq, 3)
    assert not verify_datastore(st.path)["ok"]
    garbled = bytearray(body)
    garbled[len(body) // 2] ^= 0x55
    data.write_bytes(bytes(garbled))
    rep = verify_datastore(st.path)
    assert not rep["ok"] and any("altered" in p and data.name in p for p in rep["problems"])


_WRITER = """
import sys
import numpy as np
from lm.datastore.token_store import TokenStore
st = TokenStore.open(sys.argv[1])
k = np.random.default_rng(9).normal(size=(400, 16)).astype(np.float16)
st.stage_shard(k, np.zeros(400, np.int32), np.zeros((400, 3), np.int64))
st.commit()
st.build_index(part_entries=800)
"""


def test_writer_killed_mid_merge_leaves_the_old_datastore_valid(tmp_path):
    st, keys = make(tmp_path / "ds")
    xq = queries(keys)
    before = st.search(xq, 5, nprobe=4)
    env = {**os.environ, "KNNRAG_TEST_PAUSE_AT": "ondisk-merge", "PYTHONPATH": str(ROOT)}
    p = subprocess.Popen([sys.executable, "-c", _WRITER, str(st.path)], env=env, stderr=subprocess.PIPE, text=True)
    try:
        for line in p.stderr:  # type: ignore[union-attr]
            if "KNNRAG-PAUSED-AT ondisk-merge" in line:
                break
        else:
            pytest.fail(f"the writer never reached the merge (rc {p.wait()})")
        os.kill(p.pid, signal.SIGKILL)
    finally:
        p.wait()
    st = TokenStore.open(tmp_path / "ds")
    assert st.count == 3400 and st.manifest["index"]["ntotal"] == 3000  # the new keys, the old index
    assert len([f for f in st.path.iterdir() if f.suffix == ".ivfdata"]) == 2  # the half-merged file is only an orphan
    after = st.search(xq, 5, nprobe=4)  # old lists + the 400 new entries in the RAM tail
    assert (after.D <= before.D + 1e-6).all()
    np.testing.assert_array_equal(after.I[after.I < 3000], before.I[np.isin(before.I, after.I)])
    entry = st.build_index(part_entries=800)
    assert entry["ntotal"] == 3400 and verify_datastore(st.path)["ok"]
    assert len([f for f in st.path.iterdir() if f.suffix == ".ivfdata"]) == 1 and not json.loads(
        (st.path / "manifest.json").read_text())["index"]["file"].endswith("part-00000.faiss")
