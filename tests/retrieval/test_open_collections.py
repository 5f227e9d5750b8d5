"""Issue 30 case 10, the store's side: open collections are an LRU with a cap (their file handles
with them), an evicted collection still in use stays usable, and running out of file descriptors
says so instead of calling a healthy collection damaged."""
from __future__ import annotations

import errno
import os

import pytest

from retrieval.errors import KnnragError
from retrieval.store.docstore import DocStore


def fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture()
def store(tmp_path):
    s = DocStore.open(tmp_path / "s", embedder="hash-64", create=True)
    for i in range(8):
        s.add_texts([f"note {i}: the heron number {i} waits by the river"], ids=[f"n{i}"], collection=f"c{i}")
    s.close()
    yield s
    s.close()


def test_open_collections_stay_under_the_cap(store):
    store._collections.cap = 3
    base = fds()
    for i in range(3):
        assert store.search("heron", collection=f"c{i}", k=1)[0].id == f"n{i}"
    with_three = fds()
    for i in range(8):
        assert store.search("heron", collection=f"c{i}", k=1)[0].id == f"n{i}"
    assert len(store._collections) == 3 and list(store._collections) == ["c5", "c6", "c7"]
    assert fds() <= with_three + 2, (base, with_three, fds())  # the evicted ones' handles were closed
    assert [c["name"] for c in store.list_collections()] == [f"c{i}" for i in range(8)]
    assert len(store._collections) == 3


def test_an_evicted_collection_in_use_keeps_working(store):
    store._collections.cap = 2
    held = store.collection("c0")
    for i in range(1, 5):
        store.search("heron", collection=f"c{i}", k=1)
    assert "c0" not in store._collections
    with held.reading() as (conn, _snap):  # a reader that got it before the eviction
        assert conn.execute("SELECT count(*) FROM chunks").fetchone()[0] == 1
    assert store.search("heron", collection="c0", k=1)[0].id == "n0"  # reopened on its next use


def test_running_out_of_file_descriptors_is_not_called_damage(store, monkeypatch):
    from retrieval.index import vector_index

    def no_fds(*_a, **_k):
        raise OSError(errno.EMFILE, "Too many open files")

    monkeypatch.setattr(vector_index, "read_index", no_fds)
    with pytest.raises(KnnragError) as e:
        store.search("heron", collection="c1", k=1)
    assert "too many open files" in e.value.message and "ulimit -n" in e.value.hint
    assert "delete" not in e.value.hint and "restore" not in e.value.hint
